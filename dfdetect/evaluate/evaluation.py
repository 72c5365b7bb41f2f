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

Score files (`read_scores`). The format follows the extension unless `fmt` is given:
  .csv -> csv; .tsv/.tab -> tsv (header row; a .tsv without tabs, like ASVspoof 5's protocols, is
  read as asvspoof); .jsonl/.ndjson -> jsonl (one JSON object per line); .parquet/.pq -> parquet
  (needs pyarrow); anything else -> asvspoof.
Tabular files name their columns: the score is `--score-col` or the first of SCORE_COLUMNS, the
label `--label-col` or the first of LABEL_COLUMNS (any spelling parse_label knows: fake/spoof/1,
real/bonafide/bona-fide/genuine/0, ...), the clip id `--id-col` or the first of ID_COLUMNS.
`asvspoof` is whitespace-separated without a header (`#` starts a comment), as the ASVspoof
packages write: `FILE SCORE` (2021), `FILE ATTACK KEY SCORE` (2019 CM), `SPK FILE SCORE KEY`
(ASVspoof 5 README). Column rule: the score is the last field that is a number, the key the last
non-numeric field that spells a label (bonafide/spoof, ...), the attack a field like A07.
`protocol` (e.g. an ASVspoof protocol, or In-the-Wild's meta.csv) supplies labels by clip id: in a
whitespace protocol the clip is the second field (true of ASVspoof 2019 LA, 2021 and 5), the key the
last label word and the attack a field like A07; a tabular one uses ID_COLUMNS / LABEL_COLUMNS. A
score row matches when its id (for asvspoof lines: any of its fields) equals a protocol clip, or
equals it without folder and extension.
Bad rows (missing, non-numeric, NaN/Inf scores; missing or unknown labels; clips the protocol lacks)
are an error naming their line numbers, or with `drop_bad` are left out with a note that names them.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfdetect.errors import DfdetectError
from dfdetect.evaluate.metrics import evaluate_scores
from dfdetect.featurize.datasets.base import parse_label

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
SCORE_COLUMNS = ("score", "cm-score", "cm_score", "p_fake", "prob_fake", "fake_prob", "prediction")
LABEL_COLUMNS = ("label", "key", "cm-label", "cm_label", "ground_truth", "ground truth", "truth")
ID_COLUMNS = ("clip_id", "filename", "file", "path", "utt_id", "utt", "trial", "id")
FORMATS = ("csv", "tsv", "jsonl", "parquet", "asvspoof")
ATTACK = re.compile(r"^A\d\d$")
SHOW_LINES = 10   # line numbers named per problem in messages


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


def _result(source: dict, labels, scores, columns: dict, thresholds: dict, notes: list[str]) -> dict:
    metrics = evaluate_scores(labels, scores, thresholds)
    group_thresholds = dict(thresholds)   # a group is also measured at the whole set's EER threshold
    if not math.isnan(metrics["eer"]):
        group_thresholds["set_eer"] = metrics["eer_threshold"]
    return {"header": HEADER, "source": source, "thresholds": thresholds, "metrics": metrics,
            "breakdowns": breakdowns(labels, scores, columns, group_thresholds), "notes": notes}


# -- a run's checkpoint on a store ----------------------------------------------------------------------
def evaluate_run(run: str | Path, on: str, epoch: str | int = "best", batch_size: int | None = None,
                 device: str = "cpu") -> dict:
    """Score the set `on` (STORE[@V][:SPLIT]) with the run's checkpoint at `epoch`, then measure it at
    0.5, at its own EER threshold and at the run's validation EER threshold."""
    import torch

    from dfdetect.train.architectures import get_architecture
    from dfdetect.train.data import FeatureLoader, open_set
    from dfdetect.train.runs import load_run
    from dfdetect.train.trainer import predict

    loaded = load_run(run, epoch)
    data = open_set(on, "eval")
    check_compatible(loaded, data)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else ("cpu" if device == "auto" else device))
    loader = FeatureLoader(data, loaded.inputs, batch_size or get_architecture(loaded.arch).batch_size,
                           shuffle=False)
    rows, scores = predict(loaded.model.to(device), loader, device)
    meta = data.store.meta
    val = loaded.record["sets"].get("val", {}).get("eer_threshold")
    thresholds, notes = {}, []
    if val is None:
        notes.append(f"{loaded.path} has no validation EER at epoch {loaded.epoch}, so no validation threshold")
    else:
        thresholds["val"] = float(val)
    source = {"run": str(loaded.path), "arch": loaded.arch, "epoch": loaded.epoch, "set": on,
              "store": data.store.path, "version": data.store.version, "clips": int(len(rows))}
    columns = {c: meta[c][rows] for c in BREAKDOWN_COLUMNS if c in meta}
    return _result(source, meta["label"][rows].astype(int), scores, columns, thresholds, notes)


def check_compatible(loaded, data) -> None:
    """The store must hold the features the head reads, made by the frontend (and WavLM layers) it
    was trained on; otherwise its scores would be numbers about something else."""
    store = data.store
    missing = [f for f in loaded.inputs if f not in store.feature_names]
    if missing:
        raise EvaluationError(f"{loaded.arch} reads {', '.join(loaded.inputs)}, but {store.path}@{store.version} has "
                              f"only {', '.join(store.feature_names)}: featurize it with --features {','.join(loaded.inputs)}")
    trained = loaded.config["sets"]["train"].get("frontend_hash")
    if trained and store.config.get("frontend_hash") != trained:
        raise EvaluationError(f"{store.path}@{store.version} was featurized with frontend {store.config.get('frontend_hash')}, "
                              f"the run {loaded.path} with {trained}: featurize it with the run's frontend config")
    if "wavlm" in loaded.inputs:
        want, have = loaded.config["wavlm"], store.config.get("wavlm") or {}
        if (want.get("model"), list(want.get("layers", []))) != (have.get("model"), list(have.get("layers", []))):
            raise EvaluationError(f"{store.path} holds WavLM {have.get('model')} layers {have.get('layers')}, the run was "
                                  f"trained on {want.get('model')} layers {want.get('layers')}")


# -- score files -----------------------------------------------------------------------------------------
@dataclass
class ScoreTable:
    """Scores read from a file, already P(fake)-oriented, with the file line of every row."""
    path: str
    fmt: str
    labels: np.ndarray
    scores: np.ndarray
    lines: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def guess_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return "tsv" if "\t" in f.readline() else "asvspoof"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "asvspoof"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _whitespace_record(fields: list[str], id_field: int | None) -> dict:
    """One whitespace line by the documented column rule; `id_field` None: every field may be the id."""
    numeric = [i for i, f in enumerate(fields) if _is_number(f)]
    keys = [f for i, f in enumerate(fields) if i not in numeric and parse_label(f) is not None]
    attacks = [f for f in fields if ATTACK.match(f)]
    ids = fields if id_field is None else (fields[id_field:id_field + 1] or fields[:1])
    return {"score": fields[numeric[-1]] if numeric else None, "label": keys[-1] if keys else None,
            "generator": attacks[-1] if attacks else "", "_ids": ids}


def read_records(path: Path, fmt: str, id_field: int | None = None) -> tuple[str, list[tuple[int, dict]]]:
    """('line' or 'row', [(number, record)]) of a score or protocol file; records are dicts of text."""
    if fmt in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            records = [(reader.line_num, row) for row in reader]
        return "line", records
    if fmt == "jsonl":
        records = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvaluationError(f"{path} line {number} is not JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise EvaluationError(f"{path} line {number} is not a JSON object")
                records.append((number, obj))
        return "line", records
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise EvaluationError(f"reading {path} needs pyarrow (`pip install pyarrow`); or convert it to "
                                  "CSV/JSONL and evaluate that") from None
        return "row", list(enumerate(pq.read_table(path).to_pylist(), 1))
    if fmt == "asvspoof":
        records = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                fields = line.split("#", 1)[0].split()
                if fields:
                    records.append((number, _whitespace_record(fields, id_field)))
        return "line", records
    raise EvaluationError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def _column(records: list[tuple[int, dict]], given: str | None, candidates: tuple[str, ...], what: str,
            path: Path, required: bool = True) -> str | None:
    """The column to read: the one given, else the first candidate present (case-insensitive)."""
    present = list(records[0][1]) if records else []
    if given is not None:
        if given not in present:
            raise EvaluationError(f"{path} has no column {given!r}; its columns: {', '.join(present)}")
        return given
    lower = {c.lower(): c for c in present}
    found = next((lower[c] for c in candidates if c in lower), None)
    if found is None and required:
        raise EvaluationError(f"{path}: no {what} column (looked for {', '.join(candidates)}); its columns: "
                              f"{', '.join(present)}. Name it with --{what}-col")
    return found


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOW_LINES]))
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > SHOW_LINES else "")


def read_protocol(path: str | Path, fmt: str | None = None) -> dict[str, dict]:
    """clip id -> {"label": text, "generator": text} from a protocol / key file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"no protocol file at {path}")
    fmt = fmt or guess_format(path)
    _, records = read_records(path, fmt, id_field=1)
    if fmt != "asvspoof":
        id_col = _column(records, None, ID_COLUMNS, "id", path)
        label_col = _column(records, None, LABEL_COLUMNS, "label", path)
        gen_col = _column(records, None, BREAKDOWN_COLUMNS["generator"], "generator", path, required=False)
        records = [(n, {"_ids": [str(r[id_col])], "label": r[label_col],
                        "generator": str(r[gen_col]) if gen_col else ""}) for n, r in records]
    keys: dict[str, dict] = {}
    for _, r in records:
        keys.setdefault(r["_ids"][-1], {"label": r["label"], "generator": r["generator"]})
    stems: dict[str, list] = {}
    for clip in keys:
        stems.setdefault(_stem(clip), []).append(clip)
    for stem, clips in stems.items():   # a name without folder/extension, when it is unambiguous
        if len(clips) == 1 and stem not in keys:
            keys[stem] = keys[clips[0]]
    return keys


def _stem(clip: str) -> str:
    return clip.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]


def join_protocol(records: list[tuple[int, dict]], keys: dict[str, dict], id_key: str | None) -> list:
    """Each record with the protocol's label and attack (`_missing` when the protocol lacks it); ids
    match exactly, else without folder and extension."""
    joined = []
    for number, r in records:
        ids = r["_ids"] if id_key is None else [str(r[id_key])]
        match = next((keys[i] for i in ids if i in keys), None) or \
            next((keys[_stem(i)] for i in ids if _stem(i) in keys), None)
        joined.append((number, {**r, "label": match["label"] if match else None, "_missing": match is None,
                                "generator": (match or {}).get("generator") or r.get("generator", "")}))
    return joined


def read_scores(path: str | Path, fmt: str | None = None, score_col: str | None = None,
                label_col: str | None = None, id_col: str | None = None, higher_is: str = "fake",
                protocol: str | Path | None = None, drop_bad: bool = False) -> ScoreTable:
    """Labels and P(fake) scores from a score file (see the module docstring for formats and rules)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"no score file at {path}")
    if higher_is not in ("fake", "real"):
        raise EvaluationError(f"--higher-is must be fake or real, not {higher_is!r}")
    fmt = fmt or guess_format(path)
    unit, records = read_records(path, fmt)
    if not records:
        raise EvaluationError(f"{path} holds no scores")
    notes: list[str] = []
    if fmt == "asvspoof":
        score_key, label_key, groups = "score", "label", {"generator": "generator"}
    else:
        score_key = _column(records, score_col, SCORE_COLUMNS, "score", path)
        label_key = _column(records, label_col, LABEL_COLUMNS, "label", path, required=protocol is None)
        groups = {name: c for name, aliases in BREAKDOWN_COLUMNS.items()
                  if (c := _column(records, None, aliases, name, path, required=False))}
    if protocol is not None:
        id_key = None if fmt == "asvspoof" else _column(records, id_col, ID_COLUMNS, "id", path)
        records, label_key = join_protocol(records, read_protocol(protocol), id_key), "label"
        if any(r["generator"] for _, r in records):
            groups["generator"] = "generator"
        if fmt != "asvspoof" and label_col:
            notes.append(f"labels come from {protocol}; the file's column {label_col!r} is ignored")

    problems: dict[str, list[int]] = {}
    unknown: set[str] = set()
    keep, labels, scores = [], [], []
    for i, (number, r) in enumerate(records):
        score, label = _to_score(r.get(score_key)), _text(r.get(label_key))
        parsed = parse_label(label) if label else None
        if r.get("_missing"):
            problem = "clip not in the protocol"
        elif isinstance(score, str):
            problem = score
        elif not label:
            problem = "missing label"
        elif parsed is None:
            problem = "unknown label"
            unknown.add(label)
        else:
            keep.append(i)
            labels.append(parsed)
            scores.append(score)
            continue
        problems.setdefault(problem, []).append(number)
    if problems:
        described = "; ".join(
            f"{len(numbers)} row{'s' * (len(numbers) > 1)} with {kind}"
            + (f" ({', '.join(map(repr, sorted(unknown)[:5]))})" if kind == "unknown label" else "")
            + f" ({unit}{'s' * (len(numbers) > 1)} {_lines(numbers)})" for kind, numbers in problems.items())
        if not drop_bad:
            raise EvaluationError(f"{path}: {described}. Fix them, or evaluate the other rows with --drop-bad")
        notes.append(f"left out: {described}")
    if not keep:
        raise EvaluationError(f"{path}: no row has both a usable score and a label")
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    probabilities = bool(((scores >= 0) & (scores <= 1)).all())
    if higher_is == "real":  # order-reversing: EER, AUC and minDCF are those of the original scores
        scores = 1.0 - scores if probabilities else -scores
        notes.append("--higher-is real: scores flipped to P(fake) = "
                     + ("1 - score" if probabilities else "-score (they are not probabilities)"))
    if not probabilities:
        notes.append(f"scores range over [{scores.min():.4g}, {scores.max():.4g}], not probabilities: the metrics at "
                     "threshold 0.5 do not mean P(fake) = 0.5; EER, AUC and minDCF depend only on the order")
    if labels.min() == labels.max():
        notes.append(f"every clip is {'fake' if labels[0] else 'real'}: EER, AUC, minDCF, MCC and "
                     f"{'specificity' if labels[0] else 'recall'} are undefined")
    lines = np.asarray([records[i][0] for i in keep])
    columns = {name: np.asarray([str(records[i][1].get(col) or "") for i in keep]) for name, col in groups.items()}
    return ScoreTable(str(path), fmt, labels, scores, lines, columns, notes)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _to_score(value) -> float | str:
    """The score as a float, or the name of what is wrong with it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing score"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "non-numeric score"
    return number if math.isfinite(number) else "NaN/Inf score"


def evaluate_score_file(table: ScoreTable) -> dict:
    """Every metric of a score file at 0.5 and at its EER threshold, with breakdowns."""
    source = {"scores": table.path, "format": table.fmt, "clips": int(table.labels.size)}
    return _result(source, table.labels, table.scores, table.columns, {}, list(table.notes))


# -- printing -----------------------------------------------------------------------------------------
PERCENT = ("accuracy", "precision", "recall", "sensitivity", "specificity")


def fmt(value, name: str = "") -> str:
    """A metric for people: rates in %, the rest to 4 decimals, undefined as 'undefined' (never 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2%}" if name in PERCENT else f"{value:.4f}"


def print_evaluation(result: dict, console) -> None:
    """The result of `evaluate_run` / `evaluate_score_file` as tables."""
    from rich.markup import escape
    from rich.table import Table

    console.print(escape(result["header"]), style="dim", soft_wrap=True)
    src, m = result["source"], result["metrics"]
    if "run" in src:
        console.print(f"run {escape(src['run'])} ({src['arch']}, epoch {src['epoch']}) on {escape(src['set'])} "
                      f"({escape(src['store'])}@{src['version']})", soft_wrap=True)
    else:
        console.print(f"scores {escape(src['scores'])} ({src['format']})", soft_wrap=True)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    console.print(f"{m['n']} clips: {m['n_fake']} fake, {m['n_real']} real; {m['tied_scores']} tied scores "
                  f"({m['mixed_ties']} clips tie with a clip of the other label)")
    console.print(f"EER {fmt(m['eer'])} (threshold {fmt(m['eer_threshold'])})   AUC {fmt(m['auc'])}   "
                  f"minDCF {fmt(m['min_dcf'])} (threshold {fmt(m['min_dcf_threshold'])})")
    columns = [(k, title if k == "at_0.5" else f"{title} {fmt(m[k]['threshold'])}")
               for k, title in (("at_0.5", "at 0.5"), ("at_eer", "at EER threshold"),
                                ("at_val", "at validation threshold")) if k in m]
    table = Table("metric", *(title for _, title in columns), title="decisions: fake when score >= threshold")
    for name in ("accuracy", "precision", "recall", "f1", "mcc", "specificity", "tp", "fp", "tn", "fn"):
        label = {"recall": "recall (sensitivity)"}.get(name, name)
        table.add_row(label, *(fmt(m[k][name], name) for k, _ in columns))
    console.print(table)
    for column, groups in result["breakdowns"].items():
        console.print(breakdown_table(column, groups))
    if any(g.get("one_label") for groups in result["breakdowns"].values() for g in groups.values()):
        console.print("* one label only: EER, AUC and minDCF against every clip of the other label of the set; "
                      "within the group only recall (fakes caught) or specificity (reals passed) exists, and "
                      "precision, F1 and MCC are undefined. Every metric at every threshold: --json.",
                      style="dim", soft_wrap=True)


def breakdown_table(column: str, groups: dict):
    """One row per group: EER/AUC/minDCF, and the fakes caught (recall) and reals passed
    (specificity) at the validation threshold when there is one, else at 0.5 (all: --json)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    at = "at_val" if all("at_val" in g for g in groups.values()) else "at_0.5"
    where = "the validation threshold" if at == "at_val" else "threshold 0.5"
    table = Table(title=f"per {column} (recall, specificity at {where})", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for header in (column, "fake/real", "EER", "AUC", "minDCF", "recall", "specificity"):
        table.add_column(header, overflow="fold")
    for value, g in groups.items():
        star = "*" if g.get("one_label") else ""
        table.add_row(escape(value or "(none)"), f"{g['n_fake']}/{g['n_real']}", fmt(g["eer"]) + star,
                      fmt(g["auc"]) + star, fmt(g["min_dcf"]) + star,
                      *(fmt(g[at].get(name), name) for name in ("recall", "specificity")))
    return table
