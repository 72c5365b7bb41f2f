"""Two systems on the same clips: is the difference real? (`dfdetect compare`)

    compare_tables(read_scores("a.csv"), read_scores("b.csv"))     # two score files, joined by clip id
    compare_runs("runs/a", "runs/b", "stores/dfeval.zarr:test")    # two runs scored on one set

Each headline metric gets the difference A - B with a paired bootstrap interval: every resample
draws the same clips (or groups, `--ci-groups`) for both systems, so errors the two make on the same
clips cancel out, as they should. The two-sided p-value is the smallest level at which that interval
would exclude 0: p = 2 min(P*(delta <= 0), P*(delta >= 0)) over the resamples, with the +1 of a
resampling test so it is never 0. The decisions (fake when score >= each system's own threshold: a
run's validation EER threshold when it has one, else the EER threshold on this set) get McNemar's
exact test: of the clips exactly one system gets right, does either get more than half?

Like every interval of dfdetect's, these cover drawing the clips again from the same population,
not another corpus: "distinguishable" means on clips like these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfdetect.evaluate.evaluation import EvaluationError, interval_groups, score_run_on
from dfdetect.metrics import eer
from dfdetect.names import printable
from dfdetect.uncertainty import METRICS, Bootstrap, SetMetrics, bootstrap_values, interval, resampling_units

HEADLINE = ("eer", "min_dcf", "auc")
HIGHER_IS_BETTER = {"auc"}
SHOW_MISSING = 5   # clip ids named in a join error


@dataclass
class System:
    """One side of a comparison: a name, clip ids, labels, P(fake) scores, its decision threshold
    (None: its EER threshold on these clips) and the columns the resampling may group by."""
    name: str
    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    threshold: float | None = None
    columns: dict | None = None


# -- the two sides ------------------------------------------------------------------------------------
def system_from_table(table) -> System:
    """A score file read by `score_files.read_scores`; it must name its clips (to be joined)."""
    if table.ids is None:
        raise EvaluationError(f"{table.path} names no clips: compare joins the two files by clip id "
                              "(a clip_id/filename column, or --id-col)")
    columns = {**table.columns, **({"speaker": table.speakers} if table.speakers is not None else {})}
    return System(table.path, table.ids, table.labels, table.scores, None, columns)


def system_from_run(run: str | Path, on: str, epoch: str | int = "best", batch_size: int | None = None,
                    device: str = "auto") -> System:
    """A run's checkpoint scored on the set `on`, as `evaluate_run` scores it."""
    loaded, data, rows, scores = score_run_on(run, on, epoch, batch_size, device)
    meta = data.store.meta
    columns = {c: meta[c][rows] for c in ("speaker", "generator", "source") if c in meta}
    return System(f"{loaded.path} (epoch {loaded.epoch})", np.asarray([str(c) for c in meta["clip_id"][rows]]),
                  meta["label"][rows].astype(int), scores, loaded.record.val_threshold, columns)


def join(a: System, b: System) -> tuple[System, System]:
    """Both systems on the same clips in the same order; a clip on one side only, or labelled
    differently, is an error that names it."""
    for one, other in ((a, b), (b, a)):
        missing = np.setdiff1d(one.ids, other.ids)
        if missing.size:
            named = ", ".join(printable(str(c)) for c in missing[:SHOW_MISSING])
            raise EvaluationError(f"{missing.size} clips of {one.name} are not in {other.name}: {named}"
                                  f"{' ...' if missing.size > SHOW_MISSING else ''}; compare needs both "
                                  "systems' scores on the same clips")
    order_b = {clip: i for i, clip in enumerate(b.ids.tolist())}
    take = np.asarray([order_b[clip] for clip in a.ids.tolist()], dtype=int)
    b = System(b.name, b.ids[take], b.labels[take], b.scores[take], b.threshold,
               {k: np.asarray(v)[take] for k, v in (b.columns or {}).items()})
    differ = np.flatnonzero(a.labels != b.labels)
    if differ.size:
        raise EvaluationError(f"{differ.size} clips have another label in {a.name} than in {b.name}, e.g. "
                              f"{printable(str(a.ids[differ[0]]))}: both must be scored against the same key")
    return a, b


# -- the tests ----------------------------------------------------------------------------------------
def paired_p_value(deltas: np.ndarray) -> float:
    """Two-sided: twice the smaller share of resampled differences on either side of 0 (+1 each)."""
    deltas = deltas[~np.isnan(deltas)]
    below, above = (deltas <= 0).sum(), (deltas >= 0).sum()
    return float(min(1.0, 2 * (1 + min(below, above)) / (deltas.size + 1)))


def mcnemar(a: System, b: System) -> dict:
    """McNemar's exact test on the decisions at each system's threshold."""
    from scipy.stats import binomtest

    thresholds = [s.threshold if s.threshold is not None else eer(s.labels, s.scores)[1] for s in (a, b)]
    right_a, right_b = ((s.scores >= t) == (s.labels == 1) for s, t in zip((a, b), thresholds))
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"threshold_a": float(thresholds[0]), "threshold_b": float(thresholds[1]),
            "accuracy_a": float(right_a.mean()), "accuracy_b": float(right_b.mean()),
            "only_a_right": only_a, "only_b_right": only_b, "p_value": float(p)}


def compare(a: System, b: System, boot: Bootstrap = Bootstrap(), grouping: str | None = None,
            metrics=HEADLINE) -> dict:
    """Every headline metric of A and B, A - B with its paired interval and p-value, and McNemar."""
    a, b = join(a, b)
    if a.labels.min() == a.labels.max():
        kind = "fake" if a.labels[0] else "real"
        raise EvaluationError(f"every clip is {kind}: EER, AUC and minDCF need both labels")
    groups, grouping = interval_groups(a.columns or {}, grouping)
    values_a, values_b = bootstrap_values([SetMetrics(a.labels, a.scores, metrics),
                                           SetMetrics(b.labels, b.scores, metrics)], groups, boot)
    result = {"a": a.name, "b": b.name, "clips": int(a.labels.size), "level": boot.level,
              "resamples": boot.n, "seed": boot.seed, "groups": grouping,
              "units": int(resampling_units(a.labels, groups)[0].max()) + 1, "metrics": {}}
    for name in metrics:
        point_a, point_b = METRICS[name](a.labels, a.scores), METRICS[name](b.labels, b.scores)
        deltas = values_a[name] - values_b[name]
        result["metrics"][name] = {"a": point_a, "b": point_b, "delta": point_a - point_b,
                                   "delta_ci": interval(deltas, boot.level), "p_value": paired_p_value(deltas)}
        result.update({f"delta_{name}": point_a - point_b, f"delta_{name}_ci": interval(deltas, boot.level),
                       f"p_value_{name}": paired_p_value(deltas)})
    result["p_value"] = result["metrics"][metrics[0]]["p_value"]
    result["mcnemar"] = mcnemar(a, b)
    result["verdict"] = verdict(result, metrics[0])
    return result


def verdict(result: dict, name: str) -> str:
    """One line: which system is better on `name`, and whether that is distinguishable from chance."""
    m, alpha = result["metrics"][name], 1 - result["level"]
    label = {"eer": "EER", "min_dcf": "minDCF", "auc": "AUC"}.get(name, name)
    if m["delta"] == 0:
        return f"A and B have the same {label} ({m['a']:.4f}) on these {result['clips']} clips: not distinguishable"
    a_better = (m["delta"] > 0) == (name in HIGHER_IS_BETTER)
    better, worse = ("A", "B") if a_better else ("B", "A")
    distinguishable = m["p_value"] < alpha
    return (f"{better} is better on {label} ({m['a' if a_better else 'b']:.4f} vs {worse} "
            f"{m['b' if a_better else 'a']:.4f}); the difference is "
            + (f"distinguishable from chance at {result['level']:.0%} (p = {m['p_value']:.3g})" if distinguishable
               else f"NOT distinguishable from chance at {result['level']:.0%} (p = {m['p_value']:.3g}): "
                    "these clips do not tell the two apart"))


def print_comparison(result: dict, console) -> None:
    """The comparison as a table and the one-line verdict."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"A: {escape(result['a'])}\nB: {escape(result['b'])}", soft_wrap=True)
    table = Table("metric", "A", "B", "A - B", f"{result['level']:.0%} interval", "p", title=(
        f"{result['clips']} clips; paired bootstrap, {result['resamples']} resamples of {result['units']} "
        f"{'clips' if result['groups'] == 'clip' else '(' + result['groups'] + ', label) groups'} within each label"))
    for name, m in result["metrics"].items():
        low, high = m["delta_ci"]
        table.add_row(name, f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['delta']:+.4f}", f"[{low:+.4f}, {high:+.4f}]",
                      f"{m['p_value']:.3g}")
    console.print(table)
    mc = result["mcnemar"]
    console.print(f"decisions (A at {mc['threshold_a']:.4f}, B at {mc['threshold_b']:.4f}): accuracy "
                  f"{mc['accuracy_a']:.2%} vs {mc['accuracy_b']:.2%}; only A right on {mc['only_a_right']} clips, "
                  f"only B on {mc['only_b_right']}; McNemar exact p = {mc['p_value']:.3g}", soft_wrap=True)
    console.print(escape(result["verdict"]), style="bold", soft_wrap=True)
