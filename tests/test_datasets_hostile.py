"""Datasets from strangers (issue 36): hf and lhotse folders built to hurt, names that forge output,
folder trees built to be slow. Each input is small; what it must not cost is said per test."""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
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
