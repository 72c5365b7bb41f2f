"""The whole-file protocol's cost: `featurize --windows all` against the centre crop, and the
streaming loader on a windowed store against a centre one, side by side in one run.

    python bench/windows.py [--clips 48] [--workers 2] [--block-size 12] [--epochs 40] [--batch 64]

`--clips` generated files of 8-24 s (the bench's mixed formats and rates) are featurized (mel +
LFCC) twice per placement: one centre 3 s crop per file, and every 3 s window every 1.5 s
(`--windows all`, as `dfdetect score` cuts them). Placements: in this process (workers=0, 1 torch
thread, featurize's default blocks of 128 rows) and on a local cluster of `--workers` processes
that is already up (both protocols get the same cluster: its start is not what is measured). On
the cluster the centre pass writes blocks of `--block-size` rows (48 files in one 128-row block
would keep one worker busy), the windowed pass default blocks and, to show what small blocks
cost it, blocks of `--block-size` too: a block decodes, resamples and measures every file it
holds a window of, so a file whose windows straddle two blocks is decoded twice. The centre pass
writes one row per file (crops/s), the windowed pass one per window (windows/s); the windowed
pass's planning (every file decoded once to learn its length, featurize/windows.py plan_windows)
is timed inside the run and given as its share.

Then the training loader (train/data.py FeatureLoader) streams (a memory budget of one byte: one
read unit at a time, `--readers` threads) the windowed store's ok rows, and a centre store of as
many rows (generated 3-3.5 s clips: the same row shapes and blocks, so the rows/s compare): one
warm epoch each, then `--epochs` (40) shuffled epochs of each in turn (an epoch is ~50 ms: taking
turns keeps a burst of load on a shared machine from landing on one side), medians. CPU timings
are only meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


class PlanTimer:
    """Times featurize's planning pass (pipeline.plan_windows) inside a real run."""

    def __init__(self):
        from dfdetect.featurize import pipeline

        self.pipeline, self.seconds = pipeline, 0.0

    def __enter__(self):
        self.original = self.pipeline.plan_windows
        self.pipeline.plan_windows = self._timed
        return self

    def _timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def __exit__(self, *exc):
        self.pipeline.plan_windows = self.original


def featurize_passes(corpus: Path, tmp: Path, args) -> dict:
    """{name: (rows, seconds, planning seconds)} of both protocols in both placements."""
    from rich.console import Console

    from dfdetect.featurize.config import FeaturizeConfig
    from dfdetect.featurize.pipeline import dask_client, featurize

    quiet = Console(quiet=True)

    def run(name: str, keep: str, block_size: int | None = None, **where) -> tuple[int, float, float]:
        config = FeaturizeConfig.from_options(features="mel,lfcc", windows=keep, block_size=block_size)
        with PlanTimer() as plan:
            t0 = time.perf_counter()
            result = featurize("folder", corpus, str(tmp / f"{name}.zarr"), console=quiet, config=config, **where)
            seconds = time.perf_counter() - t0
        assert result.complete
        return result.n_clips, seconds, plan.seconds

    run("warm", "centre", workers=0)     # imports and first-call costs
    results = {"centre crop, in-process": run("centre0", "centre", workers=0),
               "all windows, in-process": run("all0", "all", workers=0)}
    small, cluster = args.block_size, f"dask x{args.workers} (cluster up)"
    with dask_client(None, args.workers) as client:
        where = {"scheduler": client.scheduler.address, "workers": args.workers}
        run("warm-cluster", "centre", block_size=small, **where)     # the workers' imports and first calls
        results[f"centre crop, {cluster}, blocks of {small}"] = run("centre-c", "centre", block_size=small, **where)
        results[f"all windows, {cluster}"] = run("all-c", "all", **where)
        results[f"all windows, {cluster}, blocks of {small}"] = run("all-c-small", "all", block_size=small, **where)
    return results


def loaders_rows_per_second(specs: dict[str, str], args) -> dict[str, tuple[int, float, float]]:
    """{name: (rows, rows/s, MB/s)} of the streaming loader over the ok rows of each store version,
    their epochs taken in turn."""
    from dfdetect.store import open_store
    from dfdetect.train.data import DataSet, FeatureLoader, row_bytes

    features, loaders = ("mel", "lfcc"), {}
    for name, spec in specs.items():
        store = open_store(spec)
        data = DataSet("train", spec, store, store.rows())
        loaders[name] = FeatureLoader(data, features, args.batch, shuffle=True, seed=0, memory_budget=1,
                                      readers=args.readers)
        assert not loaders[name].in_memory
    times = {name: [] for name in loaders}
    for e in range(args.epochs + 1):
        for name, loader in loaders.items():
            t0 = time.perf_counter()
            for _ in loader.epoch(e):
                pass
            if e:     # epoch 0 untimed: warms the page cache and the allocator
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, loader in loaders.items():
        seconds, n = statistics.median(times[name]), len(loader.data.rows)
        out[name] = (n, n / seconds, n * row_bytes(loader.data.store, features) / seconds / 1e6)
    return out


def main() -> None:
    import torch
    from common import make_clips
    from rich.console import Console

    from dfdetect.featurize.pipeline import featurize
    from dfdetect.store import open_store
    from dfdetect.store.inspect import human_bytes, store_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="files of 8-24 s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=12, help="rows per block (shard) on the cluster")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        make_clips(tmp / "corpus", args.clips, 8.0, 24.0)
        passes = featurize_passes(tmp / "corpus", tmp, args)
        windowed = open_store(str(tmp / "all0.zarr"))
        coverage = store_info(f"{windowed.path}@{windowed.version}")["coverage"]
        centre_info = store_info(str(tmp / "centre0.zarr"))["coverage"]
        n_rows = len(windowed.rows())
        make_clips(tmp / "short", n_rows, 3.0, 3.5, start=args.clips)
        featurize("folder", tmp / "short", str(tmp / "short.zarr"), features=("mel", "lfcc"), workers=0,
                  console=Console(quiet=True))
        specs = {"windowed store (--windows all), ok rows": f"{windowed.path}@{windowed.version}",
                 f"centre store of {n_rows} 3-3.5 s clips": str(tmp / "short.zarr")}
        loaders = loaders_rows_per_second(specs, args)
    audio = coverage["audio_hours"] * 3600
    spread = coverage["windows_per_file"]
    print(f"{coverage['files']} files, {audio / 60:.1f} min of audio (8-24 s each); windows per file "
          f"{spread['min']}-{spread['max']} (median {spread['median']:g}); {coverage['rows']} windows, "
          f"{coverage['silent_windows']} silent")
    print(f"disk: windowed {human_bytes(coverage['bytes_per_audio_hour'])} per audio-hour; centre "
          f"{human_bytes(centre_info['bytes_per_clip'])} per stored clip\n")
    print("| featurize pass (mel + LFCC) | rows | s | rows/s | audio s/s | planning share |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (rows, seconds, plan) in passes.items():
        share = f"{plan / seconds:.0%} ({plan:.2f} s)" if plan else "-"
        print(f"| {label} | {rows} | {seconds:.2f} | {rows / seconds:.1f} | {audio / seconds:.0f} | {share} |")
    cluster = f"dask x{args.workers} (cluster up)"
    for centre, windows in (("centre crop, in-process", "all windows, in-process"),
                            (f"centre crop, {cluster}, blocks of {args.block_size}", f"all windows, {cluster}"),
                            (f"centre crop, {cluster}, blocks of {args.block_size}",
                             f"all windows, {cluster}, blocks of {args.block_size}")):
        (c_rows, c_s, _), (w_rows, w_s, _) = passes[centre], passes[windows]
        print(f"{windows}: windows/s / crops/s = {(w_rows / w_s) / (c_rows / c_s):.2f}x; "
              f"{w_s / c_s:.1f}x the centre pass's time for the same files")
    reference = loaders[f"centre store of {n_rows} 3-3.5 s clips"][1]
    print(f"\n| streaming loader ({args.readers} readers, budget 1 byte, batch {args.batch}, "
          f"median of {args.epochs} epochs) | rows | rows/s | MB/s | vs centre |")
    print("|---|---:|---:|---:|---:|")
    for label, (rows, per_second, mb) in loaders.items():
        print(f"| {label} | {rows} | {per_second:,.0f} | {mb:,.0f} | {per_second / reference:.0%} |")
    print(f"\nwhole bench: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
