"""WavLM featurize throughput in clips/s, on CPU and (when CUDA is available) on the GPU.

The frozen extractor (chosen layers + all-layer stats, float16 out) on 3 s clips, for a
WavLM-Large-sized model and the tiny test model.

    python bench/wavlm.py [--batch 4] [--batches 2] [--gpu-block 128] [--gpu-blocks 4]
                          [--warmup 2] [--sizes large,tiny] [--threads N]

The models are random weights written by save_random_wavlm (same architecture and cost as
microsoft/wavlm-large; no download), loaded through load_wavlm like a real local copy. Each run
makes `warmup` untimed calls (the first calls of a fresh model pay one-off setup costs), then
times `batches` calls of `batch` clips (batch_size = batch). On the GPU it times what featurize
runs there: calls of one block (`--gpu-block` clips, featurize's --block-size default) at
WavLMConfig's default batch_size, at the precision featurize picks (wavlm_precision "auto"), in
this one process (featurize's one WavLM process per GPU); every timer read waits for the GPU
(torch.cuda.synchronize), and the peak GPU memory of the timed calls is reported. CPU timings are
only meaningful on an otherwise idle machine: with 2 torch threads, one busy core elsewhere halves
the throughput or worse.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from dfdetect.demo.corpus import synthesize
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, load_wavlm

LAYERS = {"large": (6, 12, 24), "tiny": (0, 1, 2)}


def clips(n: int) -> np.ndarray:
    """n prepared 3 s waveforms (speech-like, peak 1), as the frontend hands them to WavLM."""
    waves = [synthesize("real", np.random.default_rng([5, i]), 3.0)[:48000] for i in range(n)]
    return np.stack([w / np.abs(w).max() for w in waves]).astype(np.float32)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def clock() -> float:
    """perf_counter after the GPU's queued work is done (CUDA calls return before it is)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory(device) -> str:
    """The peak GPU memory since the last reset, for a result line ("" on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def run(model_dir: Path, size: str, device: str, call: int, batches: tuple[int, ...], calls: int, warmup: int,
        storage: str = "float16", stop_at: float = math.inf) -> dict[int, dict]:
    """Time up to `calls` extractor calls of `call` clips at each batch size of `batches` (WavLM
    storage `storage`), stopping after the call that passes `stop_at`: {batch: {"clips", "rate":
    clips/s, "t0", "t1": the timed window (perf_counter)}}. One load serves every batch size: a call runs
    in batches of the extractor's `batch_size` (the attribute its out-of-memory back-off lowers)."""
    clear_wavlm_cache()
    t0 = clock()
    ex = load_wavlm(WavLMConfig(model=str(model_dir), layers=LAYERS[size], batch_size=batches[0],
                                storage=storage), device)
    load_s = clock() - t0
    waves = clips(call)
    where = torch.cuda.get_device_name(ex.device) if ex.device.type == "cuda" else \
        f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    results = {}
    for batch in batches:
        ex.batch_size = batch
        for _ in range(warmup):   # new shapes: kernels chosen, memory pooled
            ex(waves)
        if ex.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ex.device)
        n, t0 = 0, clock()
        while n < call * calls and (n == 0 or clock() < stop_at):
            ex(waves)
            n += call
        t1 = clock()
        results[batch] = {"clips": n, "rate": n / (t1 - t0), "t0": t0, "t1": t1}
        info = ex.info()
        print(f"{size:5s} {info['parameters']:>11,} params  {str(ex.device):6s} ({where}; {info['dtype']}; {storage} "
              f"storage; calls of {call} clips, batch {ex.batch_size})  {n} clips in {t1 - t0:.2f} s: "
              f"{n / (t1 - t0):8.2f} clips/s, {(t1 - t0) / n:.4f} s/clip, {3.0 * n / (t1 - t0):7.1f}x real time  "
              f"(load {load_s:.1f} s{peak_memory(ex.device)})", flush=True)
    clear_wavlm_cache()   # the batch sizes set here stay with this process's cached extractor otherwise
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--batch", type=int, default=4, help="CPU: clips per call and per forward")
    parser.add_argument("--batches", type=int, default=2, help="CPU: timed calls after the warm-up")
    parser.add_argument("--gpu-block", type=int, default=128, help="GPU: clips per call (featurize's block)")
    parser.add_argument("--gpu-blocks", type=int, default=4, help="GPU: timed calls after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--sizes", default="large,tiny", help="comma-separated: large, tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; CUDA {'available' if 'cuda' in devices else 'not available'}; "
          "3 s clips (48,000 samples -> 149 frames); random weights")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            t0 = time.perf_counter()
            model_dir = save_random_wavlm(Path(tmp) / size, size=size)
            print(f"{size}: wrote the random model in {time.perf_counter() - t0:.1f} s", flush=True)
            for device in devices:
                if device == "cuda":   # featurize's configuration on a GPU
                    run(model_dir, size, device, args.gpu_block, (WavLMConfig().batch_size,), args.gpu_blocks,
                        args.warmup)
                else:
                    run(model_dir, size, device, args.batch, (args.batch,), args.batches, args.warmup)
        clear_wavlm_cache()


if __name__ == "__main__":
    main()
