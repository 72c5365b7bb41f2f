"""The reference systems' cost next to Mel-AASIST, on one store: training seconds per epoch (per
1,000 clips) and bulk-scoring speed, each as a ratio to Mel-AASIST measured in the same run.

    python bench/baselines.py [--clips 96] [--score 24] [--workers 0]

A generated corpus of --clips 2-6 s clips (mixed formats and rates) is featurized once with
mel, lfcc and wave (3 s clips, the reference study's frontend). Each architecture then trains one epoch on it
(its own default batch size; the GMM's one epoch is its EM fit, 512 mixtures as the challenge
baseline) and scores --score of the clips with `score()` (3 s windows, 1.5 s hop, --workers as
`dfdetect score` takes it; 0: in this process). Training time is the epoch's train part as the
run records it (validation/test scoring excluded); scoring time is the whole `score()` call.
All on CPU with torch's default threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import make_clips
from rich.console import Console
from rich.table import Table

from dfdetect.featurize.pipeline import featurize
from dfdetect.models.registry import model_summary
from dfdetect.score.scoring import ScoreOptions, score
from dfdetect.train.trainer import TrainConfig, train

ARCHS = ("mel_aasist", "lfcc_gmm", "lfcc_lcnn", "aasist", "aasist_l")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--score", type=int, default=24, help="clips to score with each run")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    quiet = Console(quiet=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_clips(tmp / "corpus", args.clips)
        store = str(tmp / "store.zarr")
        featurize("folder", tmp / "corpus", store, features=("mel", "lfcc", "wave"), workers=0, console=quiet)
        for arch in ARCHS:
            out = tmp / "runs" / arch
            config = TrainConfig(arch=arch, train=store, epochs=1, seed=0, device="cpu")
            record = train(config, out, console=quiet)
            seconds = record["seconds"]["train"]
            clips = record["train"]["clips"]
            t0 = time.perf_counter()
            summary = score(out, [str(p) for p in paths[:args.score]], tmp / f"{arch}.csv",
                            ScoreOptions(workers=args.workers, device="cpu"), console=quiet)
            wall = time.perf_counter() - t0
            rows[arch] = {"params": model_summary(arch)["parameters"], "train_clips": clips,
                          "train_s_per_1k": seconds / clips * 1000, "score_files_s": summary.scored / wall,
                          "score_x_realtime": summary.audio_seconds / wall}
    base = rows["mel_aasist"]
    table = Table("arch", "params", "train s / 1k clips", "x Mel-AASIST", "score files/s", "x real time",
                  "x Mel-AASIST", title=f"{args.clips} clips, torch threads {torch.get_num_threads()}, "
                                        f"score workers {args.workers}")
    for arch, r in rows.items():
        table.add_row(arch, f"{r['params']:,}", f"{r['train_s_per_1k']:.1f}",
                      f"{r['train_s_per_1k'] / base['train_s_per_1k']:.2f}", f"{r['score_files_s']:.1f}",
                      f"{r['score_x_realtime']:.0f}", f"{r['score_files_s'] / base['score_files_s']:.2f}")
    Console(width=150).print(table)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
