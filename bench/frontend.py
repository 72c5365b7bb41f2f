"""Decode + frontend (mel + LFCC) on a few hundred generated clips: dfdetect's batched Frontend
against the per-file librosa loop a practitioner would write, side by side in one run.

    python bench/frontend.py [--clips 300] [--threads 1]

Both sides run in this one process with the same number of torch/BLAS threads; the corpus uses
formats that librosa reads without FFmpeg (WAV, FLAC, MP3, OGG) at mixed sample rates. Prints
clips/s for decode-only, dfdetect and librosa, and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import FORMATS, make_clips, reference, time_it

from dfdetect.featurize.audio import decode
from dfdetect.featurize.frontend import Frontend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frontend = Frontend()

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(Path(tmp), args.clips)
        reference.mel(np.zeros(48000, np.float32) + 1e-3)  # librosa's first call compiles numba code

        def decode_only():
            for p in paths:
                decode(p)

        def dfdetect():
            for i in range(0, len(paths), args.batch):
                waves = np.stack([frontend.load(p) for p in paths[i:i + args.batch]])
                frontend.features(waves)

        def librosa_loop():
            for p in paths:
                y = reference.load_clip(p)
                reference.mel(y)
                reference.lfcc(y)

        t_decode, t_ours, t_ref = time_it(decode_only), time_it(dfdetect), time_it(librosa_loop)

    n = len(paths)
    print(f"clips: {n} (2-6 s, {', '.join(f'{f}@{r}' for f, r in FORMATS)}), torch threads: {args.threads}")
    print(f"{'decode only':<28}{n / t_decode:8.1f} clips/s")
    print(f"{'dfdetect decode+frontend':<28}{n / t_ours:8.1f} clips/s")
    print(f"{'librosa per-file loop':<28}{n / t_ref:8.1f} clips/s")
    print(f"ratio dfdetect / librosa loop: {t_ref / t_ours:.2f}x")
    print(f"frontend share beyond decode: {(t_ours - t_decode) / t_ours:.0%} of dfdetect's time")


if __name__ == "__main__":
    main()
