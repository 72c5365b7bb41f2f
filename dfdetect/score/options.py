"""What a user asks `dfdetect score` for, and the error when it cannot start as asked."""

from __future__ import annotations

from dataclasses import dataclass

from dfdetect.errors import DfdetectError

AGGREGATES = ("mean", "max", "topk")
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
