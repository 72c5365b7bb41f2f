"""`dfdetect score`: every input accounted for (folders, archives, lists, bad and hostile inputs),
window scores that are the training frontend's and aggregate as documented, streaming decode in
bounded memory, outputs, --resume, exit codes, the dask path and WavLM heads."""

import csv
import io
import json
import os
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import torch
from distributed import LocalCluster
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.audio import decode, encode
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, load_wavlm
from dfdetect.featurize.windows import sliding_windows
from dfdetect.models.runs import load_run
from dfdetect.score.lanes import LANES_PER_WORKER, make_lanes
from dfdetect.score.scoring import Scorer, aggregate
from dfdetect.score.sources import Item
from dfdetect.score.stream import AudioStream
from dfdetect.store import open_store
from dfdetect.train.data import FeatureLoader, open_set
from dfdetect.train.trainer import TrainConfig, predict, train

runner = CliRunner()


def speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    x = synthesize("real", np.random.default_rng(seed), seconds)
    return soxr.resample(x, 16000, rate).astype(np.float32) if rate != 16000 else x


# name -> expected (status, error_kind); "ok" rows have no kind
FOLDER = {
    "clip one.wav": ("ok", ""), "ünïcødé 声音.flac": ("ok", ""), "sub/x.mp3": ("ok", ""),
    "sub/y.ogg": ("ok", ""), "sub/z.m4a": ("ok", ""), "stereo.wav": ("ok", ""), "short.wav": ("ok", ""),
    "gap.wav": ("ok", ""), "long.flac": ("ok", ""),
    "corrupt.wav": ("error", "decode_failed"), "truncated.flac": ("error", "truncated"),
    "truncated.mp3": ("error", "truncated"), "empty.wav": ("error", "empty"),
    "zero_length.wav": ("error", "too_short"), "notes.mp3": ("error", "unknown_container"),
    "codec.wav": ("error", "unsupported_codec"), "silent.wav": ("error", "silent"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good files in mixed formats, rates and names, a few minutes long one, and every kind of bad one."""
    d = tmp_path_factory.mktemp("inputs") / "in"
    (d / "sub").mkdir(parents=True)
    files = {
        "clip one.wav": encode(speech(2), 16000, "wav"),
        "ünïcødé 声音.flac": encode(speech(2.5, 22050), 22050, "flac"),
        "sub/x.mp3": encode(speech(4, 24000), 24000, "mp3"),
        "sub/y.ogg": encode(speech(2, 48000), 48000, "ogg"),
        "sub/z.m4a": encode(speech(3, 44100), 44100, "m4a"),
        "stereo.wav": encode(np.stack([speech(2, 22050), 0.5 * speech(2, 22050, seed=1)]), 22050, "wav"),
        "short.wav": encode(speech(0.5), 16000, "wav"),
        # 3 s, 6 s of digital silence, 3 s: windows at 3, 4.5 and 6 s are silent
        "gap.wav": encode(np.concatenate([speech(3), np.zeros(6 * 16000, np.float32), speech(3, seed=2)]),
                          16000, "wav"),
        "long.flac": encode(np.tile(speech(20, seed=3), 9), 16000, "flac"),  # 3 minutes
        "corrupt.wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4,
        "truncated.flac": encode(speech(6, 44100), 44100, "flac")[:40_000],
        "truncated.mp3": encode(speech(6, 44100), 44100, "mp3")[:20_000],
        "empty.wav": b"",
        "zero_length.wav": encode(np.zeros(0, np.float32), 16000, "wav"),
        "notes.mp3": b"<html>403 Forbidden</html>",
        "silent.wav": encode(np.zeros(32000, np.float32), 16000, "wav"),
        ".hidden.wav": encode(speech(1), 16000, "wav"),
    }
    codec = bytearray(encode(speech(1), 16000, "wav"))
    codec[20:22] = struct.pack("<H", 0x9999)  # a WAV format tag no decoder knows
    files["codec.wav"] = bytes(codec)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def score(args: list[str], input: str | None = None):
    result = runner.invoke(app, ["score", *map(str, args)], input=input)
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- folders: every input once, with the right status ------------------------------------------------
def test_folder_every_input_once_windows_aggregate_and_nothing_else_written(run_dir, folder, tmp_path):
    before = listing(folder.parent)
    out, windows = tmp_path / "scores.csv", tmp_path / "windows.csv"
    result = score(["--model", run_dir, folder, "--out", out, "--windows", windows, "--workers", 0])
    assert result.exit_code == 1, result.output   # some inputs failed
    assert listing(folder.parent) == before and sorted(os.listdir(tmp_path)) == ["scores.csv", "windows.csv"]
    rows = read_csv(out)
    got = {str(Path(r["path"]).relative_to(folder)): (r["status"], r["error_kind"]) for r in rows}
    assert len(rows) == len(got) == len(FOLDER) and got == FOLDER   # once each; .hidden.wav is not an input
    for r in rows:
        assert r["member"] == "" and r["score_meaning"].startswith("P(fake)")
        if r["status"] == "ok":
            assert 0 <= float(r["score"]) <= 1 and r["decision"] in ("fake", "real") and r["error"] == ""
            assert (r["decision"] == "fake") == (float(r["score"]) >= float(r["threshold"]))
        else:
            assert r["score"] == "" and r["decision"] == "" and r["path"] in r["error"]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["stereo.wav"]["channels"] == "2" and by_name["stereo.wav"]["sample_rate"] == "22050"
    assert by_name["sub/z.m4a".split("/")[1]]["container"] == "mp4"
    # 180 s in windows of 3 s every 1.5 s: starts 0 ... 177 s
    assert by_name["long.flac"]["windows"] == "119" and float(by_name["long.flac"]["duration"]) == 180.0
    assert (by_name["gap.wav"]["windows"], by_name["gap.wav"]["silent_windows"]) == ("7", "3")
    assert "6.00 s" in by_name["truncated.mp3"]["error"]

    # window rows: scores of the ok files only, and the file score is their documented aggregate
    per_file: dict = {}
    for w in read_csv(windows):
        per_file.setdefault(w["path"], []).append(w)
    assert set(per_file) == {r["path"] for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        ws = per_file[r["path"]]
        assert [int(w["window"]) for w in ws] == list(range(int(r["windows"])))
        scores = np.array([float(w["score"]) for w in ws if w["silent"] == "False"])
        assert len(scores) == int(r["windows"]) - int(r["silent_windows"])
        assert abs(aggregate(scores, "mean") - float(r["score"])) < 2e-6
        assert abs(float(ws[-1]["end"]) - float(r["duration"])) < 1e-3   # the last window ends at the end
    gap = per_file[str(folder / "gap.wav")]
    assert [float(w["start"]) for w in gap] == [0, 1.5, 3, 4.5, 6, 7.5, 9]
    assert [w["silent"] for w in gap] == ["False", "False", "True", "True", "True", "False", "False"]


@pytest.mark.parametrize("how", ["max", "topk"])
def test_other_aggregates(run_dir, folder, tmp_path, how):
    out, windows = tmp_path / "s.jsonl", tmp_path / "w.jsonl"
    score(["--model", run_dir, folder / "long.flac", folder / "gap.wav", "--out", out, "--windows", windows,
           "--workers", 0, "--aggregate", how, "--top-k", 4])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    window_rows = [json.loads(line) for line in windows.read_text().splitlines()]
    for r in rows:
        scores = np.array([w["score"] for w in window_rows if w["path"] == r["path"] and not w["silent"]])
        expected = scores.max() if how == "max" else np.sort(scores)[-4:].mean()
        assert abs(r["score"] - expected) < 2e-6 and r["aggregate"] == ("max" if how == "max" else "top4")


def test_a_short_clip_scores_what_the_model_gives_on_its_frontend_features(run_dir, folder, tmp_path):
    out = tmp_path / "s.csv"
    score(["--model", run_dir, folder / "clip one.wav", folder / "sub" / "y.ogg", "--out", out, "--workers", 0])
    run = load_run(run_dir)
    frontend = Frontend(run.frontend_config)
    for row in read_csv(out):
        mel = frontend.features(frontend.load(row["path"])[None], ("mel",))["mel"]
        with torch.inference_mode():
            expected = torch.sigmoid(run.model({"mel": torch.from_numpy(mel.astype(np.float16))})).item()
        assert abs(float(row["score"]) - expected) < 1e-5


# -- archives ----------------------------------------------------------------------------------------
def _tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


TAR_EXPECTED = {
    "good one.wav": ("ok", ""), "dir/ünï 声.flac": ("ok", ""), "dir/long.flac": ("ok", ""),
    "m.m4a": ("ok", ""), "corrupt.wav": ("error", "decode_failed"), "empty.wav": ("error", "empty"),
    "notes.mp3": ("error", "unknown_container"), "../evil.wav": ("skipped", "unsafe_path"),
    "/etc/abs.wav": ("skipped", "unsafe_path"), "link.wav": ("skipped", "link"), "hard.wav": ("skipped", "link"),
    "dev/null.wav": ("skipped", "special_file"), "fifo.wav": ("skipped", "special_file"),
    "inner.zip": ("skipped", "nested_archive"),
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory, folder):
    d = tmp_path_factory.mktemp("archives")
    good = encode(speech(2), 16000, "wav")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("a.wav", good)
    members = [("good one.wav", good), ("dir/ünï 声.flac", encode(speech(2.5, 44100), 44100, "flac")),
               ("dir/long.flac", (folder / "long.flac").read_bytes()),
               ("m.m4a", encode(speech(2, 44100), 44100, "m4a")),
               ("corrupt.wav", (folder / "corrupt.wav").read_bytes()),
               ("empty.wav", b""), ("notes.mp3", b"not audio at all"), ("../evil.wav", good), ("/etc/abs.wav", good),
               ("inner.zip", inner.getvalue()), ("._good one.wav", b"\x00\x05\x16\x07 macOS metadata")]
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        with tarfile.open(d / f"a{suffix}", mode) as tar:
            for name, data in members:
                _tar_member(tar, name, data)
            _tar_member(tar, "link.wav", type=tarfile.SYMTYPE, linkname="/etc/passwd")
            _tar_member(tar, "hard.wav", type=tarfile.LNKTYPE, linkname="good one.wav")
            _tar_member(tar, "dev/null.wav", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
            _tar_member(tar, "fifo.wav", type=tarfile.FIFOTYPE)
            _tar_member(tar, "good one.wav", good)   # a second member of that name: reported, not merged
    with zipfile.ZipFile(d / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
        link = zipfile.ZipInfo("link.wav")
        link.external_attr = 0o120777 << 16   # a Unix symbolic link
        z.writestr(link, "/etc/passwd")
    (d / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    whole = (d / "a.tar.gz").read_bytes()
    (d / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])   # a download that stopped half-way
    return d


def test_archives_are_read_in_place_and_hostile_members_are_reported(run_dir, archives, tmp_path):
    before = listing(archives)
    out = tmp_path / "s.csv"
    result = score(["--model", run_dir, archives, "--out", out, "--workers", 0])
    assert result.exit_code == 1, result.output
    assert listing(archives) == before and os.listdir(tmp_path) == ["s.csv"]   # nothing extracted anywhere
    rows = read_csv(out)
    by_archive: dict = {}
    for r in rows:
        by_archive.setdefault(Path(r["path"]).name, []).append(r)
    assert sorted(by_archive) == ["a.tar", "a.tar.gz", "a.tgz", "a.zip", "broken.zip", "cut.tar.gz"]
    for name in ("a.tar", "a.tar.gz", "a.tgz"):
        got = [(r["member"], r["status"], r["error_kind"]) for r in by_archive[name]]
        expected = [(m, *v) for m, v in TAR_EXPECTED.items()] + [("good one.wav", "skipped", "duplicate")]
        assert sorted(got) == sorted(expected)
    zip_expected = {m: v for m, v in TAR_EXPECTED.items() if m not in ("hard.wav", "dev/null.wav", "fifo.wav")}
    assert {r["member"]: (r["status"], r["error_kind"]) for r in by_archive["a.zip"]} == zip_expected
    assert len(by_archive["a.zip"]) == len(zip_expected)
    [broken] = by_archive["broken.zip"]
    assert (broken["member"], broken["status"], broken["error_kind"]) == ("", "error", "bad_archive")
    # a cut archive: the members before the cut, and a row for the archive itself
    [cut] = [r for r in by_archive["cut.tar.gz"] if r["member"] == ""]
    members = sorted(r["member"] for r in by_archive["cut.tar.gz"] if r["member"])
    assert members and members == sorted(list(TAR_EXPECTED)[:len(members)])
    assert cut["error_kind"] == "bad_archive" and f"after {len(members)} members" in cut["error"]
    long_rows = [r for r in rows if r["member"] == "dir/long.flac" and "cut" not in r["path"]]
    assert len(long_rows) == 4 and {r["windows"] for r in long_rows} == {"119"}
    assert len({r["score"] for r in long_rows}) == 1   # the same bytes score the same from every archive
    unsafe = next(r for r in by_archive["a.tar"] if r["member"] == "../evil.wav")
    assert "'..'" in unsafe["error"] and unsafe["score"] == ""


def test_a_head_out_of_cuda_memory_retries_its_halves_without_the_failed_forwards_memory(run_dir, mel_store,
                                                                                        monkeypatch):
    """Out of CUDA memory (raised on the CPU here), the head scores the halves of the batch after
    leaving the except block, so no failed forward's activations are alive while the halves run."""
    import weakref

    scorer = Scorer(load_run(run_dir), "cpu")
    store = open_store(mel_store)
    mel = store.read_rows(["mel"], store.rows()[:11])["mel"]
    reference = np.concatenate([scorer({"mel": mel[i:i + 1]}) for i in range(len(mel))])   # unbatched
    model, failed, alive, sizes = scorer.model, [], [], []

    class OutOfMemoryAbove3(torch.nn.Module):
        def forward(self, batch):
            n = len(batch["mel"])
            alive.append(sum(ref() is not None for ref in failed))   # failed forwards' tensors, now
            sizes.append(n)
            activation = torch.empty(1 << 20)                         # this forward's memory
            if n > 3:
                failed.append(weakref.ref(activation))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
            return model(batch)

    scorer.model = OutOfMemoryAbove3()
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(scorer({"mel": mel}), reference, atol=1e-6)
    assert sizes == [11, 5, 2, 3, 6, 3, 3] and len(failed) == 3
    assert alive == [0] * len(sizes)


def test_lanes_keep_order_and_read_a_compressed_tar_in_few_passes():
    items = ([Item(f"f{i}.wav") for i in range(10)] + [Item("a.tar.gz", f"m{i}", archive="tar") for i in range(300)]
             + [Item("b.tar", f"m{i}", archive="tar") for i in range(300)])
    lanes = make_lanes(list(enumerate(items)), workers=2)
    assert [i for lane in lanes for i, _ in lane] == list(range(len(items)))
    compressed = [lane for lane in lanes if any(item.path == "a.tar.gz" for _, item in lane)]
    assert len(compressed) <= LANES_PER_WORKER * 2   # each lane decompresses the archive up to its start
    assert all(item.path == "a.tar.gz" for lane in compressed for _, item in lane)


# -- lists, outputs, resume, exit codes ---------------------------------------------------------------
def test_lists_from_files_and_stdin(run_dir, folder, tmp_path):
    (tmp_path / "list.txt").write_text(f"# a comment\n{folder / 'clip one.wav'}\n\n{folder / 'sub'}\nmissing.wav\n")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "path"], ["1", str(folder / "short.wav")], ["2", str(folder / "clip one.wav")]])
    out = tmp_path / "s.csv"
    result = score(["--model", run_dir, tmp_path / "list.txt", tmp_path / "list.csv", "-", "--out", out,
                    "--workers", 0], input=f"{folder / 'stereo.wav'}\n")
    assert result.exit_code == 1, result.output
    rows = {r["path"]: r for r in read_csv(out)}
    assert set(rows) == {str(folder / n) for n in ("clip one.wav", "sub/x.mp3", "sub/y.ogg", "sub/z.m4a",
                                                   "short.wav", "stereo.wav")} | {str(tmp_path / "missing.wav")}
    missing = rows[str(tmp_path / "missing.wav")]
    assert (missing["status"], missing["error_kind"]) == ("error", "not_found") and "list.txt" in missing["error"]
    bad = tmp_path / "nopath.csv"
    bad.write_text("file,label\na.wav,1\n")
    result = score(["--model", run_dir, bad, "--out", tmp_path / "t.csv", "--workers", 0])
    assert result.exit_code == 2 and "'path' column" in result.output


def test_formats_agree_and_say_what_the_score_is(run_dir, folder, tmp_path):
    paths = [folder / "clip one.wav", folder / "gap.wav", folder / "empty.wav"]
    tables = {}
    for ext in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"s.{ext}"
        assert score(["--model", run_dir, *paths, "--out", out, "--workers", 0]).exit_code == 1
        if ext == "csv":
            rows = read_csv(out)
        elif ext == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            table = pq.read_table(out)
            meta = json.loads(table.schema.metadata[b"dfdetect"])
            assert meta["score"].startswith("P(fake)") and meta["window_seconds"] == 3.0 and meta["hop_seconds"] == 1.5
            rows = table.to_pylist()
        tables[ext] = {(r["path"], r["status"], r["score_meaning"],
                        None if r["score"] in ("", None) else round(float(r["score"]), 6)) for r in rows}
    assert tables["csv"] == tables["jsonl"] == tables["parquet"] and len(tables["csv"]) == 3


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_resume_skips_inputs_already_in_the_output(run_dir, folder, tmp_path, ext):
    inputs = [folder / "clip one.wav", folder / "short.wav", folder / "stereo.wav", folder / "sub"]
    out = tmp_path / f"s.{ext}"
    assert score(["--model", run_dir, *inputs[:2], "--out", out, "--workers", 0]).exit_code == 0
    if ext == "jsonl":  # an interrupted write left half a line
        out.write_text(out.read_text() + '{"path": "half a li')
    result = score(["--model", run_dir, *inputs, "--out", out, "--workers", 0])
    assert result.exit_code == 2 and "--resume" in result.output   # never overwritten silently
    first = {r["path"]: r["score"] for r in pq.read_table(out).to_pylist()} if ext == "parquet" else None
    result = score(["--model", run_dir, *inputs, "--out", out, "--workers", 0, "--resume"])
    assert result.exit_code == 0, result.output
    assert "4 scored" in result.output and "2 rows from before" in result.output
    rows = (pq.read_table(out).to_pylist() if ext == "parquet"
            else [json.loads(line) for line in out.read_text().splitlines()])
    assert sorted(Path(r["path"]).name for r in rows) == sorted(["clip one.wav", "short.wav", "stereo.wav",
                                                                  "x.mp3", "y.ogg", "z.m4a"])
    if first:
        assert all(r["score"] == first[r["path"]] for r in rows if r["path"] in first)
    result = score(["--model", run_dir, *inputs, "--out", out, "--workers", 0, "--resume", "--aggregate", "max"])
    assert result.exit_code == 2 and "--aggregate" in result.output
    assert sorted(os.listdir(tmp_path)) == [f"s.{ext}"]


def test_usage_errors_exit_2(run_dir, folder, tmp_path):
    cases = [
        (["--model", run_dir, tmp_path / "nope", "--out", tmp_path / "a.csv"], "no such file"),
        (["--model", run_dir, folder, "--out", tmp_path / "a.xlsx"], ".parquet"),
        (["--model", run_dir, folder, "--out", tmp_path / "a.csv", "--aggregate", "median"], "median"),
        (["--model", tmp_path, folder, "--out", tmp_path / "a.csv"], "not a dfdetect run"),
        (["--model", run_dir, folder, "--out", tmp_path / "a.csv", "--hop", "0"], "positive"),
        (["--model", run_dir, folder], "--out"),
    ]
    for args, message in cases:
        result = score(args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not any(tmp_path.glob("a.*"))
    assert "Exit code" in runner.invoke(app, ["score", "--help"]).output


def test_huge_files_are_errors_without_being_read(run_dir, folder, tmp_path):
    out = tmp_path / "s.csv"
    result = score(["--model", run_dir, folder / "long.flac", folder / "clip one.wav", "--out", out, "--workers", 0,
                    "--max-file-mb", 1])
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert result.exit_code == 1 and rows["long.flac"]["error_kind"] == "too_large"
    assert "--max-file-mb" in rows["long.flac"]["error"] and rows["clip one.wav"]["status"] == "ok"
    out.unlink()
    score(["--model", run_dir, folder / "long.flac", folder / "clip one.wav", "--out", out, "--workers", 0,
           "--max-hours", 0.01])
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert rows["long.flac"]["error_kind"] == "too_long" and rows["clip one.wav"]["status"] == "ok"


def test_dask_cluster_scores_like_in_process_and_all_good_inputs_exit_0(run_dir, folder, archives, tmp_path):
    paths = [folder / "long.flac", folder / "sub", archives / "a.tgz"]
    local, dask = tmp_path / "local.csv", tmp_path / "dask.csv"
    score(["--model", run_dir, *paths, "--out", local, "--workers", 0, "--batch-size", 16])
    result = score(["--model", run_dir, *paths, "--out", dask, "--workers", 1, "--batch-size", 16])
    assert result.exit_code == 1, result.output
    key = lambda r: (r["path"], r["member"])  # noqa: E731
    local_rows, dask_rows = sorted(read_csv(local), key=key), sorted(read_csv(dask), key=key)
    assert [key(r) for r in local_rows] == [key(r) for r in dask_rows]
    for a, b in zip(local_rows, dask_rows):
        assert (a["status"], a["windows"], a["error_kind"]) == (b["status"], b["windows"], b["error_kind"])
        if a["status"] == "ok":
            assert abs(float(a["score"]) - float(b["score"])) < 1e-5
    result = score(["--model", run_dir, folder / "sub", "--out", tmp_path / "ok.csv", "--workers", 0])
    assert result.exit_code == 0 and "3 scored, 0 failed, 0 skipped" in result.output


def test_a_failing_worker_costs_one_row_and_the_lane_goes_on(run_dir, folder, tmp_path, monkeypatch):
    """What a worker crash or out-of-memory looks like to the coordinator: the lane's call raises.
    (An in-process cluster, so the failure can be injected.)"""
    calls = []
    features = Frontend.features

    def fail_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("injected")
        return features(self, *args, **kwargs)

    monkeypatch.setattr(Frontend, "features", fail_once)
    names = ["clip one.wav", "ünïcødé 声音.flac", "sub/x.mp3", "sub/y.ogg", "sub/z.m4a", "stereo.wav", "short.wav",
             "gap.wav"]
    out = tmp_path / "s.csv"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = score(["--model", run_dir, *(folder / n for n in names), "--out", out, "--batch-size", 1,
                        "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 1, result.output
    rows = {str(Path(r["path"]).relative_to(folder)): r for r in read_csv(out)}
    assert sorted(rows) == sorted(names)
    failed = rows.pop("clip one.wav")   # the first lane's first file was being scored
    assert failed["error_kind"] == "worker_failed" and "MemoryError" in failed["error"]
    assert all(r["status"] == "ok" for r in rows.values())


def test_a_wavlm_head_runs_wavlm_on_the_windows(tmp_path):
    root = tmp_path
    write_corpus(root / "corpus", CorpusSpec(real=10, per_generator=3, min_seconds=1, max_seconds=2))
    wavlm = WavLMConfig(model=str(save_random_wavlm(root / "wavlm", "tiny")), layers=(1, 2))
    store = str(root / "store.zarr")
    featurize("folder", root / "corpus", store, features=("wavlm",), wavlm=wavlm, workers=0, block_size=16)
    train(TrainConfig(arch="wavlm_cnn", train=f"{store}:train", epochs=1, batch_size=8, lr=1e-3), root / "run")
    clip = root / "clip.wav"
    clip.write_bytes(encode(speech(2.2), 16000, "wav"))
    out = root / "s.csv"
    result = score(["--model", root / "run", clip, "--out", out, "--workers", 0])
    assert result.exit_code == 0, result.output
    run = load_run(root / "run")
    wave = Frontend(run.frontend_config).load(clip)
    layers = load_wavlm(run.wavlm_config, "cpu")(wave[None])["layers"]
    with torch.inference_mode():
        expected = torch.sigmoid(run.model({"wavlm": torch.from_numpy(layers)})).item()
    assert abs(float(read_csv(out)[0]["score"]) - expected) < 1e-5
    assert run.wavlm_config.revision == run.config["wavlm"]["revision"]   # the revision the run recorded

    # Live scoring loads exactly the WavLM the head was trained on: changed weights are refused.
    weights = root / "wavlm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    clear_wavlm_cache()   # as a new process finds it
    refused = score(["--model", root / "run", clip, "--out", root / "refused.csv", "--workers", 0])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "another WavLM" in text and "revision" in text, refused.output
    assert not (root / "refused.csv").exists()


def test_a_wavlm_head_reads_features_from_a_store_of_the_same_files(tmp_path):
    """--features-from: files of the store score their stored row (all the head's inputs) as one
    window, exactly the model on that row; other files are scored live; a store that does not match
    the run is refused before anything is written."""
    root = tmp_path
    write_corpus(root / "corpus", CorpusSpec(real=8, per_generator=3, min_seconds=1, max_seconds=2))
    wavlm = WavLMConfig(model=str(save_random_wavlm(root / "wavlm", "tiny")), layers=(1, 2))
    store = str(root / "store.zarr")
    featurize("folder", root / "corpus", store, features=("mel", "lfcc", "wavlm"), wavlm=wavlm, workers=0,
              block_size=16)
    train(TrainConfig(arch="wavlm_aasist", train=f"{store}:train", epochs=1, batch_size=8, lr=1e-3), root / "run")
    run = load_run(root / "run")
    data = open_set(store, "all")
    rows, probs = predict(run.model, FeatureLoader(data, run.inputs, 8, shuffle=False), torch.device("cpu"))
    expected = dict(zip(data.store.meta["path"][rows].tolist(), probs.tolist()))
    extra = root / "extra.wav"
    extra.write_bytes(encode(speech(2.2), 16000, "wav"))
    out, windows = root / "s.csv", root / "w.csv"
    result = score(["--model", root / "run", root / "corpus", extra, "--out", out, "--windows", windows,
                    "--workers", 0, "--features-from", store])
    assert result.exit_code == 0, result.output
    assert f"({len(expected)} from the store)" in result.output
    got = {r["path"]: r for r in read_csv(out)}
    assert set(got) == set(expected) | {str(extra)}
    for path, p in expected.items():
        r = got[path]
        assert r["status"] == "ok" and r["features"] == "store" and r["windows"] == "1", r
        assert abs(float(r["score"]) - p) < 1e-5, (path, r["score"], p)
    live = got[str(extra)]
    assert live["features"] == "live" and int(live["windows"]) == 1
    wave = Frontend(run.frontend_config).load(extra)   # a 2.2 s file: one window, padded as in training
    feats = Frontend(run.frontend_config).features(wave[None], ("mel", "lfcc"))
    batch = {k: torch.from_numpy(v.astype(np.float16)) for k, v in feats.items()}
    batch["wavlm"] = torch.from_numpy(load_wavlm(run.wavlm_config, "cpu")(wave[None])["layers"])
    with torch.inference_mode():
        assert abs(float(live["score"]) - torch.sigmoid(run.model(batch)).item()) < 1e-5
    assert len(read_csv(windows)) == len(got)   # one window per stored file too

    # stores that do not match the run: refused with exit 2, nothing written
    other = str(root / "other.zarr")
    featurize("folder", root / "corpus", other, features=("mel",), workers=0, block_size=16,
              frontend=FrontendConfig(silence_peak=2e-5))
    mel_only = str(root / "mel.zarr")
    featurize("folder", root / "corpus", mel_only, features=("mel",), workers=0, block_size=16)
    config = json.loads((root / "run" / "config.json").read_text())
    config["wavlm"]["layers"] = [2]
    (root / "run" / "config.json").write_text(json.dumps(config))
    for spec, message in [(other, "frontend"), (mel_only, "lacks wavlm, lfcc"), (store, "layers")]:
        refused = root / "refused.csv"
        result = score(["--model", root / "run", extra, "--out", refused, "--workers", 0, "--features-from", spec])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert not refused.exists()


# -- streaming decode -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,rate,channels", [("wav", 16000, 1), ("flac", 44100, 2), ("m4a", 22050, 1)])
def test_streaming_decode_gives_the_samples_of_a_full_decode(tmp_path, fmt, rate, channels):
    x = np.stack([speech(7, rate, seed=c) for c in range(channels)])
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(encode(x, rate, fmt))
    full = Frontend().to_mono_16k(decode(path))
    with open(path, "rb") as f:
        stream = AudioStream(f, str(path), block_frames=4096)
        streamed = np.concatenate(list(stream.blocks()))
    assert stream.info.sample_rate == rate and stream.info.channels == channels
    np.testing.assert_array_equal(streamed, full)
    with open(path, "rb") as f:
        windows = list(sliding_windows(AudioStream(f, str(path), block_frames=4096).blocks(), 48000, 24000))
    assert [s for s, _ in windows] == [0, 24000, 48000, len(full) - 48000]   # 7 s: the last one ends at the end
    for start, w in windows:
        np.testing.assert_array_equal(w, full[start:start + 48000])


def test_sliding_windows_over_blocks_are_the_windows_of_the_whole_signal():
    rng = np.random.default_rng(0)
    for total, size, hop in [(100_000, 48_000, 24_000), (48_000, 48_000, 24_000), (30_000, 48_000, 24_000),
                             (100_001, 48_000, 48_000), (200_000, 48_000, 60_000)]:
        x = rng.standard_normal(total).astype(np.float32)
        cuts = np.sort(rng.choice(np.arange(1, total), 12, replace=False))
        got = list(sliding_windows(np.split(x, cuts), size, hop))
        starts = list(range(0, total - size + 1, hop)) if total >= size else []
        if not starts or starts[-1] + size < total:
            starts.append(max(0, total - size))   # the tail window ends at the last sample
        assert [s for s, _ in got] == starts
        for s, w in got:
            np.testing.assert_array_equal(w, x[s:s + size])


def test_a_20_minute_file_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(20):
            f.write((0.1 * rng.standard_normal(60 * 16000)).astype(np.float32))
    full_bytes = 20 * 60 * 16000 * 4   # the float32 samples a full decode holds: 73 MiB
    tracemalloc.start()
    with open(path, "rb") as f:
        count = sum(1 for _ in sliding_windows(AudioStream(f, str(path)).blocks(), 48000, 24000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 799 and peak < full_bytes / 20, f"peak {peak / 2**20:.1f} MiB"   # measured: ~1.5 MiB
