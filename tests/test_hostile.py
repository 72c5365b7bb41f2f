"""Hostile names and operator mistakes (each class at its root): numbers that would switch a limit
off or loop forever, names that a spreadsheet would run, names that would drive the terminal."""

from __future__ import annotations

import csv
import io
import re
import tarfile

import numpy as np
import pytest
from conftest import one_line
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.audio import encode
from dfdetect.names import csv_cell, csv_value, printable, terminal_text

runner = CliRunner()


def wav(seconds: float = 2.0) -> bytes:
    return encode(synthesize("real", np.random.default_rng(0), seconds), 16000, "wav")


def small_corpus(root):
    """real/ and fake/ with two good clips each."""
    for kind in ("real", "fake"):
        (root / kind).mkdir(parents=True)
        for i in range(2):
            (root / kind / f"{kind[0]}{i}.wav").write_bytes(wav())


@pytest.mark.parametrize("option,value", [
    ("--hop", "nan"), ("--hop", "0.00001"), ("--window", "0.00001"), ("--max-file-mb", "nan"),
    ("--max-hours", "nan"), ("--max-hours", "inf"), ("--batch-size", "0"), ("--workers", "-1"),
])
def test_score_refuses_numbers_that_switch_limits_off_or_never_end(run_dir, tmp_path, option, value):
    (tmp_path / "a.wav").write_bytes(wav())
    out = tmp_path / "s.csv"
    result = runner.invoke(app, ["score", str(tmp_path / "a.wav"), "--model", str(run_dir), "--out", str(out),
                                 option, value])
    one_line(result, option)
    assert not out.exists()          # refused before any output is touched


@pytest.mark.parametrize("args,option", [
    (["--workers", "-1"], "--workers"),
])
def test_featurize_refuses_bad_numbers(tmp_path, args, option):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.wav").write_bytes(wav())
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(tmp_path), "--features", "mel",
                                 "--out", str(tmp_path / "s.zarr"), *args])
    one_line(result, option)


@pytest.mark.parametrize("args,option", [
    (["--batch-size", "1"], "--batch-size"), (["--lr", "nan"], "--lr"), (["--epochs", "-3"], "--epochs"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--early-stopping", "0"], "--early-stopping"),
])
def test_train_refuses_bad_numbers(mel_store, tmp_path, args, option):
    result = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train",
                                 "--out", str(tmp_path / "run"), *args])
    one_line(result, option)
    assert not (tmp_path / "run").exists()


def test_names_helpers_are_reversible_and_visible():
    for name in ("=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "'plain", "ok.wav", "-"):
        assert csv_value(csv_cell(name)) == name
        assert not csv_cell(name).startswith(("=", "+", "-", "@", "\t", "\r"))
    assert csv_cell(0.25) == 0.25
    assert printable("a\x1b[2Jb\nc\u202ed\udcff") == "a\\x1b[2Jb\\x0ac\\u202ed\\xff"
    assert terminal_text("line one\n\tline two\x1b[31m") == "line one\n\tline two\\x1b[31m"


def test_score_neutralises_formulas_and_escapes_in_names(run_dir, tmp_path):
    """Archive member names are untrusted: in the CSV they are text, in the terminal they are
    shown, not obeyed; --resume reads the neutralised table back and scores nothing twice."""
    names = ["=cmd|' /C calc'!A0.wav", "+1.wav", "-2.wav", "@3.wav", "fake\x1b[2J\x1b[1;1H0 failed.wav", "plain.wav"]
    archive = tmp_path / "upload.tar"
    with tarfile.open(archive, "w") as tar:
        for name in names:
            data = wav()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "scores.csv"
    result = runner.invoke(app, ["score", str(archive), "--model", str(run_dir), "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output                     # nothing reaches the terminal raw
    rows = list(csv.DictReader(out.open(newline="")))
    members = [r["member"] for r in rows]
    assert all(not m.startswith(("=", "+", "-", "@")) for m in members)
    assert sorted(csv_value(m) for m in members) == sorted(printable(n) for n in names)
    assert "fake\\x1b[2J\\x1b[1;1H0 failed.wav" in members
    again = runner.invoke(app, ["score", str(archive), "--model", str(run_dir), "--out", str(out), "--workers", "0",
                                "--resume"])
    assert again.exit_code == 0, again.output
    assert len(list(csv.DictReader(out.open(newline="")))) == len(names)   # none scored twice


def test_names_that_read_as_markup_are_shown_not_obeyed(tmp_path):
    """A folder named like a rich closing tag: featurize and every store command print it as written."""
    root = tmp_path / "[/x]corpus"
    small_corpus(root)
    (root / "fake" / "[blink]broken.wav").write_bytes(b"RIFF")
    store = tmp_path / "[/z]s.zarr"
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(root), "--features", "mel",
                                 "--out", str(store), "--workers", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output   # 1: the broken file
    for command in (["store", "ls", str(tmp_path)], ["store", "info", str(store)], ["store", "verify", str(store)],
                    ["datasets", "show", "folder", "--root", str(root)]):
        result = runner.invoke(app, command)
        assert result.exit_code in (0, 1) and "Traceback" not in result.output, (command, result.output)
        if command[1] in ("verify", "show"):     # lines, not a narrow table: the name is there as written
            assert "[/" in result.output, (command, result.output)


def test_one_file_is_never_two_outputs(run_dir, tmp_path):
    (tmp_path / "a.wav").write_bytes(wav())
    same = tmp_path / "s.csv"
    result = runner.invoke(app, ["score", str(tmp_path / "a.wav"), "--model", str(run_dir), "--out", str(same),
                                 "--windows", str(same)])
    one_line(result, "--windows")
    assert not same.exists()
    for out in ("report.md", "report"):
        one_line(runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / out)]), "HTML page")
        assert not (tmp_path / out).exists()


def test_report_shows_hostile_run_names_as_text(run_dir, tmp_path):
    """A run name with HTML and a broken mathtext formula: the page and the Markdown show it as
    text, and the figures draw (matplotlib would otherwise parse `$...$`)."""
    import shutil

    from dfdetect.evaluate.report import build_report

    hostile = tmp_path / "$x^$ <img src=x onerror=alert(1)> [link](http:evil) |x|"
    shutil.copytree(run_dir, hostile)
    report = build_report([hostile], tmp_path / "r.html")
    md, page = report.markdown.read_text(), report.html.read_text()
    assert not re.search(r"(?<!\\)<img", md) and not re.search(r"(?<!\\)\]\(http", md)
    assert "\\<img src=x onerror=alert(1)\\>" in md
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<img") >= 2        # the figures are there


def test_fifos_and_devices_are_error_rows_not_hangs(tmp_path):
    """A FIFO nobody writes would block a reader forever, a link to /dev/zero never ends: featurize
    and `datasets show --decode` record them as `special_file` errors and finish (subprocesses with
    a timeout, so a regression fails instead of hanging the suite)."""
    import os
    import subprocess
    import sys

    root = tmp_path / "corpus"
    small_corpus(root)
    os.mkfifo(root / "real" / "pipe.wav")
    (root / "fake" / "zeros.wav").symlink_to("/dev/zero")
    cli = [sys.executable, "-m", "dfdetect.cli"]
    shown = subprocess.run([*cli, "datasets", "show", "folder", "--root", str(root), "--decode", "-1"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 1 and shown.stdout.count("[special_file]") == 2, shown.stdout + shown.stderr
    done = subprocess.run([*cli, "featurize", "--dataset", "folder", "--root", str(root), "--features", "mel",
                           "--out", str(tmp_path / "s.zarr"), "--workers", "0"], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr       # 1: two clips are errors, the rest written
    assert "special_file" in done.stdout and "4 of 6 clips written" in " ".join(done.stdout.split())


@pytest.mark.parametrize("bad", [["--init-from", "no/such/run"], ["--device", "cuda"]])
def test_a_failed_train_leaves_nothing_that_blocks_the_retry(mel_store, tmp_path, bad):
    import torch

    if bad[0] == "--device" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    args = ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train", "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "16"]
    one_line(runner.invoke(app, [*args, *bad]), bad[0])
    assert not (tmp_path / "run").exists()
    retry = runner.invoke(app, args)
    assert retry.exit_code == 0, retry.output
