"""Cost of the bootstrap intervals (dfdetect/uncertainty.py) on 10k and 100k clips.

    python bench/bootstrap.py                 # 1,000 resamples; 10,000 and 100,000 clips
    python bench/bootstrap.py --clips 10000 --resamples 1000 --repeats 5

Times, best of `repeats` (a shared machine's other load only ever adds time): EER alone (the
headline interval), then every interval `evaluate` prints (EER, AUC, minDCF and the six decision
rates at two thresholds), clip-level and grouped by 100 speakers. Beside it, one plain `metrics.eer`
call per resample on the same resamples (the loop the vectorised path replaces), timed on 20 of them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from dfdetect.metrics import eer
from dfdetect.uncertainty import Bootstrap, metric_intervals, resample_weights, resampled_clips


def best_of(repeats: int, fn) -> str:
    """Best wall time and best CPU time of this process (on a shared machine the CPU time is what
    the work costs; the wall time also counts waiting for a core)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return f"{min(wall):6.3f} s ({min(cpu):.3f} s CPU)"


def measure(n: int, resamples: int, repeats: int) -> str:
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.5).astype(int)
    scores = rng.normal(labels * 1.5, 1.0)
    speakers = rng.integers(0, 100, n).astype(str)
    boot = Bootstrap(n=resamples)
    thresholds = {"0.5": 0.5, "eer": eer(labels, scores)[1]}
    eer_only = best_of(repeats, lambda: metric_intervals(labels, scores, boot=boot, metrics=("eer",)))
    every = best_of(repeats, lambda: metric_intervals(labels, scores, thresholds=thresholds, boot=boot))
    grouped = best_of(repeats, lambda: metric_intervals(labels, scores, speakers, thresholds, boot))
    weights = next(resample_weights(labels, n=20))
    start = time.process_time()
    for clips in map(resampled_clips, weights.T):
        eer(labels[clips], scores[clips])
    loop = (time.process_time() - start) / 20 * resamples
    return (f"{n:>7} clips: EER {eer_only}   every metric {every}   every metric by speaker {grouped}   "
            f"(a metrics.eer call per resample: {loop:.2f} s CPU)")


def main(clips: list[int], resamples: int, repeats: int) -> None:
    print(f"{resamples} resamples, best of {repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for n in clips:
        print(measure(n, resamples, repeats))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.clips, args.resamples, args.repeats)
