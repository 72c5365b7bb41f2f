"""dfdetect's public Python API (re-exported lazily by `dfdetect/__init__.py`):

    from dfdetect import Detector
    detector = Detector.from_run("runs/mel_aasist")          # or Detector.from_pretrained("models/x")
    result = detector.score("clip.flac")                      # result.score: P(fake), as `dfdetect score` writes it
    for result in detector.score_many(["a.wav", "b.mp3"]):    # streamed, one per input, in order
        print(result.path, result.status, result.score, result.decision)

A file is decoded, windowed and scored by the very functions `dfdetect score` uses (score/windows.py
lane_pieces, scoring.Scorer and aggregate, in this process), so `.score` equals the table's value
for that file (rounded to the table's 6 decimals; `.windows` holds the window scores the same way).
`featurize`, `train` and `evaluate` are the functions the commands call.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from dfdetect.evaluate.evaluation import evaluate_run as evaluate
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.pipeline import featurize   # keyword options over FeaturizeConfig's defaults
from dfdetect.models.pretrained import load_model, load_pretrained
from dfdetect.score.options import ScoreOptions
from dfdetect.score.scoring import Scorer, aggregate, rounded, window_config
from dfdetect.score.sources import OK, expand
from dfdetect.score.windows import lane_pieces
from dfdetect.store import parse_store_spec
from dfdetect.store import schema
from dfdetect.store.inspect import store_info
from dfdetect.train.trainer import TrainConfig, train

__all__ = ["Detector", "Result", "Store", "open_store", "featurize", "FeaturizeConfig", "train", "TrainConfig",
           "evaluate"]


@dataclass
class Result:
    """One input's outcome: `score` is P(fake) (None unless status is "ok"), `decision` "fake" when
    score >= the run's validation threshold; per non-silent window its start/end (s) and score."""
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


class Detector:
    """A trained head (any architecture) ready to score audio; WavLM heads load their WavLM at
    the first score."""

    def __init__(self, run, options: ScoreOptions = ScoreOptions(workers=0)):
        self.run, self.options = run, options
        self._scorer: Scorer | None = None

    @classmethod
    def from_run(cls, path: str | Path, epoch: str | int = "best", device: str = "auto") -> "Detector":
        """The head of the run folder at `path` at `epoch` (best | last | N)."""
        return cls(load_model(path, epoch), ScoreOptions(workers=0, device=device))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto") -> "Detector":
        """The head of a folder `dfdetect export` wrote."""
        return cls(load_pretrained(path), ScoreOptions(workers=0, device=device))

    @property
    def threshold(self) -> float:
        return self.run.threshold

    def score(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> Result:
        """The Result of one file, or of a waveform ([samples] or [channels, samples] at
        `sample_rate`), which is written as a float WAV and scored as that file would be."""
        if isinstance(audio, np.ndarray):
            import soundfile as sf

            if sample_rate is None:
                raise ValueError("scoring an array needs its sample_rate")
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "audio.wav"
                sf.write(wav, np.asarray(audio, np.float32).T, sample_rate, subtype="FLOAT")
                return next(self.score_many([wav]))
        return next(self.score_many([audio]))

    def score_many(self, paths: Iterable[str | Path], batch_size: int = 64) -> Iterator[Result]:
        """Results of every input the paths name (files, folders, archives, lists), streamed in order."""
        if self._scorer is None:
            self._scorer = Scorer(self.run, self.options.device)
        items = expand([str(p) for p in paths])
        config = window_config(self.run, self.options, batch_size)
        windows: dict[int, list] = {}
        for piece in lane_pieces(list(enumerate(items)), config):
            scores = np.full(len(piece.item), np.nan)
            if (~piece.silent).any():
                scores[~piece.silent] = self._scorer(piece.inputs)
            for i in np.unique(piece.item).tolist():
                m = (piece.item == i) & ~piece.silent
                windows.setdefault(i, []).append((piece.start[m], piece.end[m], scores[m]))
            for result in piece.finished:
                yield self._result(items[result.item], result, windows.pop(result.item, []))

    def _result(self, item, result, parts) -> Result:
        path, member = item.key
        if result.status != OK or not parts:
            return Result(path, member, result.status, None, None, self.threshold,
                          error_kind=result.error_kind, error=result.error)
        starts, ends, scores = (np.concatenate(c) for c in zip(*parts))
        value = rounded(aggregate(scores, self.options.aggregate, self.options.top_k), 6)
        return Result(path, member, OK, value, "fake" if value >= self.threshold else "real", self.threshold,
                      [round(s, 4) for s in starts.tolist()], [round(e, 4) for e in ends.tolist()],
                      [rounded(s, 6) for s in scores.tolist()])


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
