"""The featurize pass (mel + LFCC into a Zarr store) against a per-file librosa loop and against
decode alone, on the same generated clips, side by side in one run.

    python bench/featurize.py [--clips 400] [--workers 2] [--block-size 32]
    python bench/featurize.py --clips 160 --profile     # where one worker's time goes (cProfile)

Rows: decode only (1 process); the librosa loop (librosa.load + mel + LFCC per file, 1 process);
dfdetect featurize in this process (workers=0, 1 torch thread); dfdetect featurize on a local
dask cluster of --workers processes, once with the cluster's start in the wall time (what one
command costs) and once on a cluster already up (what a long run converges to). Then bytes per
clip and compression ratio of each stored array.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from distributed import Client, LocalCluster
from rich.console import Console

from dfdetect.featurize.audio import decode
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import open_store

from common import FORMATS, make_clips, reference, time_it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=32, help="clips per block (shard)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile one in-process pass (after a warm one), top 30 by cumulative time")
    args = parser.parse_args()
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
        # The same pass on a cluster that is already up (as on a long run, or with --scheduler):
        # the local cluster's start (worker processes importing torch) is paid once per command.
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                client.run(lambda: __import__("dfdetect.featurize.pipeline"))
            times[f"dfdetect featurize, dask x{args.workers}, cluster up"] = time_it(
                run("warm.zarr", scheduler=cluster.scheduler_address))
        store = open_store(str(Path(tmp) / "dask.zarr"))
        sizes = {name: (store.array(name).nbytes, store.array(name).nbytes_stored()) for name in store.feature_names}

    n = len(paths)
    print(f"clips: {n} (2-6 s, {', '.join(f'{f}@{r}' for f, r in FORMATS)})")
    for name, seconds in times.items():
        print(f"{name:<36}{n / seconds:8.1f} clips/s")
    ref = times["librosa per-file loop"]
    for name in list(times)[2:]:
        print(f"ratio {name} / librosa loop: {ref / times[name]:.2f}x")
    for name, (raw, stored) in sizes.items():
        print(f"{name:<6} {raw / n / 1024:7.1f} KiB/clip raw (float16), {stored / n / 1024:7.1f} KiB/clip "
              f"stored, compression {raw / stored:.2f}x")


if __name__ == "__main__":
    main()
