"""Shared by the bench scripts: the generated clips they all time, and a wall-clock timer."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import soxr

from dfdetect.demo.corpus import GENERATORS, synthesize
from dfdetect.featurize.audio import encode

# The frontend's independent librosa reference lives with the tests that check against it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import librosa_reference as reference  # noqa: E402  (needs the path above)

__all__ = ["FORMATS", "make_clips", "reference", "time_it"]

# Formats librosa reads without FFmpeg, so both sides of a comparison decode the same bytes.
FORMATS = (("wav", 16000), ("wav", 44100), ("flac", 22050), ("flac", 48000), ("mp3", 24000), ("ogg", 32000))


def make_clips(folder: Path, n: int, min_seconds: float = 2.0, max_seconds: float = 6.0,
               start: int = 0) -> list[Path]:
    """n clips of the demo's families in `folder/real` and `folder/fake/<family>` (the `folder`
    dataset layout), in mixed formats and sample rates: clips start..start+n-1 of one fixed
    sequence (so processes can write parts of it side by side)."""
    families = ("real", *GENERATORS)
    paths = []
    for i in range(start, start + n):
        rng = np.random.default_rng([42, i])
        fmt, rate = FORMATS[i % len(FORMATS)]
        family = families[i % len(families)]
        x = synthesize(family, rng, rng.uniform(min_seconds, max_seconds))
        sub = folder / "real" if family == "real" else folder / "fake" / family
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"clip_{i:04d}.{fmt}"
        path.write_bytes(encode(soxr.resample(x, 16000, rate) if rate != 16000 else x, rate, fmt))
        paths.append(path)
    return paths


def time_it(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
