"""The shortcut audit: does a recording statistic alone separate real from fake?

For each statistic of featurize/recording.py STATISTICS a store holds, the EER of the statistic
itself as a detector (either direction: the lower of the two), over all fakes and over each
generator's fakes against all reals; and the EER of a classifier on every statistic together
("metadata alone": scikit-learn's gradient-boosted trees, out-of-fold scores of a stratified
5-fold cross-validation). A cue is the statistic (or the classifier) with its EER.

A cue is reported (`Audit.warnings`) when its EER is at or below the bound (MAX_CUE_EER) AND the
classes differ beyond chance: a two-sided Mann-Whitney U test of the statistic (the classifier's
out-of-fold scores) between the classes, p below ALPHA divided by the number of tests made (a
Bonferroni correction over every statistic and generator). On a few dozen clips an EER of 0.2 is
reached by chance by some statistic among many; the test is what keeps a dataset whose labels
carry no information silent. Sets (or generators) with fewer than MIN_CLIPS clips of a class are
not tested at all.

EER: dfdetect.metrics.eer (ASVspoof's convention); where clips of both classes share a value (a
sample rate, a container) the ROC is interpolated across the tie instead, so a tie counts as a
coin flip and not as whichever order the sort leaves it in. A category (container) is scored by
its share of fakes.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from dfdetect.featurize.recording import STATISTICS
from dfdetect.featurize.windows import file_rows
from dfdetect.metrics import eer, mixed_ties
from dfdetect.store.schema import RECORDING_COLUMNS

MAX_CUE_EER = 0.25
ALPHA = 0.01
MIN_CLIPS = 10
QUANTILES = (0.1, 0.5, 0.9)
FOLDS = 5
CLASSIFIER_CLIPS = 10_000   # the classifier sees at most this many clips (a seeded sample)
COMBINED = "metadata"


@dataclass
class Cue:
    """One statistic (or the classifier, COMBINED) as a detector of fakes on one set."""
    cue: str                      # the column, or COMBINED
    eer: float
    p_value: float
    fake_higher: bool             # the direction that gives this EER
    n_real: int
    n_fake: int
    generator: str | None = None  # None: all fakes
    quantiles: dict = field(default_factory=dict)   # class -> the QUANTILES of the statistic

    @property
    def name(self) -> str:
        return "all statistics together" if self.cue == COMBINED else STATISTICS[self.cue][0]

    def median(self, label: str) -> str:
        q = self.quantiles.get(label)
        if not q or isinstance(q[0], str):
            return str(q[1]) if q else "?"
        unit = STATISTICS[self.cue][1]
        return f"{q[1]:.3g}" + (f" {unit}" if unit else "")

    def warning(self) -> str:
        fakes = "fake" if self.generator is None else f"fake of generator {self.generator}"
        if self.cue == COMBINED:
            return (f"the recording statistics together (metadata alone) separate real from {fakes}: EER "
                    f"{self.eer:.2f}; a detector may learn how the clips were recorded, not synthesis")
        line = f"{self.name} alone separates real from {fakes}: EER {self.eer:.2f}"
        return (line + f" (fake median {self.median('fake')}, real {self.median('real')}); a detector may "
                f"learn {self.name}, not synthesis")


@dataclass
class Audit:
    n_real: int
    n_fake: int
    cues: list[Cue]               # every cue tested, all fakes first, then per generator
    n_tests: int
    missing: list[str]            # statistics the store lacks
    note: str = ""                # why nothing (or not everything) was tested

    @property
    def p_bound(self) -> float:
        return ALPHA / max(1, self.n_tests)

    def flagged(self, max_cue_eer: float = MAX_CUE_EER) -> list[Cue]:
        """The cues to warn about: EER at or below the bound and beyond chance; a statistic
        flagged over all fakes is not repeated for each generator."""
        hits = [c for c in self.cues if c.eer <= max_cue_eer and c.p_value < self.p_bound]
        overall = {c.cue for c in hits if c.generator is None}
        return [c for c in hits if c.generator is None or c.cue not in overall]

    def warnings(self, max_cue_eer: float = MAX_CUE_EER) -> list[str]:
        return [c.warning() for c in self.flagged(max_cue_eer)]

    def to_dict(self, max_cue_eer: float = MAX_CUE_EER) -> dict:
        combined = next((c for c in self.cues if c.cue == COMBINED and c.generator is None), None)
        flagged = {id(c) for c in self.flagged(max_cue_eer)}
        return {"n_real": self.n_real, "n_fake": self.n_fake, "max_cue_eer": max_cue_eer,
                "p_bound": self.p_bound, "n_tests": self.n_tests, "missing": self.missing, "note": self.note,
                "combined_eer": combined.eer if combined else None,
                "cues": [{**asdict(c), "name": c.name, "warning": c.warning() if id(c) in flagged else None}
                         for c in self.cues]}


def tie_fair_eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """metrics.eer, or where the classes share a score, the EER of the ROC interpolated across
    its tied groups (a tie is a coin flip)."""
    if not mixed_ties(labels, scores):
        return eer(labels, scores)[0]
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    gap = fpr - (1 - tpr)                        # rises from -1 to 1
    i = int(np.argmax(gap >= 0))
    t = gap[i - 1] / (gap[i - 1] - gap[i]) if i and gap[i] != gap[i - 1] else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1])) if i else float(fpr[0])


TEXT = "OUST"   # numpy's kinds of strings (T: the StringDType zarr reads text columns as)


def text(values: np.ndarray) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=str)


def scores_of(values: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """A statistic as float scores (a category: its share of fakes; missing: below everything);
    None when no clip has it."""
    if values.dtype.kind in TEXT:
        values = text(values)
        kinds, codes = np.unique(values, return_inverse=True)
        share = np.array([labels[codes == k].mean() for k in range(len(kinds))])
        values = share[codes]
    values = values.astype(np.float64)
    missing = ~np.isfinite(values)
    if missing.all():
        return None
    if missing.any():
        values = np.where(missing, np.nanmin(np.where(missing, np.nan, values)) - 1, values)
    return values


def quantiles_of(values: np.ndarray) -> list:
    if values.dtype.kind in TEXT:
        kinds, counts = np.unique(text(values), return_counts=True)
        top = kinds[np.argmax(counts)]
        return [str(top)] * len(QUANTILES)
    finite = values[np.isfinite(values.astype(np.float64))].astype(np.float64)
    return [float(q) for q in np.quantile(finite, QUANTILES)] if finite.size else []


def statistic_cue(column: str, values: np.ndarray, labels: np.ndarray, generator: str | None) -> Cue | None:
    """The cue of one statistic on one set (one value for every clip: EER 0.5); None when no clip
    has the statistic."""
    from scipy.stats import mannwhitneyu

    scores = scores_of(values, labels)
    if scores is None:
        return None
    if np.ptp(scores) == 0:
        up, down, p = 0.5, 0.5, 1.0
    else:
        up, down = tie_fair_eer(labels, scores), tie_fair_eer(labels, -scores)
        p = float(mannwhitneyu(scores[labels == 1], scores[labels == 0]).pvalue)
    return Cue(column, min(up, down), p, up <= down, int((labels == 0).sum()), int((labels == 1).sum()), generator,
               {"real": quantiles_of(values[labels == 0]), "fake": quantiles_of(values[labels == 1])})


def combined_cue(columns: dict[str, np.ndarray], labels: np.ndarray, generator: str | None, seed: int) -> Cue | None:
    """The cue of a classifier on every statistic together, scored out of fold."""
    from scipy.stats import mannwhitneyu
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    if len(labels) > CLASSIFIER_CLIPS:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), CLASSIFIER_CLIPS, replace=False))
        columns, labels = {k: v[keep] for k, v in columns.items()}, labels[keep]
    features = [s for s in (scores_of(v, labels) for v in columns.values()) if s is not None and np.ptp(s)]
    if not features or np.bincount(labels, minlength=2).min() < FOLDS:
        return None
    x = np.stack(features, axis=1)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    # leaves of at least a tenth of a fold's clips (sklearn's 20 leave small sets unsplit)
    leaf = max(2, min(20, len(labels) // (2 * FOLDS)))
    model = HistGradientBoostingClassifier(max_iter=100, min_samples_leaf=leaf, random_state=seed)
    # one thread: OpenMP's spinning threads made a 80-clip fit take 24 s on a busy 2-core machine
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        scores = cross_val_predict(model, x, labels, cv=folds, method="predict_proba")[:, 1]
    p = float(mannwhitneyu(scores[labels == 1], scores[labels == 0]).pvalue) if np.ptp(scores) else 1.0
    return Cue(COMBINED, tie_fair_eer(labels, scores), p, True, int((labels == 0).sum()),
               int((labels == 1).sum()), generator)


def audit_set(columns: dict[str, np.ndarray], labels: np.ndarray, generators: np.ndarray | None = None,
              missing: list[str] | None = None, seed: int = 0) -> Audit:
    """Audit one set: `columns` statistic -> one value per clip (STATISTICS' names), `labels` 1 =
    fake, `generators` each clip's generator (None: not per generator)."""
    labels = np.asarray(labels).astype(np.int64)
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    audit = Audit(n_real, n_fake, [], 0, sorted(missing or []))
    if min(n_real, n_fake) < MIN_CLIPS:
        audit.note = f"not audited: {n_real} real and {n_fake} fake clips (at least {MIN_CLIPS} of each needed)"
        return audit
    subsets = [(None, np.ones(len(labels), bool))]
    if generators is not None:
        generators = text(np.asarray(generators))
        names = sorted(set(generators[labels == 1]) - {""})
        if len(names) > 1:
            subsets += [(g, (labels == 0) | (generators == g)) for g in names
                        if (generators[labels == 1] == g).sum() >= MIN_CLIPS]
    for generator, keep in subsets:
        kept = {name: values[keep] for name, values in columns.items()}
        cues = [statistic_cue(name, values, labels[keep], generator) for name, values in kept.items()]
        cues.append(combined_cue(kept, labels[keep], generator, seed))
        audit.cues += [c for c in cues if c is not None]
    audit.n_tests = len(audit.cues)
    return audit


def audit_store(store, rows: np.ndarray | None = None, seed: int = 0) -> Audit:
    """Audit the clips of a FeatureStore (its `rows`, default: every clip decoded). A windowed
    store's files are audited once each (their statistics are the file's, repeated per window)."""
    meta = store.meta
    if not store.attrs.get("recording_statistics"):   # columns an --add-statistics run did not finish
        meta = {name: values for name, values in meta.items() if name not in RECORDING_COLUMNS}
    rows = file_rows(store, store.rows() if rows is None else np.asarray(rows))
    present = [name for name in STATISTICS if name in meta]
    missing = [name for name in STATISTICS if name not in meta]
    columns = {name: meta[name][rows] for name in present}
    generators = meta["generator"][rows] if "generator" in meta else None
    return audit_set(columns, meta["label"][rows], generators, missing, seed)
