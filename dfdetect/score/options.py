"""What a user asks `dfdetect score` (or the API's Detector) for, its checks, and the error when it
cannot start as asked."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from dfdetect.errors import DfdetectError, check_range
from dfdetect.featurize.windows import AGGREGATES

SCORE_MEANING = "P(fake): higher = more likely fake"
# Challenge score files --out can be instead of a table (tables.write_challenge)
CHALLENGE_FORMATS = ("asvspoof5", "asvspoof2019")


class ScoreError(DfdetectError):
    """Scoring cannot start as asked (a usage error); the message says what to change."""


@dataclass(frozen=True)
class ScoreOptions:
    window: float | None = None   # seconds; default: the run's clip length
    hop: float | None = None      # seconds; default: half the window
    aggregate: str = "mean"
    top_k: int = 3
    batch_size: int = 64
    max_file_mb: float = 2048.0
    max_hours: float = 12.0
    workers: int | None = None    # None: a third of the cores, at least 1 (see _pieces); 0: in-process
    scheduler: str | None = None
    device: str = "auto"
    features_from: str | None = None   # STORE[@VERSION]: score its rows' features for files it holds
    format: str = "table"         # table (by --out's extension) | asvspoof5 | asvspoof2019
    calibration: str | None = None   # the run's calibration NAME | "none"; None: the newest (its LLR column)

    def checked(self) -> ScoreOptions:
        """These options, or a ScoreError/ConfigError naming the first that scoring cannot run with.
        Every number is checked before any work: NaN would switch a limit off, a hop of 0 samples
        loop forever."""
        if self.format not in ("table", *CHALLENGE_FORMATS):
            raise ScoreError(f"unknown --format {self.format!r}; valid: table, {', '.join(CHALLENGE_FORMATS)}")
        if self.aggregate not in AGGREGATES:
            raise ScoreError(f"unknown --aggregate {self.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        for name, low in (("window", 0.1), ("hop", 0.01), ("top_k", 1), ("batch_size", 1), ("max_file_mb", 0),
                          ("max_hours", 0), ("workers", 0)):
            value, option = getattr(self, name), f"--{name.replace('_', '-')}"
            if value is None and name in ("window", "hop", "workers"):
                continue
            check_range(option, value, low, low_open=low == 0 and name != "workers")
            if name in ("top_k", "batch_size", "workers") and not _whole(value):
                raise ScoreError(f"{option} {value!r}: must be a whole number")
        return self


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
