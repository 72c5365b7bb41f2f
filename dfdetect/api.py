"""dfdetect's public Python API (re-exported lazily by `dfdetect/__init__.py`):

    from dfdetect import Detector
    detector = Detector.from_run("runs/mel_aasist")          # or Detector.from_pretrained("models/x")
    result = detector.score("clip.flac")                      # result.score: P(fake), as `dfdetect score` writes it
    for result in detector.score_many(["a.wav", "b.mp3"]):    # streamed, one per input, in order
        print(result.path, result.status, result.score, result.decision)

A file is decoded, windowed and scored by the very functions `dfdetect score` uses (score/windows.py
lane_pieces, scoring.Scorer and score_piece, and its one per-file rule, score/per_file.py, in this
process), so a Result is that file's row of the table: the same status and error kind (an
`out_of_memory` or `non_finite_score` error included), `.score` rounded to the table's 6 decimals
(`.windows` the same way) and `.decision` taken, as the table's, on the unrounded score.
Arguments that are not what the methods take (a list or tensor as a path, an [N, 2] array, a
sample rate that is not a positive whole number) raise ConfigError (a DfdetectError and a
ValueError) naming the argument. `featurize`, `train` and `evaluate` are the functions the
commands call.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfdetect.errors import ConfigError
from dfdetect.evaluate.evaluation import evaluate_run as evaluate
from dfdetect.featurize.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.pipeline import featurize  # keyword options over FeaturizeConfig's defaults
from dfdetect.models.pretrained import load_model, load_pretrained
from dfdetect.names import printable
from dfdetect.score.options import ScoreOptions
from dfdetect.score.per_file import SCORE_DIGITS, FileOutcome, FileRule, FileWindows, rounded
from dfdetect.score.scoring import Scorer, score_piece, window_config
from dfdetect.score.sources import expand
from dfdetect.score.windows import lane_pieces
from dfdetect.store import parse_store_spec, schema
from dfdetect.store.inspect import store_info
from dfdetect.train.trainer import TrainConfig, train

__all__ = ["Detector", "Result", "Store", "open_store", "featurize", "FeaturizeConfig", "train", "TrainConfig",
           "evaluate"]


@dataclass
class Result:
    """One input's outcome, its row of `dfdetect score`'s table: `status` ok | error | skipped with
    the table's `error_kind` (out_of_memory and non_finite_score included); `score` is P(fake) to 6
    decimals (None unless ok), `decision` "fake" when the unrounded score >= the run's validation
    threshold; per non-silent window its start/end (s) and score. With the run's calibration, `llr`
    is the file's natural-log LLR fake vs real (6 decimals) and `llr_decision` the decision at the
    Bayes threshold of ASVspoof 5's costs (None without one)."""
    path: str
    member: str
    status: str
    score: float | None
    decision: str | None
    threshold: float
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    error_kind: str = ""
    error: str = ""
    llr: float | None = None
    llr_decision: str | None = None


class Detector:
    """A trained head (any architecture) ready to score audio; WavLM heads load their WavLM at
    the first score."""

    def __init__(self, run, options: ScoreOptions = ScoreOptions(workers=0)):
        self.run, self.options = run, options.checked()
        self._scorer: Scorer | None = None

    @classmethod
    def from_run(cls, path: str | Path, epoch: str | int = "best", device: str = "auto",
                 calibration: str | None = None) -> Detector:
        """The head of the run folder at `path` at `epoch` (best | last | N), its LLRs by the run's
        `calibration` (a name, "none", or None: the newest fitted on the epoch)."""
        return cls(load_model(path, epoch), ScoreOptions(workers=0, device=device, calibration=calibration))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", calibration: str | None = None) -> Detector:
        """The head of a folder `dfdetect export` wrote (its LLRs by the calibration exported with
        it; `calibration="none"`: none)."""
        return cls(load_pretrained(path), ScoreOptions(workers=0, device=device, calibration=calibration))

    @property
    def threshold(self) -> float:
        return self.run.threshold

    def score(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> Result:
        """The Result of one file, or of a waveform (a numpy array: [samples] or [channels,
        samples] at `sample_rate`, a whole number of Hz), which is written as a float WAV and scored
        as that file would be. ConfigError names the argument that is not one of these."""
        if isinstance(audio, np.ndarray):
            import soundfile as sf

            waveform = _waveform(audio, sample_rate)
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "audio.wav"
                sf.write(wav, waveform.T, int(sample_rate), subtype="FLOAT")
                return next(self.score_many([wav]))
        if not isinstance(audio, (str, os.PathLike)):
            raise ConfigError(f"audio: {_kind(audio)} is neither a path (str or Path) nor a numpy array of samples"
                              + ("; score_many takes several paths" if isinstance(audio, (list, tuple)) else "")
                              + ("; a tensor of samples: pass tensor.numpy()" if hasattr(audio, "numpy") else ""))
        if sample_rate is not None:
            raise ConfigError(f"sample_rate {_shown(sample_rate)}: only for an array; a file's rate is read from it")
        return next(self.score_many([audio]))

    def score_many(self, paths: Iterable[str | Path], batch_size: int = 64) -> Iterator[Result]:
        """Results of every input the paths name (files, folders, archives, lists), streamed in order.
        The arguments are checked here, before the first Result is asked for."""
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Iterable):
            raise ConfigError(f"paths: {_kind(paths)} is not a list of paths; score() takes one path")
        paths = list(paths)
        for i, path in enumerate(paths):
            if not isinstance(path, (str, os.PathLike)):
                raise ConfigError(f"paths[{i}]: {_kind(path)} is not a path (str or Path)")
        if not _whole(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size {_shown(batch_size)}: must be a whole number >= 1")
        options = dataclasses.replace(self.options, batch_size=batch_size)
        return self._results(expand([os.fspath(p) for p in paths]), options)

    def _results(self, items, options: ScoreOptions) -> Iterator[Result]:
        if self._scorer is None:
            self._scorer = Scorer(self.run, options.device)
        files = FileWindows(FileRule.of(self.run, options))
        for piece in lane_pieces(list(enumerate(items)), window_config(self.run, options)):
            score_piece(self._scorer, piece, files)
            for result in piece.finished:
                item = items[result.item]
                yield self._result(item.key, files.finish(result, item.where))

    def _result(self, key: tuple[str, str], outcome: FileOutcome) -> Result:
        kept = ~outcome.silent
        return Result(*key, outcome.status, outcome.table_score, outcome.decision, self.threshold,
                      [round(s, 4) for s in outcome.start[kept].tolist()],
                      [round(e, 4) for e in outcome.end[kept].tolist()],
                      [rounded(s, SCORE_DIGITS) for s in outcome.scores[kept].tolist()],
                      outcome.error_kind, outcome.error, outcome.table_llr, outcome.llr_decision)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shown(value) -> str:
    """A value in a message, bounded (a list of a million paths must not fill the terminal)."""
    text = printable(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value) -> str:
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {list(shape)}" if shape is not None else
                                          f" of {len(value)} items" if isinstance(value, (list, tuple)) else
                                          f" ({_shown(value)})")


def _waveform(audio: np.ndarray, sample_rate) -> np.ndarray:
    """`audio` as float32 [channels, samples], or ConfigError naming what is wrong with it or the rate."""
    if sample_rate is None:
        raise ConfigError("sample_rate: scoring an array needs its sample rate (a whole number of Hz)")
    if not _whole(sample_rate) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ConfigError(f"sample_rate {_shown(sample_rate)}: must be a whole number of Hz, "
                          f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE}")
    if audio.dtype.kind not in "fiu":
        raise ConfigError(f"audio: an array of {audio.dtype} is not samples; pass real numbers (float or int)")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > max(audio.shape[1], 1):
        raise ConfigError(f"audio: {_kind(audio)} is not [samples] or [channels, samples] (fewer channels than "
                          "samples); an array of [samples, channels] is passed as audio.T")
    return np.asarray(audio, np.float32)


class Store:
    """One version of a feature store, for reading: `info()` (what `dfdetect store info --json`
    prints), `arrays` (its feature arrays), `meta` (every metadata column, a pyarrow Table in row
    order) and `read_rows(names, rows)` (feature rows as numpy arrays, float16 as stored; WavLM
    layers stored as uint8 codes come back dequantized to float16)."""

    def __init__(self, spec: str):
        self.spec = spec
        self._store = schema.open_store(spec)

    def info(self) -> dict:
        with schema.reading_metadata(parse_store_spec(self.spec)[0]):
            return store_info(f"{self._store.path}@{self._store.version}")

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(self._store.feature_names)

    @property
    def meta(self):
        import pyarrow as pa

        return pa.table({name: np.asarray(values).tolist() for name, values in self._store.meta.items()})

    def read_rows(self, names: Iterable[str], rows) -> dict[str, np.ndarray]:
        return self._store.read_rows(list(names), rows)


def open_store(spec: str) -> Store:
    """The store version 'PATH[@VERSION]' names (default: the newest complete one)."""
    return Store(spec)
