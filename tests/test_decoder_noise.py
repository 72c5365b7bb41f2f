"""The MP3 decoder's own lines (libmpg123, inside libsndfile, writes them to fd 2) never reach the
terminal: decode, featurize and score take them as the file's warning (issue 29)."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus
from dfdetect.featurize.audio import decode, decoder_messages, encode
from dfdetect.store import open_store

LIBRARY_LINES = ("libmpg123", "Illegal Audio-MPEG-Header", "resync", "Xing stream", "dequantization")


@pytest.fixture(scope="module")
def damaged_mp3() -> bytes:
    """A 32 kb/s MP3 with 40 bytes flipped past its first frames: libmpg123 decodes past the damage
    and says so on fd 2 ("dequantization failed", "Illegal Audio-MPEG-Header ... resync")."""
    data = bytearray(encode(synthesize("real", np.random.default_rng(1), 2.0), 16000, "mp3", 32000))
    for i in np.random.default_rng(0).integers(400, len(data), 40):
        data[i] ^= 0xFF
    return bytes(data)


def _library_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(k in line for k in LIBRARY_LINES)]


def test_the_decoders_lines_become_the_clips_warnings(damaged_mp3, capfd):
    audio = decode(damaged_mp3, "damaged.mp3")
    out, err = capfd.readouterr()
    assert audio.frames > 0 and _library_lines("\n".join(audio.warnings)), audio.warnings
    assert not _library_lines(out + err), err
    clean = decode(encode(synthesize("real", np.random.default_rng(2), 1.5), 16000, "mp3", 32000))
    assert clean.warnings == ()


def test_decode_threads_at_once_each_keep_their_warnings_and_restore_fd2(damaged_mp3, capfd):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: decode(damaged_mp3, "damaged.mp3"), range(16)))
    import os

    os.write(2, b"after\n")
    assert all(_library_lines("\n".join(a.warnings)) for a in results)
    assert capfd.readouterr().err == "after\n"


def test_fd2_is_restored_and_other_writes_after_decoding_still_show(capfd):
    import os

    with decoder_messages() as said:
        os.write(2, b"from C\n")
    os.write(2, b"after\n")
    assert said == ["from C"] and capfd.readouterr().err == "after\n"


def test_featurize_records_the_warning_and_prints_no_library_line(damaged_mp3, tmp_path, capfd):
    root = tmp_path / "corpus"
    write_corpus(root, CorpusSpec(real=2, per_generator=1, min_seconds=1, max_seconds=1.5))
    damaged = root / "train" / "real" / "damaged.mp3"
    damaged.write_bytes(damaged_mp3)
    result = runner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(root), "--out",
                                   str(tmp_path / "s.zarr"), "--features", "mel", "--workers", "0"])
    out, err = capfd.readouterr()
    assert result.exit_code == 0, result.output
    assert not _library_lines(out + err), err
    assert "1 clips written past damage" in " ".join(result.output.split())
    store = open_store(str(tmp_path / "s.zarr"))
    row = list(store.meta["path"]).index(str(damaged))
    assert store.meta["status"][row] == "ok" and _library_lines(store.meta["warning"][row])
    assert (store.meta["warning"] != "").sum() == 1


def test_score_prints_no_library_line(damaged_mp3, run_dir, tmp_path, capfd):
    """The demo corpus's MP3s made `dfdetect score` print libmpg123 lines; the damaged clip does
    on every decode."""
    clips = tmp_path / "clips"
    write_corpus(clips, CorpusSpec(real=2, per_generator=2, min_seconds=1, max_seconds=2))
    (clips / "damaged.mp3").write_bytes(damaged_mp3)
    result = runner().invoke(app, ["score", "--model", str(run_dir), str(clips), "--out",
                                   str(tmp_path / "s.csv"), "--workers", "0"])
    out, err = capfd.readouterr()
    assert result.exit_code == 1, result.output   # the damaged clip: a "truncated" row, the rest scored
    assert not _library_lines(out + err + result.output), err
    with open(tmp_path / "s.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    damaged = rows.pop(str(clips / "damaged.mp3"))
    assert damaged["error_kind"] == "truncated"
    assert _library_lines(damaged["warning"].replace("; ", "\n")), damaged   # what the decoder said: in its row
    assert rows and all(r["status"] == "ok" and r["warning"] == "" for r in rows.values())


def runner() -> CliRunner:
    return CliRunner()
