"""--features-from: files a store holds are scored from their stored features (read in whole
chunks), after the store passes the one compatibility rule.

A centre store (one centre crop per clip) gives each file ONE window, as training saw it. A
windowed store (featurize --windows) gives a file its windows only when they are exactly the ones
score cuts: every window (`--windows all`) at score's window and hop; a silent_window row is a
silent window, left out of the file's score as score leaves it out. The files of any other
windowed store (N windows, another window or hop) are scored live, with one notice: a file is
never scored from part of its windows."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator

import numpy as np

from dfdetect.featurize.windows import ALL, SILENT_WINDOW, WindowProtocol, by_file
from dfdetect.score.options import ScoreError
from dfdetect.score.sources import OK, Item
from dfdetect.score.windows import STORE, FileResult, Piece, WindowConfig
from dfdetect.store import StoreError, open_store
from dfdetect.store.schema import FILE_COLUMNS, NO_STAMP, file_stamp


def open_feature_store(spec: str, run, config: WindowConfig | None = None, console=None):
    """The store version `spec` (PATH[@VERSION]) names, checked against the run with the one
    compatibility rule (store.fit_problems): every array the head reads, the same frontend, the
    WavLM the head was trained on. ScoreError says what differs. A windowed version whose windows
    are not score's (`config`) is said once on `console`: its files are then scored live."""

    try:
        store = open_store(spec)
    except StoreError as e:
        raise ScoreError(f"--features-from {spec}: {e}") from None
    problems = store.fit_problems(run.inputs, run.frontend_hash, run.wavlm_info, run.arch)
    if problems:
        raise ScoreError(f"--features-from {store.path}@{store.version} does not fit the run {run.path}: "
                         + "; ".join(problems) + " (or score the files live, without --features-from)")
    differ = config and windows_differ(store, config)
    if differ and console is not None:
        console.print(f"notice: --features-from {store.path}@{store.version} {differ}: its files are scored live "
                      "(a store featurized with --windows all at score's --window and --hop is read instead)",
                      soft_wrap=True, highlight=False, markup=False)
    return store


def windows_differ(store, config: WindowConfig) -> str | None:
    """How a windowed version's windows differ from those score cuts under `config` (None: a
    centre version, or every window at score's window and hop)."""
    if not store.windows:
        return None
    protocol = WindowProtocol.from_dict(store.windows)
    rate = config.frontend.sample_rate
    if protocol.keep == ALL and protocol.samples(rate) == (config.window, config.hop):
        return None
    window, hop = config.window / rate, config.hop / rate
    return f"keeps {protocol.describe()}, score cuts all {window:g} s windows, hop {hop:g} s"


def store_matches(store, pending: list[tuple[int, Item]], config: WindowConfig | None = None
                  ) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, Item]]]:
    """([(input index, its store rows)] of the plain files the store holds and that are still the
    file featurize read (the same size and mtime, `file_stamp`), the rest). A centre version
    holds a file as one ok row; a windowed one as all its windows, ok or silent, at score's window
    and hop (else it matches no file). A store written before featurize kept file stamps matches
    no file: every file is scored live."""
    meta = store.meta
    if any(name not in meta for name in FILE_COLUMNS) or (config is not None and windows_differ(store, config)):
        return [], list(pending)
    rows = _file_rows(store)
    matched, rest = [], []
    for index, item in pending:
        found = None if item.member or item.archive else rows.get(os.path.abspath(item.path))
        if found is not None and not _unchanged(meta, int(found[0]), item.path):   # changed: not its features
            found = None
        if found is None:
            rest.append((index, item))
        else:
            matched.append((index, found))
    return matched, rest


def _file_rows(store) -> dict[str, np.ndarray]:
    """Absolute path -> the rows that hold the file whole: its ok row (centre), or all its windows,
    in order, each ok or silent, at least one ok (windowed)."""
    meta = store.meta
    if not store.windows:
        ok = store.rows()
        return {os.path.abspath(str(p)): np.array([r]) for r, p in zip(ok.tolist(), meta["path"][ok])}
    usable = (meta["status"] == OK) | (meta["error_kind"] == SILENT_WINDOW)
    order, bounds = by_file(meta["file"])
    found = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        rows = rows[np.argsort(meta["window"][rows], kind="stable")]
        whole = np.array_equal(meta["window"][rows], np.arange(int(meta["file_windows"][rows[0]])))
        if whole and usable[rows].all() and (meta["status"][rows] == OK).any():
            found[os.path.abspath(str(meta["path"][rows[0]]))] = rows
    return found


def _unchanged(meta: dict, row: int, path: str) -> bool:
    stamp = file_stamp(path)
    return stamp != NO_STAMP and stamp == tuple(int(meta[name][row]) for name in FILE_COLUMNS)


def store_pieces(store, matched: list[tuple[int, np.ndarray]], features: tuple[str, ...], clip_seconds: float,
                 batch_size: int) -> Iterator[Piece | tuple[int, str]]:
    """Pieces of up to `batch_size` windows of the matched inputs, from their store rows; a file's
    FileResult comes with its last window. Files are read in row order, in whole read units (the
    lcm of the arrays' chunk rows) and one file whole at a time. A file with a row whose features
    are not finite yields (input index, message) instead: the caller scores that input live."""
    arrays = {k: store.array(k) for k in features}
    unit = math.lcm(*(a.chunks[0] for a in arrays.values()))
    batch = _StoreBatch(store, features, clip_seconds)
    for _, group in itertools.groupby(sorted(matched, key=lambda m: int(m[1][0])), key=lambda m: int(m[1][0]) // unit):
        group = list(group)
        rows = np.concatenate([r for _, r in group])
        values = store.read_rows(features, rows)    # whole chunks of every array
        at = 0
        for index, file_rows in group:
            x = {k: values[k][at:at + len(file_rows)] for k in features}
            at += len(file_rows)
            silent = store.meta["error_kind"][file_rows] == SILENT_WINDOW
            bad = [k for k in features if not np.isfinite(x[k][~silent]).all()]
            if bad:
                yield index, f"{store.path}@{store.version} row {int(file_rows[0])}: {', '.join(bad)} not finite"
                continue
            yield from batch.add(index, file_rows, silent, x, batch_size)
    if batch.windows:
        yield batch.take()


class _StoreBatch:
    """Windows read from the store, gathered into pieces of at most `batch_size` windows."""

    def __init__(self, store, features: tuple[str, ...], clip_seconds: float):
        self.store, self.features, self.clip_seconds = store, features, clip_seconds
        self.windows: list[tuple[int, int, float, float, bool]] = []
        self.inputs: list[dict] = []
        self.finished: list[FileResult] = []

    def add(self, index: int, rows: np.ndarray, silent: np.ndarray, x: dict, batch_size: int) -> Iterator[Piece]:
        """A file's windows (and its FileResult, after the last); the pieces that filled up."""
        meta = self.store.meta
        for i, row in enumerate(rows.tolist()):
            self.windows.append((index, *self._window(row), bool(silent[i])))
            if not silent[i]:
                self.inputs.append({k: x[k][i] for k in self.features})
            if i == len(rows) - 1:
                first = int(rows[0])
                self.finished.append(FileResult(
                    index, OK, duration=float(meta["duration"][first]), sample_rate=int(meta["sample_rate"][first]),
                    channels=int(meta["channels"][first]), container=str(meta["container"][first]),
                    windows=len(rows), silent_windows=int(silent.sum()), features=STORE))
            if len(self.windows) >= batch_size:
                yield self.take()

    def _window(self, row: int) -> tuple[int, float, float]:
        """(number, start, end) of a row: its window, or a centre version's one centre crop."""
        meta = self.store.meta
        if self.store.windows:
            return int(meta["window"][row]), float(meta["window_start"][row]), float(meta["window_end"][row])
        duration = float(meta["duration"][row])
        start = max(0.0, (duration - self.clip_seconds) / 2)
        return 0, start, start + min(duration, self.clip_seconds)

    def take(self) -> Piece:
        index, window, start, end, silent = (np.array(c) for c in zip(*self.windows))
        inputs = {k: np.stack([x[k] for x in self.inputs]) for k in self.features} if self.inputs else {}
        piece = Piece(index.astype(np.int64), window.astype(np.int64), start.astype(np.float64),
                      end.astype(np.float64), silent.astype(bool), inputs, self.finished)
        self.windows, self.inputs, self.finished = [], [], []
        return piece
