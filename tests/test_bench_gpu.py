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


def run_bench(tmp_path, *args: str, driver: str | None = None) -> subprocess.CompletedProcess:
    """bench/gpu.py on the CPU at tiny size (`driver`: Python run first, in the bench's process)."""
    argv = ["--size", "tiny", "--unique-clips", "16", "--block-size", "8", "--device", "cpu", "--epochs", "1",
            "--ceiling-blocks", "1", "--phase-seconds", "1", "--train-rows", "8", "--max-seconds", "240", *args]
    command = [sys.executable, str(BENCH), *argv] if driver is None else \
        [sys.executable, "-c", driver + f"\nsys.argv = {[str(BENCH), *argv]!r}\nrunpy.run_path(sys.argv[0], "
         "run_name='__main__')"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    return subprocess.run(command, capture_output=True, text=True, timeout=420, env=env)


@pytest.mark.slow
def test_gpu_bench_tiny_on_cpu(tmp_path):
    done = run_bench(tmp_path, "--clips", "40", "--workers", "1", "--heads", ",".join(HEADS), "--long-files", "2")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "everything runs on the CPU in float32" in out

    feat = {r[0]: r for r in section(out, "1. featurize")}
    assert set(feat) == {"WavLM only, batch 16 (ceiling)", "WavLM only, batch 64", "featurize end to end",
                         "featurize steady state"}
    for r in feat.values():
        rate = number(r[3])
        assert math.isfinite(rate) and rate > 0, r
    assert feat["featurize end to end"][1] == "40"        # every clip featurized
    assert feat["featurize end to end"][-1] == "n/a"       # no GPU busy % on the CPU
    assert "FAILED" not in out
    long = section(out, "1b. featurize --windows all")
    assert len(long) == 1 and long[0][1] == "38" and number(long[0][3]) > 0    # 2 files x 19 windows
    assert 0 < number(long[0][4]) < 100, long                                  # the planning pass's share

    train = {r[0]: r for r in section(out, "2. cached training")}
    assert set(train) == set(HEADS)
    for r in train.values():
        assert r[3] == "float32", r
        step, epoch = number(r[5]), number(r[6])       # the step alone, and with the loader's time
        assert math.isfinite(step) and 0 < epoch <= step, r
    assert "WavLM+AASIST / Mel-AASIST: epoch " in out

    feed = section(out, "3. loader")
    assert {(r[0], r[3]) for r in feed} == {(h, m) for h in HEADS for m in ("in memory", "streaming")}
    for r in feed:
        assert all(math.isfinite(number(c)) and number(c) > 0 for c in r[4:7]), r
        assert r[7] in ("loader", "training step"), r

    # each figure printed as its phase ends, and all four again at the end
    assert out.count("  target: ") == 4
    summary = {r[0]: r for r in section(out, "summary")}
    assert len(summary) == 4
    assert math.isfinite(number(summary["WavLM+AASIST / Mel-AASIST epoch"][1]))
    assert summary["GPU busy % in steady state"][-1] == "n/a"


# What a CUDA error in the WavLM process looks like to featurize: block 1's WavLM task raises. With
# --workers 0 featurize runs its blocks in the bench's process, where this replaces the task.
FAIL_BLOCK_1 = f"""
import runpy, sys
import dfdetect.featurize.pipeline as pipeline
wavlm_block = pipeline.wavlm_block
def failing(job, prepared):
    if job.block == 1:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    return wavlm_block(job, prepared)
pipeline.wavlm_block = failing
sys.path.insert(0, {str(BENCH.parent)!r})
"""


@pytest.mark.slow
def test_gpu_bench_reports_a_failed_block_and_goes_on(tmp_path):
    done = run_bench(tmp_path, "--clips", "24", "--workers", "0", "--heads", "mel_cnn,wavlm_cnn", "--long-files", "0",
                     driver=FAIL_BLOCK_1)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr           # a failed block fails the run...
    assert "FEATURIZE: 1 of 3 blocks FAILED (blocks 1)" in out
    assert "block 1: RuntimeError: CUDA error: an illegal memory access was encountered (injected)" in out
    feat = {r[0]: r for r in section(out, "1. featurize")}
    assert feat["featurize end to end"][1] == "16"
    train = {r[0]: r for r in section(out, "2. cached training")}    # ...after the later phases,
    assert set(train) == {"mel_cnn", "wavlm_cnn"} and all(r[4] == "8" for r in train.values())
    assert len(section(out, "3. loader")) == 4                         # on the blocks written
    assert len(section(out, "summary")) == 4
