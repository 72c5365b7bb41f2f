"""Bulk scoring with Mel-AASIST on CPU: files/s and audio seconds scored per wall second, where the
time goes (decode + windowing, features, the model's forward), and peak memory on a one-hour file.

    python bench/score.py [--clips 200] [--hours 1.0] [--workers 1]

The run is a Mel-AASIST trained for one epoch on a small generated corpus (the weights do not
change the cost). Inputs: --clips generated clips (2-6 s, WAV/FLAC/MP3/OGG at 16-48 kHz) and one
long 16 kHz WAV of --hours, generated block by block into a temp file. Windows of 3 s, hop 1.5 s.

Rows, all in this one run:
- cost per window on one core, in this process (torch threads = 1), from the scorer's own code:
  the lanes without features (decode + windowing + crop/peak-normalise), the lanes with mel
  features, and the model's forward on those features;
- end-to-end `score()` on the clips and on the long file: in this process (workers=0, all cores
  for torch), and with --workers dask worker processes decoding while the model runs here, once
  starting its own local cluster (what one command costs) and once on a cluster already up (what a
  long run converges to). (wall - forward) / forward is the time the model is not running (DESIGN
  target: decode + windowing overhead under 25% of the forward); "x real time" is audio seconds
  per wall second (target: at least 100x on 2 cores);
- peak memory while scoring the long file in this process: traced Python/numpy allocations and the
  growth of the process's peak RSS, beside the file's size.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import make_clips
from distributed import LocalCluster
from rich.console import Console
from rich.table import Table

from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus
from dfdetect.featurize.pipeline import featurize
from dfdetect.models.runs import load_run
from dfdetect.score.scoring import ScoreOptions, Scorer, score
from dfdetect.score.sources import expand
from dfdetect.score.windows import WindowConfig, lane_pieces
from dfdetect.train.trainer import TrainConfig, train

quiet = Console(quiet=True)


def make_run(folder: Path) -> Path:
    corpus, store = folder / "corpus", str(folder / "store.zarr")
    write_corpus(corpus, CorpusSpec(real=12, per_generator=4, min_seconds=1, max_seconds=2))
    featurize("folder", corpus, store, features=("mel",), workers=0, block_size=16, console=quiet)
    train(TrainConfig(arch="mel_aasist", train=f"{store}:train", epochs=1, batch_size=16, lr=1e-3),
          folder / "run", console=quiet)
    return folder / "run"


def write_long_wav(path: Path, hours: float, block_seconds: float = 30.0) -> None:
    """The demo's speech-like audio, written block by block: never the whole file in memory."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        left = hours * 3600
        while left > 0:
            seconds = min(block_seconds, left)
            f.write(0.5 * synthesize("real", rng, seconds))
            left -= seconds


def cost_per_window(run, paths: list[str]) -> dict:
    """ms per window on one core: decode + windowing, + mel features, and the forward."""
    frontend = run.frontend_config
    config = WindowConfig(frontend, frontend.clip_samples, frontend.clip_samples // 2, (), False, 64, 12 * 3600)
    items = list(enumerate(expand(paths)))
    t0 = time.perf_counter()
    windows = sum(len(p.item) for p in lane_pieces(items, config))
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    pieces = list(lane_pieces(items, WindowConfig(**{**config.__dict__, "features": ("mel",)})))
    features = time.perf_counter() - t0 - decode
    scorer = Scorer(run, "cpu")
    for p in pieces:
        if p.inputs:
            scorer(p.inputs)
    return {"windows": windows, "decode": 1000 * decode / windows, "features": 1000 * features / windows,
            "forward": 1000 * scorer.seconds / windows}


def end_to_end(run: Path, paths: list[str], out: Path, workers: int, scheduler: str | None = None) -> dict:
    threads = torch.get_num_threads()
    if scheduler:  # on a cluster of its own, score() gives the model the cores its workers leave
        torch.set_num_threads(max(1, threads - workers))
    s = score(run, paths, out, ScoreOptions(workers=workers, scheduler=scheduler), console=quiet)
    torch.set_num_threads(threads)
    assert s.failed == s.skipped == 0, s.lines()
    out.unlink()
    return {"files": s.scored, "wall": s.seconds, "files/s": s.scored / s.seconds,
            "x real time": s.audio_seconds / s.seconds, "forward": s.model_seconds,
            "overhead": (s.seconds - s.model_seconds) / s.model_seconds}


def peak_memory(run: Path, path: Path, out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    score(run, [str(path)], out, ScoreOptions(workers=0), console=quiet)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out.unlink()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"file MiB": path.stat().st_size / 2**20, "traced peak MiB": traced, "RSS peak growth MiB": after - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1, help="dask worker processes for the parallel rows")
    args = parser.parse_args()
    console = Console(width=120)
    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = make_run(tmp)
        torch.set_num_threads(cores)  # featurize in-process leaves torch on one thread
        run = load_run(run_dir)
        long_wav = tmp / "long.wav"
        write_long_wav(long_wav, args.hours)
        clips = [str(p) for p in make_clips(tmp / "clips", args.clips)]
        out = tmp / "scores.csv"

        memory = peak_memory(run_dir, long_wav, out)   # first: the process's peak RSS is still the baseline's
        torch.set_num_threads(1)
        cost = {"clips": cost_per_window(run, clips), "long file": cost_per_window(run, [str(long_wav)])}
        torch.set_num_threads(cores)
        rows = {}
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster:
            for name, paths in (("clips", clips), ("long file", [str(long_wav)])):
                rows[f"{name}, in-process"] = end_to_end(run_dir, paths, out, 0)
                rows[f"{name}, dask, cluster start included"] = end_to_end(run_dir, paths, out, args.workers)
                rows[f"{name}, dask, cluster up"] = end_to_end(run_dir, paths, out, args.workers,
                                                               cluster.scheduler_address)

    table = Table(title="cost per window on one core (ms)")
    for column in ("input", "windows", "decode+windowing", "mel features", "forward", "decode+win / fwd",
                   "decode+win+feat / fwd"):
        table.add_column(column, justify="right")
    for name, c in cost.items():
        table.add_row(name, str(c["windows"]), f"{c['decode']:.2f}", f"{c['features']:.2f}", f"{c['forward']:.2f}",
                      f"{c['decode'] / c['forward']:.0%}", f"{(c['decode'] + c['features']) / c['forward']:.0%}")
    console.print(table)
    table = Table(title=f"end to end, score() on {cores} cores ({args.workers} dask worker(s): the model "
                        f"gets {max(1, cores - args.workers)} torch thread(s))")
    for column in ("run", "files", "wall s", "files/s", "x real time", "forward s", "(wall-fwd) / fwd"):
        table.add_column(column, justify="right")
    for name, r in rows.items():
        table.add_row(name, str(r["files"]), f"{r['wall']:.1f}", f"{r['files/s']:.1f}", f"{r['x real time']:.0f}x",
                      f"{r['forward']:.1f}", f"{r['overhead']:.0%}")
    console.print(table)
    console.print(f"peak memory scoring the {args.hours:g} h file in-process: " + ", ".join(
        f"{k} {v:.0f}" for k, v in memory.items()))
    console.print(f"bench took {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
