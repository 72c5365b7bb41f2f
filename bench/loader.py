"""The training loader at corpus scale: streaming a store larger than the memory budget, against
the in-memory loader, side by side in one run.

    python bench/loader.py [--gb 2] [--budget-ratio 4] [--epochs 3] [--batch 64]

A store of `--gb` GB is written through dfdetect's own store writer (create_version +
write_block: the layout, chunks, shards and codec featurize writes) with random float16 rows of
the shapes a WavLM+AASIST study caches (mel [2,128,301] + LFCC [60,301] + WavLM-Large layers
[3,149,1024]: 1.11 MB a clip). The loader then gets a memory budget `--budget-ratio` times
smaller than the store, so it streams: each epoch reads every chunk again (from the page cache,
warmed by an untimed epoch first: a disk's speed is not what is measured), shuffles chunk-aware
and cuts shuffled batches of `--batch`, as training sees them. Measured, median of `--epochs`:

1. in memory (budget above the store: the rows read once, batches cut from RAM): the reference;
2. streaming, 1 and 2 reader threads, chunks read straight from the shard files (store/shards.py);
3. streaming, 2 reader threads, the same store read through zarr-python (what the loader did);
4. streaming, 2 reader threads, a store of the codec featurize wrote before (Blosc-zstd with
   bit-shuffle + CRC32C), read through zarr-python: the previous state, and what its 1.12x smaller
   files cost in decoding;
5. streaming, 2 reader threads, a store whose WavLM layers are uint8 codes (--wavlm-storage
   uint8: 1.9x smaller files), dequantized to the same float16 rows as they are read.

Prints MB/s, clips/s and each streaming figure as a share of the in-memory loader's MB/s (target
>= 50%). CPU timings are only meaningful on an otherwise idle machine.

    python bench/loader.py --augment 2 [--gb 1] ...

instead measures `train --augment`: the same store with `--augment` variant versions beside the
clean one (same clips, other values), streamed with each clip drawn per epoch from the clean
version or a variant (p = `--augment-p`, the draws `train` makes), against streaming the clean
version alone, each in memory too. MB/s counts the rows delivered (as above), not the bytes read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from zarr.codecs import BloscCodec, Crc32cCodec

from dfdetect.datasets import Clip
from dfdetect.store import open_store, schema
from dfdetect.store.quantize import quantize
from dfdetect.store.writer import create_version, mark_complete, write_block
from dfdetect.train.data import DataSet, FeatureLoader, row_bytes

SHAPES = {"mel": (2, 128, 301), "lfcc": (60, 301), "wavlm": (3, 149, 1024)}
BLOCK = 256


def write_store(path: Path, n: int, codecs=None, wavlm_storage: str = "float16", version: str = "v-bench") -> None:
    """n clips of random features through the store writer; with `codecs`, the feature arrays are
    made again with those codecs (same shape, chunks and shards); with uint8 storage, WavLM's
    layers are stored as codes with their scale (store/quantize.py)."""
    clips = [Clip(f"c{i:06d}", f"/none/c{i:06d}.wav", i % 2, "train") for i in range(n)]
    shapes = {**SHAPES, **({"wavlm_scale": (3, 2, 1024)} if wavlm_storage == "uint8" else {})}
    config = {"bench": version, "wavlm": {"storage": wavlm_storage}}
    group = create_version(str(path), version, config, clips, shapes, BLOCK, "bench", "/none")
    for name in SHAPES if codecs else ():
        made = group[name]
        del group[name]
        group.create_array(name, shape=made.shape, dtype=made.dtype, chunks=made.chunks, shards=made.shards,
                           fill_value=np.nan, compressors=codecs)
    rng = np.random.default_rng(list(version.encode()))
    for block in range(-(-n // BLOCK)):
        rows = min(BLOCK, n - block * BLOCK)
        features = {name: rng.standard_normal((rows, *shape), dtype=np.float32).astype(np.float16)
                    for name, shape in SHAPES.items()}
        if wavlm_storage == "uint8":
            codes, scale = quantize(torch.from_numpy(features["wavlm"]))
            features.update(wavlm=codes.numpy(), wavlm_scale=scale.numpy())
        outcomes = {"status": ["ok"] * rows}
        write_block(group, block, features, outcomes)
    mark_complete(group)


def epoch_seconds(loader: FeatureLoader, epochs: int) -> float:
    for _ in loader.epoch(0):        # untimed: warms the page cache and the allocator
        pass
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        for _ in loader.epoch(e):
            pass
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="store size in GB")
    parser.add_argument("--budget-ratio", type=float, default=4.0, help="store size / memory budget")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--augment", type=int, default=0, help="measure train --augment with this many variants")
    parser.add_argument("--augment-p", type=float, default=0.5)
    args = parser.parse_args()
    if args.augment:
        augment_bench(args)
        return
    clip_bytes = sum(int(np.prod(s)) * 2 for s in SHAPES.values())
    n = int(args.gb * 1e9 / clip_bytes)
    features = tuple(SHAPES)
    with tempfile.TemporaryDirectory() as tmp:
        raw, blosc, codes = Path(tmp) / "raw.zarr", Path(tmp) / "blosc.zarr", Path(tmp) / "uint8.zarr"
        t0 = time.perf_counter()
        write_store(raw, n)
        print(f"wrote {n} clips ({n * clip_bytes / 1e9:.2f} GB) with featurize's codec {schema.compressors()} "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        write_store(blosc, n, [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()])
        write_store(codes, n, wavlm_storage="uint8")

        def loader(path, budget, readers=2, direct=True) -> FeatureLoader:
            store = open_store(str(path))
            if not direct:
                store._readers.update({f: None for f in features})
            data = DataSet("train", str(path), store, store.rows())
            return FeatureLoader(data, features, args.batch, shuffle=True, seed=0, memory_budget=budget,
                                 readers=readers)

        store_bytes = n * row_bytes(open_store(str(raw)), features)
        budget = int(store_bytes / args.budget_ratio)
        sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (raw, blosc, codes)}
        print(f"store {store_bytes / 1e9:.2f} GB of rows ({sizes[raw] / 1e9:.2f} GB on disk raw, "
              f"{sizes[blosc] / 1e9:.2f} GB Blosc: {sizes[raw] / sizes[blosc]:.2f}x, {sizes[codes] / 1e9:.2f} GB "
              f"with uint8 WavLM: {sizes[raw] / sizes[codes]:.2f}x); streaming budget "
              f"{budget / 1e9:.2f} GB ({args.budget_ratio:g}x smaller); batch {args.batch}, shuffled, "
              f"median of {args.epochs} epochs after a warm one", flush=True)
        t0 = time.perf_counter()
        memory = loader(raw, 2 * store_bytes)
        load = time.perf_counter() - t0
        results = {"in memory (rows read once)": epoch_seconds(memory, args.epochs)}
        del memory
        print(f"in-memory one-off load: {load:.2f} s ({store_bytes / load / 1e6:.0f} MB/s)", flush=True)
        for name, make in (
                ("streaming, shard files, 1 reader", lambda: loader(raw, budget, readers=1)),
                ("streaming, shard files, 2 readers", lambda: loader(raw, budget, readers=2)),
                ("streaming, zarr-python, 2 readers", lambda: loader(raw, budget, direct=False)),
                ("streaming, Blosc store (before), zarr-python, 2 readers",
                 lambda: loader(blosc, budget, direct=False)),
                ("streaming, uint8 WavLM store (dequantized on read), shard files, 2 readers",
                 lambda: loader(codes, budget))):
            streaming = make()
            assert not streaming.in_memory
            results[name] = epoch_seconds(streaming, args.epochs)
            print(f"  {name}: {store_bytes / results[name] / 1e6:.0f} MB/s", flush=True)
    reference = results["in memory (rows read once)"]
    print(f"\n| loader ({n} clips, {clip_bytes / 1e6:.2f} MB/clip) | MB/s | clips/s | share of in-memory |")
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {store_bytes / seconds / 1e6:,.0f} | {n / seconds:,.0f} | {reference / seconds:.0%} |")


def augment_bench(args) -> None:
    """Streaming (and in-memory) MB/s of the clean version alone vs with `args.augment` variants drawn
    per clip per epoch (mixing.Augmentation, as `train --augment` builds it)."""
    from dfdetect.train.mixing import Augmentation, Variant

    clip_bytes = sum(int(np.prod(s)) * 2 for s in SHAPES.values())
    n, features = int(args.gb * 1e9 / clip_bytes), tuple(SHAPES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.zarr"
        versions = ["v-clean", *(f"v-variant{i}" for i in range(1, args.augment + 1))]
        for version in versions:
            write_store(path, n, version=version)
        clean = open_store(f"{path}@v-clean")
        data = DataSet("train", str(path), clean, clean.rows())
        store_bytes = n * row_bytes(clean, features)
        budget = int(store_bytes / args.budget_ratio)
        variants = [Variant(f"{path}@{v}", open_store(f"{path}@{v}"), 0, np.ones(n, bool)) for v in versions[1:]]
        augmentation = Augmentation(variants, args.augment_p, seed=0)
        per_unit = Augmentation(variants, args.augment_p, seed=0, block=64)   # one draw per read unit
        print(f"{n} clips ({store_bytes / 1e9:.2f} GB a version), {args.augment} variant(s), p = {args.augment_p}; "
              f"streaming budget {budget / 1e9:.2f} GB; batch {args.batch}, median of {args.epochs} epochs", flush=True)
        results = {}
        everything = 4 * store_bytes * len(versions)
        for name, aug, memory in (("in memory, clean", None, everything),
                                  (f"in memory, --augment x{args.augment}", augmentation, everything),
                                  ("streaming, clean", None, budget),
                                  (f"streaming, --augment x{args.augment}", augmentation, budget),
                                  (f"streaming, --augment x{args.augment} per unit", per_unit, budget)):
            loader = FeatureLoader(data, features, args.batch, shuffle=True, seed=0, memory_budget=memory,
                                   augmentation=aug)
            results[name] = epoch_seconds(loader, args.epochs)
            print(f"  {name}: {store_bytes / results[name] / 1e6:.0f} MB/s", flush=True)
            del loader
    print(f"\n| loader ({n} clips, {clip_bytes / 1e6:.2f} MB/clip) | MB/s | clips/s | vs clean |")
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        reference = results[name.replace(f"--augment x{args.augment}", "clean").replace(" per unit", "")]
        print(f"| {name} | {store_bytes / seconds / 1e6:,.0f} | {n / seconds:,.0f} | {reference / seconds:.0%} |")


if __name__ == "__main__":
    main()
