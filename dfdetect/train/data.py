"""Feeding cached features to the heads: sets from stores, and a loader that reads whole chunks.

A set is `STORE[@VERSION][:SPLIT]`: the ok rows of one split (or all) of one store version.

zarr-python is slow at single-row random reads and fast at whole chunks, so the loader never reads
a row on its own. Rows are grouped in read units (the least common multiple of the selected arrays'
chunk rows, so every read is whole chunks of every array). Then either
- in memory: when the selected rows fit the memory budget, every unit is read once at the start
  and each epoch is a permutation of rows in RAM; or
- streaming: each epoch shuffles the order of units, reads `buffer_units` of them, shuffles the
  rows inside that buffer and cuts batches (chunk-aware shuffling, as WebDataset and lhotse do).
Both are seeded by (seed, epoch), so an epoch's order never depends on what ran before it (which
is what makes `--resume` exact).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import lcm

import numpy as np
import torch

from dfdetect.store import FeatureStore, StoreError, open_store, parse_store_spec


@dataclass
class DataSet:
    """Rows of one store version that a run trains or evaluates on."""
    name: str
    spec: str
    store: FeatureStore
    rows: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.store.meta["label"][self.rows].astype(np.int64)

    def describe(self) -> dict:
        labels = self.labels
        return {"name": self.name, "spec": self.spec, "store": self.store.path, "version": self.store.version,
                "frontend_hash": self.store.config.get("frontend_hash"), "rows": int(len(self.rows)),
                "fake": int(labels.sum()), "real": int((labels == 0).sum())}


def open_set(spec: str, name: str) -> DataSet:
    """Open `STORE[@VERSION][:SPLIT]` (ok rows only); errors say what is available instead."""
    path, version, split = parse_store_spec(spec)
    store = open_store(path, version=version)
    if split is not None and split not in set(store.meta["split"]):
        raise StoreError(f"{name} set {spec}: no split {split!r} in {path}; it has "
                         f"{', '.join(sorted(set(store.meta['split'])))}")
    rows = store.rows(split)
    if rows.size == 0:
        raise StoreError(f"{name} set {spec} is empty (no clip with status ok"
                         f"{' in split ' + split if split else ''})")
    return DataSet(name, spec, store, rows)


def stratified_split(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """(train_rows, val_rows): `fraction` of each label to validation (at least one clip of each
    label, so validation EER is defined on small sets), seeded."""
    from sklearn.model_selection import train_test_split

    n_val = max(len(np.unique(labels)), int(np.ceil(fraction * len(rows))))
    train, val = train_test_split(rows, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def row_bytes(store: FeatureStore, features) -> int:
    return sum(int(np.prod(store.array(f).shape[1:])) * store.array(f).dtype.itemsize for f in features)


class FeatureLoader:
    """Batches {feature: float16 tensor, "label": float tensor, "row": rows} from one DataSet."""

    def __init__(self, data: DataSet, features: tuple[str, ...], batch_size: int, shuffle: bool,
                 seed: int = 0, memory_budget: int = 4 << 30, buffer_units: int = 16):
        self.data, self.features, self.batch_size = data, tuple(features), batch_size
        self.shuffle, self.seed, self.buffer_units = shuffle, seed, buffer_units
        arrays = [data.store.array(f) for f in self.features]
        self.unit = lcm(*(a.chunks[0] for a in arrays))
        self._labels = data.store.meta["label"].astype(np.float32)
        units = data.rows // self.unit
        self._units = np.unique(units)
        self._rows_by_unit = {int(u): data.rows[units == u] for u in self._units}
        self.in_memory = len(data.rows) * row_bytes(data.store, self.features) <= memory_budget
        self._cache = self._read_units(self._units) if self.in_memory else None

    def __len__(self) -> int:
        full, rest = divmod(len(self.data.rows), self.batch_size)
        return full + (rest > 0) - (self.shuffle and rest == 1)   # see _batches: no batch of one

    def _read_units(self, units, full_check: bool = True) -> dict[str, np.ndarray]:
        """The wanted rows of whole read units, in unit order (FeatureStore.read_rows: whole chunks,
        one buffer per array, no extra copy). Checks the rows are finite: every value when
        `full_check`, else the first value of each row (what an unwritten chunk shows)."""
        rows = np.concatenate([self._rows_by_unit[int(u)] for u in units])
        out = self.data.store.read_rows(self.features, rows)
        for f in self.features:
            values = out[f].reshape(len(rows), -1)
            finite = np.isfinite(values).all(axis=1) if full_check else np.isfinite(values[:, 0])
            if not finite.all():
                bad = rows[~finite]
                raise StoreError(
                    f"{self.data.spec}: {f} has NaN/Inf in {bad.size} ok rows (first: {bad[:5].tolist()}); "
                    f"run `dfdetect store verify {self.data.store.path}` and re-featurize")
        out["row"] = rows
        return out

    def _batches(self, block: dict, order: np.ndarray):
        n = len(order)
        bounds = [*range(0, n, self.batch_size), n]
        if self.shuffle and n and n - bounds[-2] == 1:
            # BatchNorm cannot train on one row: an epoch's last batch of one joins the batch before
            # it (or, alone in its buffer, is left out of this epoch); both follow (seed, epoch).
            del bounds[-2 if n > 1 else -1]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            take = order[start:stop]
            batch = {f: torch.from_numpy(np.ascontiguousarray(block[f][take])) for f in self.features}
            rows = block["row"][take]
            batch["label"] = torch.from_numpy(self._labels[rows])
            batch["row"] = rows
            yield batch

    def epoch(self, epoch: int = 0):
        """The batches of one epoch, in an order seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.in_memory:
            n = len(self._cache["row"])
            yield from self._batches(self._cache, rng.permutation(n) if self.shuffle else np.arange(n))
            return
        units = rng.permutation(self._units) if self.shuffle else self._units
        starts = range(0, len(units), self.buffer_units)
        # Read ahead: two threads fetch the next buffers while this one is consumed (zarr's codecs
        # release the GIL), so reading overlaps with the training step.
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = deque(pool.submit(self._read_units, units[s:s + self.buffer_units], False) for s in starts[:2])
            yield from self._stream(rng, units, starts, pending, pool)

    def _stream(self, rng, units, starts, pending, pool):
        carry = None
        for i, start in enumerate(starts):
            block = pending.popleft().result()
            if i + 2 < len(starts):
                s = starts[i + 2]
                pending.append(pool.submit(self._read_units, units[s:s + self.buffer_units], False))
            if carry is not None:  # rows left over from the last buffer start this one
                block = {k: np.concatenate([carry[k], block[k]]) for k in block}
            n = len(block["row"])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            last = start + self.buffer_units >= len(units)
            full = n if last else n - n % self.batch_size
            yield from self._batches(block, order[:full])
            carry = None if last else {k: v[order[full:]] for k, v in block.items()}

    __iter__ = epoch
