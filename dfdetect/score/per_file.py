"""One answer per file: a file's status, score and decision from its window scores. The one rule
`dfdetect score`'s table, the Python API (Detector.score / score_many) and evaluation of
multi-window files share.

    FileRule     the aggregate (mean | max | topk; featurize/windows.py) and the run's threshold;
                 `outcome(window scores)` is a file's answer from plain arrays
    FileWindows  window scores collected per file as pieces arrive (a piece holds windows of
                 several files, a file spans several pieces) and pieces that failed (out of GPU
                 memory) -> the file's FileOutcome when its FileResult arrives
    FileOutcome  status, score, decision, error, and the windows behind the score; with the run's
                 calibration, the file's LLR (its aggregated score through the calibration, here
                 and nowhere else) and the decision at the Bayes threshold of ASVspoof 5's costs

The decision is taken on the unrounded score (fake when score >= threshold); the table's 6
decimals (SCORE_DIGITS) are presentation only, so a score within 5e-7 of the threshold gets the
same decision in every entry point. Silent windows are left out of the score. A file whose
scored windows hold a non-finite score (a model with broken weights gives NaN) is an error
(`non_finite_score`), never an ok row without a score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dfdetect.calibration import Calibration
from dfdetect.featurize.windows import aggregate
from dfdetect.metrics import bayes_threshold
from dfdetect.score.sources import ERROR, OK
from dfdetect.score.windows import FileResult, Piece

SCORE_DIGITS = 6          # the score tables' decimals (and the API's Result.score)
NON_FINITE = "non_finite_score"


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _empty(dtype=np.float64) -> np.ndarray:
    return np.zeros(0, dtype)


@dataclass
class FileOutcome:
    """A file's answer. `score` is unrounded (None unless ok); the window arrays hold every window,
    silent ones included (their score NaN), for the window table."""
    status: str
    score: float | None = None
    decision: str | None = None
    error_kind: str = ""
    error: str = ""
    window: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    start: np.ndarray = field(default_factory=_empty)
    end: np.ndarray = field(default_factory=_empty)
    silent: np.ndarray = field(default_factory=lambda: _empty(bool))
    scores: np.ndarray = field(default_factory=_empty)
    llr: float | None = None             # natural-log LLR fake vs real (None: no calibration, or not ok)
    llr_decision: str | None = None      # fake when llr > the Bayes threshold (metrics.act_dcf's rule)

    @property
    def table_score(self) -> float | None:
        """The score as the tables write it (and the API's Result shows it)."""
        return rounded(self.score, SCORE_DIGITS)

    @property
    def table_llr(self) -> float | None:
        return rounded(self.llr, SCORE_DIGITS)


@dataclass(frozen=True)
class FileRule:
    threshold: float
    aggregate: str = "mean"
    top_k: int = 3
    calibration: Calibration | None = None

    @classmethod
    def of(cls, run, options) -> FileRule:
        """The rule of `run` (its threshold, and its calibration options.calibration names: None the
        newest, "none" no LLRs) under ScoreOptions `options`."""
        return cls(run.threshold, options.aggregate, options.top_k, run.calibration(options.calibration))

    @property
    def name(self) -> str:
        """The table's `aggregate` column: mean, max or topK."""
        return f"top{self.top_k}" if self.aggregate == "topk" else self.aggregate

    def decision(self, score: float) -> str:
        return "fake" if score >= self.threshold else "real"

    def llr(self, score: float) -> tuple[float | None, str | None]:
        """(LLR, its Bayes decision) of a file's aggregated score; (None, None) without a calibration."""
        if self.calibration is None:
            return None, None
        value = float(self.calibration.llr([score])[0])
        return value, "fake" if value > -bayes_threshold() else "real"

    def outcome(self, scores: np.ndarray, silent: np.ndarray | None = None, window: np.ndarray | None = None,
                start: np.ndarray | None = None, end: np.ndarray | None = None, where: str = "") -> FileOutcome:
        """A file's answer from its window scores (silent windows marked, and left out)."""
        scores = np.asarray(scores, np.float64)
        silent = np.zeros(len(scores), bool) if silent is None else np.asarray(silent, bool)
        n = np.arange(len(scores))
        windows = dict(window=n if window is None else window, start=n * 0.0 if start is None else start,
                       end=n * 0.0 if end is None else end, silent=silent, scores=scores)
        kept = scores[~silent]
        prefix = f"{where}: " if where else ""
        if not len(kept):
            return FileOutcome(ERROR, error_kind="silent", error=f"{prefix}no window to score (all silent)")
        bad = int((~np.isfinite(kept)).sum())
        if bad:
            return FileOutcome(ERROR, error_kind=NON_FINITE, error=(
                f"{prefix}the model gave {bad} of {len(kept)} windows a non-finite score (NaN); its weights are "
                "broken (or were trained to overflow): retrain or export the run again"))
        value = aggregate(kept, self.aggregate, self.top_k)
        llr, llr_decision = self.llr(value)
        return FileOutcome(OK, value, self.decision(value), **windows, llr=llr, llr_decision=llr_decision)


class FileWindows:
    """Window scores per file until the file's FileResult arrives; then its FileOutcome."""

    def __init__(self, rule: FileRule):
        self.rule = rule
        self._parts: dict[int, list] = {}
        self._failed: dict[int, tuple[str, str]] = {}   # item -> (error kind, message) of a failed piece

    def add(self, piece: Piece, scores: np.ndarray) -> None:
        """The piece's window scores (NaN for silent windows, and for a failed piece)."""
        for index in np.unique(piece.item).tolist():
            m = piece.item == index
            self._parts.setdefault(index, []).append(
                (piece.window[m], piece.start[m], piece.end[m], piece.silent[m], scores[m]))

    def fail(self, piece: Piece, kind: str, message: str) -> None:
        """The files with windows in `piece` become errors when they finish; the others go on."""
        for index in np.unique(piece.item).tolist():
            self._failed.setdefault(index, (kind, message))

    def finish(self, result: FileResult, where: str) -> FileOutcome:
        """The answer of the file `result` ends (`where` names it in messages)."""
        parts = self._parts.pop(result.item, [])   # an error drops the windows sent before it
        failed = self._failed.pop(result.item, None)
        if result.status != OK:
            return FileOutcome(result.status, error_kind=result.error_kind, error=result.error)
        if failed:
            return FileOutcome(ERROR, error_kind=failed[0], error=f"{where}: {failed[1]}")
        window, start, end, silent, scores = ((np.concatenate(c) for c in zip(*parts)) if parts
                                              else (_empty(np.int64), _empty(), _empty(), _empty(bool), _empty()))
        return self.rule.outcome(scores, silent, window, start, end, where)
