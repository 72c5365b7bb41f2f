"""Hostile inputs to score and featurize: tiny files that would cost gigabytes, archives that lie."""

from __future__ import annotations

import bz2
import csv
import lzma
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest
from conftest import one_line


def zeros_wav_member(method: int, size: int) -> tuple[bytes, int]:
    """(compressed bytes, CRC) of a WAV of `size` bytes of zeros (header included), compressed
    for a zip member 16 MB at a time, so the test never holds the inflated bytes."""
    if method == zipfile.ZIP_BZIP2:
        compressor, head = bz2.BZ2Compressor(1), b""
    else:   # zip's LZMA: version, properties size, LZMA1 properties, raw stream
        lzma1 = {"id": lzma.FILTER_LZMA1, "preset": 0, "mode": lzma.MODE_FAST, "nice_len": 273, "mf": lzma.MF_HC3}
        props = lzma._encode_filter_properties(lzma1)
        compressor = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[lzma1])
        head = struct.pack("<BBH", 9, 4, len(props)) + props
    header = struct.pack("<4sL4s4sLHHLLHH4sL", b"RIFF", size - 8, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16,
                         b"data", size - 44)
    out, crc, left = [head, compressor.compress(header)], zlib.crc32(header), size - len(header)
    chunk = bytes(16 << 20)
    while left:
        piece = chunk[:min(left, len(chunk))]
        out.append(compressor.compress(piece))
        crc, left = zlib.crc32(piece, crc), left - len(piece)
    out.append(compressor.flush())
    return b"".join(out), crc


def write_zip(path, members) -> None:
    """A zip of (name, method, compressed bytes, CRC, declared size): the declared size may lie."""
    with open(path, "wb") as f:
        central = []
        for name, method, data, crc, declared in members:
            offset, raw = f.tell(), name.encode()
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 63, 0, method, 0, 0, crc, len(data), declared,
                                len(raw), 0) + raw + data)
            central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 63, 63, 0, method, 0, 0, crc, len(data),
                                       declared, len(raw), 0, 0, 0, 0, 0, offset) + raw)
        start = f.tell()
        f.write(b"".join(central))
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), f.tell() - start, start, 0))


# The CLI under a wrapper that writes its own peak RSS when it ends (VmHWM, and its children's):
# the test process's RUSAGE_CHILDREN would be the largest of every subprocess the suite ran before.
_MEASURED = """import os, resource, runpy, sys
sys.argv[0] = "dfdetect"
try:
    runpy.run_module("dfdetect.cli", run_name="__main__")
finally:   # VmHWM: this process's own peak (ru_maxrss survives exec: it would be the test runner's)
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    open(os.environ["DFDETECT_TEST_PEAK"], "w").write(str(peak))
"""


def run_measured(args: list[str], timeout: float, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess, and its peak RSS in GB."""
    peak = tmp_path / f"peak-{len(list(tmp_path.glob('peak-*')))}"
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DFDETECT_TEST_PEAK": str(peak)})
    return done, int(peak.read_text()) / 1e6   # ru_maxrss is in KiB on Linux


@pytest.mark.slow   # generating the 1 GB bzip2 stream takes ~15 s on a loaded core
def test_zip_bombs_are_error_rows_in_bounded_memory(run_dir, tmp_path):
    """An honest bzip2 member of 1 GiB (6 KB compressed) and an LZMA member that declares 1 MiB but
    inflates to 256 MiB: each is an error row with its reason, read no further than its first MBs.
    Before, the pair took 2.7 GB RSS and 35 s (--workers 0); now ~0.75 GB, the same as scoring one
    2 s WAV (the model and torch), in ~10 s."""
    bzip2, bzip2_crc = zeros_wav_member(zipfile.ZIP_BZIP2, 1 << 30)
    lying, lying_crc = zeros_wav_member(zipfile.ZIP_LZMA, 256 << 20)
    archive = tmp_path / "bomb.zip"
    write_zip(archive, [("honest_bzip2.wav", zipfile.ZIP_BZIP2, bzip2, bzip2_crc, 1 << 30),
                        ("lying_lzma.wav", zipfile.ZIP_LZMA, lying, lying_crc, 1 << 20)])
    assert archive.stat().st_size < 64_000
    out = tmp_path / "s.csv"
    done, peak_gb = run_measured(["score", str(archive), "--model", str(run_dir), "--out", str(out),
                                  "--workers", "0"], timeout=300, tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    rows = {r["member"]: r for r in csv.DictReader(out.open(newline=""))}
    assert rows["honest_bzip2.wav"]["error_kind"] == "compression_bomb", rows
    assert "2000:1" in rows["honest_bzip2.wav"]["error"]
    assert rows["lying_lzma.wav"]["error_kind"] == "bad_archive", rows
    assert "declares" in rows["lying_lzma.wav"]["error"]
    assert peak_gb < 1.3, peak_gb     # baseline of the command ~0.77 GB; inflating either bomb costs GBs


def test_zip_members_of_every_method_still_read_exactly(tmp_path):
    """The bounded reader gives back exactly the bytes zipfile gives, for every method."""
    from dfdetect.score.sources import Opener, expand

    data = os.urandom(300_000) + bytes(200_000)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            z.writestr(f"m{method}.wav", data, compress_type=method)
    opener = Opener(max_bytes=1e6)
    items = expand([str(archive)])
    assert len(items) == 4
    for item in items:
        with opener.open(item) as f:
            assert f.read() == data, item.member
            f.seek(0)
            assert f.read(10) == data[:10]
        assert opener.failure is None
    opener.close()
    from dfdetect.featurize.audio import AudioError

    small = Opener(max_bytes=400_000)   # --max-file-mb counts inflated bytes, found while reading the head
    for item in items:
        with pytest.raises(AudioError, match="--max-file-mb") as e:
            small.open(item)
        assert e.value.kind == "too_large"
    small.close()


@pytest.mark.parametrize("rate", [1, 100, 999, 800_000])
def test_sample_rates_no_recording_has_are_errors(tmp_path, rate):
    """A 1 Hz WAV of 6 KB is "50 minutes", gigabytes once resampled: decode (featurize, datasets
    show --decode) and the streaming reader (score) refuse it from the header, with the reason."""
    import io

    import numpy as np
    import soundfile as sf

    from dfdetect.featurize.audio import AudioError, decode
    from dfdetect.score.stream import AudioStream

    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(0).uniform(-0.5, 0.5, 3000).astype(np.float32), rate, format="WAV")
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz") as e:
        decode(buf.getvalue(), "x.wav")
    assert e.value.kind == "bad_sample_rate"
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz") as e:
        AudioStream(io.BytesIO(buf.getvalue()), "x.wav")
    assert e.value.kind == "bad_sample_rate"
    sf.write(buf := io.BytesIO(), np.zeros(3000, np.float32), 8000, format="WAV")
    assert decode(buf.getvalue()).sample_rate == 8000       # telephony rates are fine


# -- truncation: a cut-off download is not a shorter clip ---------------------------------------------
@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("RF64", "PCM_24"),
                                         ("WAVEX", "PCM_16"), ("AIFF", "PCM_16")])
def test_cut_off_wav_and_aiff_are_truncated_not_shorter(fmt, subtype):
    """The header declares 4 s, a third is present: libsndfile reads what is there as a complete
    clip, so the header's own count decides (decode: featurize; AudioStream: score)."""
    import io

    import numpy as np
    import soundfile as sf

    from dfdetect.featurize.audio import AudioError, decode
    from dfdetect.score.stream import AudioStream

    sf.write(buf := io.BytesIO(), np.random.default_rng(0).uniform(-0.3, 0.3, (64_000, 2)).astype(np.float32),
             16000, format=fmt, subtype=subtype)
    whole = buf.getvalue()
    assert decode(whole, "x").frames == 64_000
    assert sum(len(b) for b in AudioStream(io.BytesIO(whole), "x").blocks()) == 64_000
    cut = whole[:len(whole) // 3]
    with pytest.raises(AudioError, match="the header declares 4.00 s, only 1.3") as e:
        decode(cut, "x.wav")
    assert e.value.kind == "truncated"
    with pytest.raises(AudioError, match="the header declares 4.00 s") as e:
        list(AudioStream(io.BytesIO(cut), "x.wav").blocks())
    assert e.value.kind == "truncated"


def test_a_streamed_wav_that_declares_no_length_is_read_whole():
    """Writers that stream (ffmpeg to a pipe) leave the data size 0 or 0xFFFFFFFF: no length is
    declared, so nothing is called truncated."""
    import io

    import numpy as np
    import soundfile as sf

    from dfdetect.featurize.audio import decode, header_frames

    sf.write(buf := io.BytesIO(), np.zeros(16_000, np.float32) + 0.1, 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    at = data.index(b"data")
    for size in (0xFFFFFFFF, 0):
        data[at + 4:at + 8] = struct.pack("<L", size)
        assert header_frames(bytes(data)) is None
    data[at + 4:at + 8] = struct.pack("<L", 0xFFFFFFFF)
    assert decode(bytes(data)).frames == 16_000


# -- names, paths and folders from lists and archives --------------------------------------------------
def _wav(seconds=2.0, gain=0.3):
    import numpy as np

    from dfdetect.demo.corpus import synthesize
    from dfdetect.featurize.audio import encode

    return encode(gain * synthesize("real", np.random.default_rng(0), seconds), 16000, "wav")


def test_names_that_would_print_alike_stay_two_inputs(run_dir, tmp_path):
    """A raw byte 0xff and a name spelled backslash-x-f-f: two rows, two keys, and --resume knows
    both are done (before, the second was never scored and the exit code was 0)."""
    from dfdetect.names import printable

    folder = tmp_path / "in"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/a\xff.wav", "wb") as f:
        f.write(_wav())
    (folder / "a\\xff.wav").write_bytes(_wav(gain=0.2))
    assert printable("a\udcff.wav") != printable("a\\xff.wav")
    out = tmp_path / "s.csv"
    args = ["score", str(folder), "--model", str(run_dir), "--out", str(out), "--workers", "0"]
    done = subprocess.run([sys.executable, "-m", "dfdetect.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["a\\\\xff.wav", "a\\xff.wav"]
    assert {r["status"] for r in rows} == {"ok"}
    again = subprocess.run([sys.executable, "-m", "dfdetect.cli", *args, "--resume"], capture_output=True, text=True)
    assert again.returncode == 0 and "0 scored" in again.stderr + again.stdout, again.stdout + again.stderr
    assert len(list(csv.DictReader(out.open(newline="")))) == 2


def test_a_nul_byte_in_a_listed_path_is_that_clips_error(run_dir, tmp_path):
    """featurize (a manifest) and score (a list) make it one clip's error; the rest are written."""
    from dfdetect.featurize.pipeline import featurize
    from dfdetect.store.schema import open_store

    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(_wav())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,real\n\"b\x00.wav\",fake\nb.wav,fake\n")
    result = featurize("manifest", manifest, str(tmp_path / "s.zarr"), features=("mel",), workers=0)
    assert (result.ok, dict(result.errors)) == (2, {"bad_path": 1})
    meta = open_store(str(tmp_path / "s.zarr")).meta
    kinds = dict(zip(meta["path"].tolist(), meta["error_kind"].tolist()))
    assert [k for p, k in kinds.items() if "\x00" in p] == ["bad_path"]
    listing = tmp_path / "l.txt"
    listing.write_text("a.wav\nb\x00.wav\n")
    out = tmp_path / "o.csv"
    done = subprocess.run([sys.executable, "-m", "dfdetect.cli", "score", str(listing), "--model", str(run_dir),
                           "--out", str(out), "--workers", "0"], capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {os.path.basename(r["path"]): r for r in csv.DictReader(out.open(newline=""))}
    assert rows["a.wav"]["status"] == "ok" and rows["b\\x00.wav"]["error_kind"] == "bad_path"


def test_a_folder_tree_1300_levels_deep_is_walked(run_dir, tmp_path):
    """os.walk recurses (a RecursionError at ~1,000 levels): score walks with a stack of its own."""
    from dfdetect.score.sources import expand

    deep = str(tmp_path / "deep")
    os.mkdir(deep)
    for _ in range(1300):
        deep += "/d"
        os.mkdir(deep)
    with open(deep + "/x.wav", "wb") as f:
        f.write(_wav())
    (tmp_path / "deep" / "top.wav").write_bytes(_wav())
    try:
        items = expand([str(tmp_path / "deep")])
        assert [os.path.basename(i.path) for i in items] == ["top.wav", "x.wav"]
        assert items[1].path.endswith("/deep" + "/d" * 1300 + "/x.wav")
    finally:   # bottom up: pytest's clean-up (shutil.rmtree) recurses too
        os.remove(deep + "/x.wav")
        while deep != str(tmp_path / "deep"):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


# -- one writer per table ------------------------------------------------------------------------------
def test_two_scores_on_one_table_the_second_is_refused(run_dir, tmp_path):
    """A rerun with --resume while the first still writes would duplicate rows: the table is locked
    as featurize locks a store (through a symlink too), and the lock dies with its holder."""
    from typer.testing import CliRunner

    from dfdetect.cli import app
    from dfdetect.locks import ExclusiveLock
    from dfdetect.score.options import ScoreError

    (tmp_path / "a.wav").write_bytes(_wav())
    out = tmp_path / "s.csv"
    (tmp_path / "link.csv").symlink_to(out)
    runner = CliRunner()
    with ExclusiveLock(str(out), lambda holder: ScoreError(holder)):
        for target in (out, tmp_path / "link.csv"):
            one_line(runner.invoke(app, ["score", str(tmp_path / "a.wav"), "--model", str(run_dir), "--out",
                                         str(target), "--resume", "--workers", "0"]),
                     "another score is writing", "pid")
    assert not out.exists()
    result = runner.invoke(app, ["score", str(tmp_path / "a.wav"), "--model", str(run_dir), "--out", str(out),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output


# -- a full disk ---------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_keeps_what_was_written(run_dir, tmp_path, monkeypatch):
    """score: the rows before stay and --resume finishes the table (featurize: test_hostile_state.py
    ::test_a_version_cut_off_while_created_is_created_again_others_untouched)."""
    import errno

    from typer.testing import CliRunner

    import dfdetect.score.tables as tables
    from dfdetect.cli import app

    runner = CliRunner()
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(_wav())
    out = tmp_path / "s.csv"
    real_write, written = tables.TableWriter._write, []

    def fills_up(self, row):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(row)
        real_write(self, row)

    monkeypatch.setattr(tables.TableWriter, "_write", fills_up)
    args = ["score", *(str(tmp_path / n) for n in ("a.wav", "b.wav", "c.wav")), "--model", str(run_dir),
            "--out", str(out), "--workers", "0"]
    one_line(runner.invoke(app, args), f"cannot write {out}: No space left on device", "--resume")
    assert len(list(csv.DictReader(out.open(newline="")))) == 2
    monkeypatch.undo()
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert sorted(os.path.basename(r["path"]) for r in csv.DictReader(out.open(newline=""))) == \
        ["a.wav", "b.wav", "c.wav"]


# -- one line naming the option, before any work -------------------------------------------------------
def _table(path, text):
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def _foreign_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), path)
    return str(path)


SCORE_OUTPUTS = {
    "foreign csv": (lambda t: _table(t / "f.csv", "a,b\n1,2\n"), ["not a table dfdetect score wrote", "lacks"]),
    "foreign jsonl": (lambda t: _table(t / "f.jsonl", "[1, 2]\n"), ["not a table", "line 1 is not a JSON object"]),
    "not json": (lambda t: _table(t / "f.jsonl", "hello\n"), ["not a table", "line 1 is not JSON"]),
    "foreign parquet": (lambda t: _foreign_parquet(t / "f.parquet"), ["not a table", "lacks the columns path"]),
    "not parquet": (lambda t: _table(t / "f.parquet", b"junk"), ["f.parquet is not a table"]),
    "binary csv": (lambda t: _table(t / "f.csv", bytes(range(256))), ["f.csv is not a table"]),
    "a folder": (lambda t: (t / "f.csv").mkdir() or str(t / "f.csv"), ["--out", "is a folder"]),
    "under a file": (lambda t: _table(t / "f", "x") + "/s.csv", ["--out", "f is a file"]),
    "a device": (lambda t: "/dev/null", ["--out /dev/null is a device"]),
}


@pytest.mark.parametrize("case", SCORE_OUTPUTS)
def test_score_outputs_it_cannot_continue_are_one_line(run_dir, tmp_path, case):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    make, fragments = SCORE_OUTPUTS[case]
    (tmp_path / "a.wav").write_bytes(_wav())
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    one_line(CliRunner().invoke(app, ["score", str(tmp_path / "a.wav"), "--model", str(run_dir), "--out",
                                      make(tmp_path), "--resume", "--workers", "0"]), *fragments)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())   # nothing of the user's was touched


FEATURIZE_OPTIONS = {
    "out an existing file": (lambda t: ["--out", _table(t / "f.zarr", "x")], ["--out", "is a file, not a folder"]),
    "out under a file": (lambda t: ["--out", _table(t / "f", "x") + "/s.zarr"], ["--out", "f is a file"]),
    "block size huge": (lambda t: ["--block-size", "1000000000000"], ["--block-size", "<= 4096"]),
    "block size zero": (lambda t: ["--block-size", "0"], ["--block-size 0"]),
}


@pytest.mark.parametrize("case", FEATURIZE_OPTIONS)
def test_featurize_outputs_and_sizes_it_cannot_use_are_one_line(tmp_path, case):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    make, fragments = FEATURIZE_OPTIONS[case]
    one_line(CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(tmp_path), "--features",
                                      "mel", "--workers", "0", *make(tmp_path)]), *fragments)


def test_featurize_to_a_url_without_its_filesystem_is_one_line(tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    from dfdetect.cli import app

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here: s3:// can be written")
    one_line(CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(tmp_path), "--out",
                                      "s3://bucket/x.zarr", "--features", "mel", "--workers", "0"]),
             "--out s3://bucket/x.zarr", "install", "s3fs")


def test_a_1_hz_wav_costs_no_memory_in_featurize_or_datasets_show(tmp_path):
    """A valid 48 KB WAV at 1 Hz ("6.7 hours") took 6 GB and 4.6 minutes: now it is a
    bad_sample_rate clip, read from the header, and the commands' peak RSS is their baseline."""
    import numpy as np
    import soundfile as sf

    for kind in ("real", "fake"):
        (tmp_path / "c" / kind).mkdir(parents=True)
        (tmp_path / "c" / kind / "ok.wav").write_bytes(_wav())
    sf.write(tmp_path / "c" / "fake" / "one_hz.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 24_000)
             .astype(np.float32), 1, format="WAV", subtype="PCM_16")
    done, peak_gb = run_measured(["datasets", "show", "folder", "--root", str(tmp_path / "c"), "--decode", "-1"], 120,
                                 tmp_path)
    assert done.returncode == 1 and "sample rate 1 Hz" in " ".join(done.stdout.split()), done.stdout + done.stderr
    assert peak_gb < 1.5, peak_gb
    done, peak_gb = run_measured(["featurize", "--dataset", "folder", "--root", str(tmp_path / "c"), "--out",
                                  str(tmp_path / "s.zarr"), "--features", "mel", "--workers", "0"], 120, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bad_sample_rate" in done.stdout, done.stdout
    assert peak_gb < 1.5, peak_gb
