"""Reading any system's score file: CSV, TSV, JSONL, Parquet or the ASVspoof text formats, with
labels from the file or from a protocol, oriented to P(fake).

The format follows the extension unless `fmt` is given:
  .csv -> csv; .tsv/.tab -> tsv (header row; a .tsv without tabs, like ASVspoof 5's protocols, is
  read as asvspoof); .jsonl/.ndjson -> jsonl (one JSON object per line); .parquet/.pq -> parquet
  (needs pyarrow); anything else -> asvspoof.
Tabular files name their columns: the score is `--score-col` or the first of SCORE_COLUMNS, the
label `--label-col` or the first of LABEL_COLUMNS (any spelling parse_label knows: fake/spoof/1,
real/bonafide/bona-fide/genuine/0, ...), the clip id `--id-col` or the first of ID_COLUMNS.
`asvspoof` is whitespace-separated (`#` starts a comment; a first line naming a score column, as
ASVspoof 5's `filename<TAB>cm-score`, is its header), as the ASVspoof packages write: `FILE SCORE`
(2021), `FILE ATTACK KEY SCORE` (2019 CM), `SPK FILE SCORE KEY` (ASVspoof 5 README). Column rule:
the score is the last field that is a number, the key the last non-numeric field that spells a label
(bonafide/spoof, ...), the attack a field like A07.
`protocol` (e.g. an ASVspoof protocol, or In-the-Wild's meta.csv) supplies labels by clip id: in a
whitespace protocol the clip is the second field (true of ASVspoof 2019 LA, 2021 and 5), the key the
last label word and the attack a field like A07; a tabular one uses ID_COLUMNS / LABEL_COLUMNS. A
score row matches when its id (for asvspoof lines: any of its fields) equals a protocol clip, or
equals it without folder and extension.
Bad rows (missing, non-numeric, NaN/Inf scores; missing or unknown labels; clips the protocol lacks)
are an error naming their line numbers, or with `drop_bad` are left out with a note that names them.
One clip, one row: the clip id is the id column (ID_COLUMNS / `--id-col`; a file without one is not
checked) or, in a whitespace line, its last field that is not the score, the key, an attack or "-".
A clip repeated with the same score and label counts once (a note says how many repeats); one
repeated with another score or label is an error naming the clip and both lines (with `drop_bad`,
all its rows are left out with a note). A protocol that gives one clip two labels is an error.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfdetect.datasets.base import parse_label
from dfdetect.evaluate.evaluation import BREAKDOWN_COLUMNS, EvaluationError

SCORE_COLUMNS = ("score", "cm-score", "cm_score", "p_fake", "prob_fake", "fake_prob", "prediction")
LABEL_COLUMNS = ("label", "key", "cm-label", "cm_label", "ground_truth", "ground truth", "truth")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "spk")
ID_COLUMNS = ("clip_id", "filename", "file", "path", "utt_id", "utt", "trial", "id")
FORMATS = ("csv", "tsv", "jsonl", "parquet", "asvspoof")
ATTACK = re.compile(r"^A\d\d$")
SHOW_LINES = 10   # line numbers named per problem in messages


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
    ids: np.ndarray | None = None        # clip ids, when the file names its clips (compare joins by them)
    speakers: np.ndarray | None = None   # a speaker column, when there is one (bootstrap groups)
    read: np.ndarray | None = None      # the scores as the file holds them (before any flip)
    higher_is: str = "fake"             # what the file's higher scores mean


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


def _is_header(fields: list[str]) -> bool:
    """A first line that names columns (a score column among them, no number): a header, not a row."""
    return not any(map(_is_number, fields)) and any(f.lower() in SCORE_COLUMNS for f in fields)


def _whitespace_record(fields: list[str], id_field: int | None) -> dict:
    """One whitespace line by the documented column rule; `id_field` None: every field may be the id."""
    numeric = [i for i, f in enumerate(fields) if _is_number(f)]
    keys = [f for i, f in enumerate(fields) if i not in numeric and parse_label(f) is not None]
    attacks = [f for f in fields if ATTACK.match(f)]
    ids = fields if id_field is None else (fields[id_field:id_field + 1] or fields[:1])
    named = [f for i, f in enumerate(fields) if (not numeric or i != numeric[-1]) and f not in keys
             and not ATTACK.match(f) and f != "-"]
    return {"score": fields[numeric[-1]] if numeric else None, "label": keys[-1] if keys else None,
            "generator": attacks[-1] if attacks else "", "_ids": ids, "_clip": named[-1] if named else None}


def read_records(path: Path, fmt: str, id_field: int | None = None) -> tuple[str, list[tuple[int, dict]]]:
    """('line' or 'row', [(number, record)]) of a score or protocol file; records are dicts of text.
    A file that is not what its format says (binary, a CSV field over csv's 128 KiB, JSON nested
    past Python's recursion limit or a number of over 4,300 digits) is an EvaluationError naming it."""
    try:
        return _read_records(path, fmt, id_field)
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not a text file (not UTF-8); score and protocol files are CSV, TSV, "
                              f"JSONL, Parquet or ASVspoof text ({fmt} was read: --scores-format chooses)") from None


def _read_records(path: Path, fmt: str, id_field: int | None) -> tuple[str, list[tuple[int, dict]]]:
    if fmt in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            try:
                records = [(reader.line_num, row) for row in reader]
            except csv.Error as e:
                raise EvaluationError(f"{path} line {reader.line_num + 1}: not {fmt.upper()} as a score file holds it "
                                      f"({e})") from None
        return "line", records
    if fmt == "jsonl":
        records = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:
                    raise EvaluationError(f"{path} line {number}: JSON nested too deeply to be a score row") from None
                except ValueError as e:   # JSONDecodeError, or an integer of over 4,300 digits
                    raise EvaluationError(f"{path} line {number} is not JSON "
                                          f"({getattr(e, 'msg', str(e).split(':')[0])})") from None
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
        import pyarrow

        try:
            return "row", list(enumerate(pq.read_table(path).to_pylist(), 1))
        except pyarrow.ArrowException as e:
            raise EvaluationError(f"{path}: not a Parquet file pyarrow can read "
                                  f"({str(e).splitlines()[0][:200]})") from None
    if fmt == "asvspoof":
        records = []
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                fields = line.split("#", 1)[0].split()
                if not records and fields and _is_header(fields):
                    continue   # ASVspoof 5's score files open with "filename<TAB>cm-score"
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
    for number, r in records:
        clip, label = r["_ids"][-1], _text(r["label"])
        first = keys.setdefault(clip, {"label": label, "generator": r["generator"], "_line": number})
        if _label_of(first["label"]) != _label_of(label):
            raise EvaluationError(f"{path}: clip {clip!r} has two labels, {first['label']!r} (line {first['_line']}) "
                                  f"and {label!r} (line {number}); fix the protocol so that each clip has one")
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
    id_key = None if fmt == "asvspoof" else _column(records, id_col, ID_COLUMNS, "id", path,
                                                    required=protocol is not None)
    if protocol is not None:
        records, label_key = join_protocol(records, read_protocol(protocol), id_key), "label"
        if any(r["generator"] for _, r in records):
            groups["generator"] = "generator"
        if fmt != "asvspoof" and label_col:
            notes.append(f"labels come from {protocol}; the file's column {label_col!r} is ignored")

    records = _one_row_per_clip(records, id_key if fmt != "asvspoof" else "_clip", score_key, label_key, unit,
                                path, drop_bad, notes)
    keep, labels, scores = _usable_rows(records, score_key, label_key, unit, path, drop_bad, notes)
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    probabilities = bool(((scores >= 0) & (scores <= 1)).all())
    read = scores
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
    clip_key = "_clip" if fmt == "asvspoof" else id_key
    speaker_key = None if fmt == "asvspoof" else _column(records, None, SPEAKER_COLUMNS, "speaker", path, False)
    ids, speakers = ([_text(records[i][1].get(key)) for i in keep] if key else None for key in (clip_key, speaker_key))
    return ScoreTable(str(path), fmt, labels, scores, lines, columns, notes,
                      ids=None if ids is None else np.asarray(ids),
                      speakers=None if speakers is None else np.asarray(speakers), read=read, higher_is=higher_is)


def _one_row_per_clip(records: list[tuple[int, dict]], id_key: str | None, score_key: str, label_key: str,
                      unit: str, path: Path, drop_bad: bool, notes: list[str]) -> list[tuple[int, dict]]:
    """The records with each clip once: exact repeats (same score and label) counted once with a
    note; a clip repeated with another score or label an EvaluationError naming it and both lines
    (with `drop_bad`: all its rows left out, with a note). Without an id there is nothing to check."""
    if id_key is None:
        return records
    first: dict[str, tuple[int, tuple]] = {}
    repeats: list[int] = []
    conflicts: dict[str, str] = {}
    for number, r in records:
        clip = _text(r.get(id_key))
        if not clip:
            continue
        label = _text(r.get(label_key))
        value = (_to_score(r.get(score_key)), _label_of(label), label, _text(r.get(score_key)))
        seen = first.setdefault(clip, (number, value))
        if seen[0] == number:
            continue
        if value[:2] == seen[1][:2]:
            repeats.append(number)
        elif clip not in conflicts:
            what = "label" if value[1] != seen[1][1] else "score"
            shown = (lambda v: v[2] or "no label") if what == "label" else (lambda v: v[3] or "no score")
            conflicts[clip] = (f"clip {clip!r} has two {what}s, {shown(seen[1])!r} ({unit} {seen[0]}) and "
                               f"{shown(value)!r} ({unit} {number})")
    if conflicts:
        shown = "; ".join(list(conflicts.values())[:3]) + (f"; ... ({len(conflicts)} clips in all)"
                                                           if len(conflicts) > 3 else "")
        if not drop_bad:
            raise EvaluationError(f"{path}: {shown}. Keep one row per clip, or leave such clips out with --drop-bad")
        notes.append(f"left out: every row of {len(conflicts)} clip{'s' * (len(conflicts) > 1)} repeated with "
                     f"another score or label ({shown})")
    if repeats:
        notes.append(f"{len(repeats)} repeated row{'s' * (len(repeats) > 1)} (same clip, score and label) counted "
                     f"once ({unit}{'s' * (len(repeats) > 1)} {_lines(repeats)})")
    dropped = set(repeats)
    return [(n, r) for n, r in records
            if n not in dropped and _text(r.get(id_key)) not in conflicts]


def _usable_rows(records: list[tuple[int, dict]], score_key: str, label_key: str, unit: str, path: Path,
                 drop_bad: bool, notes: list[str]) -> tuple[list[int], list[int], list[float]]:
    """(record indices, labels, scores) of the rows with a usable score and label. Bad rows are an
    EvaluationError naming their lines, or with `drop_bad` left out with a note that names them."""
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
    return keep, labels, scores


def _label_of(text: str):
    """What a label means (0, 1), for comparing spellings; the text itself when it means nothing."""
    parsed = parse_label(text) if text else None
    return text if parsed is None else parsed


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
    except OverflowError:    # a JSON integer of hundreds of digits
        return "NaN/Inf score"
    return number if math.isfinite(number) else "NaN/Inf score"
