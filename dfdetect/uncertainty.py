"""How far to trust a number: bootstrap confidence intervals for every metric of `metrics.py`.

A resample draws, within each label (stratified, so every resample keeps the set's fake/real
counts of units), units with replacement: clips, or whole groups of clips (a speaker, a generator,
a source) when the clips of one group are correlated. A resample is a vector of weights over the
set's clips (how often each clip was drawn), so one sort of the scores serves every resample:

- EER and minDCF walk ASVspoof's DET curve (`metrics.det_curve`'s stable order) with cumulative
  weights; the EER looks inside the block of copies of the clip where FRR and FAR cross, so both
  equal `metrics.eer` / `metrics.min_dcf` on the resampled clips exactly.
- AUC is the weighted Mann-Whitney statistic over tied-score groups (= roc_auc_score).
- Decisions at a fixed threshold (accuracy ... MCC) are weighted confusion counts.
- Any other f(labels, scores) -> float in `METRICS` is evaluated on each resample's clips (slower).

Intervals are percentile intervals at `level` (0.95 by default) over `n` seeded resamples: the same
seed, set and grouping give the same interval. They say how much a metric would move if the clips
were drawn again from the same population (same corpus, same generators, same recording
conditions); they say nothing about another corpus. A resample whose metric is undefined (NaN) is
left out of the interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from dfdetect.metrics import (
    ASVSPOOF5_C_FA,
    ASVSPOOF5_C_MISS,
    ASVSPOOF5_P_SPOOF,
    act_dcf,
    cllr,
    eer,
    min_dcf,
)

NAN = float("nan")


def _auc(labels, scores) -> float:
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else NAN


# The set-level metrics: one registry, name -> f(labels, scores) -> float. A metric added here gets
# intervals everywhere (through the generic path unless FAST has a vectorised one).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "eer": lambda labels, scores: eer(labels, scores)[0],
    "auc": _auc,
    "min_dcf": lambda labels, scores: min_dcf(labels, scores)[0],
}
# The metrics defined only on calibrated LLRs (fake vs real): resampled on a set's LLRs, never on its
# P(fake) scores, so not among the defaults.
LLR_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"act_dcf": act_dcf, "cllr": cllr}
# Decisions at a fixed threshold (the keys of `metrics.at_threshold` that are rates).
THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f1", "mcc", "specificity")
GROUPINGS = ("speaker", "generator", "source", "clip")


@dataclass(frozen=True)
class Bootstrap:
    """What an interval is drawn from: `n` resamples, percentile interval at `level`, `seed`."""
    n: int = 1000
    level: float = 0.95
    seed: int = 0


# -- resampling ---------------------------------------------------------------------------------------
def resampling_units(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(unit of each clip, the units of each label): a unit is a clip, or a (label, group) pair."""
    if groups is None:
        unit = np.arange(labels.size)
    else:
        keys = np.asarray([f"{label}\x00{g}" for label, g in zip(labels.tolist(), np.asarray(groups).tolist())])
        _, unit = np.unique(keys, return_inverse=True)
    unit_label = np.zeros(unit.max() + 1 if unit.size else 0, dtype=int)
    unit_label[unit] = labels
    return unit, [np.flatnonzero(unit_label == label) for label in (0, 1)]


def _chunk_size(n_clips: int, n_resamples: int) -> int:
    """Resamples per chunk: ~2M weights in memory at a time (a function of the set alone, so the
    draws, hence the interval, never depend on anything but the seed)."""
    return max(1, min(n_resamples, 2_000_000 // max(n_clips, 1)))


def resample_weights(labels, groups=None, n: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Chunks of (clips x resamples) int32 weights: how often each clip is drawn in each resample,
    stratified by label, by group when `groups` is given (one group value per clip). Resamples are
    columns so that sums along the clips (the curves below) run over contiguous rows."""
    labels = np.asarray(labels).astype(int)
    unit, strata = resampling_units(labels, groups)
    rng = np.random.default_rng(seed)
    step = _chunk_size(labels.size, n)
    for start in range(0, n, step):
        b = min(step, n - start)
        counts = np.zeros((unit.max() + 1 if unit.size else 0, b), dtype=np.int32)
        for members in strata:
            if members.size:
                draws = rng.integers(0, members.size, size=(b, members.size), dtype=np.int32)
                draws *= b
                draws += np.arange(b, dtype=np.int32)[:, None]
                counts[members] = np.bincount(draws.ravel(), minlength=members.size * b).reshape(members.size, b)
        yield counts if groups is None else counts[unit]   # clip units are numbered as the clips


def resampled_clips(weights: np.ndarray) -> np.ndarray:
    """The clip indices of one resample (its weight column), for metrics without a fast path."""
    return np.repeat(np.arange(weights.size), weights)


# -- vectorised metrics on weights --------------------------------------------------------------------
class Ranked:
    """One system's scores on one set, sorted once: each label's clips from the highest score down,
    and ASVspoof's DET curve (`metrics.det_curve`: stable order of -score, bona fide first among ties)
    as how many clips of each label every point has passed."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
        self.real = real[np.argsort(-scores[real], kind="mergesort")]
        self.fake = fake[np.argsort(-scores[fake], kind="mergesort")]
        clips = np.concatenate([real, fake])
        on_curve_real = labels[clips[np.argsort(-scores[clips], kind="mergesort")]] == 0
        self.passed_real = np.concatenate([[0], np.cumsum(on_curve_real)])   # per curve point
        self.passed_fake = np.arange(clips.size + 1) - self.passed_real
        self.next_real = np.concatenate([on_curve_real, [False]])            # the clip after each point
        # reals at or above each fake's score, and strictly above it (for the AUC's ties)
        real_desc, fake_scores = -scores[self.real], -scores[self.fake]
        self.real_ge = np.searchsorted(real_desc, fake_scores, side="right")
        self.real_gt = np.searchsorted(real_desc, fake_scores, side="left")
        self.after_fake = self.passed_fake[1:][~on_curve_real] if clips.size else np.zeros(0, int)

    def cumulate(self, weights: np.ndarray) -> Cumulated:
        # int32 is enough: a cumulative weight never exceeds the clips of the set
        real, fake = (np.concatenate([np.zeros((1, weights.shape[1]), dtype=weights.dtype),
                                      np.cumsum(weights[rows], axis=0)]) for rows in (self.real, self.fake))
        return Cumulated(weights[self.fake], real, fake, real[-1].astype(float), fake[-1].astype(float))

    def eer(self, c: Cumulated) -> np.ndarray:
        cols = np.arange(c.real.shape[1])

        def frr_minus_far(point):   # non-decreasing along the curve
            return (c.real[self.passed_real[point], cols] / c.n_real
                    - (c.n_fake - c.fake[self.passed_fake[point], cols]) / c.n_fake)

        lo, hi = np.zeros(cols.size, dtype=np.int64), np.full(cols.size, self.passed_real.size - 1)
        while (lo < hi).any():      # per resample, the first point at or past the crossing
            mid = (lo + hi) // 2
            past = frr_minus_far(mid) >= 0
            hi, lo = np.where(past, mid, hi), np.where(past, lo, mid + 1)
        before = lo - 1             # the clip between the two points was drawn `copies` times
        is_real = self.next_real[before]
        real_before, fake_before = c.real[self.passed_real[before], cols], c.fake[self.passed_fake[before], cols]
        copies = np.where(is_real, c.real[self.passed_real[lo], cols] - real_before,
                          c.fake[self.passed_fake[lo], cols] - fake_before)
        step = np.where(is_real, 1 / c.n_real, 1 / c.n_fake)
        near = np.floor(-frr_minus_far(before) / step).astype(np.int64)
        # the copies of one clip are points of the resampled curve too: take the one nearest the crossing
        j = np.clip(near[:, None] + np.arange(-1, 3), 0, copies[:, None])
        frr = (real_before[:, None] + j * is_real[:, None]) / c.n_real[:, None]
        far = (c.n_fake[:, None] - (fake_before[:, None] + j * ~is_real[:, None])) / c.n_fake[:, None]
        best = np.argmin(np.abs(frr - far), axis=1)
        return c.defined((frr[cols, best] + far[cols, best]) / 2)

    def min_dcf(self, c: Cumulated, p_spoof: float = ASVSPOOF5_P_SPOOF, c_miss: float = ASVSPOOF5_C_MISS,
                c_fa: float = ASVSPOOF5_C_FA) -> np.ndarray:
        # the cost rises along a run of reals, so its minimum is at the first point or right after a fake
        real = c.real[self.passed_real[1:][~self.next_real[:-1]]] if self.after_fake.size else c.real[:0]
        fake = c.fake[self.after_fake]
        cost = c_miss * (1 - p_spoof) * (real / c.n_real) + c_fa * p_spoof * ((c.n_fake - fake) / c.n_fake)
        best = np.minimum(cost.min(axis=0, initial=np.inf), c_fa * p_spoof)   # the first point: nothing rejected
        return c.defined(best / min(c_miss * (1 - p_spoof), c_fa * p_spoof))

    def auc(self, c: Cumulated) -> np.ndarray:
        # each fake against the real weight below it, ties counting half
        above = (c.real[self.real_ge] + c.real[self.real_gt]) / 2
        wins = c.n_real * c.n_fake - np.einsum("ij,ij->j", c.fake_weights, above)
        with np.errstate(invalid="ignore", divide="ignore"):
            return c.defined(wins / (c.n_real * c.n_fake))


@dataclass
class Cumulated:
    """One chunk of resamples on a `Ranked` set: the fakes' weights and each label's cumulative
    weight from the highest score down (row k: the top k clips), and the label totals."""
    fake_weights: np.ndarray
    real: np.ndarray
    fake: np.ndarray
    n_real: np.ndarray
    n_fake: np.ndarray

    def defined(self, values: np.ndarray) -> np.ndarray:
        """NaN where a resample lacks a label (cannot happen stratified; kept for safety)."""
        return np.where((self.n_real > 0) & (self.n_fake > 0), values, NAN)


def decisions(labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray) -> dict:
    """`metrics.at_threshold`'s rates on each resample (clips with score >= threshold called fake)."""
    fake_called = scores >= threshold
    w = weights.astype(np.float64)
    tp, fn = (fake_called & (labels == 1)) @ w, (~fake_called & (labels == 1)) @ w
    fp, tn = (fake_called & (labels == 0)) @ w, (~fake_called & (labels == 0)) @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = np.where(denominator > 0, (tp * tn - fp * fn) / denominator, 0.0)
        both = (tp + fn > 0) & (tn + fp > 0)   # sklearn's 0 with an empty row/column; NaN with one class
        return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision, "recall": recall,
                "f1": np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), NAN),
                "mcc": np.where(both, mcc, NAN), "specificity": tn / (tn + fp)}


FAST = {"eer": Ranked.eer, "min_dcf": Ranked.min_dcf, "auc": Ranked.auc}


class SetMetrics:
    """Every metric of one system on one set, evaluated on resample weights. `thresholds` are the
    fixed decision thresholds ({"0.5": 0.5, "eer": t, ...}): the interval is of the rates at that
    threshold, not of a threshold chosen again on each resample."""

    def __init__(self, labels, scores, metrics=tuple(METRICS), thresholds: dict[str, float] | None = None):
        self.labels = np.asarray(labels).astype(int)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.metrics, self.thresholds = tuple(metrics), dict(thresholds or {})
        self.ranked = Ranked(self.labels, self.scores)

    def values(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """{metric: one value per resample}, threshold rates as "at_NAME/metric"."""
        out, cumulated = {}, self.ranked.cumulate(weights)
        for name in self.metrics:
            if name in FAST:
                out[name] = FAST[name](self.ranked, cumulated)
            else:
                f = METRICS[name] if name in METRICS else LLR_METRICS[name]
                out[name] = np.array([f(self.labels[i], self.scores[i]) for i in map(resampled_clips, weights.T)])
        for label, t in self.thresholds.items():
            rates = decisions(self.labels, self.scores, t, weights)
            out.update({f"at_{label}/{k}": v for k, v in rates.items()})
        return out


# -- intervals ----------------------------------------------------------------------------------------
def interval(samples: np.ndarray, level: float) -> list[float]:
    """Percentile interval [low, high] of the defined (non-NaN) resampled values; [nan, nan] if none."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [NAN, NAN]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_values(systems: list[SetMetrics], groups=None, boot: Bootstrap = Bootstrap()) -> list[dict]:
    """Each system's {metric: n resampled values}, all systems on the same resampled clips (paired)."""
    labels = systems[0].labels
    collected: list[dict[str, list]] = [{} for _ in systems]
    for weights in resample_weights(labels, groups, boot.n, boot.seed):
        for system, store in zip(systems, collected):
            for name, values in system.values(weights).items():
                store.setdefault(name, []).append(values)
    return [{name: np.concatenate(parts) for name, parts in store.items()} for store in collected]


def metric_intervals(labels, scores, groups=None, thresholds: dict[str, float] | None = None,
                     boot: Bootstrap = Bootstrap(), metrics=tuple(METRICS)) -> dict:
    """{"eer_ci": [low, high], "auc_ci": ..., "at_NAME": {"accuracy_ci": ...}} for one set."""
    (values,) = bootstrap_values([SetMetrics(labels, scores, metrics, thresholds)], groups, boot)
    out: dict = {}
    for name, samples in values.items():
        at, _, rate = name.rpartition("/")
        (out.setdefault(at, {}) if at else out)[f"{rate}_ci"] = interval(samples, boot.level)
    return out


# Per-epoch records: 200 resamples, not 1,000, as every epoch of every set pays for them; the ends of a
# 95% interval then move by about a tenth of its width from seed to seed, enough for a band on a curve.
EPOCH_BOOTSTRAP = Bootstrap(n=200)


def headline_intervals(labels, scores, boot: Bootstrap = EPOCH_BOOTSTRAP) -> dict:
    """{"eer_ci", "min_dcf_ci"} of one set (clip resampling), {} when it holds one label."""
    labels = np.asarray(labels).astype(int)
    if labels.size == 0 or labels.min() == labels.max():
        return {}
    return metric_intervals(labels, scores, boot=boot, metrics=("eer", "min_dcf"))
