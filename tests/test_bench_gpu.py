"""bench/gpu.py (the GPU bench) runs end to end at tiny size on the CPU, so it never rots before a
GPU run: every section prints, with finite numbers where a number is measured."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
HEADS = ("mel_cnn", "mel_aasist", "wavlm_cnn", "wavlm_aasist", "lfcc_lcnn")   # raw-wave AASIST: minutes on CPU


def number(cell: str) -> float:
    return float(cell.replace(",", "").removesuffix("x"))


def section(out: str, title: str) -> list[list[str]]:
    """The rows of the table titled `title...` (cells split on runs of 2+ spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3:]:          # title, header, rule
        if not line.startswith("  ") or not line.strip() or line.startswith("   "):
            break
        cells = [c.strip() for c in line.strip().split("  ") if c.strip()]
        if len(cells) < 2:                  # the notes under a table
            break
        rows.append(cells)
    return rows


@pytest.mark.slow
def test_gpu_bench_tiny_on_cpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "tiny", "--clips", "40", "--unique-clips", "16", "--workers", "1",
         "--block-size", "16",
         "--device", "cpu", "--heads", ",".join(HEADS), "--epochs", "1", "--ceiling-blocks", "1",
         "--phase-seconds", "1", "--max-seconds", "120"],
        capture_output=True, text=True, timeout=300, env=env)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "everything runs on the CPU in float32" in out

    feat = {r[0]: r for r in section(out, "1. featurize")}
    assert set(feat) == {"WavLM only (ceiling)", "featurize end to end", "featurize steady state"}
    for what, r in feat.items():
        rate = number(r[3])
        assert math.isfinite(rate) and rate > 0, r
    assert feat["featurize end to end"][1] == "40"        # every clip featurized
    assert feat["featurize end to end"][-1] == "n/a"       # no GPU busy % on the CPU

    train = {r[0]: r for r in section(out, "2. cached training")}
    assert set(train) == set(HEADS)
    for r in train.values():
        assert r[3] == "float32" and math.isfinite(number(r[5])) and number(r[5]) > 0, r
    assert "cached WavLM+AASIST epoch / Mel-AASIST epoch: " in out

    feed = section(out, "3. loader")
    assert {(r[0], r[3]) for r in feed} == {(h, m) for h in HEADS for m in ("in memory", "streaming")}
    for r in feed:
        assert all(math.isfinite(number(c)) and number(c) > 0 for c in r[4:7]), r
        assert r[7] in ("loader", "training step"), r

    summary = {r[0]: r for r in section(out, "summary")}
    assert len(summary) == 4
    assert math.isfinite(number(summary["WavLM+AASIST / Mel-AASIST epoch"][1]))
    assert summary["GPU busy % in steady state"][-1] == "n/a"
