"""Datasets from strangers (issue 36): hf and lhotse folders built to hurt, names that forge output,
folder trees built to be slow. Each input is small; what it must not cost is said per test."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from dfdetect import datasets
from dfdetect.cli import app
from dfdetect.featurize.audio import AudioError, decode

SR = 16000


def _wav(seconds: float = 0.5, freq: float = 440.0) -> bytes:
    t = np.arange(int(SR * seconds)) / SR
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format="WAV")
    return buf.getvalue()


def _problems(index) -> str:
    return "\n".join(f"{p.where} | {p.message}" for p in index.problems)


AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _table(audio: list[dict], labels: list, **columns) -> pa.Table:
    return pa.table({"audio": pa.array(audio, AUDIO), "label": labels, **columns})


def _arrow_file(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)


# --------------------------------------------------------------------------- names that forge output

def test_a_newline_in_a_name_is_escaped_in_datasets_show_store_info_and_evaluate(tmp_path):
    root = tmp_path / "corpus"
    for name in ("real/r.wav", "fake/gen\nFORGED 99/f.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_wav())
    runner = CliRunner()
    shown = runner.invoke(app, ["datasets", "show", "folder", "--root", str(root)])
    assert shown.exit_code == 0, shown.output
    assert "gen\\x0aFORGED 99" in shown.output
    assert not any(line.lstrip("│ ").startswith("FORGED") for line in shown.output.splitlines()), shown.output

    out = tmp_path / "s.zarr"
    done = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(root), "--out", str(out),
                               "--features", "mel", "--workers", "0"])
    assert done.exit_code == 0, done.output
    info = runner.invoke(app, ["store", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "gen\\x0aFORGED 99" in info.output
    assert not any(line.lstrip("│ ").startswith("FORGED") for line in info.output.splitlines()), info.output

    scores = tmp_path / "scores.csv"
    scores.write_text('clip_id,score,label,generator\na,0.9,fake,"gen\nFORGED 99"\nb,0.1,real,\n'
                      'c,0.8,fake,"gen\nFORGED 99"\nd,0.2,real,\n')
    shown = runner.invoke(app, ["evaluate", "--scores", str(scores)])
    assert shown.exit_code == 0, shown.output
    assert "gen\\x0aFORGED 99" in shown.output
    assert not any(line.lstrip("│ ").startswith("FORGED") for line in shown.output.splitlines()), shown.output


def test_a_newline_in_a_problem_is_escaped_in_datasets_show(tmp_path):
    root = tmp_path / "hf"
    root.mkdir()
    (root / "x\nFORGED: no problems.parquet").write_bytes(b"PAR1 not really")
    shown = CliRunner().invoke(app, ["datasets", "show", "hf", "--root", str(root)])
    assert shown.exit_code == 1
    assert not any(line.startswith("FORGED") for line in shown.output.splitlines()), shown.output


# --------------------------------------------------------------------------- hf: symlinks out of the folder

def test_hf_symlinks_leading_out_of_the_folder_are_refused_like_dotdot(tmp_path):
    outside = tmp_path / "outside"
    (outside / "shards").mkdir(parents=True)
    (outside / "secret.wav").write_bytes(_wav(freq=300.0))
    (outside / "secret.txt").write_text("password=hunter2")
    pq.write_table(_table([{"bytes": _wav(), "path": None}], ["fake"]), outside / "shards" / "train-0.parquet")
    root = tmp_path / "hf"
    (root / "data").mkdir(parents=True)
    (root / "audio").mkdir()
    (root / "audio" / "ok.wav").write_bytes(_wav())
    (root / "audio" / "a.wav").symlink_to(outside / "secret.wav")
    (root / "audio" / "t.wav").symlink_to(outside / "secret.txt")
    (root / "linked").symlink_to(outside)
    (root / "data" / "more").symlink_to(outside / "shards")                         # a folder of shards
    (root / "data" / "test-0.parquet").symlink_to(outside / "shards" / "train-0.parquet")   # one shard
    (root / "data" / "inside.parquet").symlink_to(root / "data" / "train-0.parquet")       # fine: stays in
    rows = ["audio/ok.wav", "audio/a.wav", "audio/t.wav", "linked/secret.wav", str(root / "linked/secret.wav")]
    pq.write_table(_table([{"bytes": None, "path": n} for n in rows], ["real"] * len(rows)),
                   root / "data" / "train-0.parquet")
    index = datasets.prepare("hf", root)
    assert [c.path for c in index.clips] == [str(root / "audio/ok.wav")], _problems(index)
    text = _problems(index)
    assert text.count("symlink leading") == 7, text
    assert "secret.wav" in text and "data/more" in text and "test-0.parquet" in text
    assert "the same file as data/inside.parquet" in text

    shown = CliRunner().invoke(app, ["datasets", "show", "hf", "--root", str(root)])
    assert shown.exit_code == 1 and "symlink leading" in shown.output and "no problems found" not in shown.output


def test_hf_arrow_data_file_and_split_folder_linked_outside_are_not_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _arrow_file(outside / "data.arrow", _table([{"bytes": _wav(), "path": None}], ["fake"]))
    root = tmp_path / "dd"
    (root / "train").mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    (root / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    (root / "train" / "data.arrow").symlink_to(outside / "data.arrow")
    (root / "test").symlink_to(outside)
    index = datasets.prepare("hf", root)
    assert index.clips == []
    assert _problems(index).count("symlink leading") == 2, _problems(index)


# --------------------------------------------------------------------------- hf: metadata that is not what it says

DEEP = "[" * 100_000


@pytest.mark.parametrize("name,text", [
    ("dataset_dict.json", '{"splits": 5}'), ("dataset_dict.json", DEEP), ("state.json", DEEP),
    ("dataset_info.json", '{"features": [1]}'), ("dataset_info.json", DEEP),
    ("dataset_info.json", '{"features": {"label": {"_type": "ClassLabel", "names": {"0": "real"}}}}'),
])
def test_hf_mistyped_or_deep_metadata_is_a_problem_or_a_layout_error(tmp_path, name, text):
    root = tmp_path / "hf"
    root.mkdir()
    _arrow_file(root / "data-00000-of-00001.arrow", _table([{"bytes": _wav(), "path": None}], [0]))
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (root / name).write_text(text)
    if name == "dataset_dict.json":
        (root / "train").mkdir()
    shown = CliRunner().invoke(app, ["datasets", "show", "hf", "--root", str(root)])
    assert shown.exit_code in (0, 1, 2) and "Traceback" not in shown.output, shown.output
    assert shown.exit_code == 0 or name in shown.output


@contextlib.contextmanager
def _chain(top: Path, depth: int):
    """`top`/d/d/.../d, `depth` folders deep; removed bottom up afterwards (pathlib's mkdir, os.makedirs
    and pytest's clean-up, shutil.rmtree, all recurse per level)."""
    deep = str(top)
    os.mkdir(deep)
    for _ in range(depth):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    try:
        yield deep
    finally:
        while deep != str(top):
            for name in os.listdir(deep):
                os.remove(os.path.join(deep, name))
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_hf_shard_1300_folders_deep_is_found(tmp_path):
    root = tmp_path / "hf"
    with _chain(root, 1300) as deep:
        pq.write_table(_table([{"bytes": _wav(), "path": None}], ["fake"]), os.path.join(deep, "train-0.parquet"))
        started = time.monotonic()
        index = datasets.prepare("hf", root)
        assert len(index.clips) == 1 and index.clips[0].split == "train"
        assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- lhotse

def _jsonl_gz(path: Path, lines: list) -> None:
    with gzip.open(path, "wt", compresslevel=1) as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


REC = {"id": "r", "sources": [{"type": "file", "channels": [0], "source": "a.wav"}],
       "sampling_rate": SR, "num_samples": SR, "duration": 1.0}
SUP = {"id": "s", "recording_id": "r", "start": 0.0, "duration": 1.0, "channel": 0, "custom": {"label": "real"}}


def _lhotse(root: Path, recordings: list, supervisions: list) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.wav").write_bytes(_wav(1.0))
    _jsonl_gz(root / "recordings.jsonl.gz", recordings)
    _jsonl_gz(root / "supervisions.jsonl.gz", supervisions)
    return root


def test_lhotse_a_line_over_the_bound_ends_its_file(tmp_path):
    from dfdetect.datasets.lhotse import MAX_LINE_CHARS

    long_line = json.dumps({**SUP, "id": "big", "text": "a" * (MAX_LINE_CHARS + 10)})
    root = _lhotse(tmp_path / "lh", [REC], [SUP, long_line, {**SUP, "id": "after"}])
    index = datasets.prepare("lhotse", root)
    assert [c.clip_id for c in index.clips] == ["s"]
    assert f"longer than {MAX_LINE_CHARS:,} characters" in _problems(index)
    assert "supervisions.jsonl.gz:2" in _problems(index)


@pytest.mark.parametrize("field,value", [("start", "NaN"), ("duration", "Infinity"), ("start", "1e300"),
                                         ("duration", "-Infinity"), ("start", "1e400")])
def test_lhotse_times_that_are_not_finite_or_absurd_are_that_rows_problem(tmp_path, field, value):
    bad = json.dumps({**SUP, "id": "bad"}).replace(f'"{field}": {SUP[field]}', f'"{field}": {value}')
    assert value in bad
    no_total = json.dumps({**REC, "id": "r2"}).replace('"duration": 1.0', '"duration": null')
    bad2 = bad.replace('"id": "bad", "recording_id": "r"', '"id": "bad2", "recording_id": "r2"')
    root = _lhotse(tmp_path / "lh", [REC, no_total], [SUP, bad, bad2])
    index = datasets.prepare("lhotse", root)
    assert [c.clip_id for c in index.clips] == ["s"], _problems(index)
    assert _problems(index).count("times must be finite") == 2, _problems(index)


def test_lhotse_mistyped_sources_and_deep_lines_are_problems(tmp_path):
    root = _lhotse(tmp_path / "lh", [
        REC,
        {**REC, "id": "five", "sources": [{"type": "file", "channels": 5, "source": "a.wav"}]},
        {**REC, "id": "tf", "transforms": 5},
        '{"id": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ], [SUP, {**SUP, "id": "s5", "recording_id": "five"}, {**SUP, "id": "stf", "recording_id": "tf"},
        "[" * 100_000])
    shown = CliRunner().invoke(app, ["datasets", "show", "lhotse", "--root", str(root), "--json"])
    assert shown.exit_code == 1, shown.output
    report = json.loads(shown.output)
    assert report["counts"]["clips"] == 1
    text = "\n".join(p["message"] for p in report["problems"])
    assert "channels are not a list of integers" in text and "transforms" in text
    assert text.count("recursion limit") == 2, text


# --------------------------------------------------------------------------- folder

def test_folder_a_chain_of_nested_empty_folders_is_walked_in_linear_time(tmp_path):
    """A realpath and a relpath per folder cost O(depth) each: 1,800 nested folders took 137 s, now 0.4 s."""
    root = tmp_path / "c"
    (root / "real").mkdir(parents=True)
    (root / "real" / "r.wav").write_bytes(_wav())
    with _chain(root / "fake", 1800) as deep:
        with open(os.path.join(deep, "f.wav"), "wb") as f:
            f.write(_wav())
        started = time.monotonic()
        index = datasets.prepare("folder", root)
        took = time.monotonic() - started
        assert len(index.clips) == 2 and index.clips[1].generator == "d"
        assert took < 5, took


def test_lhotse_a_segment_is_read_alone_not_the_whole_recording(tmp_path):
    """Decoding one 5 s supervision of a 10-minute FLAC allocates the segment, not the recording
    (before: the whole file's bytes and samples, > 19 MB, per supervision)."""
    import tracemalloc

    root = tmp_path / "lh"
    root.mkdir()
    rate, minutes = 8000, 10
    t = np.arange(rate * 60 * minutes) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + t / t[-1])).astype(np.float32)
    sf.write(root / "long.flac", wave, rate)
    rec = {"id": "r", "sources": [{"type": "file", "channels": [0], "source": "long.flac"}],
           "sampling_rate": rate, "num_samples": len(wave), "duration": 60.0 * minutes}
    sups = [{**SUP, "id": f"s{i}", "start": 37.5 * i, "duration": 5.0} for i in range(16)]
    _jsonl_gz(root / "recordings.jsonl.gz", [rec])
    _jsonl_gz(root / "supervisions.jsonl.gz", sups)
    index = datasets.prepare("lhotse", root)
    assert len(index.clips) == 16, _problems(index)
    decode(index.clips[0].path)   # imports and libsndfile's first open
    tracemalloc.start()
    try:
        audio = decode(index.clips[9].path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    first = int(37.5 * 9 * rate)
    assert audio.sample_rate == rate and audio.frames == 5 * rate
    whole = sf.read(root / "long.flac", dtype="float32")[0]
    np.testing.assert_array_equal(audio.samples[0], whole[first:first + 5 * rate])
    assert peak < 2_000_000, peak
    with pytest.raises(AudioError) as e:   # a segment past the end is still that clip's error
        from dfdetect.datasets.refs import AudioRef
        decode(AudioRef(kind="file", file=str(root / "long.flac"), start=599.0, duration=5.0).to_path())
    assert e.value.kind == "bad_segment"


# --------------------------------------------------------------------------- hf: compressed embedded audio

BOMB = b"RIFF" + bytes(24 << 20)   # 24 MiB of zeros: a few KB once compressed


def test_hf_a_parquet_row_inflating_past_the_bounds_is_a_problem_and_a_clip_error(tmp_path):
    from dfdetect.datasets import refs

    root = tmp_path / "hf"
    root.mkdir()
    table = _table([{"bytes": BOMB, "path": None}, {"bytes": _wav(), "path": None}], ["fake", "real"])
    pq.write_table(table, root / "train-0.parquet", compression="zstd", row_group_size=1)
    assert (root / "train-0.parquet").stat().st_size < 100_000
    index = datasets.prepare("hf", root)
    assert [c.label for c in index.clips] == [0]
    assert "compression bomb" in _problems(index) and "row group 0" in _problems(index)
    assert decode(index.clips[0].path).frames > 0
    forged = refs.AudioRef(kind="parquet", file=str(root / "train-0.parquet"), row=0, row_group=0,
                           column="audio").to_path()
    with pytest.raises(AudioError) as e:
        decode(forged)
    assert e.value.kind == "compression_bomb"


def test_hf_a_compressed_arrow_batch_inflating_past_the_bounds_is_never_inflated(tmp_path):
    from dfdetect.datasets import refs

    root = tmp_path / "hf"
    root.mkdir()
    table = _table([{"bytes": BOMB, "path": None}, {"bytes": _wav(), "path": None}], [1, 0])
    with pa.OSFile(str(root / "data-00000-of-00001.arrow"), "wb") as f, \
            pa.ipc.new_stream(f, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table, max_chunksize=1)
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    shown = CliRunner().invoke(app, ["datasets", "show", "hf", "--root", str(root), "--json", "--decode", "-1"])
    assert shown.exit_code == 1, shown.output
    report = json.loads(shown.output)
    assert report["counts"]["clips"] == 1 and report["counts"]["real"] == 1
    assert "compression bomb" in report["problems"][0]["message"] and "rows 0-0" in report["problems"][0]["where"]
    forged = refs.AudioRef(kind="arrow", file=str(root / "data-00000-of-00001.arrow"), row=0,
                           column="audio").to_path()
    with pytest.raises(AudioError) as e:
        decode(forged)
    assert e.value.kind == "compression_bomb"


def test_hf_bounds_hold_in_memory(tmp_path):
    """A 6 KB zstd parquet row of 150 MB and an Arrow IPC batch of 150 MB: indexing and decoding
    both (each an error) peak far below what inflating them costs (before: 2.2 GB RSS)."""
    root = tmp_path / "hf"
    root.mkdir()
    table = _table([{"bytes": b"RIFF" + bytes(150_000_000), "path": None}], [1])
    pq.write_table(table, root / "train-0.parquet", compression="zstd")
    with pa.OSFile(str(root / "x.arrow"), "wb") as f, \
            pa.ipc.new_stream(f, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": "x.arrow"}]}))
    del table
    assert (root / "train-0.parquet").stat().st_size < 20_000
    code = f"""
import resource
from dfdetect import datasets
from dfdetect.featurize.audio import AudioError, decode
from dfdetect.datasets import refs
import pyarrow.parquet, soundfile, av
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
index = datasets.prepare("hf", "{root}")   # the arrow file (state.json)
assert not index.clips and "compression bomb" in index.problems[0].message, index.problems
for ref in (refs.AudioRef(kind="parquet", file="{root}/train-0.parquet", row=0, row_group=0, column="audio"),
            refs.AudioRef(kind="arrow", file="{root}/x.arrow", row=0, column="audio")):
    try:
        decode(ref.to_path())
    except AudioError as e:
        assert e.kind == "compression_bomb"
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 50_000, done.stdout   # KiB over the imports' own peak


# --------------------------------------------------------------------------- one file named by millions of rows

def test_hf_a_run_length_encoded_table_naming_one_file_millions_of_times(tmp_path):
    """A ~5 KB parquet of 500,000 rows naming one file (before: a clip per row; 4M rows were 2.5 GB,
    33 s): one clip,
    20 repeats listed and the rest counted; a refused name repeated as often costs a problem each
    only up to MAX_PROBLEMS, the rest counted."""
    from dfdetect.datasets.base import MAX_PROBLEMS

    root = tmp_path / "hf"
    root.mkdir()
    (root / "a.wav").write_bytes(_wav())
    n = 500_000
    for name, path in (("train-0.parquet", "a.wav"), ("xtra-0.parquet", "../outside.wav")):
        audio = pa.StructArray.from_arrays([pa.nulls(n, pa.binary()), pa.repeat(pa.scalar(path), n)],
                                           names=["bytes", "path"])
        pq.write_table(pa.table({"audio": audio, "label": pa.repeat(pa.scalar(0), n)}), root / name,
                       row_group_size=n)
        assert (root / name).stat().st_size < 100_000
    started = time.monotonic()
    index = datasets.prepare("hf", root)
    assert time.monotonic() - started < 20
    assert [c.path for c in index.clips] == [str(root / "a.wav")]
    assert len(index.problems) == MAX_PROBLEMS + 1
    text = _problems(index)
    assert text.count("the same audio as") == 20 and "refused (as at its first row)" in text
    assert f"{n - MAX_PROBLEMS + 21:,} more problems, not listed" in text
    assert f"{n - 21:,} more rows repeat audio" in index.problems[-1].message


def test_lhotse_two_supervisions_of_one_segment_are_one_clip(tmp_path):
    root = _lhotse(tmp_path / "lh", [REC], [SUP, {**SUP, "id": "again"}, {**SUP, "id": "half", "duration": 0.5}])
    index = datasets.prepare("lhotse", root)
    assert [c.clip_id for c in index.clips] == ["s", "half"]
    assert "supervisions.jsonl.gz:2" in _problems(index) and "the same audio as" in _problems(index)
