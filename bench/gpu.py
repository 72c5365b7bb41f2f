"""The GPU bench: featurize, cached training and the streaming loader on one device, in one run.

    python bench/gpu.py [--size large] [--clips 8192] [--unique-clips 1024] [--train-rows 4096]
                        [--block-size 128] [--workers N_CPUS]
                        [--device auto] [--heads all] [--epochs 3] [--phase-seconds 10]
                        [--featurize-seconds 120] [--max-seconds 320] [--wavlm-storage float16]

On `--clips` 3 s clips (bench/common.py's mixed-format `folder` corpus: `--unique-clips` written by
all cores, the rest hard links to them), with a random WavLM of `--size` (large: microsoft/wavlm-
large's architecture and cost, no download, loaded through load_wavlm like a real local copy;
tiny: the test model), it measures:

1. featurize: WavLM alone at featurize's configuration on the device (calls of one block, the
   precision featurize picks: bfloat16 on a GPU with native bf16, else float32; the run's WavLM
   storage), at the default WavLM batch (16: the ceiling) and at 64, with the GPU's busy % for
   each: a low busy % with WavLM alone means launches and host work limit it, not the GPU's
   arithmetic (WavLM-Large is ~109 GFLOP per 3 s clip: 2,000 clips/s is ~218 TFLOP/s). Then the
   real `dfdetect.featurize.pipeline.featurize` (mel + LFCC + wave + WavLM) on a local cluster of
   `--workers` one-thread CPU workers that decode and compute the frontend, feeding the one WavLM
   process per GPU, as `dfdetect featurize` runs. Reported: end to end clips/s (cluster start and
   WavLM load included), steady state clips/s (the blocks that finish after the first quarter of
   the clips, from the blocks' own timestamps), its share of the ceiling, and the GPU's mean busy
   % during the pass and during steady state (NVML through torch.cuda.utilization, else
   `nvidia-smi -lms 100`; "n/a" on the CPU). Blocks that fail are printed with their errors, and
   the later phases use the blocks that were written.
   Targets: >= 2,000 WavLM-Large clips/s, busy >= 80%.
   1b. the whole-file protocol: `--long-files` files of 30 s featurized with `--windows all` (every
   3 s window, hop 1.5 s: 19 a file) through the same path: windows/s end to end, the planning
   pass's share (each file decoded once first), the GPU's busy %.
2. cached training: each trainable head of dfdetect.models.registry (the reference study's four
   and the reference systems; LFCC-GMM is fitted once, not stepped, so it is left out) stepped by
   bench/train.py's Trainer (the real step inside train's torch_settings: seed, TF32,
   deterministic cuDNN; on CUDA at train's default AMP, float16 autocast + grad scaling) on
   in-memory batches of the store's first `--train-rows` rows, one untimed warm-up batch, then
   epochs until `--epochs` or `--phase-seconds`; every timer read waits for the GPU. Step clips/s
   leaves out the loader's own time (FeatureLoader.seconds); epoch clips/s is both, as an
   in-memory epoch of `train` runs. Target: a WavLM+AASIST epoch <= 1.5x a Mel-AASIST epoch.
3. the loader: FeatureLoader for each head's inputs and batch, shuffled, in memory (its time in
   phase 2's epochs) and streaming (memory_budget=0: every epoch reads and decompresses the store,
   from the page cache, timed alone), against that head's step clips/s: the slower of the two is
   the bottleneck. Serial clips/s, 1 / (1/loader + 1/step), is an epoch that loads and steps in
   turn (the in-memory loader's copy does; streaming readers overlap the step, so a streaming
   epoch lands between serial and the slower of the two).

Each target's figure is printed as its phase ends, and all of them again at the end, also when a
phase is cut short or the run is interrupted (SIGINT or SIGTERM: gpu_device.sh's timeout sends one).
`--max-seconds` bounds the whole run: featurize stops taking finished blocks at its
`--featurize-seconds` or the deadline (the rows written are used); a timed head or loader mode
stops at `--phase-seconds`; a head or loader mode with less than `--phase-seconds` left before the
deadline is skipped, so what runs past the deadline is at most one in-memory load (GBs for WavLM
inputs) and warm-up, or the cluster's shutdown, plus the cleanup. With the defaults a 16-core
H100/H200 machine should take about 4 minutes (an estimate: not yet run there), at most about
`--max-seconds` + 20 s. Without CUDA everything runs on the CPU, in float32, and says so:

    python bench/gpu.py --size tiny --clips 64 --block-size 16 --ceiling-blocks 2 --workers 2 \\
        --phase-seconds 2 --heads mel_cnn,mel_aasist,wavlm_cnn,wavlm_aasist,lfcc_lcnn

takes about a minute on 2 idle cores (raw-wave AASIST costs ~1 s a clip on a CPU, so it is left
out; tests/test_bench_gpu.py runs smaller versions).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import transformers
from common import make_clips
from rich.console import Console
from train import LAYERS, Trainer, cpu_name
from wavlm import clock, peak_memory
from wavlm import run as wavlm_run

import dfdetect.featurize.pipeline as pipeline
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.devices import resolve_device
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, compute_info
from dfdetect.models.registry import ARCHITECTURES, get_architecture
from dfdetect.store import open_store
from dfdetect.train.data import DataSet, FeatureLoader, row_bytes

FEATURES = ("mel", "lfcc", "wave", "wavlm")
TARGET_CLIPS_S, TARGET_BUSY, TARGET_RATIO = 2000.0, 80.0, 1.5
LARGE_GFLOP_PER_CLIP = 109         # WavLM-Large forward on a 3 s clip
BIG_BATCH = 64                     # the ceiling's second WavLM batch: fewer, larger launches
LONG_SECONDS = 30.0                # the long files of phase 1b (--windows all): 19 windows each


def say(text: str = "") -> None:
    print(text, flush=True)


def table(title: str, header: tuple, rows: list[tuple]) -> None:
    """A plain aligned table (printed as text so a log or a test reads it as is)."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    say(f"\n{title}")
    for k, r in enumerate(cells):
        say("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            say("  " + "  ".join("-" * w for w in widths))


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def times(x: float | None) -> str:
    return "n/a" if x is None else f"{fmt(x, 2)}x"


def rate(clips: int, seconds: float) -> float | None:
    return clips / seconds if seconds > 0 else None


class Targets:
    """The run's figures against their targets, each printed as soon as it is measured (a run cut
    off later still shows it) and all together by `table`, the unmeasured ones as such."""

    GOALS = {"featurize steady state clips/s": f">= {TARGET_CLIPS_S:,.0f} (Large, GPU)",
             "GPU busy % in steady state": f">= {TARGET_BUSY:.0f}",
             "WavLM+AASIST / Mel-AASIST epoch": f"<= {TARGET_RATIO}x",
             "streaming loader / hungriest head": ">= 1x (loader not the bottleneck)"}

    def __init__(self):
        self.rows = {what: ("not measured", goal, "n/a") for what, goal in self.GOALS.items()}
        self.notes: list[str] = []     # what the numbers do not say (failed blocks, skipped phases)

    def set(self, what: str, value: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else "met" if ok else "NOT met"
        self.rows[what] = (value, self.GOALS[what], verdict)
        say(f"  target: {what} {value} ({self.GOALS[what]}): {verdict}")

    def table(self, title: str) -> None:
        table(title, ("figure", "value", "target", "verdict"), [(w, *r) for w, r in self.rows.items()])
        for note in self.notes:
            say(f"  NOTE: {note}")


class GPUBusy:
    """Samples the device's utilisation (% of time a kernel ran) every 0.1 s in a thread: NVML via
    torch.cuda.utilization when it works, else `nvidia-smi -lms 100`; nothing on the CPU."""

    def __init__(self, device: torch.device):
        self.samples: list[tuple[float, float]] = []
        self.source, self._stop, self._proc, self._thread = "n/a (CPU)", threading.Event(), None, None
        if device.type != "cuda":
            return
        try:
            torch.cuda.utilization(device)
            self.source = "NVML (torch.cuda.utilization)"
            self._thread = threading.Thread(target=self._nvml, args=(device,), daemon=True)
        except Exception:
            smi = shutil.which("nvidia-smi")
            if smi is None:
                self.source = "n/a (no NVML, no nvidia-smi)"
                return
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            index = visible.split(",")[device.index] if visible else str(device.index)
            self.source = "nvidia-smi -lms 100"
            self._cmd = [smi, "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                         "-lms", "100"]
            self._thread = threading.Thread(target=self._smi, daemon=True)

    def _nvml(self, device) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.perf_counter(), float(torch.cuda.utilization(device))))

    def _smi(self) -> None:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True)
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), float(line)))

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc:
            self._proc.terminate()
        if self._thread:
            self._thread.join(timeout=2)

    def mean(self, t0: float = -math.inf, t1: float = math.inf) -> float | None:
        values = [v for t, v in self.samples if t0 <= t <= t1]
        return sum(values) / len(values) if values else None


def write_clips(folder: Path, n: int, unique: int, workers: int) -> float:
    """The corpus: `unique` clips written in `workers` processes, the rest hard links to them (the
    same bytes decode at the same cost; names and labels follow the sequence); returns seconds."""
    t0 = time.perf_counter()
    unique = min(n, unique)
    parts = max(1, min(workers, unique // 16))
    bounds = [unique * k // parts for k in range(parts + 1)]
    with ProcessPoolExecutor(parts) as pool:
        paths = [p for part in pool.map(make_clips, [folder] * parts, [b - a for a, b in zip(bounds, bounds[1:])],
                                        [3.0] * parts, [3.0] * parts, bounds[:-1]) for p in part]
    for i in range(unique, n):
        source = paths[i % unique]
        os.link(source, source.with_name(f"clip_{i:05d}{source.suffix}"))
    return time.perf_counter() - t0


def timed_featurize(stop_at: float, **kwargs):
    """featurize, with each finished block's time and clips recorded; past `stop_at` it stops taking
    blocks (the rest are cancelled with the cluster). Returns (result, [(time, clips, block)], cut);
    a failed block's clips count 0."""
    marks, cut, execute = [], [False], pipeline._execute

    def execute_timed(jobs, client, resources):
        for job, report, error in execute(jobs, client, resources):
            marks.append((time.perf_counter(), len(job.paths) if error is None else 0, job.block))
            yield job, report, error
            if time.perf_counter() > stop_at and len(marks) < len(jobs):
                cut[0] = True
                return

    pipeline._execute = execute_timed
    try:
        return pipeline.featurize(**kwargs), marks, cut[0]
    finally:
        pipeline._execute = execute


def report_failures(result, n_blocks: int) -> None:
    """What featurize's quiet console would have shown: the blocks that failed, with their errors
    (a CUDA error or out-of-memory in the WavLM process lands here), and the clips that failed."""
    if result.failed_blocks:
        blocks = sorted(result.failed_blocks)
        say(f"FEATURIZE: {len(blocks)} of {n_blocks} blocks FAILED (blocks {', '.join(map(str, blocks[:20]))}"
            f"{', ...' if len(blocks) > 20 else ''}); the later phases use the blocks written. First errors:")
        for b in blocks[:3]:
            say(f"  block {b}: {result.failed_blocks[b][:2000]}")
    if result.errors:
        say(f"featurize: failed clips by kind {dict(result.errors)}; e.g. "
            + "; ".join(f"{k}: {m[:300]}" for k, m in list(result.error_examples.items())[:3]))


def run_epochs(loader: FeatureLoader, epochs: int, stop_at: float, step=None) -> tuple[int, float, float, bool]:
    """Up to `epochs` passes (step(batch) on each batch, or just the batches), stopping at
    `stop_at`; returns (clips, seconds, the loader's own seconds among them, cut short)."""
    clips, t0, loader_t0 = 0, clock(), loader.seconds
    for e in range(1, epochs + 1):
        for batch in loader.epoch(e):
            if step:
                step(batch)
            clips += len(batch["label"])
            if clock() > stop_at:
                return clips, clock() - t0, loader.seconds - loader_t0, True
    return clips, clock() - t0, loader.seconds - loader_t0, False


def main(argv=None) -> int:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--size", choices=("large", "tiny"), default="large", help="random WavLM (default large)")
    parser.add_argument("--clips", type=int, default=8192, help="featurized 3 s clips (default 8192)")
    parser.add_argument("--unique-clips", type=int, default=1024, help="distinct clips among them (default 1024)")
    parser.add_argument("--train-rows", type=int, default=4096, help="store rows trained on and loaded (default 4096)")
    parser.add_argument("--block-size", type=int, default=128, help="featurize's --block-size (default 128)")
    parser.add_argument("--workers", type=int, default=cores,
                        help=f"featurize CPU workers (default {cores}; 0: featurize in this process)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N, cpu")
    parser.add_argument("--heads", default="all", help="comma-separated architectures (default: every trainable one)")
    parser.add_argument("--epochs", type=int, default=3, help="most epochs per head and loader mode (default 3)")
    parser.add_argument("--ceiling-blocks", type=int, default=8, help="timed WavLM-only blocks per batch (default 8)")
    parser.add_argument("--phase-seconds", type=float, default=10,
                        help="cap per timed head, loader mode and the ceiling (default 10)")
    parser.add_argument("--featurize-seconds", type=float, default=120, help="cap on the featurize pass (default 120)")
    parser.add_argument("--max-seconds", type=float, default=320, help="cap on the whole run (default 320)")
    parser.add_argument("--long-files", type=int, default=64,
                        help=f"files of {LONG_SECONDS:g} s featurized with --windows all after phase 1 (0: skip)")
    parser.add_argument("--wavlm-storage", choices=("float16", "uint8"), default="float16",
                        help="how the store holds WavLM's layers (uint8: dequantized as the loader reads)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    where = f"{torch.cuda.get_device_name(device)} ({device})" if cuda else f"CPU ({cpu_name()})"
    heads = [a for a in ARCHITECTURES if not get_architecture(a).fitted] if args.heads == "all" \
        else args.heads.split(",")
    for h in heads:
        get_architecture(h)
    say(f"GPU bench on {where}" + ("" if cuda else ": no CUDA device, so everything runs on the CPU in float32")
        + f"; torch {torch.__version__}; {cores} CPU cores, {args.workers} featurize workers; WavLM "
        f"{args.size}-sized, random weights, layers stored as {args.wavlm_storage}; {args.clips} clips of 3 s")
    targets, status = Targets(), 1
    # The device command's timeout interrupts the run: the figures so far still print (SIGINT
    # handled even where a shell started us with it ignored; SIGTERM alike).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    precision = compute_info(str(device))["precision"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            status = bench(args, Path(tmp), device, where, heads, t_start + args.max_seconds, targets)
        except KeyboardInterrupt:   # the device command's timeout: the figures so far still print
            say("\nINTERRUPTED (SIGINT/SIGTERM): the figures measured so far follow")
            targets.notes.append("interrupted (SIGINT/SIGTERM): the figures not measured are missing")
            status = 130
        finally:
            targets.table(f"summary: {where}, WavLM {args.size}-sized at {precision}, training "
                          f"{'float16 AMP' if cuda else 'float32'}, {args.clips} clips, total "
                          f"{time.perf_counter() - t_start:.0f} s (--max-seconds {args.max_seconds:.0f})")
        t0 = time.perf_counter()
    say(f"  (temporary files removed in {time.perf_counter() - t0:.1f} s)")
    return status


def bench(args, tmp: Path, device: torch.device, where: str, heads: list[str], deadline: float,
          targets: Targets) -> int:
    """The three phases; 0 when every block was featurized."""
    t0 = time.perf_counter()
    model_dir = save_random_wavlm(tmp / "wavlm", size=args.size)
    model_s = time.perf_counter() - t0
    clips_s = write_clips(tmp / "corpus", args.clips, args.unique_clips, os.cpu_count() or 1)
    say(f"setup: random WavLM written in {model_s:.1f} s, {args.clips} clips in {clips_s:.1f} s "
        f"({min(args.clips, args.unique_clips)} distinct, the rest hard links to them)")
    wavlm = WavLMConfig(model=str(model_dir), layers=LAYERS[args.size], storage=args.wavlm_storage)

    store, rows, failed = featurize_phase(args, tmp, device, where, wavlm, model_dir, deadline, targets)
    long_files_phase(args, tmp, device, where, wavlm, deadline)
    if failed:
        targets.notes.append(f"featurize: blocks FAILED: {failed} (their first errors are printed above table 1)")
    if len(rows) < 2:
        say("phases 2-3 skipped: fewer than 2 ok rows in the blocks that featurize wrote")
        targets.notes.append("phases 2-3 skipped: fewer than 2 ok rows in the blocks written")
        return 1
    data = DataSet("train", str(tmp / "bench.zarr"), store, rows[:args.train_rows])
    trained = training_phase(args, data, device, where, heads, deadline, targets)
    loader_phase(args, data, trained, deadline, targets)
    return 1 if failed else 0


def featurize_phase(args, tmp: Path, device: torch.device, where: str, wavlm: WavLMConfig, model_dir: Path,
                    deadline: float, targets: Targets):
    """The WavLM-only ceiling, then the real featurize pass; returns (store, the ok rows of the
    blocks written, the number of blocks that failed)."""
    cuda = device.type == "cuda"
    batches = tuple(dict.fromkeys((wavlm.batch_size, BIG_BATCH)))
    with GPUBusy(device) as busy:
        ceiling = wavlm_run(model_dir, args.size, str(device), args.block_size, batches, args.ceiling_blocks, 1,
                            args.wavlm_storage, min(deadline, clock() + args.phase_seconds))
    for c in ceiling.values():
        c["busy"] = busy.mean(c["t0"], c["t1"])
    clear_wavlm_cache()
    if cuda:
        torch.cuda.empty_cache()
    top = ceiling[wavlm.batch_size]["rate"]     # what featurize runs: its default batch

    store_path = str(tmp / "bench.zarr")
    stop_at = min(deadline, time.perf_counter() + args.featurize_seconds)
    with GPUBusy(device) as busy:
        t0 = time.perf_counter()
        result, marks, cut = timed_featurize(
            stop_at, dataset="folder", root=tmp / "corpus", out=store_path, features=FEATURES,
            wavlm=wavlm, device=args.device, workers=args.workers, block_size=args.block_size,
            console=Console(quiet=True))
        t1 = time.perf_counter()
    report_failures(result, -(-args.clips // args.block_size))
    store = open_store(store_path, result.version, require_complete=False)
    done = sum(c for _, c, _ in marks)
    end_to_end = done / (t1 - t0)
    # steady state: the blocks after the first quarter of the clips (past the start and first wave)
    q = next((k for k, m in enumerate(itertools.accumulate(c for _, c, _ in marks)) if m >= done / 4), 0)
    steady_clips = sum(c for _, c, _ in marks[q + 1:])
    steady_s = marks[-1][0] - marks[q][0] if len(marks) > q + 1 else None
    steady = steady_clips / steady_s if steady_s else None
    busy_all, busy_steady = busy.mean(t0, t1), busy.mean(marks[q][0], marks[-1][0]) if steady_s else None
    shape = store.array("wavlm").shape
    table(f"1. featurize on {where}, WavLM {args.size}-sized at {store.config['wavlm']['precision']}, block "
          f"{args.block_size}, WavLM batch {wavlm.batch_size}, {args.workers} CPU workers",
          ("what", "clips", "seconds", "clips/s", "% of ceiling", "GPU busy %"),
          [(f"WavLM only, batch {b}" + (" (ceiling)" if b == wavlm.batch_size else ""),
            c["clips"], fmt(c["t1"] - c["t0"]), fmt(c["rate"]),
            fmt(100 * c["rate"] / top, 0), fmt(c["busy"])) for b, c in ceiling.items()]
          + [("featurize end to end", done, fmt(t1 - t0), fmt(end_to_end), fmt(100 * end_to_end / top), fmt(busy_all)),
             ("featurize steady state", steady_clips, fmt(steady_s), fmt(steady),
              fmt(100 * steady / top if steady else None), fmt(busy_steady))])
    say(f"  start to first block {fmt(marks[0][0] - t0 if marks else None)} s (cluster start, WavLM load); "
        f"steady state: the blocks after the first quarter of the clips; {result.ok} ok rows of "
        f"{args.clips}; wavlm stored as {list(shape)} {store.array('wavlm').dtype}; GPU busy from "
        f"{busy.source} ({len(busy.samples)} samples)"
        + ("; CUT SHORT at --featurize-seconds/--max-seconds" if cut else ""))
    if args.size == "large":
        say("  WavLM alone: " + ", ".join(f"batch {b} {c['rate'] * LARGE_GFLOP_PER_CLIP / 1e3:,.0f} TFLOP/s"
                                          for b, c in ceiling.items())
            + f" (~{LARGE_GFLOP_PER_CLIP} GFLOP a clip); low busy % alone: launches and host work limit it")
    big = ceiling.get(BIG_BATCH)
    if cuda and big and big["rate"] >= 1.2 * top:
        say(f"  SUGGESTION: WavLM batch {BIG_BATCH} runs {big['rate'] / top:.2f}x the default batch "
            f"{wavlm.batch_size}'s clips/s alone; featurize could use WavLMConfig(batch_size={BIG_BATCH}) "
            "(the default is not changed by this bench)")
    targets.set("featurize steady state clips/s", fmt(steady),
                steady >= TARGET_CLIPS_S if steady and cuda and args.size == "large" else None)
    targets.set("GPU busy % in steady state", fmt(busy_steady),
                busy_steady >= TARGET_BUSY if busy_steady is not None else None)

    rows = store.rows()
    if not store.complete:   # cut short or failed blocks: only the blocks written
        rows = rows[np.isin(rows // args.block_size, [b for _, c, b in marks if c])]
    return store, rows, len(result.failed_blocks)


def long_files_phase(args, tmp: Path, device: torch.device, where: str, wavlm: WavLMConfig, deadline: float) -> None:
    """The whole-file protocol's featurize: `--long-files` files of LONG_SECONDS with every 3 s window
    kept (`--windows all`, docs/whole-file.md), through the same WavLM path: windows/s end to end,
    the planning pass's share (every file decoded once to lay out the rows), and the GPU's busy %."""
    if not args.long_files or clock() > deadline - 2 * args.phase_seconds:
        say("1b. long files skipped" + ("" if not args.long_files else ": too close to --max-seconds"))
        return
    from dfdetect.featurize.config import FeaturizeConfig

    make_clips(tmp / "long", args.long_files, LONG_SECONDS, LONG_SECONDS)
    planned, plan = [], pipeline.plan_windows

    def timed_plan(*a, **k):
        t = time.perf_counter()
        try:
            return plan(*a, **k)
        finally:
            planned.append(time.perf_counter() - t)

    pipeline.plan_windows = timed_plan
    config = FeaturizeConfig.from_options(features=",".join(FEATURES), windows="all")
    stop_at = min(deadline - args.phase_seconds, time.perf_counter() + args.featurize_seconds)
    try:
        with GPUBusy(device) as busy:
            t0 = time.perf_counter()
            result, marks, cut = timed_featurize(
                stop_at, dataset="folder", root=tmp / "long", out=str(tmp / "long.zarr"), config=config,
                wavlm=wavlm, device=args.device, workers=args.workers, block_size=args.block_size,
                console=Console(quiet=True))
            t1 = time.perf_counter()
    finally:
        pipeline.plan_windows = plan
    report_failures(result, -(-result.n_clips // args.block_size))
    done = sum(c for _, c, _ in marks)
    table(f"1b. featurize --windows all on {where}: {args.long_files} files of {LONG_SECONDS:g} s, every 3 s "
          "window (hop 1.5 s)", ("what", "windows", "seconds", "windows/s", "planning %", "GPU busy %"),
          [("featurize --windows all, end to end", done, fmt(t1 - t0), fmt(done / (t1 - t0)),
            fmt(100 * sum(planned) / (t1 - t0)), fmt(busy.mean(t0, t1)))])
    say(f"  {result.n_clips} windows of {result.files} files" + ("; CUT SHORT" if cut else ""))


def training_phase(args, data: DataSet, device: torch.device, where: str, heads: list[str], deadline: float,
                   targets: Targets) -> dict[str, dict]:
    """Each head's cached training steps on in-memory batches: {head: its figures}."""
    cuda = device.type == "cuda"
    shape = data.store.array("wavlm").shape
    overrides = {"hidden_size": shape[3], "num_layers": shape[1]}
    loaders: dict[tuple, FeatureLoader] = {}
    trained: dict[str, dict] = {}
    for arch in heads:
        a = get_architecture(arch)
        key = (a.inputs, a.batch_size)
        # the in-memory load (GBs for WavLM inputs) and warm-up are not cut: skip what would overrun
        if deadline - clock() < args.phase_seconds:
            trained[arch] = {"skipped": True}
            continue
        load_s = None
        if key not in loaders:
            t0 = clock()
            loaders[key] = FeatureLoader(data, a.inputs, a.batch_size, shuffle=True, seed=0, memory_budget=1 << 50)
            load_s = clock() - t0
        loader = loaders[key]
        trainer = Trainer(arch, overrides if a.uses_wavlm else {}, str(device), amp=cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with trainer.settings():
            warm = next(iter(loader.epoch(0)))
            trainer.step({k: warm[k] for k in a.inputs}, warm["label"])
            clips, seconds, loader_s, cut = run_epochs(
                loader, args.epochs, min(deadline, clock() + args.phase_seconds),
                lambda b, t=trainer, inputs=a.inputs: t.step({k: b[k] for k in inputs}, b["label"]))
        trained[arch] = {"clips": clips, "step": rate(clips, seconds - loader_s), "epoch": rate(clips, seconds),
                         "loader": rate(clips, loader_s), "cut": cut, "load_s": load_s, "key": key,
                         "precision": trainer.precision, "memory": peak_memory(device)}
        del trainer
    loaders.clear()   # phase 3 streams; the in-memory loaders' time is measured above
    table(f"2. cached training on {where} ({len(data.rows)} rows in memory, one warm-up batch untimed; step: "
          f"the loader's time left out; epoch: both)",
          ("head", "inputs", "batch", "precision", "clips", "step clips/s", "epoch clips/s", "epoch s", "note"),
          [(arch, "+".join(get_architecture(arch).inputs), "", "", "", "n/a", "n/a", "n/a",
            "skipped: under --phase-seconds left before --max-seconds")
           if r.get("skipped") else
           (arch, "+".join(r["key"][0]), r["key"][1], r["precision"], r["clips"], fmt(r["step"]), fmt(r["epoch"]),
            fmt(len(data.rows) / r["epoch"] if r["epoch"] else None, 2),
            "; ".join(filter(None, (f"in-memory load {r['load_s']:.1f} s" if r["load_s"] is not None else "",
                                    "cut at --phase-seconds" if r["cut"] else "",
                                    r["memory"].removeprefix(", ")))))
           for arch, r in trained.items()])
    mel, wl = trained.get("mel_aasist", {}), trained.get("wavlm_aasist", {})
    ratio = mel["epoch"] / wl["epoch"] if mel.get("epoch") and wl.get("epoch") else None
    step_ratio = mel["step"] / wl["step"] if mel.get("step") and wl.get("step") else None
    say(f"  WavLM+AASIST / Mel-AASIST: epoch {times(ratio)}, step alone {times(step_ratio)}")
    targets.set("WavLM+AASIST / Mel-AASIST epoch", times(ratio), ratio <= TARGET_RATIO if ratio else None)
    return trained


def loader_phase(args, data: DataSet, trained: dict[str, dict], deadline: float, targets: Targets) -> None:
    """The streaming loader for each head's inputs and batch, alone, against the head's step."""
    streaming: dict[tuple, float | None] = {}
    for key in dict.fromkeys(r["key"] for r in trained.values() if "key" in r):
        if deadline - clock() < args.phase_seconds:
            streaming[key] = None
            continue
        loader = FeatureLoader(data, key[0], key[1], shuffle=True, seed=0, memory_budget=0)
        assert not loader.in_memory
        clips, _, loader_s, _ = run_epochs(loader, args.epochs, min(deadline, clock() + args.phase_seconds))
        streaming[key] = rate(clips, loader_s)
    rows, slowest = [], None
    for arch, r in trained.items():
        if "key" not in r:
            continue
        for mode, feed in (("in memory", r["loader"]), ("streaming", streaming[r["key"]])):
            known = feed is not None and r["step"] is not None
            rows.append((arch, "+".join(r["key"][0]), f"{row_bytes(data.store, r['key'][0]) / 1e6:.3f}", mode,
                         fmt(feed), fmt(r["step"]), fmt(1 / (1 / feed + 1 / r["step"]) if known else None),
                         "n/a" if not known else "loader" if feed < r["step"] else "training step"))
            if mode == "streaming" and known:
                slowest = min(feed / r["step"], slowest or math.inf)
    table("3. loader against the training step (batch = the head's, shuffled, store on local disk, page cache "
          "warm; in memory: its time in phase 2's epochs; streaming: memory_budget 0, timed alone)",
          ("head", "inputs", "MB/clip", "loader", "loader clips/s", "step clips/s", "serial clips/s", "bottleneck"),
          rows)
    if any(v is None for v in streaming.values()):
        say("  streaming: n/a where skipped (under --phase-seconds left before --max-seconds)")
    targets.set("streaming loader / hungriest head", times(slowest), slowest >= 1 if slowest else None)


if __name__ == "__main__":
    raise SystemExit(main())
