"""The hf and lhotse adapters on fixtures the real `datasets` and `lhotse` libraries write, and the
same audio through the folder adapter: featurized arrays must be equal, not just close."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dfdetect import datasets
from dfdetect.datasets import refs
from dfdetect.featurize.audio import AudioError, decode
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import open_store

hf = pytest.importorskip("datasets")   # the test extra installs it; runtime never imports it

SR = 16000


def _wav(seconds: float, freq: float, channels: int = 1, rate: int = SR) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], 1) if channels > 1 else wave
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), rate, format="WAV")
    return buf.getvalue()


# a handful of generated clips: (folder-layout name, label, generator, seconds, freq)
CLIPS = [("real/r0.wav", 0, "", 1.2, 220.0), ("real/r1.wav", 0, "", 4.5, 330.0),
         ("fake/tts/f0.wav", 1, "tts", 2.0, 440.0), ("fake/tts/f1.wav", 1, "tts", 0.8, 550.0),
         ("fake/vc/f2.wav", 1, "vc", 3.3, 660.0)]


@pytest.fixture(scope="module")
def folder_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for name, _, _, seconds, freq in CLIPS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_wav(seconds, freq))
    return root


def _features(names=("bonafide", "spoof")):
    return hf.Features({"audio": hf.Audio(sampling_rate=SR, decode=False),
                        "label": hf.ClassLabel(names=list(names)),
                        "generator": hf.Value("string")})


def _dataset(rows, features):
    """`from_dict(..., features=)` would encode Audio through torchcodec (datasets >= 4), which the
    fixtures do not need: the rows already hold what Audio stores, so cast to the features instead."""
    return hf.Dataset.from_dict(rows).cast(features)


def _rows(folder, embed=True):
    return {"audio": [{"bytes": (folder / n).read_bytes() if embed else None,
                       "path": n if embed else str(folder / n)} for n, *_ in CLIPS],
            "label": [y for _, y, *_ in CLIPS], "generator": [g for _, _, g, *_ in CLIPS]}


def _arrays(out):
    store = open_store(out)
    return {k: store.array(k)[:] for k in ("mel", "lfcc")}, store.meta


def _by_audio(arrays, meta, keys):
    order = {k: i for i, k in enumerate(keys)}
    rows = sorted(range(len(keys)), key=lambda i: order[keys[i]])
    return {k: v[rows] for k, v in arrays.items()}, meta["status"][rows]


def test_hf_and_lhotse_featurize_to_the_folder_adapters_arrays(folder_corpus, tmp_path):
    """The done-criterion: the same audio through folder, hf (embedded bytes) and lhotse (segments
    of one channel of a longer recording) gives exactly equal arrays."""
    ref_out = str(tmp_path / "folder.zarr")
    featurize("folder", folder_corpus, ref_out, features=("mel", "lfcc"), workers=0, block_size=2)
    want, meta = _arrays(ref_out)
    folder_order = [os.path.relpath(p, folder_corpus).replace(os.sep, "/") for p in meta["path"]]

    hf_root = tmp_path / "hf"
    hf.DatasetDict({"train": _dataset(_rows(folder_corpus), _features(("bonafide", "spoof")))}
                   ).save_to_disk(str(hf_root))
    hf_out = str(tmp_path / "hf.zarr")
    featurize("hf", hf_root, hf_out, features=("mel", "lfcc"), workers=0, block_size=2)
    got, hmeta = _arrays(hf_out)
    assert list(hmeta["label"]) == [y for _, y, *_ in CLIPS]
    assert all(p.startswith(refs.PREFIX) for p in hmeta["path"])

    lhotse_root = _lhotse_manifests(tmp_path / "lh", folder_corpus)
    lh_out = str(tmp_path / "lh.zarr")
    featurize("lhotse", lhotse_root, lh_out, features=("mel", "lfcc"), workers=0, block_size=2)
    lh, lmeta = _arrays(lh_out)
    assert all(p.startswith(refs.PREFIX) and "channels=1" in p for p in lmeta["path"])

    names = [n for n, *_ in CLIPS]
    w, wstatus = _by_audio(want, meta, folder_order)
    for arrays, m in ((got, hmeta), (lh, lmeta)):
        g, status = _by_audio(arrays, m, names)
        assert list(status) == ["ok"] * len(CLIPS) == list(wstatus)
        for k in ("mel", "lfcc"):
            np.testing.assert_array_equal(g[k], w[k])


def _lhotse_manifests(root: Path, folder: Path) -> Path:
    """Every clip as a segment of one long stereo recording (channel 1; channel 0 is other audio),
    written by lhotse itself: equal arrays then prove the segment and the channel are what is read."""
    lh = pytest.importorskip("lhotse")
    root.mkdir(parents=True, exist_ok=True)
    pieces, spans = [], []
    for name, *_ in CLIPS:
        samples, rate = sf.read(folder / name, dtype="int16")
        spans.append((sum(len(p) for p in pieces), len(samples)))
        pieces.append(samples)
    right = np.concatenate(pieces)
    left = (np.random.default_rng(0).standard_normal(len(right)) * 3000).astype(np.int16)
    sf.write(root / "long.wav", np.stack([left, right], 1), SR, subtype="PCM_16")
    rec = lh.Recording.from_file(str(root / "long.wav"), recording_id="long")
    sups = [lh.SupervisionSegment(id=name, recording_id="long", start=start / SR, duration=n / SR,
                                  channel=1, speaker="spk", language="en",
                                  custom={"label": "spoof" if y else "bonafide", "generator": gen})
            for (name, y, gen, *_), (start, n) in zip(CLIPS, spans)]
    lh.RecordingSet.from_recordings([rec]).to_file(str(root / "recordings.jsonl.gz"))
    lh.SupervisionSet.from_segments(sups).to_file(str(root / "supervisions.jsonl.gz"))
    return root


# --------------------------------------------------------------------------- hf

def test_hf_classlabel_ids_embedded_and_path_rows(folder_corpus, tmp_path):
    d = _dataset(_rows(folder_corpus, embed=False), _features(("real", "fake")))
    # save_to_disk embeds the files a path-only Audio column names (datasets does so itself)
    d.save_to_disk(str(tmp_path / "saved"))
    saved = datasets.prepare("hf", tmp_path / "saved")
    assert [c.label for c in saved.clips] == [y for _, y, *_ in CLIPS] and saved.problems == []
    assert all(c.path.startswith(refs.PREFIX) for c in saved.clips)
    assert decode(saved.clips[1].path).samples.tobytes() == decode(folder_corpus / CLIPS[1][0]).samples.tobytes()
    # to_parquet keeps the paths: absolute ones, read only when the dataset is the user's own
    (tmp_path / "pq").mkdir()
    d.to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    index = datasets.prepare("hf", tmp_path / "pq", allow_outside="1")
    assert [c.label for c in index.clips] == [y for _, y, *_ in CLIPS]
    assert [c.path for c in index.clips] == [str(folder_corpus / n) for n, *_ in CLIPS]
    assert {c.generator for c in index.clips} == {"", "tts", "vc"} and index.problems == []
    # the same dataset, untrusted: absolute paths outside the folder are refused, row by row
    refused = datasets.prepare("hf", tmp_path / "pq")
    assert refused.clips == [] and len(refused.problems) == len(CLIPS)
    assert "points outside" in refused.problems[0].message and "row 0" in refused.problems[0].where


def test_hf_classlabel_names_are_read_as_spellings(folder_corpus, tmp_path):
    # ids the other way round: 0 = spoof. The names decide, not the numbers.
    rows = _rows(folder_corpus)
    rows["label"] = [1 - y for y in rows["label"]]
    root = tmp_path / "flip"
    _dataset(rows, _features(("spoof", "bona fide"))).save_to_disk(str(root))
    index = datasets.prepare("hf", root)
    assert [c.label for c in index.clips] == [y for _, y, *_ in CLIPS]
    ok = decode(index.clips[0].path)
    assert ok.sample_rate == SR and ok.frames == int(SR * CLIPS[0][3])


@pytest.mark.parametrize("column,values,expect", [
    ("label", ["fake", "Spoof", "bonafide", "bona fide", "real"], [1, 1, 0, 0, 0]),
    ("is_fake", [True, False, True, False, False], [1, 0, 1, 0, 0]),
    ("target", [1, 0, 0, 1, 1], [1, 0, 0, 1, 1]),
])
def test_hf_label_spellings_and_columns(folder_corpus, tmp_path, column, values, expect):
    rows = _rows(folder_corpus)
    del rows["label"]
    rows[column] = values
    root = tmp_path / column
    hf.Dataset.from_dict(rows).cast_column("audio", hf.Audio(decode=False)).save_to_disk(str(root))
    index = datasets.prepare("hf", root)
    assert [c.label for c in index.clips] == expect and index.problems == []


def test_hf_own_values_and_bad_rows_are_problems(folder_corpus, tmp_path):
    rows = _rows(folder_corpus)
    del rows["label"]
    rows["verdict"] = ["human", "cloned", "???", None, "cloned"]
    rows["audio"][4] = {"bytes": None, "path": None}
    root = tmp_path / "own"
    root.mkdir()
    # parquet: save_to_disk cannot write a row with neither bytes nor path (it tries to embed it)
    hf.Dataset.from_dict(rows).cast_column("audio", hf.Audio(decode=False)).to_parquet(
        str(root / "train.parquet"), batch_size=10)
    index = datasets.prepare("hf", root, label_column="verdict", fake_values="cloned", real_values="human")
    assert [c.label for c in index.clips] == [0, 1]
    assert [p.where.rsplit(" ", 1)[1] for p in index.problems] == ["2", "3", "4"]
    assert "unknown label '???'" in index.problems[0].message
    assert "neither bytes nor a path" in index.problems[2].message
    missing = datasets.prepare("hf", root)          # no known label column: one problem per file
    assert missing.clips == [] and "label_column" in missing.problems[0].message
    with pytest.raises(ValueError, match="takes only"):
        datasets.prepare("hf", root, label_colum="verdict")


def test_hf_split_column_and_datasetdict_splits(folder_corpus, tmp_path):
    rows = _rows(folder_corpus)
    rows["split"] = ["train", "test", "train", "test", "dev"]
    root = tmp_path / "splits"
    feats = _features()
    feats["split"] = hf.Value("string")
    d = _dataset(rows, feats)
    hf.DatasetDict({"train": d.select([0, 1, 2]), "validation": d.select([3, 4])}).save_to_disk(str(root))
    index = datasets.prepare("hf", root)
    assert [c.split for c in index.clips] == ["train", "test", "train", "test", "dev"]   # the column wins
    plain = datasets.prepare("hf", root, split_column="nope")
    assert [c.split for c in plain.clips] == ["train"] * 3 + ["validation"] * 2
    assert len({c.clip_id for c in plain.clips}) == 5


def test_hf_parquet_shards_and_hub_repo_layout(folder_corpus, tmp_path):
    """data/<split>-0000N-of-0000M.parquet with an audio struct of bytes + path and string labels,
    several row groups per shard: every clip's bytes come back from its own row group."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    rows = _rows(folder_corpus)
    rows["label"] = ["bonafide" if y == 0 else "spoof" for y in rows["label"]]
    d = hf.Dataset.from_dict(rows).cast_column("audio", hf.Audio(decode=False))
    d.select([0, 1, 2]).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"), batch_size=2)
    d.select([3]).to_parquet(str(root / "data" / "train-00001-of-00002.parquet"))
    d.select([4]).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    assert pq.ParquetFile(root / "data" / "train-00000-of-00002.parquet").num_row_groups == 2
    index = datasets.prepare("hf", root)
    assert index.problems == []
    assert [c.split for c in index.clips] == ["test", "train", "train", "train", "train"]
    by_name = {c.clip_id: c for c in index.clips}
    for i, (name, y, *_) in enumerate(CLIPS):
        shard = {0: "train-00000", 1: "train-00000", 2: "train-00000", 3: "train-00001", 4: "test-00000"}[i]
        row = {0: 0, 1: 1, 2: 2, 3: 0, 4: 0}[i]
        clip = by_name[f"data/{shard}-of-0000{2 if shard.startswith('train') else 1}.parquet:{row}"]
        assert clip.label == y
        assert decode(clip.path).samples.tobytes() == decode((folder_corpus / name).read_bytes()).samples.tobytes()


def test_hf_relative_paths_stay_inside_and_missing_files_are_kept(folder_corpus, tmp_path):
    root = tmp_path / "rel"
    import shutil
    shutil.copytree(folder_corpus, root / "audio")
    names = ["audio/real/r0.wav", "audio/../../escape.wav", "audio/real/gone.wav"]
    d = hf.Dataset.from_dict({"audio": [{"bytes": None, "path": n} for n in names], "label": [0, 0, 1]}
                             ).cast_column("audio", hf.Audio(decode=False))
    d.to_parquet(str(root / "train.parquet"), batch_size=10)   # its size estimate would stat the paths
    index = datasets.prepare("hf", root)
    assert [c.path for c in index.clips] == [str(root / names[0]), str(root / "audio/real/gone.wav")]
    text = " | ".join(p.message for p in index.problems)
    assert "points outside" in text and "missing (kept" in text


def test_hf_names_in_its_json_files_stay_inside(folder_corpus, tmp_path):
    root = tmp_path / "dd"
    hf.DatasetDict({"train": _dataset(_rows(folder_corpus), _features())}).save_to_disk(str(root))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../..", "/etc"]}))
    state = json.loads((root / "train" / "state.json").read_text())
    state["_data_files"].append({"filename": "../../x.arrow"})
    (root / "train" / "state.json").write_text(json.dumps(state))
    index = datasets.prepare("hf", root)
    assert len(index.clips) == 5 and {c.split for c in index.clips} == {"train"}
    text = " | ".join(p.message for p in index.problems)
    assert text.count("outside") == 3, text


def test_hf_wrong_layout_and_damaged_file(tmp_path):
    with pytest.raises(datasets.DatasetLayoutError, match="dataset_dict.json"):
        datasets.prepare("hf", tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-0.parquet").write_bytes(b"PAR1 not really")
    index = datasets.prepare("hf", tmp_path)
    assert index.clips == [] and "cannot read as parquet" in index.problems[0].message


def test_a_reference_to_a_changed_or_missing_table_is_a_clip_error(tmp_path):
    with pytest.raises(AudioError) as e:
        decode(refs.AudioRef(kind="parquet", file=str(tmp_path / "x.parquet"), row=0, row_group=0,
                             column="audio").to_path())
    assert e.value.kind == "not_found"
    with pytest.raises(AudioError) as e:
        decode(refs.PREFIX + "kind=zip&file=rel")
    assert e.value.kind == "bad_path"


# --------------------------------------------------------------------------- lhotse

def _write_jsonl(path: Path, rows) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_lhotse_channel_selection_and_segments(tmp_path):
    lh = pytest.importorskip("lhotse")
    root = tmp_path / "lh"
    (root / "audio").mkdir(parents=True)
    # a stereo file: channel 1 is twice channel 0; 2 s of 440 Hz then 2 s of silence-free 880 Hz
    t = np.arange(2 * SR) / SR
    left = np.concatenate([0.2 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 880 * t)])
    sf.write(root / "audio" / "st.wav", np.stack([left, 2 * left], 1).astype(np.float32), SR)
    rec = lh.Recording.from_file(str(root / "audio" / "st.wav"), recording_id="st")
    sups = [lh.SupervisionSegment(id="left", recording_id="st", start=0.0, duration=4.0, channel=0,
                                  custom={"label": "bonafide"}),
            lh.SupervisionSegment(id="right_tail", recording_id="st", start=2.0, duration=2.0, channel=1,
                                  custom={"label": "spoof", "generator": "g1"}),
            lh.SupervisionSegment(id="both", recording_id="st", start=0.0, duration=4.0, channel=[0, 1],
                                  custom={"label": "fake"}),
            lh.SupervisionSegment(id="nochan", recording_id="st", start=0.0, duration=1.0, channel=3,
                                  custom={"label": "fake"}),
            lh.SupervisionSegment(id="toolong", recording_id="st", start=3.0, duration=2.0, channel=0,
                                  custom={"label": "fake"})]
    lh.RecordingSet.from_recordings([rec]).to_file(str(root / "c_recordings_train.jsonl"))
    lh.SupervisionSet.from_segments(sups).to_file(str(root / "c_supervisions_train.jsonl"))
    index = datasets.prepare("lhotse", root)
    clips = {c.clip_id: c for c in index.clips}
    assert set(clips) == {"left", "right_tail", "both"} and {c.split for c in index.clips} == {"train"}
    assert clips["right_tail"].generator == "g1" and clips["left"].label == 0
    problems = {p.message.split("'")[1]: p.message for p in index.problems}
    assert "none of" in problems["nochan"] and "outside" in problems["toolong"]

    left_audio = decode(clips["left"].path)
    assert left_audio.channels == 1 and left_audio.frames == 4 * SR
    tail = decode(clips["right_tail"].path)
    np.testing.assert_allclose(tail.samples[0], 2 * left[2 * SR:], atol=1e-4)
    both = decode(clips["both"].path)
    assert both.channels == 2   # the frontend averages them, as it does every stereo file


def test_lhotse_refuses_sources_it_cannot_read_exactly(tmp_path):
    root = tmp_path / "lh"
    root.mkdir()
    (root / "a.wav").write_bytes(_wav(1.0, 300.0))
    base = {"sampling_rate": SR, "num_samples": SR, "duration": 1.0}
    _write_jsonl(root / "recordings.jsonl.gz", [
        {"id": "ok", "sources": [{"type": "file", "channels": [0], "source": "a.wav"}], **base},
        {"id": "cmd", "sources": [{"type": "command", "channels": [0], "source": "rm -rf ~ | sox"}], **base},
        {"id": "url", "sources": [{"type": "url", "channels": [0], "source": "https://x/a.wav"}], **base},
        {"id": "tf", "sources": [{"type": "file", "channels": [0], "source": "a.wav"}],
         "transforms": [{"name": "Speed", "kwargs": {"factor": 1.1}}], **base},
        {"id": "split", "sources": [{"type": "file", "channels": [0], "source": "a.wav"},
                                    {"type": "file", "channels": [1], "source": "a.wav"}], **base},
        "{not json",
    ])
    sup = {"start": 0.0, "duration": 1.0, "channel": 0, "custom": {"label": "real"}}
    _write_jsonl(root / "supervisions.jsonl.gz", [
        {"id": "s-ok", "recording_id": "ok", **sup},
        {"id": "s-cmd", "recording_id": "cmd", **sup},
        {"id": "s-url", "recording_id": "url", **sup},
        {"id": "s-tf", "recording_id": "tf", **sup},
        {"id": "s-split", "recording_id": "split", **{**sup, "channel": [0, 1]}},
        {"id": "s-nolabel", "recording_id": "ok", "start": 0.0, "duration": 1.0, "channel": 0},
        {"id": "s-unknown", "recording_id": "ok", **{**sup, "custom": {"label": "maybe"}}},
        {"id": "s-norec", "recording_id": "zzz", **sup},
        {"id": "s-own", "recording_id": "ok", **{**sup, "custom": {"verdict": "human"}}},
    ])
    index = datasets.prepare("lhotse", root)
    assert [c.clip_id for c in index.clips] == ["s-ok"] and index.clips[0].path == str(root / "a.wav")
    text = "\n".join(f"{p.where} {p.message}" for p in index.problems)
    for needle in ("never runs", "local files only", "transforms ['Speed']", "several sources",
                   "no label field", "unknown label 'maybe'", "'zzz'", "recordings.jsonl.gz:6 not a JSON"):
        assert needle in text, needle
    own = datasets.prepare("lhotse", root, label_field="custom.verdict")
    assert [c.clip_id for c in own.clips] == ["s-own"]


def test_lhotse_wrong_layout(tmp_path):
    with pytest.raises(datasets.DatasetLayoutError, match="recordings"):
        datasets.prepare("lhotse", tmp_path)


# --------------------------------------------------------------------------- the CLI

def test_cli_lists_shows_and_featurizes_with_options(folder_corpus, tmp_path):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0 and "hf" in listed.output and "lhotse" in listed.output
    assert "label_field" in listed.output and "allow_outside" in listed.output

    rows = _rows(folder_corpus)
    del rows["label"]
    rows["verdict"] = ["human" if y == 0 else "cloned" for _, y, *_ in CLIPS]
    root = tmp_path / "hf"
    hf.Dataset.from_dict(rows).cast_column("audio", hf.Audio(decode=False)).save_to_disk(str(root))
    opts = ["-o", "label_column=verdict", "--option", "fake_values=cloned", "-o", "real_values=human"]
    shown = runner.invoke(app, ["datasets", "show", "hf", "--root", str(root), "--json", "--decode", "-1", *opts])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["counts"]["by_split"] == {"all": {"real": 2, "fake": 3}}
    bad = runner.invoke(app, ["datasets", "show", "hf", "--root", str(root), "-o", "colour=red"])
    assert bad.exit_code == 2 and "colour" in bad.output and "label_column" in bad.output
    out = str(tmp_path / "s.zarr")
    done = runner.invoke(app, ["featurize", "--dataset", "hf", "--root", str(root), "--out", out,
                               "--features", "mel", "--workers", "0", *opts])
    assert done.exit_code == 0, done.output
    assert list(open_store(out).meta["label"]) == [y for _, y, *_ in CLIPS]


def test_runtime_needs_neither_library(folder_corpus, tmp_path):
    """Indexing and decoding with `datasets` and `lhotse` made unimportable (a fresh interpreter)."""
    import subprocess
    import sys

    root = tmp_path / "hf"
    _dataset(_rows(folder_corpus), _features()).save_to_disk(str(root))
    lh_root = _lhotse_manifests(tmp_path / "lh", folder_corpus)
    code = ("import sys; sys.modules['datasets'] = sys.modules['lhotse'] = None\n"
            "from dfdetect import datasets\nfrom dfdetect.featurize.audio import decode\n"
            f"for name, root in (('hf', {str(root)!r}), ('lhotse', {str(lh_root)!r})):\n"
            "    index = datasets.prepare(name, root)\n"
            "    assert len(index.clips) == 5 and not index.problems, index.problems\n"
            "    assert all(decode(c.path).frames > 0 for c in index.clips)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
