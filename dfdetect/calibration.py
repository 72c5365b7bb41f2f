"""Calibration: a head's P(fake) turned into a natural-log likelihood ratio, the one place it happens.

Every dfdetect score is P(fake) from the head's sigmoid; its logit is the head's output. A score is
not an LLR: it carries the training set's class balance and the head's over- or under-confidence, so
its 0.5 threshold does not transfer. A `Calibration` maps P(fake) to
    llr = ln p(x | fake) - ln p(x | real)        (higher = more likely fake, as every dfdetect score)
so the Bayes decision of any cost model is a fixed threshold on it (metrics.bayes_threshold) and
act_dcf / cllr mean what ASVspoof 5 means by them. Two methods:

    logistic  llr = slope * logit(P) + offset: prior-weighted logistic regression (the standard
              affine calibration of BOSARIS / the ASVspoof baselines), the classes weighted to the
              effective prior of the cost model, Pspoof' = Cfa Pspoof / (Cfa Pspoof + Cmiss (1 - Pspoof))
              (0.345 for ASVspoof 5's), so it is most accurate where those decisions are made. Targets
              are Platt's ((n + 1) / (n + 2) for fakes, 1 / (n + 2) for reals), so separable data gives
              finite LLRs, not an infinite slope.
    pav       the monotone step function PAV (isotonic regression) fits, its posteriors kept off 0 and
              1 by 1 / (n + 2) and read as LLRs by removing the set's prior log-odds; interpolated
              linearly between steps, flat beyond the ends. Optimal on the data it saw; brittle on
              little data.

The logit is taken of P clipped to [1e-7, 1 - 1e-7] (float32's sigmoid is 1.0 past logit ~17), the
same clip for fitting and applying. A calibration records what it was fitted on (set, store, split,
epoch, clips per class), so a model card or report can say what its LLRs mean; it is JSON (`to_dict`,
`from_dict`). The run folder's calibrations/NAME.json is written and read by models/runs.py.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from dfdetect.errors import DfdetectError
from dfdetect.metrics import ASVSPOOF5_C_FA, ASVSPOOF5_C_MISS, ASVSPOOF5_P_SPOOF

METHODS = ("logistic", "pav")
MIN_PER_CLASS = 20     # fewer clips of a class than this: its LLRs would be guesses
FORMAT = "dfdetect-calibration"
_EPS = 1e-7


class CalibrationError(DfdetectError):
    """Data a calibration cannot be fitted on, or a calibration file that cannot be read."""


def effective_prior(p_spoof: float = ASVSPOOF5_P_SPOOF, c_miss: float = ASVSPOOF5_C_MISS,
                    c_fa: float = ASVSPOOF5_C_FA) -> float:
    """The P(fake) at which equal costs make the same decisions as (p_spoof, c_miss, c_fa)."""
    return c_fa * p_spoof / (c_fa * p_spoof + c_miss * (1 - p_spoof))


def score_logit(scores) -> np.ndarray:
    """logit(P(fake)), P clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    method: str                          # "logistic" or "pav"
    prior: float                         # the P(fake) the fit weighted the classes to (logistic)
    slope: float = 1.0                   # logistic: llr = slope * logit(P) + offset
    offset: float = 0.0
    steps: tuple[tuple[float, float], ...] = ()   # pav: (logit(P), llr) at each step
    fitted_on: dict = field(default_factory=dict)  # set, store, split, epoch, n_real, n_fake...
    created_ns: int = 0                  # when it was fitted (the newest is a run's default)
    name: str = field(default="", compare=False)   # where it was read from (not stored: the file's name)

    def llr(self, scores) -> np.ndarray:
        """Natural-log LLRs fake vs real of P(fake) `scores`."""
        x = score_logit(scores)
        if self.method == "logistic":
            return self.slope * x + self.offset
        xs, ys = np.array(self.steps).T
        return np.interp(x, xs, ys)

    def describe(self) -> str:
        """One line: the method and what it was fitted on."""
        f = self.fitted_on
        where = f.get("spec") or f.get("set") or f.get("store") or "?"
        epoch = f" (epoch {f['epoch']})" if f.get("epoch") is not None else ""
        how = (f"logistic, llr = {self.slope:.4g} * logit(P) + {self.offset:.4g}" if self.method == "logistic"
               else f"pav, {len(self.steps)} steps")
        named = f"{self.name}: " if self.name else ""
        return (f"{named}{how}; fitted on {where}{epoch}: {f.get('n_real', '?')} real, {f.get('n_fake', '?')} "
                "fake clips")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "method": self.method, "prior": self.prior, "slope": self.slope,
                "offset": self.offset, "steps": [list(s) for s in self.steps], "fitted_on": dict(self.fitted_on),
                "created_ns": self.created_ns}

    @classmethod
    def from_dict(cls, data, where: str = "calibration") -> Calibration:
        """A Calibration from `to_dict`'s JSON; CalibrationError naming `where` for anything else."""
        try:
            if data.get("format") != FORMAT or data["method"] not in METHODS:
                raise ValueError("not a dfdetect calibration")
            steps = tuple((float(x), float(y)) for x, y in data.get("steps", ()))
            numbers = [float(data["prior"]), float(data["slope"]), float(data["offset"]), *sum(steps, ())]
            if not all(math.isfinite(v) for v in numbers) or (data["method"] == "pav" and len(steps) < 1):
                raise ValueError("non-finite or missing parameters")
            return cls(data["method"], float(data["prior"]), float(data["slope"]), float(data["offset"]), steps,
                       dict(data.get("fitted_on") or {}), int(data.get("created_ns", 0)))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where}: not a dfdetect calibration ({e}); fit it again with "
                                   "`dfdetect calibrate`") from None


def check_fit_data(labels, scores, min_per_class: int = MIN_PER_CLASS, what: str = "the calibration set") -> None:
    """CalibrationError unless `scores` are finite and both classes have `min_per_class` clips."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise CalibrationError(f"{what}: {bad.size} scores are NaN or infinite (rows {bad[:5].tolist()}); "
                               "calibrate on finite scores")
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    if min(n_real, n_fake) == 0:
        raise CalibrationError(f"{what} has only {'fake' if n_fake else 'real'} clips ({max(n_real, n_fake)}); "
                               "calibration needs labelled clips of both classes")
    if min(n_real, n_fake) < min_per_class:
        raise CalibrationError(f"{what} has {n_real} real and {n_fake} fake clips; calibration needs at least "
                               f"{min_per_class} of each: add labelled clips of the smaller class")


def fit_calibration(labels, scores, method: str = "logistic", prior: float | None = None,
                    fitted_on: dict | None = None, min_per_class: int = MIN_PER_CLASS,
                    what: str = "the calibration set") -> Calibration:
    """A Calibration of P(fake) `scores` with `labels` (1 = fake), by `method`, weighted to `prior`
    (default: the effective prior of ASVspoof 5's cost model)."""
    if method not in METHODS:
        raise CalibrationError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    check_fit_data(labels, scores, min_per_class, what)
    labels = np.asarray(labels).astype(int)
    prior = effective_prior() if prior is None else float(prior)
    n_real, n_fake = int((labels == 0).sum()), int(labels.sum())
    fitted_on = {**(fitted_on or {}), "n_real": n_real, "n_fake": n_fake, "method": method, "prior": prior}
    x = score_logit(scores)
    if method == "logistic":
        slope, offset = _logistic(labels, x, prior)
        return Calibration(method, prior, slope, offset, (), fitted_on, time.time_ns())
    return Calibration(method, prior, steps=_pav_steps(labels, x), fitted_on=fitted_on, created_ns=time.time_ns())


def _logistic(labels: np.ndarray, x: np.ndarray, prior: float) -> tuple[float, float]:
    """(slope, offset) of the prior-weighted logistic regression of labels on x, with Platt's targets
    (each clip counted as fake with weight t and real with 1 - t)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n_real, n_fake = int((labels == 0).sum()), int(labels.sum())
    target = np.where(labels == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))
    class_weight = np.where(labels == 1, prior / n_fake, (1 - prior) / n_real) * labels.size
    xs = np.r_[x, x][:, None]
    ys = np.r_[np.ones_like(labels), np.zeros_like(labels)]
    weights = np.r_[class_weight * target, class_weight * (1 - target)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(xs, ys, sample_weight=weights)
    # the fit's log-odds are posterior at `prior`; the LLR is them less the prior log-odds
    return float(model.coef_[0, 0]), float(model.intercept_[0] - math.log(prior / (1 - prior)))


def _pav_steps(labels: np.ndarray, x: np.ndarray) -> tuple[tuple[float, float], ...]:
    """(logit(P), llr) at PAV's steps: its posteriors at the set's class proportions, kept within
    [1 / (n + 2), 1 - 1 / (n + 2)], less the set's prior log-odds."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, labels.astype(np.float64))
    bound = 1 / (labels.size + 2)
    posterior = np.clip(iso.y_thresholds_, bound, 1 - bound)
    llrs = np.log(posterior) - np.log1p(-posterior) - math.log(labels.sum() / (labels == 0).sum())
    return tuple(zip(iso.X_thresholds_.tolist(), llrs.tolist()))
