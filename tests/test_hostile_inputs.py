"""Hostile inputs to score and featurize: tiny files that would cost gigabytes, archives that lie."""

from __future__ import annotations

import bz2
import csv
import lzma
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest

from conftest import train_tiny


@pytest.fixture(scope="module")
def run_dir(mel_store, tmp_path_factory):
    return train_tiny(mel_store, tmp_path_factory.mktemp("run") / "run", epochs=1, ood=False)


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


def run_measured(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess, and its peak RSS in GB (getrusage of the finished child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-m", "dfdetect.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak > before or before > 0
    return done, max(peak, before) / 1e6   # ru_maxrss is in KiB on Linux


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
                                  "--workers", "0"], timeout=300)
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
