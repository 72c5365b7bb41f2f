"""The featurize pass (mel + LFCC into a Zarr store) against a per-file librosa loop and against
decode alone, on the same generated clips, side by side in one run.

    python bench/featurize.py [--clips 900] [--workers 2] [--block-size 128]
    python bench/featurize.py --clips 160 --profile     # where one worker's time goes (cProfile)
    python bench/featurize.py --cold-runs 9             # end to end only, in 9 fresh processes: median
    python bench/featurize.py --clips 300 --statistics-cost   # the recording statistics' share of the pass

A cold start happens once per process, so one run gives one end-to-end sample (they spread by
+-10% on a 2-core VM); --cold-runs N repeats the librosa loop and the cold local-cluster run in N
fresh processes and prints each ratio and their median.

Rows: decode only (1 process); the librosa loop (librosa.load + mel + LFCC per file, 1 process);
dfdetect featurize in this process (workers=0, 1 torch thread); dfdetect featurize on a local
dask cluster of --workers processes, once with the cluster's start in the wall time (the first
local cluster of this process, as in one `dfdetect featurize` command: its forkserver starts
cold) and once on a local cluster already up (what a long run converges to: steady state).
Then bytes per clip and compression ratio of each stored array.

Heavy imports (librosa) happen inside main(): local workers fork from a forkserver that imports
the main module, and a command's main module (dfdetect's CLI) is light.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    import torch
    from common import FORMATS, make_clips, reference, time_it
    from rich.console import Console

    from dfdetect.featurize.audio import decode
    from dfdetect.featurize.pipeline import dask_client, featurize
    from dfdetect.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=900)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=128, help="clips per block (shard; featurize's default)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile one in-process pass (after a warm one), top 30 by cumulative time")
    parser.add_argument("--cold-runs", type=int, default=0,
                        help="instead: the end-to-end ratio in this many fresh processes, and its median")
    parser.add_argument("--statistics-cost", action="store_true",
                        help="instead: the recording statistics' time against the in-process pass (mel + LFCC)")
    parser.add_argument("--one-cold-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_runs:
        cold_runs(args)
        return
    if args.statistics_cost:
        statistics_cost(args)
        return
    torch.set_num_threads(1)
    quiet = Console(quiet=True)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        paths = make_clips(corpus, args.clips)
        reference.mel(reference.load_clip(paths[0]))  # librosa compiles numba code on first use

        def decode_only():
            for p in paths:
                decode(p)

        def librosa_loop():
            for p in paths:
                y = reference.load_clip(p)
                reference.mel(y)
                reference.lfcc(y)

        def run(name, **where):
            return lambda: featurize("folder", corpus, str(Path(tmp) / name), features=("mel", "lfcc"),
                                     block_size=args.block_size, console=quiet, **where)

        if args.one_cold_run:   # one sample for --cold-runs: the rows that matter, in this order
            time_it(run("warm.zarr", workers=0))   # as in the full run: the in-process row comes first
            loop, cold = time_it(librosa_loop), time_it(run("cold.zarr", workers=args.workers))
            print(f"librosa {len(paths) / loop:.1f} clips/s, cold featurize {len(paths) / cold:.1f} clips/s, "
                  f"ratio {loop / cold:.3f}")
            return

        if args.profile:
            import cProfile
            import pstats

            run("warm.zarr", workers=0)()
            profile = cProfile.Profile()
            profile.runcall(run("profiled.zarr", workers=0))
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
            return

        times = {
            "decode only": time_it(decode_only),
            "librosa per-file loop": time_it(librosa_loop),
            "dfdetect featurize, in-process": time_it(run("inproc.zarr", workers=0)),
            f"dfdetect featurize, dask x{args.workers}": time_it(run("dask.zarr", workers=args.workers)),
        }
        # The same pass on a local cluster that is already up (as on a long run): featurize's own
        # kind of cluster (dask_client), reached through its scheduler address.
        with dask_client(None, args.workers) as client:
            times[f"dfdetect featurize, dask x{args.workers}, cluster up"] = time_it(
                run("warm.zarr", scheduler=client.scheduler.address))
        store = open_store(str(Path(tmp) / "dask.zarr"))
        sizes = {name: (store.array(name).nbytes, store.array(name).nbytes_stored()) for name in store.feature_names}

    n = len(paths)
    print(f"clips: {n} (2-6 s, {', '.join(f'{f}@{r}' for f, r in FORMATS)})")
    for name, seconds in times.items():
        print(f"{name:<36}{n / seconds:8.1f} clips/s")
    ref = times["librosa per-file loop"]
    for name in list(times)[2:]:
        print(f"ratio {name} / librosa loop: {ref / times[name]:.2f}x")
    steady = times[f"dfdetect featurize, dask x{args.workers}, cluster up"]
    print(f"steady state (cluster up) / librosa loop: {ref / steady:.2f}x"
          f" (target >= 1.6x); end to end (cluster start included): "
          f"{ref / times[f'dfdetect featurize, dask x{args.workers}']:.2f}x (target >= 1.2x)")
    for name, (raw, stored) in sizes.items():
        print(f"{name:<6} {raw / n / 1024:7.1f} KiB/clip raw (float16), {stored / n / 1024:7.1f} KiB/clip "
              f"stored, compression {raw / stored:.2f}x")


def statistics_cost(args) -> None:
    """Recording statistics (featurize/recording.py, computed inside the pass) timed alone on the
    same decoded clips, against the whole in-process pass (workers=0, 1 torch thread) that
    computes them: their share of the pass."""
    import torch
    from common import make_clips, time_it
    from rich.console import Console

    from dfdetect.featurize.audio import decode
    from dfdetect.featurize.frontend import Frontend
    from dfdetect.featurize.pipeline import featurize
    from dfdetect.featurize.recording import clip_statistics

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        paths = make_clips(corpus, args.clips)
        decoded = [(decode(p), p.stat().st_size) for p in paths]
        frontend = Frontend()

        def stats_only():
            for audio, size in decoded:
                clip_statistics(frontend, audio, size)

        featurize("folder", corpus, str(Path(tmp) / "warm.zarr"), features=("mel", "lfcc"), workers=0,
                  block_size=args.block_size, console=Console(quiet=True))   # imports, first-call costs
        passes = [time_it(lambda i=i: featurize("folder", corpus, str(Path(tmp) / f"p{i}.zarr"),
                                                features=("mel", "lfcc"), workers=0, block_size=args.block_size,
                                                console=Console(quiet=True))) for i in range(3)]
        stats = [time_it(stats_only) for _ in range(3)]
    n, full, alone = len(paths), statistics.median(passes), statistics.median(stats)
    print(f"clips: {n}; in-process pass (mel + LFCC, statistics included) {full / n * 1000:.2f} ms/clip, "
          f"statistics alone {alone / n * 1000:.2f} ms/clip: {alone / full:.1%} of the pass (target < 5%)")


def cold_runs(args) -> None:
    ratios = []
    for i in range(args.cold_runs):
        out = subprocess.run([sys.executable, __file__, "--one-cold-run", "--clips", str(args.clips),
                              "--workers", str(args.workers), "--block-size", str(args.block_size)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        ratios.append(float(out.rsplit(" ", 1)[1]))
        print(f"run {i + 1}: {out}", flush=True)
    print(f"end to end (cluster start included) / librosa loop, {len(ratios)} fresh processes: median "
          f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x (target >= 1.2x)")


if __name__ == "__main__":
    main()
