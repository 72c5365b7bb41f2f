"""`dfdetect audit`: the shortcut audit of a store's clips (featurize/shortcuts.py computes it),
and with a second store, the statistics whose distributions shift most between the two.

A store featurized before the recording statistics were kept has only the clip table's duration,
sample rate, channels and container: the audit runs on those and says how to get the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfdetect.featurize.recording import STATISTICS
from dfdetect.featurize.shortcuts import MAX_CUE_EER, TEXT, Audit, audit_set, audit_store, text
from dfdetect.store import open_store, parse_store_spec
from dfdetect.store.schema import RECORDING_COLUMNS, StoreError

SHIFTS_SHOWN = 5


@dataclass
class Shift:
    """How far one statistic's distribution moved from one store to another (both classes)."""
    statistic: str
    distance: float            # two-sample KS statistic; a category: total variation distance
    median: float | str        # in the audited store
    median_against: float | str

    @property
    def name(self) -> str:
        return STATISTICS[self.statistic][0]


@dataclass
class AuditReport:
    spec: str
    audit: Audit
    missing_note: str = ""
    against: str | None = None
    shifts: list[Shift] = field(default_factory=list)

    def to_dict(self, max_cue_eer: float = MAX_CUE_EER) -> dict:
        return {"set": self.spec, **self.audit.to_dict(max_cue_eer), "missing_note": self.missing_note,
                "against": self.against, "shifts": [{**vars(s), "name": s.name} for s in self.shifts]}


def missing_note(spec: str, audit: Audit) -> str:
    """What to say of a store that lacks recording statistics ("" when it has them all)."""
    lacking = [name for name in audit.missing if name in RECORDING_COLUMNS]
    if not lacking:
        return ""
    return (f"{spec} has no recording statistics ({', '.join(lacking)}): it was featurized before they were "
            "kept, so only the clip table's duration, sample rate, channels and container are audited; add them "
            f"with `dfdetect audit {spec} --add-statistics` (each clip decoded again, no features computed)")


def open_set(spec: str):
    """(store, rows) of STORE[@VERSION][:SPLIT]: the clips decoded without error."""
    path, version, split = parse_store_spec(spec)
    store = open_store(path, version)
    rows = store.rows(split)
    if split is not None and not len(rows):
        splits = sorted({str(s) for s in store.meta["split"]})
        raise StoreError(f"{spec}: no decoded clips in split {split!r}; the store's splits: {', '.join(splits)}")
    return store, rows


def audit(spec: str, against: str | None = None, seed: int = 0) -> AuditReport:
    """Audit the set `spec`; with `against`, also the statistics that shift most towards it."""
    store, rows = open_set(spec)
    result = audit_store(store, rows, seed)
    report = AuditReport(spec, result, missing_note(spec, result))
    if against is not None:
        other, other_rows = open_set(against)
        report.against, report.shifts = against, shifts(store.meta, rows, other.meta, other_rows)
    return report


def shifts(meta: dict, rows, other: dict, other_rows) -> list[Shift]:
    """Every statistic both stores hold, the largest shift first."""
    from scipy.stats import ks_2samp

    found = []
    for name in STATISTICS:
        if name not in meta or name not in other:
            continue
        a, b = meta[name][rows], other[name][other_rows]
        if a.dtype.kind in TEXT:
            a, b = text(a), text(b)
            kinds = np.union1d(a, b)
            share = [(np.mean(a == k), np.mean(b == k)) for k in kinds]
            distance = 0.5 * sum(abs(x - y) for x, y in share)
            found.append(Shift(name, float(distance), _mode(a), _mode(b)))
            continue
        a, b = a[np.isfinite(a)].astype(np.float64), b[np.isfinite(b)].astype(np.float64)
        if len(a) and len(b):
            found.append(Shift(name, float(ks_2samp(a, b).statistic), float(np.median(a)), float(np.median(b))))
    return sorted(found, key=lambda s: -s.distance)


def _mode(values: np.ndarray) -> str:
    kinds, counts = np.unique(values, return_counts=True)
    return str(kinds[np.argmax(counts)]) if len(kinds) else ""


def audit_clips(clips, seed: int = 0):
    """(Audit, problems) of dataset clips before any store exists (`datasets show --decode N`):
    each decoded and prepared as featurize would, its statistics kept; a clip that fails is a
    problem, as featurize would record it."""
    from dfdetect.datasets import Problem
    from dfdetect.featurize.audio import AudioError, decode
    from dfdetect.featurize.frontend import Frontend
    from dfdetect.featurize.recording import clip_statistics
    from dfdetect.store.schema import file_stamp

    frontend, rows, problems = Frontend(), [], []
    for clip in clips:
        try:
            audio = decode(clip.path)
            frontend.waveform(audio, clip.path)
        except AudioError as e:
            problems.append(Problem(e.where, f"[{e.kind}] {e.reason}"))
            continue
        rows.append({"label": clip.label, "generator": clip.generator, "duration": audio.duration,
                     "sample_rate": audio.sample_rate, "channels": audio.channels, "container": audio.container,
                     **clip_statistics(frontend, audio, file_stamp(clip.path)[0])})
    columns = {name: np.array([r[name] for r in rows]) for name in STATISTICS} if rows else {}
    labels = np.array([r["label"] for r in rows], np.int64)
    generators = np.array([r["generator"] for r in rows], str)
    return audit_set(columns, labels, generators, seed=seed), problems
