"""Indexing and reading corpora from elsewhere: the two costs the hostile-input round fixed,
measured side by side with what they replaced, in one run.

    python bench/datasets.py [--minutes 30] [--supervisions 60] [--depths 200,800,1800]

1. lhotse supervisions of one long recording: `--supervisions` segments of 5 s spread over a
   `--minutes` FLAC (16 kHz), decoded as featurize decodes them (each clip's path names its
   segment: the segment alone is sought and read), against decoding the whole recording per
   supervision and slicing it (what each clip cost before). Clips/s for both.
2. The folder adapter on a chain of nested empty folders, one clip at the bottom: seconds per
   depth. Linear work grows in proportion to the depth; the quadratic walk it replaced took 137 s
   at 1,800 folders (tests/test_datasets_hostile.py keeps the bound at 5 s).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from dfdetect import datasets
from dfdetect.featurize.audio import decode


def _jsonl_gz(path: Path, lines: list[dict]) -> None:
    with gzip.open(path, "wt", compresslevel=1) as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def lhotse_segments(work: Path, minutes: float, supervisions: int) -> None:
    rate = 16000
    t = np.arange(int(rate * 60 * minutes)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + t / t[-1])).astype(np.float32)
    root = work / "lhotse"
    root.mkdir()
    sf.write(root / "long.flac", wave, rate)
    recording = {"id": "r", "sources": [{"type": "file", "channels": [0], "source": "long.flac"}],
                 "sampling_rate": rate, "num_samples": len(wave), "duration": 60.0 * minutes}
    step = (60.0 * minutes - 5.0) / max(supervisions - 1, 1)
    sups = [{"id": f"s{i}", "recording_id": "r", "start": round(step * i, 3), "duration": 5.0, "channel": 0,
             "custom": {"label": "real"}} for i in range(supervisions)]
    _jsonl_gz(root / "recordings.jsonl.gz", [recording])
    _jsonl_gz(root / "supervisions.jsonl.gz", sups)
    index = datasets.prepare("lhotse", root)
    assert len(index.clips) == supervisions, index.problems[:3]
    decode(index.clips[0].path)  # imports and libsndfile's first open, untimed

    started = time.perf_counter()
    for clip in index.clips:
        decode(clip.path)
    segment_s = time.perf_counter() - started

    whole_bytes = (root / "long.flac").read_bytes()
    started = time.perf_counter()
    for sup in sups:      # before: the whole recording decoded for each supervision, then cut
        audio, _ = sf.read(io.BytesIO(whole_bytes), dtype="float32")
        first = int(sup["start"] * rate)
        audio[first:first + 5 * rate].copy()
    whole_s = time.perf_counter() - started
    print(f"lhotse: {supervisions} supervisions of 5 s on a {minutes:g}-minute 16 kHz FLAC")
    print(f"  segment read alone (dfdetect):     {supervisions / segment_s:8.1f} clips/s")
    print(f"  whole recording decoded per clip:  {supervisions / whole_s:8.1f} clips/s")
    print(f"  speed-up: {whole_s / segment_s:.1f}x")


def folder_chain(work: Path, depth: int) -> float:
    root = work / f"chain{depth}"
    (root / "real").mkdir(parents=True)
    sf.write(root / "real" / "r.wav", np.zeros(1600, np.float32), 16000)
    deep = str(root / "fake")
    os.mkdir(deep)
    for _ in range(depth):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    wav = io.BytesIO()   # libsndfile refuses so long a name: written through Python
    sf.write(wav, np.zeros(1600, np.float32), 16000, format="WAV")
    with open(os.path.join(deep, "f.wav"), "wb") as f:
        f.write(wav.getvalue())
    started = time.perf_counter()
    index = datasets.prepare("folder", root)
    took = time.perf_counter() - started
    assert len(index.clips) == 2, index.problems[:3]
    while deep != str(root / "fake"):     # bottom up: shutil.rmtree recurses once per level
        for name in os.listdir(deep):
            os.remove(os.path.join(deep, name))
        os.rmdir(deep)
        deep = os.path.dirname(deep)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--supervisions", type=int, default=60)
    parser.add_argument("--depths", default="200,800,1800")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lhotse_segments(work, args.minutes, args.supervisions)
        print("folder adapter, one clip under a chain of nested empty folders:")
        for depth in (int(d) for d in args.depths.split(",")):
            print(f"  depth {depth:5d}: {folder_chain(work, depth):6.2f} s")


if __name__ == "__main__":
    main()
