"""Feeding cached features to the heads: sets from stores, and a loader that reads whole chunks.

A set is `STORE[@VERSION][:SPLIT]`: the ok rows of one split (or all) of one store version.

zarr-python is slow at single-row random reads and fast at whole chunks, so the loader never reads
a row on its own. Rows are grouped in read units (the least common multiple of the selected arrays'
chunk rows, so every read is whole chunks of every array). Then either
- in memory: when the selected rows fit the memory budget, every unit is read once at the start
  and each epoch is a permutation of rows in RAM; or
- streaming: each epoch shuffles the order of units, reads `buffer_units` of them, shuffles the
  rows inside that buffer and cuts batches (chunk-aware shuffling, as WebDataset and lhotse do).
  The shuffles are drawn before the reads, so reader threads put each row straight into its
  batch (FeatureStore.read_rows_into): no copy beyond the read itself (docs/benchmarks.md).
Both are seeded by (seed, epoch), so an epoch's order never depends on what ran before it (which
is what makes `--resume` exact).
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import lcm

import numpy as np
import torch

from dfdetect.store import FeatureStore, StoreError, open_store, parse_store_spec
from dfdetect.train.mixing import CorpusStack, chunk_rows


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

    @property
    def windowed(self) -> bool:
        """Rows are windows of files (featurize --windows all|N), evaluated per file."""
        return bool(self.store.windows)

    @property
    def files(self) -> np.ndarray:
        """Each row's file (a centre store's rows are its files)."""
        return self.store.files(self.rows)

    def describe(self) -> dict:
        labels = self.labels
        described = {"name": self.name, "spec": self.spec, "store": self.store.path, "version": self.store.version,
                     "frontend_hash": self.store.config.get("frontend_hash"), "rows": int(len(self.rows)),
                     "fake": int(labels.sum()), "real": int((labels == 0).sum())}
        if self.windowed:   # the counts above are windows; the protocol names how files are scored
            described.update(windows=self.store.windows, files=int(len(np.unique(self.files))))
        return described


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


def stratified_split(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                     groups: np.ndarray | None = None):
    """(train_rows, val_rows): `fraction` of each label to validation (at least one clip of each
    label, so validation EER is defined on small sets), seeded. With `groups` (each row's file, for
    a windowed store), whole groups are split, so no file has windows on both sides."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        keys, first = np.unique(groups, return_index=True)
        train_keys, val_keys = stratified_split(keys, labels[first], fraction, seed)
        return np.sort(rows[np.isin(groups, train_keys)]), np.sort(rows[np.isin(groups, val_keys)])
    n_val = max(len(np.unique(labels)), int(np.ceil(fraction * len(rows))))
    train, val = train_test_split(rows, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def row_bytes(store: FeatureStore, features) -> int:
    """Bytes of one row of the features as the loader holds them (uint8 WavLM: dequantized)."""
    return sum(store.row_nbytes(f) for f in features)


class FeatureLoader:
    """Batches {feature: float16 tensor, "label": float tensor, "row": rows} from one DataSet."""

    def __init__(self, data: DataSet, features: tuple[str, ...], batch_size: int, shuffle: bool,
                 seed: int = 0, memory_budget: int = 4 << 30, buffer_units: int | None = None,
                 readers: int | None = None, augmentation=None, balance=None):
        self.data, self.features, self.batch_size = data, tuple(features), batch_size
        self.shuffle, self.seed = shuffle, seed
        # mixing.Augmentation (the source of each row, per epoch) and mixing.Balance (each epoch's
        # rows, drawn by weight); both None: every row once, from data.store
        self.augmentation, self.balance = augmentation, balance
        self._sources = [data.store, *(v.store for v in augmentation.variants)] if augmentation else [data.store]
        self.counts: dict = {}
        # Reader threads beside the training step: one per spare core, 2 to 4 (bench/loader.py: on
        # 2 idle cores two readers stream at 63% of the in-memory loader, one at 52%).
        self.readers = readers or max(2, min(4, (os.cpu_count() or 2) - 1))
        self.seconds = 0.0
        self.unit = lcm(*(chunk_rows(data.store, f) for f in self.features))
        self._labels = data.store.meta["label"].astype(np.float32)
        self._units, self._rows_by_unit = self._by_unit(data.rows)
        held = len(data.rows) + sum(len(self._variant_rows(v)) for v in self._variants())
        self.in_memory = held * row_bytes(data.store, self.features) <= memory_budget
        # Streaming holds one buffer per reader, the one being cut and the one before it (its
        # carried rows): together within the budget.
        unit_bytes = self.unit * row_bytes(data.store, self.features)
        self.buffer_units = buffer_units or max(1, memory_budget // (unit_bytes * (self.readers + 2)))
        self._cache = self._read_in_memory() if self.in_memory else None

    def _by_unit(self, rows: np.ndarray) -> tuple[np.ndarray, dict]:
        units = rows // self.unit
        return np.unique(units), {int(u): rows[units == u] for u in np.unique(units)}

    def _variants(self) -> list:
        return self.augmentation.variants if self.augmentation else []

    def _variant_rows(self, variant) -> np.ndarray:
        return self.data.rows[variant.holds(self.data.rows)]

    def _read_in_memory(self) -> dict[str, np.ndarray]:
        """Every row an epoch may read, read once into one buffer per feature: the set's rows in unit
        order, then each --augment variant's rows that it holds (`self._parts`: where each source's
        rows start, and which rows they are), so a batch is one gather whatever versions it draws."""
        clean = self._read_units(self._units)
        if not self.augmentation:
            self._parts = [(0, clean["row"])]
            return clean
        rows = [clean["row"], *(self._variant_rows(v) for v in self._variants())]
        starts = np.cumsum([0, *map(len, rows)])
        self._parts = list(zip(starts[:-1].tolist(), rows))
        out = {}
        for f in self.features:
            shape, dtype = self.data.store.row_format(f)
            out[f] = np.empty((int(starts[-1]), *shape), dtype)
            out[f][:len(rows[0])] = clean.pop(f)
            for v, (start, mine) in zip(self._variants(), self._parts[1:]):
                v.store.read_rows_into(f, mine, list(out[f][start:start + len(mine)]))
        self._check_finite(np.concatenate(rows), out, every_value=True)
        out["row"] = rows[0]
        return out

    def __len__(self) -> int:
        full, rest = divmod(len(self.data.rows), self.batch_size)
        return full + (rest > 0) - (self.shuffle and rest == 1)   # see _bounds: no batch of one

    def _read_units(self, units) -> dict[str, np.ndarray]:
        """The wanted rows of whole read units, in unit order (FeatureStore.read_rows: whole chunks,
        one buffer per array), every value checked finite."""
        rows = np.concatenate([self._rows_by_unit[int(u)] for u in units])
        out = self.data.store.read_rows(self.features, rows)
        self._check_finite(rows, out, every_value=True)
        out["row"] = rows
        return out

    def _check_finite(self, rows: np.ndarray, values: dict, every_value: bool) -> None:
        """NaN/Inf in ok rows is a damaged or unfinished store. Checked on every value when the rows
        are read once; when streaming, on the first value of each row (what an unwritten chunk shows)."""
        for f in self.features:
            flat = values[f].reshape(len(rows), -1)
            finite = np.isfinite(flat).all(axis=1) if every_value else np.isfinite(flat[:, 0])
            if not finite.all():
                bad = rows[~finite]
                raise StoreError(
                    f"{self.data.spec}: {f} has NaN/Inf in {bad.size} ok rows (first: {bad[:5].tolist()}); "
                    f"run `dfdetect store verify {self.data.store.path}` and re-featurize")

    def _bounds(self, n: int) -> list[int]:
        """Where the batches of n rows start and stop."""
        bounds = [*range(0, n, self.batch_size), n]
        if self.shuffle and n and n - bounds[-2] == 1:
            # BatchNorm cannot train on one row: an epoch's last batch of one joins the batch before
            # it (or, alone in its buffer, is left out of this epoch); both follow (seed, epoch).
            del bounds[-2 if n > 1 else -1]
        return bounds

    def _batches(self, values: dict, rows: np.ndarray, bounds: list[int]):
        """Batches cut from rows already in batch order (views: no copy)."""
        for start, stop in zip(bounds[:-1], bounds[1:]):
            batch = {f: torch.from_numpy(values[f][start:stop]) for f in self.features}
            batch["label"] = torch.from_numpy(self._labels[rows[start:stop]])
            batch["row"] = rows[start:stop]
            yield batch

    def epoch(self, epoch: int = 0):
        """The batches of one epoch, in an order seeded by (seed, epoch). The time spent getting
        each batch (waiting for reads, cutting it) adds up in `self.seconds`: the loader's share of
        a training epoch; what the epoch drew (sources, corpora) is in `self.counts` after it."""
        batches = self._epoch(epoch)
        self.counts = {}
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - t0
            self._count(epoch, batch["row"])
            yield batch

    def _count(self, epoch: int, rows: np.ndarray) -> None:
        """Clips delivered per source (with --augment) and per corpus (with several)."""
        if self.augmentation:
            names = self.augmentation.names
            drawn = np.bincount(self.augmentation.sources(epoch, rows), minlength=len(names))
            draws = self.counts.setdefault("draws", dict.fromkeys(names, 0))
            for name, n in zip(names, drawn):
                draws[name] += int(n)
        if isinstance(self.data.store, CorpusStack):
            stores = self.data.store.stores
            drawn = np.bincount(self.data.store.corpus_of(rows), minlength=len(stores))
            corpora = self.counts.setdefault("corpora", [0] * len(stores))
            for i, n in enumerate(drawn):
                corpora[i] += int(n)

    def _epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        if self.in_memory:
            yield from self._epoch_in_memory(epoch, rng)
            return
        plan = self._plan(rng, epoch)
        # Read ahead: `readers` threads each fill a later buffer's batches while this one's are
        # consumed (the reads and their checksums release the GIL).
        with ThreadPoolExecutor(max_workers=self.readers) as pool:
            pending = deque(pool.submit(self._fill, step, epoch) for step in plan[:self.readers])
            carry = None
            for i, step in enumerate(plan):
                values = pending.popleft().result()
                if i + self.readers < len(plan):
                    pending.append(pool.submit(self._fill, plan[i + self.readers], epoch))
                rows = self._place_carry(step, values, carry)
                self._check_finite(rows, values, every_value=False)
                yield from self._batches(values, rows[:step["full"]], self._bounds(step["full"]))
                carry = {k: v[step["full"]:] for k, v in {**values, "row": rows}.items()}

    def _epoch_in_memory(self, epoch: int, rng):
        cached = self._cache["row"]
        # places in the cache of this epoch's rows: each once, or (--balance) as drawn
        places = (np.arange(len(cached)) if self.balance is None
                  else np.searchsorted(cached, self.balance.epoch_rows(epoch)))
        n = len(places)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        where = self._drawn_places(epoch, cached)
        bounds = self._bounds(n)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            take = places[order[start:stop]]      # one copy per batch, from the rows in RAM
            values = {f: self._cache[f].take(where[take], axis=0) for f in self.features}
            yield from self._batches(values, cached[take], [0, len(take)])

    def _drawn_places(self, epoch: int, cached: np.ndarray) -> np.ndarray:
        """Where in the cache each of the set's rows is read from this epoch: its clean place, or
        (--augment) its place among the rows of the version drawn for it."""
        where = np.arange(len(cached))
        if self.augmentation:
            sources = self.augmentation.sources(epoch, cached)
            for i, (start, rows) in enumerate(self._parts[1:], start=1):
                mine = np.flatnonzero(sources == i)
                where[mine] = start + np.searchsorted(rows, cached[mine])
        return where

    def _plan(self, rng, epoch: int) -> list[dict]:
        """Each buffer of a streaming epoch: its rows, and where each goes. A buffer's rows, behind
        the rows carried over from the one before (fewer than a batch), are shuffled together; the
        first `full` of that order are cut into batches and the rest carried into the next buffer.
        Drawn up front (the same draws, in the same order, as reading first and shuffling after),
        so the readers can put every row straight into its batch. With --balance the epoch's drawn
        rows (a row drawn twice is in its unit twice) take the place of the set's."""
        all_units, rows_by_unit = ((self._units, self._rows_by_unit) if self.balance is None
                                   else self._by_unit(self.balance.epoch_rows(epoch)))
        units = rng.permutation(all_units) if self.shuffle else all_units
        plan, c = [], 0
        for s in range(0, len(units), self.buffer_units):
            rows = np.concatenate([rows_by_unit[int(u)] for u in units[s:s + self.buffer_units]])
            n = c + len(rows)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            last = s + self.buffer_units >= len(units)
            full = n if last else n - n % self.batch_size
            plan.append({"rows": rows, "carried": c, "order": order, "full": full})
            c = n - full
        return plan

    def _fill(self, step: dict, epoch: int = 0) -> dict[str, np.ndarray]:
        """A buffer's rows of every feature read straight into their places: positions of this
        buffer's batch order (the batches and the rows carried on), carried-in rows left for later.
        With --augment each row is read from the version drawn for it (whole chunks of each)."""
        n, c = len(step["order"]), step["carried"]
        position = np.empty(n, np.int64)
        position[step["order"]] = np.arange(n)
        mine = position[c:]                      # where each of this buffer's own rows goes
        rows = step["rows"]
        sources = self.augmentation.sources(epoch, rows) if self.augmentation else np.zeros(len(rows), np.int16)
        values = {}
        for f in self.features:
            shape, dtype = self.data.store.row_format(f)
            values[f] = np.empty((n, *shape), dtype)
            slots = list(values[f])
            for i in np.unique(sources):
                take = np.flatnonzero(sources == i)
                self._sources[i].read_rows_into(f, rows[take], [slots[k] for k in mine[take]])
        return values

    def _place_carry(self, step: dict, values: dict, carry: dict | None) -> np.ndarray:
        """Put the rows carried in from the last buffer into their places; the rows in order."""
        order, carried = step["order"], step["carried"]
        if not carried:
            return step["rows"][order]
        from_carry = np.flatnonzero(order < carried)
        for f in self.features:
            values[f][from_carry] = carry[f][order[from_carry]]
        return np.concatenate([carry["row"], step["rows"]])[order]

    __iter__ = epoch
