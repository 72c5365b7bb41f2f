"""What storing WavLM's layers as uint8 codes (--wavlm-storage uint8) costs the heads, in EER, on a
generated task: the same clips, the same WavLM, the same heads and seeds, float16 store vs uint8.

    python bench/wavlm_storage.py [--real 160] [--per-generator 64] [--seeds 3] [--epochs 6]
                                  [--arch wavlm_cnn,wavlm_aasist] [--wavlm-size tiny | --wavlm MODEL]
                                  [--layers 1,2] [--workers 0]

The demo's generated corpus (train/test splits of three fake families and reals, and an unseen
family as out-of-distribution) is featurized twice with one random WavLM (`--wavlm-size tiny`:
hidden 32, seconds; `large`: WavLM-Large's architecture, ~1.1 s a clip on 2 cores), once per
storage. Then, for each head and seed, the same `dfdetect train` run on each store (validation
split, test and OOD evaluated every epoch; the epoch chosen by validation EER as train chooses
it). Printed:

1. bytes per clip of the WavLM layers on disk, and the round trip's error: RMS error over RMS
   value, and the largest error as a share of its channel's range over the clip (at most 1/510
   plus float16's rounding);
2. per head: test and OOD EER of every seed on each store, their means, the mean paired
   difference (uint8 - float16) and the seed-to-seed spread (std over seeds of the float16
   runs), which is the scale a difference has to exceed to mean anything.

Random WavLM weights are not pre-trained WavLM: real WavLM-Large has a few channels of very large
magnitude, which a per-channel scale is meant for, but which these weights do not reproduce. What
is measured is what the heads lose from 8-bit storage of the features they are given; with the
real weights at hand (`--wavlm microsoft/wavlm-large`, from the Hugging Face cache, or a local
copy), the same comparison runs on pre-trained features.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig
from dfdetect.models.runs import RunFolder
from dfdetect.store import open_store
from dfdetect.store.inspect import store_info
from dfdetect.train.trainer import TrainConfig, train

STORAGES = ("float16", "uint8")


def round_trip_error(stores: dict) -> dict:
    """The uint8 store's layers against the float16 store's, on every ok row."""
    half, codes = open_store(stores["float16"]), open_store(stores["uint8"])
    rows = half.rows()
    a = half.read_rows(["wavlm"], rows)["wavlm"].astype(np.float32)
    b = codes.read_rows(["wavlm"], rows)["wavlm"].astype(np.float32)
    span = a.max(axis=2, keepdims=True) - a.min(axis=2, keepdims=True)
    error = np.abs(a - b)
    return {"rms": float(np.sqrt((error ** 2).mean() / (a ** 2).mean())),
            "max_of_range": float((error / np.maximum(span, 1e-12)).max())}


def clip_bytes(spec: str) -> dict:
    """WavLM layers' bytes per clip on disk (with their scale when uint8: `store info`'s figures)
    and as read."""
    arrays = {a["name"]: a for a in store_info(spec)["arrays"]}
    return {"stored": sum(arrays[n]["stored_per_clip"] for n in ("wavlm", "wavlm_scale") if n in arrays),
            "delivered": open_store(spec).row_nbytes("wavlm")}


def best_eers(run: Path) -> tuple[float, float]:
    """Test and OOD EER at the epoch the run's validation EER chose."""
    folder = RunFolder(run)
    records = folder.records()
    best = next(r for r in records if r["epoch"] == folder.best_epoch(records))
    return best["sets"]["test"]["eer"], best["sets"]["ood:unseen"]["eer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=int, default=160, help="real clips (the corpus size)")
    parser.add_argument("--per-generator", type=int, default=64, help="fake clips of each family")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arch", default="wavlm_cnn,wavlm_aasist")
    parser.add_argument("--wavlm-size", choices=("tiny", "large"), default="tiny", help="the random WavLM's size")
    parser.add_argument("--wavlm", default=None, help="a real WavLM instead (hub id in the HF cache, or a local copy)")
    parser.add_argument("--layers", default=None, help="hidden states stored (default: 1,2 tiny; 6,12,24 large)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=0, help="featurize workers (0: in this process)")
    args = parser.parse_args()
    tiny = args.wavlm_size == "tiny" and not args.wavlm
    layers = tuple(int(x) for x in (args.layers or ("1,2" if tiny else "6,12,24")).split(","))
    console = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_corpus(tmp / "corpus", CorpusSpec(real=args.real, per_generator=args.per_generator))
        model = args.wavlm or save_random_wavlm(tmp / "wavlm", args.wavlm_size)
        stores = {}
        for storage in STORAGES:
            stores[storage] = str(tmp / f"{storage}.zarr")
            t0 = time.perf_counter()
            result = featurize("folder", tmp / "corpus", stores[storage], features=("mel", "lfcc", "wavlm"),
                               wavlm=WavLMConfig(model=str(model), layers=layers, storage=storage),
                               workers=args.workers, console=console)
            print(f"featurized {result.ok} clips, WavLM layers stored as {storage}: "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        error = round_trip_error(stores)
        sizes = {s: clip_bytes(stores[s]) for s in STORAGES}
        print(f"\nWavLM ({args.wavlm or 'random ' + args.wavlm_size}, layers {','.join(map(str, layers))}) per clip: "
              + "; ".join(f"{s} {sizes[s]['stored'] / 1e3:.1f} KB on disk" for s in STORAGES)
              + f" ({sizes['float16']['stored'] / sizes['uint8']['stored']:.2f}x smaller); both deliver "
              f"{sizes['uint8']['delivered'] / 1e3:.1f} KB of float16")
        print(f"round trip: RMS error {error['rms']:.2%} of the RMS value, largest error "
              f"{error['max_of_range']:.4f} of its channel's range (1/510 = {1 / 510:.4f})\n", flush=True)

        print("| head | store | test EER by seed | mean | OOD EER by seed | mean |")
        print("|---|---|---|---:|---|---:|")
        summary = []
        for arch in args.arch.split(","):
            eers = {}
            for storage in STORAGES:
                eers[storage] = []
                for seed in range(args.seeds):
                    run = tmp / f"{arch}-{storage}-{seed}"
                    train(TrainConfig(arch=arch, train=f"{stores[storage]}:train", test=f"{stores[storage]}:test",
                                      ood=(f"unseen={stores[storage]}:ood",), epochs=args.epochs,
                                      batch_size=args.batch, lr=args.lr, seed=seed, device="cpu"), run, console=console)
                    eers[storage].append(best_eers(run))
                test, ood = ([e[i] for e in eers[storage]] for i in (0, 1))
                print(f"| {arch} | {storage} | {', '.join(f'{x:.3f}' for x in test)} | {statistics.mean(test):.3f} "
                      f"| {', '.join(f'{x:.3f}' for x in ood)} | {statistics.mean(ood):.3f} |", flush=True)
            for i, name in ((0, "test"), (1, "OOD")):
                half, codes = ([e[i] for e in eers[s]] for s in STORAGES)
                spread = statistics.stdev(half) if len(half) > 1 else float("nan")
                summary.append(f"{arch} {name} EER: uint8 - float16 = "
                               f"{statistics.mean(c - h for c, h in zip(codes, half)):+.3f} (mean of paired seeds); "
                               f"seed spread (std, float16) {spread:.3f}")
        print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
