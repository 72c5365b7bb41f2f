"""Detection metrics, with one convention for everything.

Labels: 1 = fake (spoof), 0 = real (bona fide). Scores: probability of fake, higher = more likely
fake. A clip is called fake when score >= threshold.

EER follows ASVspoof's reference code exactly (`compute_det_curve` / `compute_eer` of the
ASVspoof 2019/2021/5 evaluation packages): bona fide is the target class, scored higher = more
bona fide, so it runs on -score; all scores are sorted with a stable sort (mergesort), the DET curve
is taken at every sample (no interpolation), the operating point is argmin |FRR - FAR| and the EER
is the mean of FRR and FAR there. With tied scores the stable sort decides which tied clips fall on
which side, so ties can move the EER by several points on small sets: `tied_scores` reports how
many scores repeat another one, and `mixed_ties` how many clips share their score with a clip of
the other label (only those ties can move the EER). scikit-learn computes the other metrics; its
ROC merges tied scores, so it is not used for the EER.

minDCF is ASVspoof 5's primary metric (`compute_mindcf` of its evaluation package), on the same
DET curve: the normalised detection cost
    DCF(t) = (Cmiss * (1 - Pspoof) * Pmiss(t) + Cfa * Pspoof * Pfa(t)) / min(Cmiss * (1 - Pspoof), Cfa * Pspoof)
with Pspoof 0.05, Cmiss 1, Cfa 10, where Pmiss is the rate of bona fide clips rejected (called
fake) and Pfa the rate of spoofs accepted (called real); minDCF is its minimum over the DET curve's
points. 1.0 is the cost of a system that always decides the cheaper way without looking at the
audio; lower is better. Like the EER it is taken at every sorted sample, so with tied scores it can
sit slightly below what any single threshold achieves (the ASVspoof convention, kept for
comparability with published numbers).

Metrics that are undefined (precision with no clip called fake, MCC or AUC with one class) are
NaN here and `null` in JSON, never 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

NAN = float("nan")
NOT_LLRS = ("the scores are not LLRs: calibrate first (a run: dfdetect calibrate; a score file: --score-type llr "
            "or probability)")


def det_curve(target_scores: np.ndarray, nontarget_scores: np.ndarray):
    """ASVspoof's DET curve: (FRR, FAR, thresholds) at every sample of the stable-sorted scores."""
    n = target_scores.size + nontarget_scores.size
    scores = np.concatenate([target_scores, nontarget_scores])
    labels = np.concatenate([np.ones(target_scores.size), np.zeros(nontarget_scores.size)])
    order = np.argsort(scores, kind="mergesort")
    labels = labels[order]
    target_sums = np.cumsum(labels)
    nontarget_sums = nontarget_scores.size - (np.arange(1, n + 1) - target_sums)
    frr = np.concatenate([[0.0], target_sums / target_scores.size])
    far = np.concatenate([[1.0], nontarget_sums / nontarget_scores.size])
    thresholds = np.concatenate([[scores[order[0]] - 0.001], scores[order]])
    return frr, far, thresholds


def eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold on P(fake)) by the ASVspoof convention; (nan, nan) with one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    real, fake = scores[labels == 0], scores[labels == 1]
    if real.size == 0 or fake.size == 0:
        return NAN, NAN
    frr, far, thresholds = det_curve(-real, -fake)  # bona fide is the target, higher = bona fide
    i = int(np.argmin(np.abs(frr - far)))
    # bona fide accepted when -score > t, i.e. fake when score >= -t
    return float((frr[i] + far[i]) / 2), float(-thresholds[i])


# ASVspoof 5's cost model for minDCF (evaluation plan, and `calculate_minDCF_EER_CLLR` of its package).
ASVSPOOF5_P_SPOOF = 0.05
ASVSPOOF5_C_MISS = 1.0
ASVSPOOF5_C_FA = 10.0


def min_dcf(labels: np.ndarray, scores: np.ndarray, p_spoof: float = ASVSPOOF5_P_SPOOF,
            c_miss: float = ASVSPOOF5_C_MISS, c_fa: float = ASVSPOOF5_C_FA) -> tuple[float, float]:
    """(normalised minDCF, threshold on P(fake)) on ASVspoof's DET curve; (nan, nan) with one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    real, fake = scores[labels == 0], scores[labels == 1]
    if real.size == 0 or fake.size == 0:
        return NAN, NAN
    p_miss, p_fa, thresholds = det_curve(-real, -fake)  # Pmiss = FRR of bona fide, Pfa = FAR of spoofs
    cost = c_miss * (1 - p_spoof) * p_miss + c_fa * p_spoof * p_fa
    i = int(np.argmin(cost))   # the first minimum, as ASVspoof's strict `<` loop keeps
    return float(cost[i] / min(c_miss * (1 - p_spoof), c_fa * p_spoof)), float(-thresholds[i])


# -- decisions and calibration (ASVspoof 5's `compute_actDCF` and `calculate_CLLR`) ---------------------------
# These three take LLRs, not P(fake): `llrs` are natural-log likelihood ratios fake vs real,
#     llr = ln p(x | fake) - ln p(x | real),   higher = more likely fake (every dfdetect score's direction).
# The ASVspoof package takes the bona fide LLR, ln p(x | bona fide) - ln p(x | spoof) = -llr, so each
# formula below is the package's with its bona fide score written as -llr.


def bayes_threshold(p_spoof: float = ASVSPOOF5_P_SPOOF, c_miss: float = ASVSPOOF5_C_MISS,
                    c_fa: float = ASVSPOOF5_C_FA) -> float:
    """The Bayes decision threshold on the bona fide LLR, -ln(Cmiss (1 - Pspoof) / (Cfa Pspoof)):
    accept as bona fide when -llr >= it, i.e. call fake when llr > -bayes_threshold() (ln 1.9 = 0.642
    for the defaults: a clip is called fake once it is 1.9 times likelier fake than real)."""
    return float(-np.log(c_miss * (1 - p_spoof) / (c_fa * p_spoof)))


def act_dcf(labels: np.ndarray, llrs: np.ndarray, p_spoof: float = ASVSPOOF5_P_SPOOF,
            c_miss: float = ASVSPOOF5_C_MISS, c_fa: float = ASVSPOOF5_C_FA) -> float:
    """Normalised actual DCF of the decisions `llrs` make at the Bayes threshold t = bayes_threshold():
        actDCF = (Cmiss (1 - Pspoof) Pmiss + Cfa Pspoof Pfa) / min(Cfa Pspoof, Cmiss (1 - Pspoof))
    with Pmiss = share of bona fide clips whose bona fide LLR -llr < t (rejected), Pfa = share of
    spoofs with -llr >= t (accepted). 1.0 = no better than always deciding the cheaper way; it is
    minDCF only when the LLRs are calibrated. nan with one class."""
    labels, llrs = np.asarray(labels), np.asarray(llrs, dtype=np.float64)
    bona, spoof = -llrs[labels == 0], -llrs[labels == 1]
    if bona.size == 0 or spoof.size == 0:
        return NAN
    t = bayes_threshold(p_spoof, c_miss, c_fa)
    p_miss, p_fa = np.mean(bona < t), np.mean(spoof >= t)
    cost = c_miss * (1 - p_spoof) * p_miss + c_fa * p_spoof * p_fa
    return float(cost / min(c_fa * p_spoof, c_miss * (1 - p_spoof)))


def cllr(labels: np.ndarray, llrs: np.ndarray) -> float:
    """Cllr in bits: the log-loss of the LLRs read as evidence at prior 0.5,
        Cllr = (mean_bona log2(1 + e^(llr)) + mean_spoof log2(1 + e^(-llr))) / 2
    (the package's 0.5 (mean_tar log(1 + e^-s) + mean_non log(1 + e^s)) / ln 2 on s = -llr),
    log(1 + e^x) taken as logaddexp(0, x) so |llr| > 700 stays finite. 0 = perfect, 1 = no
    information (llr = 0 everywhere); above 1 the LLRs mislead. nan with one class."""
    labels, llrs = np.asarray(labels), np.asarray(llrs, dtype=np.float64)
    real, fake = llrs[labels == 0], llrs[labels == 1]
    if real.size == 0 or fake.size == 0:
        return NAN
    return float((np.mean(np.logaddexp(0, real)) + np.mean(np.logaddexp(0, -fake))) / 2 / np.log(2))


def min_cllr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Cllr after the best monotone recalibration of `scores` (any scores, higher = more likely fake):
    PAV (isotonic regression of the labels on the scores; tied scores share one value) gives the
    posterior P(fake | score) at the set's own class proportions, and its log-odds minus the empirical
    prior log-odds ln(n_fake / n_real) are the optimal LLRs:
        min_cllr = cllr(labels, logit(PAV(scores)) - ln(n_fake / n_real))
    Cllr - min_cllr is the calibration loss; min_cllr itself is the ranking's. nan with one class."""
    from sklearn.isotonic import IsotonicRegression

    labels, scores = np.asarray(labels).astype(np.float64), np.asarray(scores, dtype=np.float64)
    n_fake, n_real = int(labels.sum()), int((labels == 0).sum())
    if n_fake == 0 or n_real == 0:
        return NAN
    posterior = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(scores, labels)
    with np.errstate(divide="ignore"):   # 0 and 1 are +-inf LLRs, which cllr's logaddexp takes exactly
        llrs = np.log(posterior) - np.log1p(-posterior) - np.log(n_fake / n_real)
    return cllr(labels, llrs)


def llr_metrics(labels: np.ndarray, llrs: np.ndarray, p_spoof: float = ASVSPOOF5_P_SPOOF,
                c_miss: float = ASVSPOOF5_C_MISS, c_fa: float = ASVSPOOF5_C_FA) -> dict:
    """What calibrated LLRs add to a set's metrics: act_dcf, cllr, and the decisions at the Bayes
    threshold ("at_bayes", its threshold on the LLR: fake when llr > -bayes_threshold(), as act_dcf)."""
    llrs = np.asarray(llrs, dtype=np.float64)
    bayes = -bayes_threshold(p_spoof, c_miss, c_fa)
    decisions = at_threshold(labels, llrs, float(np.nextafter(bayes, np.inf)))   # >= the next float: > bayes
    decisions.update(threshold=bayes, threshold_on="llr")
    return {"act_dcf": act_dcf(labels, llrs, p_spoof, c_miss, c_fa), "cllr": cllr(labels, llrs),
            "at_bayes": decisions}


def bayes_error_curves(labels: np.ndarray, llrs: np.ndarray,
                       prior_log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normalised Bayes error-rate plot (BOSARIS): at each prior log-odds eta = logit(P(fake))
    with unit costs, the actual DCF of deciding fake when llr > -eta and the minimum over every
    threshold, both divided by min(P, 1 - P) (the default: 1). At eta = logit(0.345) they are act_dcf
    and min_dcf of ASVspoof 5's cost model."""
    labels, llrs = np.asarray(labels), np.asarray(llrs, dtype=np.float64)
    real, fake = np.sort(llrs[labels == 0]), np.sort(llrs[labels == 1])
    if real.size == 0 or fake.size == 0:
        nan = np.full(len(prior_log_odds), NAN)
        return nan, nan
    cuts = np.r_[-np.inf, np.unique(llrs)]           # fake when llr > cut: every distinct decision
    missed = np.searchsorted(fake, cuts, side="right") / fake.size         # fakes at or below the cut
    rejected = 1 - np.searchsorted(real, cuts, side="right") / real.size   # reals above it
    actual, minimum = [], []
    for eta in np.asarray(prior_log_odds, dtype=np.float64):
        p = 1 / (1 + np.exp(-eta))
        norm = min(p, 1 - p)
        act_missed, act_rejected = np.mean(fake <= -eta), np.mean(real > -eta)
        actual.append((p * act_missed + (1 - p) * act_rejected) / norm)
        minimum.append(min(np.min(p * missed + (1 - p) * rejected), norm) / norm)
    return np.array(actual), np.array(minimum)


def mixed_ties(labels: np.ndarray, scores: np.ndarray) -> int:
    """Clips whose score equals the score of a clip of the other label: the ties whose order in the
    stable sort decides the EER."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    both = np.intersect1d(scores[labels == 0], scores[labels == 1])
    return int(np.isin(scores, both).sum())


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Classification metrics when clips with score >= threshold are called fake."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        two_classes = len(np.unique(labels)) == 2
        return {
            "threshold": float(threshold),
            "accuracy": float(accuracy_score(labels, predicted)),
            "precision": float(precision_score(labels, predicted, zero_division=np.nan)),
            "recall": float(recall_score(labels, predicted, zero_division=np.nan)),
            "f1": float(f1_score(labels, predicted, zero_division=np.nan)),
            # sklearn returns 0 for MCC when a row/column of the confusion matrix is empty; that
            # is "undefined", not "no correlation" (the reference study's MP3-corrupt CNN) unless both classes
            # are present and one is never predicted.
            "mcc": float(matthews_corrcoef(labels, predicted)) if two_classes else NAN,
            "sensitivity": float(tp / (tp + fn)) if tp + fn else NAN,   # recall of fakes
            "specificity": float(tn / (tn + fp)) if tn + fp else NAN,   # recall of reals
            "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
        }


def evaluate_scores(labels, scores, thresholds: dict[str, float] | None = None, llrs=None) -> dict:
    """Every metric for one set: AUC, EER, minDCF (+ their thresholds) and minCllr, tie counts, and
    the classification metrics at 0.5, at the EER threshold and at any extra named thresholds (e.g.
    one chosen on validation); with the scores' calibrated `llrs`, also act_dcf, cllr and the
    decisions at the Bayes threshold (`llr_metrics`)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D and equal length")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"{bad.size} scores are NaN/Inf (rows {bad[:10].tolist()}...)")
    value, eer_threshold = eer(labels, scores)
    dcf, dcf_threshold = min_dcf(labels, scores)
    two_classes = (labels == 0).any() and (labels == 1).any()
    result = {
        "n": int(labels.size), "n_fake": int(labels.sum()), "n_real": int((labels == 0).sum()),
        "auc": float(roc_auc_score(labels, scores)) if two_classes else NAN,
        "eer": value, "eer_threshold": eer_threshold,
        "min_dcf": dcf, "min_dcf_threshold": dcf_threshold, "min_cllr": min_cllr(labels, scores),
        "tied_scores": int(labels.size - np.unique(scores).size),
        "mixed_ties": mixed_ties(labels, scores),
        "at_0.5": at_threshold(labels, scores, 0.5),
    }
    if two_classes:
        result["at_eer"] = at_threshold(labels, scores, eer_threshold)
    for name, t in (thresholds or {}).items():
        result[f"at_{name}"] = at_threshold(labels, scores, t)
    if llrs is not None:
        result.update(llr_metrics(labels, llrs))
    else:   # the keys are there, undefined, with the reason (never a number about something else)
        result.update(act_dcf=NAN, cllr=NAN, act_dcf_undefined=NOT_LLRS)
    return result


def json_safe(obj):
    """NaN -> None recursively, so undefined metrics are `null` in JSON, not a fake number."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
