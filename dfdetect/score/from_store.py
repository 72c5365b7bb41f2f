"""--features-from: files a store holds are scored from their stored features (one centre-clip
window each, read in whole chunks), after the store passes the one compatibility rule."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator

import numpy as np

from dfdetect.score.options import ScoreError
from dfdetect.score.sources import OK, Item
from dfdetect.score.windows import STORE, FileResult, Piece
from dfdetect.store import StoreError, open_store
from dfdetect.store.schema import FILE_COLUMNS, NO_STAMP, file_stamp


def open_feature_store(spec: str, run):
    """The store version `spec` (PATH[@VERSION]) names, checked against the run with the one
    compatibility rule (store.fit_problems): every array the head reads, the same frontend, the
    WavLM the head was trained on. ScoreError says what differs."""

    try:
        store = open_store(spec)
    except StoreError as e:
        raise ScoreError(f"--features-from {spec}: {e}") from None
    problems = store.fit_problems(run.inputs, run.frontend_hash, run.wavlm_info, run.arch)
    if problems:
        raise ScoreError(f"--features-from {store.path}@{store.version} does not fit the run {run.path}: "
                         + "; ".join(problems) + " (or score the files live, without --features-from)")
    return store


def store_matches(store, pending: list[tuple[int, Item]]) -> tuple[list[tuple[int, int]], list[tuple[int, Item]]]:
    """([(input index, store row)] of the plain files that are ok rows of the store and are still
    the file featurize read (the same size and mtime, `file_stamp`), the rest). A store written
    before featurize kept them matches no file: every file is scored live."""
    meta = store.meta
    if any(name not in meta for name in FILE_COLUMNS):
        return [], list(pending)
    rows = {os.path.abspath(str(p)): r for r, p in zip(store.rows().tolist(), meta["path"][store.rows()])}
    matched, rest = [], []
    for index, item in pending:
        row = None if item.member or item.archive else rows.get(os.path.abspath(item.path))
        if row is not None and not _unchanged(meta, row, item.path):   # changed since: its features are not its own
            row = None
        if row is None:
            rest.append((index, item))
        else:
            matched.append((index, row))
    return matched, rest


def _unchanged(meta: dict, row: int, path: str) -> bool:
    stamp = file_stamp(path)
    return stamp != NO_STAMP and stamp == tuple(int(meta[name][row]) for name in FILE_COLUMNS)


def store_pieces(store, matched: list[tuple[int, int]], features: tuple[str, ...], clip_seconds: float,
                 batch_size: int) -> Iterator[Piece | tuple[int, str]]:
    """Pieces of one window per matched input, from its store row. Rows are read sorted, in whole
    read units (the lcm of the arrays' chunk rows), one unit at a time. A row whose features are not
    finite yields (input index, message) instead: the caller scores that input live."""
    arrays = {k: store.array(k) for k in features}
    unit = math.lcm(*(a.chunks[0] for a in arrays.values()))
    meta = store.meta
    matched = sorted(matched, key=lambda m: m[1])
    batch: list[tuple[int, int, dict]] = []

    def take() -> Piece:
        index = np.array([i for i, _, _ in batch], np.int64)
        duration = np.array([float(meta["duration"][r]) for _, r, _ in batch])
        start = np.maximum(0.0, (duration - clip_seconds) / 2)
        finished = [FileResult(i, OK, duration=float(meta["duration"][r]), sample_rate=int(meta["sample_rate"][r]),
                               channels=int(meta["channels"][r]), container=str(meta["container"][r]), windows=1,
                               features=STORE) for i, r, _ in batch]
        inputs = {k: np.stack([x[k] for _, _, x in batch]) for k in features}
        piece = Piece(index, np.zeros(len(batch), np.int64), start, start + np.minimum(duration, clip_seconds),
                      np.zeros(len(batch), bool), inputs, finished)
        batch.clear()
        return piece

    for _, group in itertools.groupby(matched, key=lambda m: m[1] // unit):
        group = list(group)
        values = store.read_rows(features, [row for _, row in group])    # whole chunks of every array
        for i, (index, row) in enumerate(group):
            x = {k: values[k][i] for k in features}
            bad = [k for k in features if not np.isfinite(x[k]).all()]
            if bad:
                yield index, f"{store.path}@{store.version} row {row}: {', '.join(bad)} not finite"
                continue
            batch.append((index, row, x))
            if len(batch) >= batch_size:
                yield take()
    if batch:
        yield take()
