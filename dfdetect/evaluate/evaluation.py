"""Evaluating a detector: a run's checkpoint on a feature store, or any system's score file.

Both paths end in the same `evaluate_scores`, so a dfdetect run and another system's scores are
measured by one piece of code. Labels: 1 = fake (spoof), 0 = real (bona fide). Scores: P(fake),
higher = more likely fake; a clip is called fake when score >= threshold.

    evaluate_run("runs/mel_aasist", "stores/dfeval.zarr:test")      # -> result dict
    evaluate_score_file(read_scores("system.csv", higher_is="real"))

Breakdowns. For every metadata column (generator/attack, codec, language, source) with more than
one value, each group is measured on its own. A group that holds one label only (a generator's
fakes, the real clips) has no MCC or specificity/recall of the other label, and its precision (so
its F1) is 1 or undefined whatever the detector does; it gets its recall at each threshold
(detection rate for fakes, specificity for reals; its accuracy equals it) and EER, AUC and minDCF
against every clip of the other label in the whole set (`compared_with` says so). The metrics a
single label leaves undefined are listed in `undefined`, never reported as 0.

Score files of any system are read by `score_files.read_scores` (formats, column rules and bad rows
are described there).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dfdetect.errors import DfdetectError, check_range
from dfdetect.featurize.windows import AGGREGATES, WindowProtocol, per_file
from dfdetect.metrics import evaluate_scores
from dfdetect.uncertainty import GROUPINGS, LLR_METRICS, Bootstrap, metric_intervals, resampling_units

HEADER = ("labels: 1 = fake (spoof), 0 = real (bona fide); scores: P(fake), higher = more likely fake; "
          "a clip is called fake when score >= threshold. EER: ASVspoof convention (stable sort, argmin "
          "|FRR-FAR|, mean of the two, no interpolation; tied scores can move it). minDCF: ASVspoof 5 "
          "(Pspoof 0.05, Cmiss 1, Cfa 10, normalised). 'undefined' = the metric does not exist for these "
          "clips (e.g. precision when nothing is called fake), never 0.")

# Metadata columns that get a breakdown, with the header spellings a score file may use for them.
BREAKDOWN_COLUMNS = {
    "generator": ("generator", "attack", "attack_label", "attack_id", "attack_anon", "system"),
    "codec": ("codec",),
    "language": ("language", "lang"),
    "source": ("source",),
}


class EvaluationError(DfdetectError):
    """Input that cannot be evaluated as asked: the message says which rows and what to do."""


# -- breakdowns ---------------------------------------------------------------------------------------
def group_metrics(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, thresholds: dict) -> dict:
    """Metrics of the clips in `mask`: everything with both labels; with one label, its recall at
    each threshold and EER/AUC/minDCF against every clip of the other label in the set."""
    group = labels[mask]
    if group.min() != group.max():
        return evaluate_scores(group, scores[mask], thresholds)
    label = int(group[0])
    other = labels == 1 - label
    if not other.any():   # the whole set has one label: evaluate_scores marks what is undefined
        return evaluate_scores(group, scores[mask], thresholds)
    result = evaluate_scores(labels[mask | other], scores[mask | other], thresholds)
    kept = "recall" if label == 1 else "specificity"
    for key in [k for k in result if k.startswith("at_")]:
        result[key] = {"threshold": result[key]["threshold"], kept: result[key][kept]}
    result.update(n=int(mask.sum()), n_fake=int(group.sum()), n_real=int((group == 0).sum()),
                  one_label="fake" if label else "real",
                  compared_with=f"all {int(other.sum())} {'real' if label else 'fake'} clips of the set",
                  undefined=["precision", "f1", "mcc", "specificity" if label else "recall"])
    return result


def breakdowns(labels: np.ndarray, scores: np.ndarray, columns: dict[str, np.ndarray],
               thresholds: dict[str, float]) -> dict:
    """{column: {value: metrics}} for each column with more than one value in the set."""
    out = {}
    for name, values in columns.items():
        values = np.asarray([str(v) for v in values])   # store columns may be numpy StringDType
        distinct = sorted(set(values.tolist()))
        if len(distinct) > 1:
            out[name] = {v: group_metrics(labels, scores, values == v, thresholds) for v in distinct}
    return out


def _result(source: dict, labels, scores, columns: dict, thresholds: dict, notes: list[str], llrs=None,
            intervals: tuple[Bootstrap | None, dict, str | None] = (None, {}, None)) -> dict:
    metrics = evaluate_scores(labels, scores, thresholds, llrs)
    boot, group_columns, grouping = intervals
    metrics, ci = with_intervals(metrics, labels, scores, boot, group_columns, grouping, llrs)
    group_thresholds = dict(thresholds)   # a group is also measured at the whole set's EER threshold
    if not math.isnan(metrics["eer"]):
        group_thresholds["set_eer"] = metrics["eer_threshold"]
    groups = breakdowns(labels, scores, columns, group_thresholds)
    if ci is not None:
        groups = breakdown_intervals(groups, labels, scores, columns, boot, group_columns, grouping)
    return {"header": HEADER, "source": source, "thresholds": thresholds, "metrics": metrics, "intervals": ci,
            "breakdowns": groups, "notes": notes}


# -- a run's checkpoint on a store ----------------------------------------------------------------------
def score_run_on(run: str | Path, on: str, epoch: str | int = "best", batch_size: int | None = None,
                 device: str = "auto", aggregate: str | None = None):
    """(the loaded run, the set, its rows, their P(fake)): the run's checkpoint at `epoch` scored on
    the set `on`, checked compatible first; evaluate and compare both score a run here. A windowed
    set is scored per file as `dfdetect score` scores one (featurize/windows.per_file: `aggregate`,
    default the run's): the rows are then each file's first window."""
    from dfdetect.devices import resolve_device
    from dfdetect.models.runs import load_run
    from dfdetect.train.data import open_set

    loaded = load_run(run, epoch)
    data = open_set(on, "eval")
    return loaded, data, *score_set(loaded, data, batch_size, resolve_device(device), aggregate)


def score_set(loaded, data, batch_size: int | None, device, aggregate: str | None = None):
    """(rows, P(fake)) of the set `data` scored by the loaded run (per file: see score_run_on)."""
    # torch-heavy: loaded only when a run is evaluated (score files need none of it)
    from dfdetect.devices import tf32
    from dfdetect.models.registry import get_architecture
    from dfdetect.train.data import FeatureLoader
    from dfdetect.train.trainer import predict

    check_compatible(loaded, data)
    loader = FeatureLoader(data, loaded.inputs, batch_size or get_architecture(loaded.arch).batch_size,
                           shuffle=False)
    with tf32(loaded.tf32):   # the forward as validation ran it (its threshold)
        rows, scores = predict(loaded.model.to(device), loader, device, loaded.score_precision)
    return per_file(data.store, rows, scores, aggregate or loaded.config.aggregate)


def evaluate_run(run: str | Path, on: str, epoch: str | int = "best", batch_size: int | None = None,
                 device: str = "auto", boot: Bootstrap | None = Bootstrap(), ci_groups: str | None = None,
                 calibration: str | None = None, scores_out: str | Path | None = None,
                 force: bool = False, aggregate: str | None = None) -> dict:
    """Score the set `on` (STORE[@V][:SPLIT]) with the run's checkpoint at `epoch`, then measure it at
    0.5, at its own EER threshold and at the run's validation EER threshold, each metric with its
    bootstrap interval (`boot`, None for none; resampled by `ci_groups`, see `interval_groups`); with
    the run's `calibration` (a name, "none", or None: the newest for the epoch) also act_dcf, cllr and
    the decisions at the Bayes threshold of its LLRs. `scores_out`: a table of one row per clip as
    `dfdetect score` writes a file's (write_clip_scores); an existing file only with `force`.
    A windowed set (featurize --windows) is measured per file, its windows' scores aggregated by
    `aggregate` (default: the run's), as `dfdetect score` scores a file; `source["protocol"]` says
    which protocol the numbers are of."""
    if scores_out is not None:
        check_scores_out(scores_out, force)
    if aggregate is not None and aggregate not in AGGREGATES:
        raise EvaluationError(f"--aggregate {aggregate!r}: valid: {', '.join(AGGREGATES)}")
    loaded, data, rows, scores = score_run_on(run, on, epoch, batch_size, device, aggregate)
    meta = data.store.meta
    val = loaded.record.val_threshold
    thresholds, notes = {}, []
    if val is None:
        notes.append(f"{loaded.path} has no validation EER at epoch {loaded.epoch}, so no validation threshold")
    else:
        thresholds["val"] = float(val)
    source = {"run": str(loaded.path), "arch": loaded.arch, "epoch": loaded.epoch, "set": on,
              "store": data.store.path, "version": data.store.version, "clips": int(len(rows)),
              **protocol_of(data, aggregate or loaded.config.aggregate)}
    columns = {c: meta[c][rows] for c in BREAKDOWN_COLUMNS if c in meta}
    if "duration" in meta:
        columns["duration"] = duration_bands(meta["duration"][rows])
    calibrated = loaded.calibration(calibration)
    notes += calibration_notes(calibrated, on)
    if calibrated is not None:
        source["calibration"] = {"name": calibrated.name, "description": calibrated.describe(),
                                 **calibrated.to_dict()}
    llrs = calibrated.llr(scores) if calibrated is not None else None
    if scores_out is not None:
        source["scores_out"] = str(scores_out)
        write_clip_scores(Path(scores_out), meta, rows, scores, thresholds.get("val"), calibrated, source,
                          windows_of(data, rows))
    group_columns = {c: meta[c][rows] for c in GROUPINGS if c in meta}
    return _result(source, meta["label"][rows].astype(int), scores, columns, thresholds, notes, llrs,
                   (boot, group_columns, ci_groups))


def protocol_of(data, aggregate: str) -> dict:
    """What the set's numbers are of: {"protocol": in words, and for a windowed set its windows}."""
    words = WindowProtocol.words(data.store.windows, data.store.config["frontend"]["clip_seconds"], aggregate)
    if not data.windowed:
        return {"protocol": words}
    return {"protocol": words, "windows": int(len(data.rows)), "aggregate": aggregate}


# Duration bands of the breakdown (seconds of the whole file): where a centre crop sees a small
# part of a file, and where the reference study's systems were near chance (10-30 s files).
DURATION_BANDS = ((4.0, "< 4 s"), (10.0, "4-10 s"), (30.0, "10-30 s"), (60.0, "30-60 s"), (math.inf, ">= 60 s"))


def duration_bands(seconds: np.ndarray) -> np.ndarray:
    """Each file's duration band (DURATION_BANDS)."""
    edges = np.array([edge for edge, _ in DURATION_BANDS[:-1]])
    names = np.array([name for _, name in DURATION_BANDS])
    return names[np.searchsorted(edges, np.asarray(seconds, np.float64), side="right")]


def windows_of(data, rows: np.ndarray) -> np.ndarray | None:
    """How many windows the store keeps of each file of `rows`, silent ones included (score's
    `windows` column; None: a centre set)."""
    if not data.windowed:
        return None
    files, counts = np.unique(data.store.meta["file"], return_counts=True)
    return counts[np.searchsorted(files, data.store.files(rows))]


# -- one row per clip (--scores-out) ----------------------------------------------------------------------
# What `dfdetect score` writes of a file, for each clip of an evaluated set: the same per-file rule
# (score/per_file.py: the decision at the run's threshold, the calibrated LLR and its Bayes decision),
# so a set evaluated from a store and the same files scored live can be compared row by row.
CLIP_SCORE_COLUMNS = {"clip_id": str, "path": str, "label": str, "generator": str, "status": str, "score": float,
                      "decision": str, "threshold": float, "llr": float, "llr_decision": str, "calibration": str,
                      "error": str, "windows": int}


def check_scores_out(path: str | Path, force: bool) -> None:
    """--scores-out, checked before any scoring: a table format, and never a file replaced unasked."""
    from dfdetect.score.tables import output_format

    path = Path(path)
    output_format(path)
    if path.is_dir():
        raise EvaluationError(f"--scores-out {path} is a folder; give a .csv, .jsonl or .parquet file")
    if path.exists() and not force:
        raise EvaluationError(f"--scores-out {path} already exists; --force replaces it")


def write_clip_scores(path: Path, meta: dict, rows, scores, threshold: float | None, calibrated, source: dict,
                      windows: np.ndarray | None = None) -> None:
    """One row per clip (a file: `scores` are already its aggregate over `windows` windows; None: one
    centre crop each) through score's per-file rule, written beside `path` and moved into place at
    the end (a kill leaves the old file or the new one)."""
    import os

    from dfdetect.score.per_file import FileRule
    from dfdetect.score.tables import TableWriter

    rule = FileRule(math.nan if threshold is None else threshold, calibration=calibrated)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        writer = TableWriter(partial, CLIP_SCORE_COLUMNS, metadata=source)
        for i, (row, score) in enumerate(zip(rows, scores)):
            outcome = rule.outcome(np.array([score]))
            writer.write({"clip_id": str(meta["clip_id"][row]), "path": str(meta["path"][row]),
                          "label": "fake" if meta["label"][row] == 1 else "real",
                          "generator": str(meta["generator"][row]) if "generator" in meta else "",
                          "status": outcome.status, "score": outcome.table_score,
                          "decision": outcome.decision if threshold is not None else None,
                          "threshold": threshold, "llr": outcome.table_llr, "llr_decision": outcome.llr_decision,
                          "calibration": calibrated.name if calibrated is not None else "", "error": outcome.error,
                          "windows": 1 if windows is None else int(windows[i])})
        writer.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def calibration_notes(calibrated, on: str) -> list[str]:
    """What the reader of act_dcf and cllr must know: none without a calibration, and that they are
    optimistic on the very set the calibration was fitted on."""
    if calibrated is None:
        return ["no calibration (none asked for, or the run has none for this epoch): act_dcf, cllr and the "
                "Bayes decisions are not given; fit one with `dfdetect calibrate`"]
    if calibrated.fitted_on.get("spec") == on:
        return [f"the calibration {calibrated.name!r} was fitted on {on} itself: its act_dcf and cllr are "
                "optimistic; measure them on held-out clips"]
    return []


def check_compatible(loaded, data) -> None:
    """The store must hold the features the head reads, made by the frontend and WavLM it was
    trained on (store.fit_problems, the rule train and score use too); otherwise its scores would
    be numbers about something else."""
    problems = data.store.fit_problems(loaded.inputs, loaded.frontend_hash, loaded.wavlm_info, loaded.arch)
    if problems:
        raise EvaluationError(f"{data.spec} cannot be scored by the run {loaded.path}: " + "; ".join(problems))


SCORE_TYPES = ("score", "llr", "probability")


def evaluate_score_file(table, boot: Bootstrap | None = Bootstrap(), ci_groups: str | None = None,
                        score_type: str = "score", train_prior: float = 0.5) -> dict:
    """Every metric of a score file at 0.5 and at its EER threshold, with breakdowns; act_dcf, cllr
    and the Bayes decisions when its scores are LLRs (`score_type` "llr") or probabilities turned
    into LLRs with the prior of fakes the system was trained at (`train_prior`); for any other
    score they are undefined, with the reason. Intervals as evaluate_run's."""
    source = {"scores": table.path, "format": table.fmt, "clips": int(table.labels.size), "score_type": score_type}
    notes = list(table.notes)
    llrs = file_llrs(table, score_type, train_prior, notes)
    group_columns = {**table.columns, **({"speaker": table.speakers} if table.speakers is not None else {})}
    return _result(source, table.labels, table.scores, table.columns, {}, notes, llrs,
                   (boot, group_columns, ci_groups))


def file_llrs(table, score_type: str, train_prior: float, notes: list[str]):
    """LLRs fake vs real of a score file's scores as read (None for score type "score")."""
    from dfdetect.calibration import score_logit
    from dfdetect.errors import check_range

    if score_type not in SCORE_TYPES:
        raise EvaluationError(f"--score-type {score_type!r}: choose one of {', '.join(SCORE_TYPES)}")
    check_range("--train-prior", train_prior, 0, 1, low_open=True)
    if train_prior >= 1:
        raise EvaluationError("--train-prior must be below 1: the share of fakes in the system's training data")
    read = table.read if table.read is not None else table.scores
    flip = table.higher_is == "real"
    if score_type == "llr":
        return -read if flip else read
    if score_type == "probability":
        if not ((read >= 0) & (read <= 1)).all():
            raise EvaluationError(f"--score-type probability: {table.path} has scores outside [0, 1] "
                                  f"({read.min():.4g} .. {read.max():.4g}); use --score-type llr or score")
        notes.append(f"probabilities read as LLRs: logit(P(fake)) - logit({train_prior:g}) (the training prior), "
                     "P clipped to [1e-7, 1 - 1e-7]")
        return score_logit(1.0 - read if flip else read) - math.log(train_prior / (1 - train_prior))
    return None


# -- confidence intervals -----------------------------------------------------------------------------
INTERVALS_NOTE = ("bootstrap percentile intervals: how far each metric would move if the clips were drawn "
                  "again from the same population (same corpus, generators, conditions); not how it would "
                  "do on another corpus")


def check_bootstrap(level: float, resamples: int, grouping: str | None) -> Bootstrap | None:
    """The --ci-level / --bootstrap / --ci-groups options checked; None when --bootstrap is 0."""
    check_range("--ci-level", level, 0, 1, low_open=True)
    if level >= 1:
        raise EvaluationError(f"--ci-level {level!r}: must be below 1 (0.95 for 95% intervals)")
    check_range("--bootstrap", resamples, 0, 1_000_000)
    if grouping is not None and grouping not in GROUPINGS:
        raise EvaluationError(f"--ci-groups {grouping!r}: must be one of {', '.join(GROUPINGS)}")
    return Bootstrap(n=int(resamples), level=level) if resamples else None


def interval_groups(columns: dict[str, np.ndarray], grouping: str | None) -> tuple[np.ndarray | None, str]:
    """(one group per clip or None for clips, the grouping used): `grouping`, or speaker when the
    set names speakers, else clip. Clips without a value are each their own group."""
    def named(values):
        return values is not None and any(str(v) for v in values)

    if grouping is None:
        grouping = "speaker" if named(columns.get("speaker")) else "clip"
    if grouping == "clip":
        return None, "clip"
    values = columns.get(grouping)
    if not named(values):
        known = ", ".join(g for g in GROUPINGS if g == "clip" or named(columns.get(g)))
        raise EvaluationError(f"--ci-groups {grouping}: this set names no {grouping} for its clips; use one of {known}")
    values = np.asarray([str(v) for v in values], dtype=object)
    lone = values == ""
    values[lone] = [f"\x00clip {i}" for i in np.flatnonzero(lone)]
    return values.astype(str), grouping


def with_intervals(metrics: dict, labels, scores, boot: Bootstrap | None, columns: dict,
                   grouping: str | None, llrs=None) -> tuple[dict, dict | None]:
    """`metrics` with `<metric>_ci: [low, high]` beside each metric (the rates at each threshold too;
    act_dcf, cllr and the Bayes decisions resampled on the same clips' `llrs`), and what the
    intervals are; (metrics, None) without `boot`."""
    if boot is None or labels.min() == labels.max():
        return metrics, None
    groups, grouping = interval_groups(columns, grouping)
    thresholds = {k[len("at_"):]: v["threshold"] for k, v in metrics.items()
                  if k.startswith("at_") and v.get("threshold_on") != "llr"}
    cis = metric_intervals(labels, scores, groups, thresholds, boot)
    if llrs is not None:    # the same seed and groups: the same resampled clips as the scores'
        bayes = float(np.nextafter(metrics["at_bayes"]["threshold"], np.inf))   # fake when llr > threshold
        cis.update(metric_intervals(labels, llrs, groups, {"bayes": bayes}, boot, metrics=tuple(LLR_METRICS)))
    about = {"level": boot.level, "resamples": boot.n, "seed": boot.seed, "groups": grouping,
             "units": int(resampling_units(labels, groups)[0].max()) + 1,
             "note": INTERVALS_NOTE}
    return beside(metrics, cis), about


def breakdown_intervals(groups: dict, labels, scores, columns: dict, boot: Bootstrap, group_columns: dict,
                        grouping: str | None) -> dict:
    """Each breakdown group's metrics with their intervals, on the clips `group_metrics` measured
    (a one-label group: with every clip of the other label), resampled as the whole set is."""
    units, grouping = interval_groups(group_columns, grouping)
    out = {}
    for column, by_value in groups.items():
        values = np.asarray([str(v) for v in columns[column]])
        out[column] = {}
        for value, m in by_value.items():
            clips = values == value
            if m.get("one_label"):
                clips |= labels == (0 if m["one_label"] == "fake" else 1)
            thresholds = {k[len("at_"):]: v["threshold"] for k, v in m.items()
                          if k.startswith("at_") and v.get("threshold_on") != "llr"}
            cis = metric_intervals(labels[clips], scores[clips], None if units is None else units[clips],
                                   thresholds, boot)
            if m.get("one_label"):   # only the kept rate of the group's label is its own
                cis = {k: ({n: c for n, c in v.items() if n[:-3] in m[k]} if isinstance(v, dict) else v)
                       for k, v in cis.items()}
            out[column][value] = beside(m, cis)
    return out


def beside(metrics: dict, cis: dict) -> dict:
    """A copy of `metrics` with each `<name>_ci` right after `<name>` (nested dicts alike)."""
    out = {}
    for key, value in metrics.items():
        out[key] = beside(value, cis[key]) if isinstance(value, dict) and key in cis else value
        if f"{key}_ci" in cis:
            out[f"{key}_ci"] = cis[f"{key}_ci"]
    return out


# -- printing -----------------------------------------------------------------------------------------
PERCENT = ("accuracy", "precision", "recall", "sensitivity", "specificity")


def fmt(value, name: str = "") -> str:
    """A metric for people: rates in %, the rest to 4 decimals, undefined as 'undefined' (never 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2%}" if name in PERCENT else f"{value:.4f}"


def fmt_ci(metrics: dict, name: str) -> str:
    """A metric with its interval when it has one: `0.1760 [0.1590, 0.1940]`."""
    ci = metrics.get(f"{name}_ci")
    text = fmt(metrics[name], name)
    if ci is None or text == "undefined" or any(v is None or math.isnan(v) for v in ci):
        return text
    return f"{text} [{fmt(ci[0], name)}, {fmt(ci[1], name)}]"


def intervals_line(about: dict) -> str:
    """What the [low, high] after each metric is."""
    unit = "clips" if about["groups"] == "clip" else f"({about['groups']}, label) groups"
    return (f"[low, high]: {about['level']:.0%} interval, {about['resamples']} bootstrap resamples of the "
            f"{about['units']} {unit} within each label (seed {about['seed']}); {about['note']}")


def print_evaluation(result: dict, console) -> None:
    """The result of `evaluate_run` / `evaluate_score_file` as tables."""
    from rich.markup import escape
    from rich.table import Table

    console.print(escape(result["header"]), style="dim", soft_wrap=True)
    src, m = result["source"], result["metrics"]
    if "run" in src:
        console.print(f"run {escape(src['run'])} ({src['arch']}, epoch {src['epoch']}) on {escape(src['set'])} "
                      f"({escape(src['store'])}@{src['version']}); each file scored as: {src['protocol']}"
                      + (f" ({src['windows']} windows)" if "windows" in src else ""), soft_wrap=True)
    else:
        console.print(f"scores {escape(src['scores'])} ({src['format']})", soft_wrap=True)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    what = "files" if "windows" in src else "clips"
    console.print(f"{m['n']} {what}: {m['n_fake']} fake, {m['n_real']} real; {m['tied_scores']} tied scores "
                  f"({m['mixed_ties']} clips tie with a clip of the other label)")
    console.print(f"EER {fmt_ci(m, 'eer')} (threshold {fmt(m['eer_threshold'])})   AUC {fmt_ci(m, 'auc')}   "
                  f"minDCF {fmt_ci(m, 'min_dcf')} (threshold {fmt(m['min_dcf_threshold'])})")
    if result.get("intervals"):
        console.print(escape(intervals_line(result["intervals"])), style="dim", soft_wrap=True)
    print_calibration(result, console)
    columns = [(k, title if k == "at_0.5" else f"{title} {fmt(m[k]['threshold'])}")
               for k, title in (("at_0.5", "at 0.5"), ("at_eer", "at EER threshold"),
                                ("at_val", "at validation threshold"), ("at_bayes", "at Bayes LLR >")) if k in m]
    table = Table("metric", *(title for _, title in columns), title="decisions: fake when score >= threshold")
    for name in ("accuracy", "precision", "recall", "f1", "mcc", "specificity", "tp", "fp", "tn", "fn"):
        label = {"recall": "recall (sensitivity)"}.get(name, name)
        table.add_row(label, *(fmt_ci(m[k], name) for k, _ in columns))
    console.print(table)
    for column, groups in result["breakdowns"].items():
        console.print(breakdown_table(column, groups))
    if any(g.get("one_label") for groups in result["breakdowns"].values() for g in groups.values()):
        console.print("* one label only: EER, AUC and minDCF against every clip of the other label of the set; "
                      "within the group only recall (fakes caught) or specificity (reals passed) exists, and "
                      "precision, F1 and MCC are undefined. Every metric at every threshold: --json.",
                      style="dim", soft_wrap=True)


def print_calibration(result: dict, console) -> None:
    """actDCF beside minDCF and Cllr beside minCllr, and the calibration that made the LLRs."""
    from rich.markup import escape

    m, calibration = result["metrics"], result["source"].get("calibration")
    line = f"minCllr {fmt(m.get('min_cllr'))}"
    if m.get("act_dcf_undefined"):
        line += f"   actDCF, Cllr: undefined ({m['act_dcf_undefined']})"
    elif "act_dcf" in m:
        line = f"actDCF {fmt(m['act_dcf'])} (minDCF {fmt(m['min_dcf'])})   Cllr {fmt(m['cllr'])} bits ({line})"
    console.print(line, highlight=False)
    if calibration:
        console.print(f"calibration {escape(calibration['description'])}", style="dim", soft_wrap=True)


def breakdown_table(column: str, groups: dict):
    """One row per group: EER/AUC/minDCF, and the fakes caught (recall) and reals passed
    (specificity) at the validation threshold when there is one, else at 0.5 (all: --json)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from dfdetect.names import printable

    at = "at_val" if all("at_val" in g for g in groups.values()) else "at_0.5"
    where = "the validation threshold" if at == "at_val" else "threshold 0.5"
    table = Table(title=f"per {column} (recall, specificity at {where})", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for header in (column, "fake/real", "EER", "AUC", "minDCF", "recall", "specificity"):
        table.add_column(header, overflow="fold")
    for value, g in groups.items():
        star = "*" if g.get("one_label") else ""
        table.add_row(escape(printable(value) or "(none)"), f"{g['n_fake']}/{g['n_real']}", fmt_ci(g, "eer") + star,
                      fmt_ci(g, "auc") + star, fmt_ci(g, "min_dcf") + star,
                      *(fmt_ci(g[at], name) if name in g[at] else fmt(None) for name in ("recall", "specificity")))
    return table
