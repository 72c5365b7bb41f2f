"""What a training epoch draws from: several corpora as one row numbering, augmentation from
variant versions of the train store, and weighted (balanced) sampling.

    CorpusStack    several stores' rows as one numbering (`train --train A --train B`): store i's rows
                   at offsets[i] + row, each offset a whole number of read units, so no read unit spans
                   two corpora and the loader's whole-chunk reads stay whole
    Augmentation   `train --augment STORE[@VERSION]`: each epoch each training clip is read from the
                   clean version or one variant, drawn with probability p by (seed, epoch, clip)
    Balance        `train --balance corpus|generator|label`: each epoch's rows drawn with replacement
                   by weight, seeded by (seed, epoch)

Every draw is a pure function of (seed, epoch[, clip]) and of nothing that ran before, so an
epoch is the same whether the run got there straight or through `--resume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lcm

import numpy as np

from dfdetect.store import FeatureStore

BALANCES = ("none", "corpus", "generator", "label")
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def clip_uniform(seed: int, epoch: int, stream: int, rows: np.ndarray) -> np.ndarray:
    """One number in [0, 1) per row, a function of (seed, epoch, stream, row) alone (splitmix64 of
    the row under a key from numpy's SeedSequence): a clip's draw does not depend on which other
    clips an epoch reads, nor in what order."""
    key = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    z = (np.asarray(rows, np.int64).astype(np.uint64) + np.uint64(1)) * _GOLDEN + key
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def chunk_rows(store, name: str) -> int:
    """Rows per chunk of an array (a CorpusStack: the least common multiple over its stores)."""
    return store.chunk_rows(name) if isinstance(store, CorpusStack) else store.array(name).chunks[0]


class CorpusStack:
    """Several store versions of one frontend read as one: the rows of store i are offsets[i] + its
    rows; the metadata columns they all have, concatenated, with padding rows (status "") between
    them that no set selects. Reads go to the store that holds the row."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = stores
        self.path = " + ".join(s.path for s in stores)
        self.version = " + ".join(s.version for s in stores)
        self.config = stores[0].config
        names = [a for a in stores[0].array_names if all(a in s.array_names for s in stores)]
        step = lcm(*(s.array(a).chunks[0] for s in stores for a in names))
        ends = np.cumsum([-(-s.n_clips // step) * step for s in stores])
        self.offsets = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self.n_clips = int(ends[-1])
        self.meta = self._meta()

    def _meta(self) -> dict[str, np.ndarray]:
        columns = [c for c in self.stores[0].meta if all(c in s.meta for s in self.stores)]
        meta = {}
        for c in columns:
            parts = []
            for s, start, stop in zip(self.stores, self.offsets, [*self.offsets[1:], self.n_clips]):
                col = s.meta[c]
                pad = np.full(stop - start - len(col), "" if col.dtype.kind in "OUS" else 0, dtype=col.dtype)
                parts += [col, pad]
            meta[c] = np.concatenate(parts)
        return meta

    @property
    def attrs(self) -> dict:
        """The version attributes every store shares (e.g. the recording statistics' definitions, so
        the shortcut audit reads the stacked corpora as the one training set they are)."""
        first = self.stores[0].attrs
        return {k: v for k, v in first.items() if all(s.attrs.get(k) == v for s in self.stores[1:])}

    @property
    def windows(self) -> dict | None:
        """The window protocol of the stacked corpora's first windowed store (None: all centre)."""
        return next((s.windows for s in self.stores if s.windows), None)

    def files(self, rows) -> np.ndarray:
        """Each row's file, numbered uniquely across the corpora (a store's files at its offset)."""
        rows = np.asarray(rows, np.int64)
        corpus, files = self.corpus_of(rows), np.empty(len(rows), np.int64)
        for c, (store, offset) in enumerate(zip(self.stores, self.offsets)):
            mine = corpus == c
            files[mine] = store.files(rows[mine] - offset).astype(np.int64) + offset
        return files

    def corpus_of(self, rows) -> np.ndarray:
        """The index of the store each row is in."""
        return np.searchsorted(self.offsets, np.asarray(rows, np.int64), side="right") - 1

    def rows(self, split: str | None = None, status: str | None = "ok") -> np.ndarray:
        return np.concatenate([s.rows(split, status) + o for s, o in zip(self.stores, self.offsets)])

    def fit_problems(self, reads, frontend_hash: str | None, wavlm: dict | None, head: str) -> list[str]:
        """The compatibility rule (FeatureStore.fit_problems), asked of every store."""
        return [p for s in self.stores for p in s.fit_problems(reads, frontend_hash, wavlm, head)]

    def chunk_rows(self, name: str) -> int:
        return lcm(*(s.array(name).chunks[0] for s in self.stores))

    def array(self, name: str):
        """The first store's array (its row shape: every store's, as the compatibility rule checked)."""
        return self.stores[0].array(name)

    def row_format(self, name: str):
        return self.stores[0].row_format(name)

    def row_nbytes(self, name: str) -> int:
        return self.stores[0].row_nbytes(name)

    # the store's own: new buffers filled through row_format and read_rows_into, which a stack has
    read_rows = FeatureStore.read_rows

    def read_rows_into(self, name: str, rows, targets: list) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        corpus = self.corpus_of(rows)
        for i in np.unique(corpus):
            mine = np.flatnonzero(corpus == i)
            self.stores[i].read_rows_into(name, rows[mine] - self.offsets[i], [targets[k] for k in mine])


@dataclass
class Shifted:
    """A variant of one corpus of a CorpusStack, read in the stack's row numbering."""
    store: FeatureStore
    offset: int

    def row_format(self, name: str):
        return self.store.row_format(name)

    def read_rows(self, names, rows) -> dict[str, np.ndarray]:
        return self.store.read_rows(names, np.asarray(rows, np.int64) - self.offset)

    def read_rows_into(self, name: str, rows, targets: list) -> None:
        self.store.read_rows_into(name, np.asarray(rows, np.int64) - self.offset, targets)


@dataclass
class Variant:
    """One --augment version: its spec, the store (or Shifted view) it is read from, where its rows
    start in the train set's numbering, and which of them it holds as ok (a clip the variant failed
    to featurize is read clean)."""
    spec: str
    store: object
    offset: int
    ok: np.ndarray

    def holds(self, rows) -> np.ndarray:
        local = np.asarray(rows, np.int64) - self.offset
        inside = (local >= 0) & (local < len(self.ok))
        return inside & self.ok[np.clip(local, 0, len(self.ok) - 1)]


@dataclass
class Augmentation:
    """Per epoch, each clip drawn augmented with probability `p` (stream 1), and then one of the
    variants that hold it, uniformly (stream 2): source 0 is the clean version, i + 1 variants[i]."""
    variants: list[Variant]
    p: float
    seed: int
    block: int = 1     # rows that share one draw (1: every clip its own)

    @property
    def names(self) -> list[str]:
        return ["clean", *(v.spec for v in self.variants)]

    def sources(self, epoch: int, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        holds = np.stack([v.holds(rows) for v in self.variants])
        count = holds.sum(axis=0)
        keys = rows // self.block
        pick = np.floor(clip_uniform(self.seed, epoch, 2, keys) * count).astype(np.int64)
        # the pick-th variant that holds the row: the first whose running count of holders exceeds pick
        chosen = np.argmax(np.cumsum(holds, axis=0) > pick, axis=0) + 1
        augmented = (clip_uniform(self.seed, epoch, 1, keys) < self.p) & (count > 0)
        return np.where(augmented, chosen, 0).astype(np.int16)


def balance_weights(how: str, labels: np.ndarray, generators: np.ndarray, corpora: np.ndarray) -> np.ndarray:
    """Sampling weights (summing to 1) of the training rows: `corpus`, each corpus the same share;
    `label`, real and fake half each; `generator`, half real, and the fake half split evenly between
    the generators (by the clip table's generator name, across corpora)."""
    if how == "corpus":
        groups = corpora
    elif how == "label":
        groups = labels
    elif how == "generator":
        groups = np.array(["real" if y == 0 else f"fake:{g}" for y, g in zip(labels.tolist(), generators.tolist())])
    else:
        raise ValueError(how)
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[index]
    if how == "generator":   # the reals one half, the fakes' groups the other
        fake = labels == 1
        weights[fake] *= 0.5 / weights[fake].sum()
        weights[~fake] *= 0.5 / weights[~fake].sum()
    return weights / weights.sum()


@dataclass
class Balance:
    """Each epoch's rows: as many as the set has, drawn with replacement by `weights`, seeded by
    (seed, epoch), sorted (the loader shuffles them)."""
    rows: np.ndarray
    weights: np.ndarray
    seed: int

    def epoch_rows(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 3])
        return np.sort(self.rows[rng.choice(len(self.rows), size=len(self.rows), p=self.weights)])


def same_clips(variant: FeatureStore, clean: FeatureStore) -> bool:
    """Whether a variant holds the clean version's clips in the same rows (the clip table's identity,
    as featurize records it)."""
    same_table = variant.attrs.get("clip_table_hash") == clean.attrs.get("clip_table_hash")
    return same_table and variant.n_clips == clean.n_clips
