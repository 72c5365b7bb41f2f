"""Cached vs live-WavLM training epochs, and the training loader vs numpy, side by side in one run.

On the same generated clips: what featurizing once costs, what a cached epoch costs per head, what
running WavLM live would cost instead, and how fast the loader feeds cached tensors.

    python bench/train.py [--clips 192] [--wavlm-size large] [--threads 2] [--live-batches 2]
                          [--live-batch-size 16] [--cached-epochs 3] [--loader-epochs 3] [--device cpu]

Every part runs on `--device` (featurize's WavLM, training steps, live WavLM), so its ratios
compare like with like; on CUDA every timer read waits for the GPU (torch.cuda.synchronize) and
each part reports its peak GPU memory.

On `--clips` generated 3 s clips (a `folder` corpus in mixed formats), with a random WavLM of
`--wavlm-size` (large: microsoft/wavlm-large's architecture and cost, so the cache holds the real
[N, 3, 149, 1024] float16; tiny: for quick runs), it measures:

1. the one-off featurize pass that every later epoch reuses: mel + LFCC + WavLM layers 6/12/24,
   workers=0 (in this process, where the pipeline runs each block with 1 torch thread), with the
   WavLM load and weights hash shown apart;
2. a cached Mel-AASIST epoch (batch 128) against a cached WavLM+AASIST epoch (batch 64): the real
   training step (model.train(), AdamW lr 5e-5 wd 0.01, BCEWithLogits, grad clip 1.0; inside train's
   torch_settings: seed, TF32, deterministic cuDNN) on batches from FeatureLoader, one untimed
   warm-up batch, then the median of `--cached-epochs` epochs; target WavLM+AASIST <= 1.5x Mel-AASIST;
3. WavLM+AASIST with WavLM run live (what s3prl-style training pays every step): each batch's
   clips decoded (Frontend.load), frozen WavLM run on them, the same step on the result (mel and
   LFCC still from the cache). Too slow for a whole epoch on CPU, so `--live-batches` batches of
   `--live-batch-size` are timed and the epoch is extrapolated per clip, as the cached epoch's
   per-clip step plus the measured decode + WavLM per clip (a small live batch's slower step does
   not count for it; the ratio with it is printed too); target cached >= 20x faster;
4. loader throughput (mel + LFCC + WavLM, shuffled, batch 64): FeatureLoader in memory (its
   one-off load shown apart) and streaming (memory_budget=0: every epoch reads and decompresses
   the store, from the page cache here), against shuffled batches of the same rows cut from
   uncompressed float16 numpy arrays (torch.from_numpy included); target >= 70% of numpy.

The defaults take about 6-7 minutes on 2 idle cores, most of it the featurize pass (~1.4 s/clip
for WavLM-Large on 1 thread). CPU timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import make_clips
from rich.console import Console
from wavlm import clock, peak_memory

from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.devices import resolve_device
from dfdetect.featurize.frontend import Frontend
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, load_wavlm
from dfdetect.models.registry import build_model, get_architecture
from dfdetect.store import open_store
from dfdetect.train.data import DataSet, FeatureLoader, row_bytes
from dfdetect.train.trainer import TrainConfig, torch_settings

LAYERS = {"large": (6, 12, 24), "tiny": (0, 1, 2)}   # tiny has 3 hidden states
LOADER_FEATURES = ("mel", "lfcc", "wavlm")
LOADER_BATCH = 64


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def say(text: str) -> None:
    print(text, flush=True)


class Trainer:
    """The training step of dfdetect.train.trainer for one freshly built head on `device`; `amp`:
    its CUDA default (float16 autocast + grad scaling), off here unless asked. Run the steps inside
    `with trainer.settings():`, the seed, TF32 and deterministic cuDNN that `dfdetect train` runs
    its steps under (deterministic convolution backward can be much slower than cuDNN's default)."""

    def __init__(self, arch: str, overrides: dict, device: str = "cpu", amp: bool = False):
        torch.manual_seed(0)
        self.device = resolve_device(device)    # with its index, as torch_settings needs on CUDA
        self.config = TrainConfig(arch=arch, train="bench", amp=amp).resolved()   # train's defaults
        self.scaler = torch.amp.GradScaler("cuda") if amp and self.device.type == "cuda" else None
        self.model = build_model(arch, **overrides).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5, weight_decay=0.01)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(self, x: dict, y: torch.Tensor) -> float:
        x, y = {k: v.to(self.device) for k, v in x.items()}, y.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.scaler is not None):
            logits = self.model(x).float()
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.item()

    def settings(self):
        """dfdetect.train.trainer.torch_settings for this head's defaults (flags restored on exit)."""
        return torch_settings(self.device, self.config)

    @property
    def precision(self) -> str:
        return "float16 autocast + grad scaling" if self.scaler else "float32"


def cached_epochs(data: DataSet, arch: str, overrides: dict, epochs: int, device: str) -> dict:
    """Seconds of `epochs` cached epochs (after one untimed warm-up batch), and the loader's load time."""
    a = get_architecture(arch)
    t0 = clock()
    loader = FeatureLoader(data, a.inputs, a.batch_size, shuffle=True, seed=0)
    load_s = clock() - t0
    trainer = Trainer(arch, overrides, device)
    times = []
    with trainer.settings():
        warm = next(iter(loader.epoch(0)))
        trainer.step({k: warm[k] for k in a.inputs}, warm["label"])
        for e in range(1, epochs + 1):
            t0 = clock()
            clips = 0
            for batch in loader.epoch(e):
                trainer.step({k: batch[k] for k in a.inputs}, batch["label"])
                clips += len(batch["label"])
            times.append(clock() - t0)
    seconds = statistics.median(times)
    return {"seconds": seconds, "per_clip": seconds / clips, "times": times, "load_s": load_s,
            "batch": a.batch_size, "trainer": trainer}


def live_batches(data: DataSet, trainer: Trainer, wavlm: WavLMConfig, batch_size: int, batches: int) -> dict:
    """Seconds per clip of WavLM+AASIST steps whose WavLM input is computed live from the clips
    (WavLM on the trainer's device, at the precision featurize picks there)."""
    frontend, extractor = Frontend(), load_wavlm(wavlm, device=trainer.device)
    paths = data.store.meta["path"]
    loader = FeatureLoader(data, ("mel", "lfcc"), batch_size, shuffle=True, seed=0)
    parts = {"decode": 0.0, "wavlm": 0.0, "step": 0.0}
    clips = 0
    t_all = clock()
    with trainer.settings():   # as live WavLM inside `dfdetect train` would run
        for i, batch in enumerate(loader.epoch(1)):
            if i == batches:
                break
            t0 = clock()
            waves = np.stack([frontend.load(str(paths[r])) for r in batch["row"]])
            t1 = clock()
            layers = torch.from_numpy(extractor(waves)["layers"])
            t2 = clock()
            trainer.step({"wavlm": layers, "mel": batch["mel"], "lfcc": batch["lfcc"]}, batch["label"])
            t3 = clock()
            parts["decode"] += t1 - t0
            parts["wavlm"] += t2 - t1
            parts["step"] += t3 - t2
            clips += len(batch["row"])
    return {"seconds": clock() - t_all, "clips": clips, "batches": min(batches, len(loader)),
            "parts": parts}


def loader_epochs(make, epochs: int) -> list[float]:
    """Seconds of each of `epochs` full passes over make(epoch)'s batches."""
    times = []
    for e in range(1, epochs + 1):
        t0 = clock()
        for _batch in make(e):
            pass
        times.append(clock() - t0)
    return times


def numpy_batches(arrays: dict, labels: np.ndarray, batch_size: int, epoch: int):
    """The baseline: shuffled batches of the same rows from uncompressed in-memory arrays."""
    order = np.random.default_rng([0, epoch]).permutation(len(labels))
    for start in range(0, len(order), batch_size):
        take = order[start:start + batch_size]
        batch = {f: torch.from_numpy(a[take]) for f, a in arrays.items()}
        batch["label"] = torch.from_numpy(labels[take])
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--clips", type=int, default=192, help="generated 3 s clips (default 192)")
    parser.add_argument("--wavlm-size", choices=("large", "tiny"), default="large",
                        help="random WavLM to featurize and run live with (default large)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and live WavLM")
    parser.add_argument("--live-batches", type=int, default=2, help="timed live-WavLM batches (default 2)")
    parser.add_argument("--live-batch-size", type=int, default=16, help="clips per live batch (default 16)")
    parser.add_argument("--cached-epochs", type=int, default=3, help="timed cached epochs per head (median)")
    parser.add_argument("--loader-epochs", type=int, default=3, help="timed passes per loader mode (median)")
    parser.add_argument("--device", default="cpu", help="featurize, training and live WavLM: cpu, cuda, cuda:N")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    where = (f"{torch.cuda.get_device_name(device)} ({device})" if device.startswith("cuda")
             else f"CPU ({cpu_name()})")

    def reset_peak() -> None:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)

    quiet = Console(quiet=True)
    t_start = clock()
    rows: list[tuple[str, str, str]] = []   # (what, number, ratio / target)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_clips(tmp / "corpus", args.clips, 3.0, 3.0)
        n = len(paths)
        say(f"{n} clips of 3 s; WavLM {args.wavlm_size}-sized, random weights; torch {torch.__version__}, "
            f"every part on {where}, {args.threads} torch threads")

        # 1. the one-off featurize pass
        t0 = clock()
        model_dir = save_random_wavlm(tmp / "wavlm", size=args.wavlm_size)
        say(f"setup: wrote the random WavLM in {clock() - t0:.1f} s (not counted)")
        wavlm = WavLMConfig(model=str(model_dir), layers=LAYERS[args.wavlm_size])
        store_path = str(tmp / "train.zarr")
        reset_peak()
        t0 = clock()
        # load + hash the weights; featurize reuses these extractors (its CPU load for the spec)
        load_wavlm(wavlm, device="cpu").info()
        load_wavlm(wavlm, device=device)
        wavlm_load_s = clock() - t0
        t0 = clock()
        result = featurize("folder", tmp / "corpus", store_path, features=("mel", "lfcc", "wavlm"),
                           wavlm=wavlm, workers=0, device=device, console=quiet)
        clips_s = clock() - t0
        feat_s = wavlm_load_s + clips_s
        if result.ok != n:
            raise SystemExit(f"featurize wrote {result.ok} of {n} clips: {dict(result.errors)}")
        store = open_store(store_path)
        data = DataSet("train", store_path, store, store.rows())
        shape = store.array("wavlm").shape
        title = f"one-off featurize (WavLM-{args.wavlm_size.capitalize()}-sized, {device})"
        say(f"{title}: {feat_s:.1f} s = WavLM load + weights hash {wavlm_load_s:.1f} s + {n} clips "
            f"{clips_s:.1f} s ({clips_s / n:.3f} s/clip, {n / clips_s:.2f} clips/s; workers=0: in this "
            f"process, 1 torch thread; WavLM at {store.config['wavlm']['precision']}{peak_memory(device)}); "
            f"wavlm cached as {list(shape)} float16")
        rows.append((title, f"{feat_s:.1f} s = {wavlm_load_s:.1f} s load + {clips_s / n:.3f} s/clip",
                     "paid once per store"))

        torch.set_num_threads(args.threads)  # featurize's in-process blocks set 1 thread
        overrides = {"hidden_size": shape[3], "num_layers": shape[1]}

        # 2. cached epochs
        results = {}
        for arch, extra in (("mel_aasist", {}), ("wavlm_aasist", overrides)):
            reset_peak()
            r = results[arch] = cached_epochs(data, arch, extra, args.cached_epochs, device)
            title = f"cached {get_architecture(arch).title} epoch (batch {r['batch']}, {device})"
            say(f"{title}: {r['seconds']:.2f} s, {r['per_clip'] * 1e3:.1f} ms/clip (median of "
                f"{', '.join(f'{t:.2f}' for t in r['times'])} s; loader load {r['load_s']:.2f} s, once"
                f"{peak_memory(device)})")
            rows.append((title, f"{r['seconds']:.2f} s = {r['per_clip'] * 1e3:.1f} ms/clip", ""))
        mel, wl = results["mel_aasist"], results["wavlm_aasist"]
        cached_ratio = wl["seconds"] / mel["seconds"]
        say(f"ratio cached WavLM+AASIST / cached Mel-AASIST epoch: {cached_ratio:.2f}x (target <= 1.5x)")
        rows[-1] = (*rows[-1][:2], f"{cached_ratio:.2f}x Mel-AASIST (target <= 1.5x) "
                                   f"{'PASS' if cached_ratio <= 1.5 else 'FAIL'}")

        # 3. WavLM live (the same head and optimizer, already warm)
        reset_peak()
        live = live_batches(data, wl["trainer"], wavlm, args.live_batch_size, args.live_batches)
        cached_per_clip = wl["per_clip"]
        measured_per_clip = live["seconds"] / live["clips"]
        # The verdict uses the cached step's per-clip cost (batch 64) plus what live WavLM adds
        # (decode + forward), so a small live batch does not flatter the ratio.
        live_per_clip = cached_per_clip + (live["parts"]["decode"] + live["parts"]["wavlm"]) / live["clips"]
        live_ratio = live_per_clip / cached_per_clip
        parts = ", ".join(f"{k} {v / live['clips'] * 1e3:.0f}" for k, v in live["parts"].items())
        say(f"live-WavLM WavLM+AASIST: {live['clips']} clips in {live['seconds']:.2f} s "
            f"({live['batches']} batches of <= {args.live_batch_size}): {measured_per_clip * 1e3:.0f} ms/clip "
            f"({parts} ms/clip); per clip with the cached epoch's step (batch {wl['batch']}) + decode + "
            f"WavLM: {live_per_clip * 1e3:.0f} ms/clip; an epoch of {n} clips extrapolated (not run): "
            f"{live_per_clip * n:.1f} s{peak_memory(device)}")
        say(f"ratio live / cached WavLM+AASIST per clip: {live_ratio:.1f}x (target cached >= 20x faster; "
            f"{measured_per_clip / cached_per_clip:.1f}x with the live batches' own step)")
        rows.append((f"live-WavLM epoch, extrapolated from {live['clips']} clips",
                     f"{live_per_clip * n:.1f} s = {live_per_clip * 1e3:.0f} ms/clip",
                     f"cached {live_ratio:.1f}x faster (target >= 20x) {'PASS' if live_ratio >= 20 else 'FAIL'}"))
        gain = live_per_clip - cached_per_clip
        if gain > 0:
            rows.append(("featurize pays for itself after", f"{feat_s / (gain * n):.2f} epochs",
                         "featurize time / (live - cached epoch)"))
        del results, wl, mel, live
        clear_wavlm_cache()

        # 4. loader throughput
        clip_bytes = row_bytes(store, LOADER_FEATURES)
        mb = n * clip_bytes / 1e6
        t0 = clock()
        memory = FeatureLoader(data, LOADER_FEATURES, LOADER_BATCH, shuffle=True, seed=0)
        load_s = clock() - t0
        assert memory.in_memory
        loader_s = {"in memory": statistics.median(loader_epochs(memory.epoch, args.loader_epochs))}
        del memory
        streaming = FeatureLoader(data, LOADER_FEATURES, LOADER_BATCH, shuffle=True, seed=0, memory_budget=0)
        assert not streaming.in_memory
        loader_s["streaming"] = statistics.median(loader_epochs(streaming.epoch, args.loader_epochs))
        del streaming
        arrays = {f: np.ascontiguousarray(store.array(f)[:][data.rows]) for f in LOADER_FEATURES}
        labels = store.meta["label"][data.rows].astype(np.float32)
        loader_s["numpy"] = statistics.median(loader_epochs(
            lambda e, arrays=arrays: numpy_batches(arrays, labels, LOADER_BATCH, e), args.loader_epochs))
        del arrays
        say(f"loader ({'+'.join(LOADER_FEATURES)}, {clip_bytes / 1e6:.2f} MB/clip, batch {LOADER_BATCH}, "
            f"shuffled, median of {args.loader_epochs} epochs); in-memory load (once): {load_s:.2f} s, "
            f"{mb / load_s:.0f} MB/s")
        rows.append(("loader in-memory load (once)", f"{load_s:.2f} s = {mb / load_s:.0f} MB/s", ""))
        for name, seconds in loader_s.items():
            ratio = loader_s["numpy"] / seconds
            say(f"loader {name:<10} {mb / seconds:8.0f} MB/s {n / seconds:9.0f} clips/s"
                + (f"  ratio {ratio:.0%} of numpy (target >= 70%)" if name != "numpy" else ""))
            rows.append((f"loader epoch, {name}", f"{mb / seconds:.0f} MB/s = {n / seconds:.0f} clips/s",
                         "baseline" if name == "numpy" else
                         f"{ratio:.0%} of numpy (target >= 70%) {'PASS' if ratio >= 0.7 else 'FAIL'}"))

    total = clock() - t_start
    width = max(len(r[0]) for r in rows)
    nwidth = max(len(r[1]) for r in rows)
    say("")
    say(f"summary: {n} clips of 3 s, WavLM {args.wavlm_size}-sized (cached {list(shape)} float16), every part "
        f"on {where}, {args.threads} torch threads (featurize: 1), total run {total:.0f} s")
    for what, number, ratio in rows:
        say(f"  {what:<{width}}  {number:<{nwidth}}  {ratio}")


if __name__ == "__main__":
    main()
