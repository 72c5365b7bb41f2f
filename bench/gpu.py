"""The GPU bench: featurize, cached training and the streaming loader on one device, in one run.

    python bench/gpu.py [--size large] [--clips 8192] [--unique-clips 1024] [--train-rows 4096]
                        [--block-size 128] [--workers N_CPUS]
                        [--device auto] [--heads all] [--epochs 3] [--phase-seconds 15]
                        [--featurize-seconds 180] [--max-seconds 420] [--wavlm-storage float16]

On `--clips` 3 s clips (bench/common.py's mixed-format `folder` corpus: `--unique-clips` written by
all cores, the rest hard links to them), with a random WavLM of `--size` (large: microsoft/wavlm-
large's architecture and cost, no download, loaded through load_wavlm like a real local copy;
tiny: the test model), it measures:

1. featurize: WavLM alone at featurize's configuration on the device (calls of one block, the
   default WavLM batch, the precision featurize picks: bfloat16 on a GPU with native bf16, else
   float32): the ceiling. Then the real `dfdetect.featurize.pipeline.featurize` (mel + LFCC +
   wave + WavLM) on a local cluster of `--workers` one-thread CPU workers that decode and compute
   the frontend, feeding the one WavLM process per GPU, as `dfdetect featurize` runs. Reported:
   end to end clips/s (cluster start and WavLM load included), steady state clips/s (the blocks
   that finish after the first quarter of the clips, from the blocks' own timestamps), its share
   of the ceiling, and the GPU's mean busy % during the pass and during steady state (NVML through
   torch.cuda.utilization, else `nvidia-smi -lms 100`; "n/a" on the CPU).
   Targets: >= 2,000 WavLM-Large clips/s, busy >= 80%.
2. cached training: each trainable head of dfdetect.models.registry (the reference study's four
   and the reference systems; LFCC-GMM is fitted once, not stepped, so it is left out) stepped by
   bench/train.py's Trainer (the real step; on CUDA at train's default AMP, float16 autocast + grad
   scaling) on in-memory batches of the store's first `--train-rows` rows, one untimed warm-up
   batch, then epochs until `--epochs` or `--phase-seconds`; every timer read waits for
   the GPU. Target: a WavLM+AASIST epoch <= 1.5x a Mel-AASIST epoch (the ratio of their clips/s).
3. the loader: FeatureLoader for each head's inputs, in memory and streaming (memory_budget=0:
   every epoch reads and decompresses the store, from the page cache), shuffled, at each head's
   batch, against that head's training clips/s: the slower of the two is the bottleneck (train
   loads and steps in turn, so an epoch runs at about 1 / (1/loader + 1/step)).

`--max-seconds` bounds the whole run: a phase past its `--phase-seconds` or the run's deadline is
cut short and says so (featurize stops taking finished blocks; the rows written are used). With
the defaults a 16-core H200 machine should finish in about 5-6 minutes (at most ~7.5 with every
cap reached). Without CUDA everything runs on the CPU, in float32, and says so:

    python bench/gpu.py --size tiny --clips 64 --block-size 16 --ceiling-blocks 2 --workers 2 \
        --phase-seconds 2 --heads mel_cnn,mel_aasist,wavlm_cnn,wavlm_aasist,lfcc_lcnn

takes under a minute on 2 idle cores (raw-wave AASIST costs ~1 s a clip on a CPU, so it is left
out; tests/test_bench_gpu.py runs a smaller version).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import transformers
from rich.console import Console

import dfdetect.featurize.pipeline as pipeline
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.devices import resolve_device
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, compute_info
from dfdetect.models.registry import ARCHITECTURES, get_architecture
from dfdetect.store import open_store
from dfdetect.train.data import DataSet, FeatureLoader, row_bytes

from common import make_clips
from train import LAYERS, Trainer, cpu_name
from wavlm import clock, peak_memory, run as wavlm_run

FEATURES = ("mel", "lfcc", "wave", "wavlm")
TARGET_CLIPS_S, TARGET_BUSY, TARGET_RATIO = 2000.0, 80.0, 1.5


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
    blocks (the rest are cancelled with the cluster). Returns (result, [(time, clips, block)], cut)."""
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


def run_epochs(loader: FeatureLoader, epochs: int, stop_at: float, step=None) -> tuple[int, float, bool]:
    """Clips and seconds of up to `epochs` passes (step(batch) on each batch, or just the batch),
    stopping at `stop_at`; returns (clips, seconds, cut short)."""
    clips, t0 = 0, clock()
    for e in range(1, epochs + 1):
        for batch in loader.epoch(e):
            if step:
                step(batch)
            clips += len(batch["label"])
            if clock() > stop_at:
                return clips, clock() - t0, True
    return clips, clock() - t0, False


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
    parser.add_argument("--workers", type=int, default=cores, help=f"featurize CPU workers (default {cores})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N, cpu")
    parser.add_argument("--heads", default="all", help="comma-separated architectures (default: every trainable one)")
    parser.add_argument("--epochs", type=int, default=3, help="most epochs per head and loader mode (default 3)")
    parser.add_argument("--ceiling-blocks", type=int, default=8, help="timed WavLM-only blocks (default 8)")
    parser.add_argument("--phase-seconds", type=float, default=15, help="cap per timed head / loader mode")
    parser.add_argument("--featurize-seconds", type=float, default=180, help="cap on the featurize pass")
    parser.add_argument("--max-seconds", type=float, default=420, help="cap on the whole run (default 420)")
    parser.add_argument("--wavlm-storage", choices=("float16", "uint8"), default="float16",
                        help="how the store holds WavLM's layers (uint8: dequantized as the loader reads)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.max_seconds
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
    summary: list[tuple[str, str, str, str]] = []   # what, value, target, verdict

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "NOT met"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = save_random_wavlm(tmp / "wavlm", size=args.size)
        model_s = time.perf_counter() - t0
        clips_s = write_clips(tmp / "corpus", args.clips, args.unique_clips, cores)
        say(f"setup (not timed): random WavLM written in {model_s:.1f} s, {args.clips} clips in {clips_s:.1f} s "
            f"({min(args.clips, args.unique_clips)} distinct, the rest hard links to them)")
        wavlm = WavLMConfig(model=str(model_dir), layers=LAYERS[args.size], storage=args.wavlm_storage)
        precision = compute_info(str(device))["precision"]

        # 1. featurize: the WavLM-only ceiling, then the real pass
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        ceiling = wavlm_run(model_dir, args.size, str(device), args.block_size, wavlm.batch_size,
                            args.ceiling_blocks, 2)
        ceiling_mem = peak_memory(device)
        clear_wavlm_cache()
        if cuda:
            torch.cuda.empty_cache()
        store_path = str(tmp / "bench.zarr")
        stop_at = min(deadline, time.perf_counter() + args.featurize_seconds)
        with GPUBusy(device) as busy:
            t0 = time.perf_counter()
            result, marks, cut = timed_featurize(
                stop_at, dataset="folder", root=tmp / "corpus", out=store_path, features=FEATURES,
                wavlm=wavlm, device=args.device, workers=args.workers, block_size=args.block_size,
                console=Console(quiet=True))
            t1 = time.perf_counter()
        store = open_store(store_path, result.version, require_complete=not cut)   # cut: the rows written
        done = sum(c for _, c, _ in marks)
        end_to_end = done / (t1 - t0)
        # steady state: the blocks after the first quarter of the clips (past the start and first wave)
        q = next((k for k, m in enumerate(itertools.accumulate(c for _, c, _ in marks)) if m >= done / 4), 0)
        steady_clips = sum(c for _, c, _ in marks[q + 1:])
        steady_s = marks[-1][0] - marks[q][0] if len(marks) > q + 1 else None
        steady = steady_clips / steady_s if steady_s else None
        busy_all, busy_steady = busy.mean(t0, t1), busy.mean(marks[q][0], marks[-1][0]) if steady_s else None
        stored = store.config["wavlm"]["precision"]
        shape = store.array("wavlm").shape
        table(f"1. featurize on {where}, WavLM {args.size}-sized at {stored}, block {args.block_size}, "
              f"WavLM batch {wavlm.batch_size}, {args.workers} CPU workers",
              ("what", "clips", "seconds", "clips/s", "% of ceiling", "GPU busy %"),
              [("WavLM only (ceiling)", args.block_size * args.ceiling_blocks, "", fmt(ceiling), "100", ""),
               ("featurize end to end", done, fmt(t1 - t0), fmt(end_to_end), fmt(100 * end_to_end / ceiling),
                fmt(busy_all)),
               ("featurize steady state", steady_clips, fmt(steady_s), fmt(steady),
                fmt(100 * steady / ceiling if steady else None), fmt(busy_steady))])
        say(f"  start to first block {fmt(marks[0][0] - t0 if marks else None)} s (cluster start, WavLM load); "
            f"steady state: the blocks after the first quarter of the clips; {result.ok} ok rows of "
            f"{args.clips}; wavlm stored as {list(shape)} {store.array('wavlm').dtype}; GPU busy from "
            f"{busy.source} ({len(busy.samples)} samples); ceiling{ceiling_mem or ': no GPU memory on the CPU'}"
            + ("; CUT SHORT at --featurize-seconds/--max-seconds" if cut else ""))
        summary.append(("featurize steady state clips/s", fmt(steady), f">= {TARGET_CLIPS_S:,.0f} (Large, GPU)",
                        verdict(steady >= TARGET_CLIPS_S if steady and cuda and args.size == "large" else None)))
        summary.append(("GPU busy % in steady state", fmt(busy_steady), f">= {TARGET_BUSY:.0f}",
                        verdict(busy_steady >= TARGET_BUSY if busy_steady is not None else None)))
        if result.ok < 2:
            say("featurize wrote fewer than 2 rows: nothing to train on")
            return 1

        # 2. cached training per head, 3. the loader for the same inputs
        rows = store.rows()
        if cut:   # only the blocks that finished
            rows = rows[np.isin(rows // args.block_size, [b for _, c, b in marks if c])]
        data = DataSet("train", store_path, store, rows[:args.train_rows])
        overrides = {"hidden_size": shape[3], "num_layers": shape[1]}
        loaders: dict[tuple, FeatureLoader] = {}
        trained: dict[str, dict] = {}
        for arch in heads:
            a = get_architecture(arch)
            key = (a.inputs, a.batch_size)
            stop_at = min(deadline, clock() + args.phase_seconds)
            if clock() > deadline:
                trained[arch] = {"skipped": True}
                continue
            if key not in loaders:
                loaders[key] = FeatureLoader(data, a.inputs, a.batch_size, shuffle=True, seed=0,
                                             memory_budget=1 << 50)
            loader = loaders[key]
            trainer = Trainer(arch, overrides if a.uses_wavlm else {}, str(device), amp=cuda)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            warm = next(iter(loader.epoch(0)))
            trainer.step({k: warm[k] for k in a.inputs}, warm["label"])
            clips, seconds, cut = run_epochs(loader, args.epochs, stop_at,
                                             lambda b: trainer.step({k: b[k] for k in a.inputs}, b["label"]))
            trained[arch] = {"clips": clips, "rate": clips / seconds, "cut": cut, "batch": a.batch_size,
                             "precision": trainer.precision, "memory": peak_memory(device), "key": key}
            del trainer
        table(f"2. cached training on {where} ({len(data.rows)} rows in memory, one warm-up batch untimed)",
              ("head", "inputs", "batch", "precision", "clips", "clips/s", "epoch s", "note"),
              [(arch, "+".join(get_architecture(arch).inputs), "", "", "", "n/a", "n/a", "skipped: --max-seconds")
               if r.get("skipped") else
               (arch, "+".join(r["key"][0]), r["batch"], r["precision"], r["clips"], fmt(r["rate"]),
                fmt(len(data.rows) / r["rate"], 2),
                "; ".join(filter(None, ("cut at --phase-seconds" if r["cut"] else "",
                                        r["memory"].removeprefix(", ")))))
               for arch, r in trained.items()])
        mel, wl = trained.get("mel_aasist", {}), trained.get("wavlm_aasist", {})
        ratio = mel["rate"] / wl["rate"] if "rate" in mel and "rate" in wl else None
        say(f"  cached WavLM+AASIST epoch / Mel-AASIST epoch: {fmt(ratio, 2)}{'x' * bool(ratio)} "
            f"(target <= {TARGET_RATIO}x)")
        summary.append(("WavLM+AASIST / Mel-AASIST epoch", f"{fmt(ratio, 2)}{'x' * bool(ratio)}", f"<= {TARGET_RATIO}x",
                        verdict(ratio <= TARGET_RATIO if ratio else None)))

        feed: dict[tuple, dict] = {}
        for key in dict.fromkeys(r["key"] for r in trained.values() if "key" in r):
            rates = {}
            for mode in ("in memory", "streaming"):
                stop_at = min(deadline, clock() + args.phase_seconds)
                if clock() > deadline:
                    rates[mode] = (None, False)
                    continue
                loader = loaders[key] if mode == "in memory" else \
                    FeatureLoader(data, key[0], key[1], shuffle=True, seed=0, memory_budget=0)
                assert loader.in_memory == (mode == "in memory")
                clips, seconds, cut = run_epochs(loader, args.epochs, stop_at)
                rates[mode] = (clips / seconds, cut)
            feed[key] = rates
        rows = []
        slowest = None
        for arch, r in trained.items():
            if "key" not in r:
                continue
            mem, stream = feed[r["key"]]["in memory"][0], feed[r["key"]]["streaming"][0]
            for mode, rate in (("in memory", mem), ("streaming", stream)):
                bottleneck = "n/a" if rate is None else "loader" if rate < r["rate"] else "training step"
                serial = None if rate is None else 1 / (1 / rate + 1 / r["rate"])
                rows.append((arch, "+".join(r["key"][0]), f"{row_bytes(store, r['key'][0]) / 1e6:.3f}", mode,
                             fmt(rate), fmt(r["rate"]), fmt(serial), bottleneck))
                if mode == "streaming" and rate is not None:
                    share = rate / r["rate"]
                    slowest = share if slowest is None else min(slowest, share)
        table(f"3. loader against training appetite (batch = the head's, shuffled, store on local disk, page "
              f"cache warm; in memory: memory_budget 1 PiB, streaming: memory_budget 0)",
              ("head", "inputs", "MB/clip", "loader", "loader clips/s", "train clips/s", "serial clips/s",
               "bottleneck"), rows)
        summary.append(("streaming loader / hungriest head", f"{fmt(slowest, 2)}{'x' * bool(slowest)}",
                        ">= 1x (loader not the bottleneck)", verdict(slowest >= 1 if slowest else None)))
        loaders.clear()

    total = time.perf_counter() - t_start
    table(f"summary: {where}, WavLM {args.size}-sized at {precision}, training "
          f"{'float16 AMP' if cuda else 'float32'}, {args.clips} clips, total {total:.0f} s "
          f"(--max-seconds {args.max_seconds:.0f})", ("figure", "value", "target", "verdict"), summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
