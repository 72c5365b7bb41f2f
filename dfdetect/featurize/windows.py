"""The whole-file protocol: how a file is cut into windows and how its window scores become the
file's score. The one rule that `dfdetect score` (live, window by window), featurize (`--windows`:
a store row per window) and evaluation of a windowed store (one score per file) share.

    sliding_windows  windows of `size` samples every `hop` over a 16 kHz stream; when the regular
                     windows leave samples uncovered at the end, one more window ends at the last
                     sample; a stream shorter than a window is one short window (padded later)
    window_starts    the same windows from the stream's length alone (featurize plans rows with it)
    aggregate        a file's score from its non-silent window scores: mean (default) | max | topk
    WindowProtocol   what a store keeps of each file: `centre` (the reference study's one centre
                     crop), `all` windows, or up to N evenly spaced; part of a version's identity
                     only when it is not `centre`, so every centre store keeps its name

A window is prepared as a clip is (centre crop / pad to the clip length, peak normalisation); a
window whose peak is below the frontend's silence level is left out of the file's score.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dfdetect.errors import ConfigError
from dfdetect.store.schema import SILENT_WINDOW, WINDOW_COLUMNS  # noqa: F401 (SILENT_WINDOW: re-exported)

AGGREGATES = ("mean", "max", "topk")
CENTRE, ALL = "centre", "all"


def sliding_windows(blocks: Iterable[np.ndarray], size: int, hop: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, samples) of windows of `size` every `hop` over the concatenated blocks.
    Holds at most one window plus one block."""
    buffer = np.zeros(0, np.float32)
    offset = 0             # stream position of buffer[0]
    next_start = 0
    covered = 0            # end of the last window yielded
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while next_start + size <= offset + len(buffer):
            i = next_start - offset
            yield next_start, buffer[i:i + size]
            covered = next_start + size
            next_start += hop
        # keep what the next regular window or a final tail window can still need
        keep = max(offset, min(next_start, offset + len(buffer) - size))
        buffer = buffer[keep - offset:]
        offset = keep
    total = offset + len(buffer)
    if total > covered:
        start = max(0, total - size)
        yield start, buffer[start - offset:]


def window_starts(total: int, size: int, hop: int) -> list[tuple[int, int]]:
    """(start, length) of every window `sliding_windows` cuts from a stream of `total` samples."""
    if total <= 0:
        return []
    regular = [(s, size) for s in range(0, total - size + 1, hop)]
    covered = regular[-1][0] + size if regular else 0
    if total > covered:
        start = max(0, total - size)
        regular.append((start, total - start))
    return regular


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples soxr gives for `frames` at `rate` resampled to `target` (its one-shot and streamed
    output alike): frames * target / rate, rounded half up."""
    return frames if rate == target else (2 * frames * target + rate) // (2 * rate)


def aggregate(scores: np.ndarray, how: str = "mean", top_k: int = 3) -> float:
    """A file's score from its (non-silent) window scores.

    mean  the mean of the window probabilities (default): a single false alarm among 40 windows
          moves it by 1/40, and a file that is fake throughout scores high.
    max   the most suspicious window: flags a short spliced segment, but its false-alarm rate grows
          with the number of windows.
    topk  the mean of the k highest windows: a segment of about k windows decides."""
    if how == "mean":
        return float(np.mean(scores))
    if how == "max":
        return float(np.max(scores))
    if how == "topk":
        return float(np.mean(np.sort(scores)[-top_k:]))
    raise ConfigError(f"unknown aggregate {how!r}; valid: {', '.join(AGGREGATES)}")


def by_file(files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): `order` sorts the rows by file (stable: each file's rows in their order),
    and file k's rows are order[bounds[k]:bounds[k + 1]]."""
    order = np.argsort(files, kind="stable")
    sorted_files = np.asarray(files)[order]
    firsts = np.flatnonzero(np.r_[True, sorted_files[1:] != sorted_files[:-1]]) if len(order) else np.zeros(0, int)
    return order, np.r_[firsts, len(order)].astype(np.int64)


def file_scores(files: np.ndarray, scores: np.ndarray, how: str = "mean",
                top_k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(index of each file's first window, its aggregated score) from window scores of
    several files (`files`: each window's file number). Windows need not be in order."""
    order, bounds = by_file(files)
    scores = scores[order]
    if how == "mean":   # the common case in one pass (evaluation of large windowed sets)
        sums = np.add.reduceat(scores.astype(np.float64), bounds[:-1]) if len(order) else np.zeros(0)
        aggregated = sums / np.diff(bounds)
    else:
        aggregated = np.array([aggregate(scores[a:b], how, top_k) for a, b in zip(bounds[:-1], bounds[1:])])
    return order[bounds[:-1]], aggregated


def file_rows(store, rows: np.ndarray) -> np.ndarray:
    """The first of each file's rows among `rows` (a centre store's rows are its files)."""
    if not store.windows:
        return rows
    files = store.files(rows)
    return rows[np.sort(np.unique(files, return_index=True)[1])]


def per_file(store, rows: np.ndarray, scores: np.ndarray, how: str = "mean",
             top_k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(each file's first row, its score) from the scores of a set's rows: a windowed store's
    windows aggregated per file (its ok rows: silent windows are not in a set, as score leaves
    them out); a centre store's rows are its files and come back as they are."""
    if not store.windows:
        return rows, scores
    first, aggregated = file_scores(store.files(rows), scores, how, top_k)
    return rows[first], aggregated


@dataclass(frozen=True)
class WindowProtocol:
    """Which windows of each file a store keeps. `keep`: "centre", "all" or a number N (up to N of
    the file's windows, evenly spaced, first and last included). `window`/`hop` in seconds (None:
    the frontend's clip length, and half the window: `dfdetect score`'s defaults)."""
    keep: str | int = CENTRE
    window: float | None = None
    hop: float | None = None

    @classmethod
    def parse(cls, keep: str | int | None, window: float | None = None, hop: float | None = None,
              option: str = "--windows") -> WindowProtocol:
        keep = CENTRE if keep is None else keep
        text = str(keep).strip().lower()
        if text in ("centre", "center"):
            if window is not None or hop is not None:
                raise ConfigError(f"{option} centre keeps one crop of the clip length; --window and --hop "
                                  f"apply to {option} all or N")
            return cls()
        if text == ALL:
            parsed: str | int = ALL
        elif text.isdigit() and int(text) >= 1:
            parsed = int(text)
        else:
            raise ConfigError(f"{option} {keep!r}: give centre (one centre crop, the reference study's protocol), "
                              "all (every window, as `dfdetect score` cuts them) or a whole number N >= 1 "
                              "(up to N windows per file, evenly spaced)")
        for name, value, low in (("--window", window, 0.1), ("--hop", hop, 0.01)):
            if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value >= low):
                raise ConfigError(f"{name} {value!r}: must be a number of seconds >= {low:g}")
        return cls(parsed, None if window is None else float(window), None if hop is None else float(hop))

    @property
    def centre(self) -> bool:
        return self.keep == CENTRE

    def resolved(self, clip_seconds: float) -> WindowProtocol:
        """Window and hop filled in with score's defaults (centre: unchanged)."""
        if self.centre:
            return self
        window = self.window or clip_seconds
        return WindowProtocol(self.keep, float(window), float(self.hop or window / 2))

    def samples(self, rate: int) -> tuple[int, int]:
        """(window, hop) in samples at `rate`, rounded as score rounds them."""
        return int(round(self.window * rate)), int(round(self.hop * rate))

    def to_dict(self) -> dict | None:
        """The version's record of it (None for centre: not part of a centre version's identity)."""
        return None if self.centre else {"keep": self.keep, "window": self.window, "hop": self.hop}

    @classmethod
    def from_dict(cls, d: dict | None) -> WindowProtocol:
        return cls() if not d else cls(d["keep"], d["window"], d["hop"])

    def selected(self, n: int) -> np.ndarray:
        """Window numbers kept of a file with `n` windows."""
        if self.keep == ALL or n <= int(self.keep):
            return np.arange(n)
        return np.unique(np.round(np.linspace(0, n - 1, int(self.keep))).astype(np.int64))

    @classmethod
    def words(cls, windows: dict | None, clip_seconds: float | None, how: str | None = None) -> str:
        """A version's recorded protocol (`to_dict()`, None: centre) in words, as reports, runs and
        `store info` name it; `how` (the aggregate) is named only for windows."""
        return cls.from_dict(windows).describe(clip_seconds or 3.0, how)

    def describe(self, clip_seconds: float = 3.0, how: str | None = None) -> str:
        """In words, as reports name it: "centre 3 s crop", "all 3 s windows, hop 1.5 s, mean"."""
        if self.centre:
            return f"centre {clip_seconds:g} s crop"
        which = "all" if self.keep == ALL else f"up to {self.keep}"
        return f"{which} {self.window:g} s windows, hop {self.hop:g} s" + (f", {how}" if how else "")


@dataclass
class WindowTable:
    """The rows of a windowed store version: each file's kept windows, in file order. `clips`:
    the file's Clip for every row; `columns`: store/schema.py's WINDOW_COLUMNS."""
    clips: list
    columns: dict


def file_samples(clip, frontend) -> int:
    """The file's length in samples as the frontend prepares it (0 when it cannot be decoded: the
    block that decodes it again records why), from the decoded length without resampling."""
    from dfdetect.featurize.audio import decode

    try:
        audio = frontend.source(decode(clip.path))
        if audio.frames == 0 or not np.isfinite(audio.samples).all():
            return 0
        return resampled_length(audio.frames, audio.sample_rate, frontend.config.sample_rate)
    except Exception:   # an undecodable file is one row, recorded as the error its block finds
        return 0


def plan_windows(clips: list, protocol: WindowProtocol, frontend, threads: int = 1) -> WindowTable:
    """Decode every file once to learn its length and lay out the rows: the kept windows of each
    file (a file that cannot be decoded keeps one row, its error). The decode is repeated by the
    block that writes the file; a file whose length changed in between is an error row then."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, threads)) as pool:
        lengths = list(pool.map(lambda c: file_samples(c, frontend), clips))
    return window_table(clips, lengths, protocol, frontend.config.sample_rate)


def window_table(clips: list, lengths: list[int], protocol: WindowProtocol, rate: int) -> WindowTable:
    """The rows of files `lengths` samples long under `protocol`."""
    size, hop = protocol.samples(rate)
    rows, columns = [], {name: [] for name in WINDOW_COLUMNS}
    for i, (clip, total) in enumerate(zip(clips, lengths)):
        cuts = window_starts(total, size, hop)
        for w in protocol.selected(len(cuts)) if cuts else [0]:
            start, length = cuts[w] if cuts else (0, 0)
            rows.append(clip)
            for name, value in zip(columns, (i, w, start / rate, (start + length) / rate, len(cuts), total)):
                columns[name].append(value)
    return WindowTable(rows, {name: np.array(values, WINDOW_COLUMNS[name]) for name, values in columns.items()})
