"""The worker side of scoring: a lane of inputs -> decoded as a stream, cut into sliding windows,
each prepared exactly as training prepared a clip, featurized a batch at a time -> `Piece`s.
Every input ends as one `FileResult`, whatever is wrong with its bytes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dfdetect.featurize.audio import AudioError, warning_text
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.featurize.windows import sliding_windows
from dfdetect.score.sources import ERROR, OK, Item, Opener
from dfdetect.score.stream import AudioStream

LIVE, STORE = "live", "store"   # the `features` column: decoded and windowed here, or read from --features-from


@dataclass(frozen=True)
class WindowConfig:
    """What a worker needs to turn items into pieces; small and picklable."""
    frontend: FrontendConfig
    window: int                   # samples at the frontend's rate
    hop: int
    features: tuple[str, ...]     # computed on the worker: mel / lfcc / wave
    waveforms: bool               # ship the prepared waveforms too (for WavLM)
    batch_size: int
    max_seconds: float
    max_bytes: float | None = None  # what an archive member may inflate to (--max-file-mb)


@dataclass
class FileResult:
    item: int                      # index into the coordinator's list of inputs
    status: str = OK
    error_kind: str = ""
    error: str = ""
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    container: str = ""
    windows: int = 0
    silent_windows: int = 0
    features: str = LIVE
    warning: str = ""              # the decoder's own messages about damage it decoded past


@dataclass
class Piece:
    """Up to batch_size windows, possibly of several files, and the files that finished with them
    (all of a file's windows arrive before or with its FileResult)."""
    item: np.ndarray               # [n] input index per window
    window: np.ndarray             # [n] window number within its file
    start: np.ndarray              # [n] seconds
    end: np.ndarray                # [n] seconds
    silent: np.ndarray             # [n] bool: left out of the scores
    inputs: dict[str, np.ndarray]  # model inputs of the non-silent windows, in order
    finished: list[FileResult]
    last: bool = False

    @classmethod
    def of_results(cls, finished: list[FileResult]) -> Piece:
        """A piece without windows that only reports finished files."""
        empty = np.zeros(0, np.int64)
        return cls(empty, empty, empty / 1.0, empty / 1.0, empty.astype(bool), {}, finished)


class _Batch:
    def __init__(self, config: WindowConfig, frontend: Frontend):
        self.config, self.frontend = config, frontend
        self.rows: list[tuple[int, int, int, int, bool]] = []
        self.waves: list[np.ndarray] = []
        self.finished: list[FileResult] = []

    def add(self, item: int, window: int, start: int, length: int, wave: np.ndarray | None) -> None:
        self.rows.append((item, window, start, start + length, wave is None))
        if wave is not None:
            self.waves.append(wave)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.config.batch_size

    def take(self, last: bool = False) -> Piece:
        rate = self.config.frontend.sample_rate
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, 5)
        waves = np.stack(self.waves) if self.waves else np.zeros((0, self.config.frontend.clip_samples), np.float32)
        inputs = {}
        if len(waves):
            # float16: the dtype the heads were trained on (the store's), and half the transfer
            inputs = self.frontend.features(waves, self.config.features, dtype=np.float16)
            if self.config.waveforms:
                inputs["waveform"] = waves
        piece = Piece(rows[:, 0], rows[:, 1], rows[:, 2] / rate, rows[:, 3] / rate, rows[:, 4].astype(bool),
                      inputs, self.finished, last)
        self.rows, self.waves, self.finished = [], [], []
        return piece


def lane_pieces(items: list[tuple[int, Item]], config: WindowConfig) -> Iterator[Piece]:
    """Decode, window and featurize the items in order; yield pieces, the last with last=True.
    Every item ends as one FileResult, whatever is wrong with its bytes."""
    frontend = Frontend(config.frontend)
    batch = _Batch(config, frontend)
    opener = Opener(config.max_bytes)
    try:
        for index, item in items:
            result = FileResult(index)
            for number, start, length, prepared in _windows_of(item, opener, frontend, config, result):
                batch.add(index, number, start, length, prepared)
                if batch.full:
                    yield batch.take()
            batch.finished.append(result)
        yield batch.take(last=True)
    finally:
        opener.close()


def _windows_of(item: Item, opener: Opener, frontend: Frontend, config: WindowConfig,
                result: FileResult) -> Iterator[tuple[int, int, int, np.ndarray | None]]:
    """(number, start, length, prepared window or None when silent) of one item; what goes wrong
    with the item ends it and is recorded in `result`."""
    stream = None
    try:
        with opener.open(item) as source:
            stream = AudioStream(source, item.where, config.frontend, config.max_seconds)
            info = stream.info
            result.sample_rate, result.channels, result.container = info.sample_rate, info.channels, info.container
            for number, (start, wave) in enumerate(sliding_windows(stream.blocks(), config.window, config.hop)):
                prepared = _prepare(frontend, wave, item.where)
                result.windows += 1
                result.silent_windows += prepared is None
                yield number, start, len(wave), prepared
        if opener.failure:     # the member stopped early for a reason of its own (a bomb...)
            raise opener.failure
        if result.silent_windows == result.windows:
            raise AudioError(item.where, "silent", f"silent: all {result.windows} windows peak below "
                             f"{config.frontend.silence_peak:g}; nothing to score")
    except AudioError as e:
        e = opener.failure or e   # what the decoder saw as a cut-off file, and why it was cut
        result.status, result.error_kind, result.error = ERROR, e.kind, str(e)
    except Exception as e:  # a decoder bug on one hostile file must not stop the batch
        result.status, result.error_kind = ERROR, "internal"
        result.error = f"{item.where}: unexpected {type(e).__name__}: {e}"
    result.duration = stream.seconds if stream is not None else None
    result.warning = warning_text(stream.warnings) if stream is not None else ""


def _prepare(frontend: Frontend, wave: np.ndarray, where: str) -> np.ndarray | None:
    """A window as training prepared a clip (crop/pad to the clip length, peak normalisation);
    None for a silent window."""
    try:
        return frontend.peak_normalise(frontend.crop_or_pad(wave), where)
    except AudioError:
        return None


class Lane:
    """One lane on a dask worker (an actor): `pull()` returns its next Piece."""

    def __init__(self, items: list[tuple[int, Item]], config: WindowConfig):
        torch.set_num_threads(1)  # one core per worker process, as in featurize
        self._pieces = lane_pieces(items, config)

    def pull(self) -> Piece:
        return next(self._pieces)
