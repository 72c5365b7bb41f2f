"""What each featurize variant costs per clip: RawBoost, each codec, random codecs, WORLD and
Griffin-Lim, against the clean pass, on the same generated clips.

    python bench/variants.py [--clips 40] [--only clean,world]

Each row is one in-process featurize (workers=0, one torch thread, mel only) into a fresh store:
seconds per clip written, and the variant's extra over the clean pass. A vocoded store holds one
fake per REAL clip (the bench clips are 1 in 5 real), so its rows divide by the clips it wrote.
A variant runs on at most clip + 1 s (4 s) of each file's 16 kHz audio (featurize's window).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

VARIANTS = {   # row -> Variant.parse's arguments
    "clean": {},
    "rawboost:1": {"corrupt": "rawboost:1"},
    "rawboost:2": {"corrupt": "rawboost:2"},
    "rawboost:3": {"corrupt": "rawboost:3"},
    "rawboost (1+2)": {"corrupt": "rawboost"},
    "rawboost:1+2+3": {"corrupt": "rawboost:1+2+3"},
    "flac": {"codec": "flac"},
    "mp3:64k": {"codec": "mp3:64k"},
    "aac:64k": {"codec": "aac:64k"},
    "opus:32k": {"codec": "opus:32k"},
    "vorbis:64k": {"codec": "vorbis:64k"},
    "codec random": {"codec": "random"},
    "vocode world": {"vocode": "world"},
    "vocode griffinlim": {"vocode": "griffinlim"},
}


def main() -> None:
    import torch
    from common import make_clips
    from rich.console import Console

    from dfdetect.featurize.pipeline import featurize
    from dfdetect.featurize.variants import Variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--only", default=None, help="comma-separated rows (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = args.only.split(",") if args.only else list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        make_clips(corpus, args.clips)
        quiet = Console(quiet=True)
        featurize("folder", corpus, str(Path(tmp) / "warm.zarr"), features=("mel",), workers=0,
                  console=quiet)   # imports and first-call costs out of the rows
        clean = None
        print(f"{'variant':<20} {'clips':>5} {'s/clip':>8} {'extra s/clip':>13}")
        for row in rows:
            variant = Variant.parse(**VARIANTS[row])
            t0 = time.perf_counter()
            result = featurize("folder", corpus, str(Path(tmp) / f"{len(row)}-{hash(row)}.zarr"), features=("mel",),
                               workers=0, variant=variant, console=quiet)
            per_clip = (time.perf_counter() - t0) / result.n_clips
            clean = per_clip if row == "clean" else clean
            extra = f"{per_clip - clean:13.3f}" if clean is not None and row != "clean" else f"{'-':>13}"
            print(f"{row:<20} {result.n_clips:>5} {per_clip:8.3f} {extra}", flush=True)


if __name__ == "__main__":
    main()
