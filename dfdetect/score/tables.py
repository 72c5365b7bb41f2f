"""The score tables: one row per input (and optionally one per window) in .csv, .jsonl or
.parquet; rows already written are read back for --resume. CSV cells a spreadsheet would run as a
formula are neutralised (names.csv_cell) and read back as they were."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

from dfdetect.names import csv_cell, csv_value, field_token
from dfdetect.score.options import CHALLENGE_FORMATS, ScoreError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
# Output columns and their types (the Parquet schema; CSV/JSONL write the same names in this order).
COLUMNS = {
    "path": str, "member": str, "status": str, "score": float, "decision": str, "threshold": float,
    "score_meaning": str, "duration": float, "sample_rate": int, "channels": int, "container": str,
    "windows": int, "silent_windows": int, "aggregate": str, "features": str, "run_id": str,
    "frontend_hash": str, "error_kind": str, "error": str,
    # calibrated: the file's natural-log LLR fake vs real (higher = more likely fake), the decision at
    # the Bayes threshold of ASVspoof 5's costs, and the calibration's name; empty without one
    "llr": float, "llr_decision": str, "calibration": str,
    # what the decoder library said about damage it decoded past (e.g. libmpg123's "part2_3_length
    # too large"): the file is scored, but its audio may be partly wrong
    "warning": str,
}
WINDOW_COLUMNS = {"path": str, "member": str, "window": int, "start": float, "end": float,
                  "silent": bool, "score": float, "score_meaning": str}


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ScoreError(f"{path}: the output format comes from the extension; use one of {', '.join(FORMATS)}")
    return fmt


def previous_rows(path: Path, resume: bool, columns: dict = COLUMNS, option: str = "--out") -> tuple[list[dict], bool]:
    """(rows, complete) already in an output; complete is False when its last line was cut off by
    an interrupted write (that line is left out). An existing output is only continued on --resume,
    and only when it is a table of these `columns` (one score wrote)."""
    if not path.exists():
        return [], True
    if not resume:
        raise ScoreError(f"{path} exists; pass --resume to continue it, or remove it")
    not_ours = (f"{path} is not a table dfdetect score wrote, so --resume cannot continue it; "
                f"give a new {option} (or remove this file)")
    if output_format(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:   # pyarrow raises several types for a file that is not Parquet
            raise ScoreError(f"{not_ours} ({e})") from None
        _check_columns(table.column_names, columns, not_ours)
        return table.to_pylist(), True
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise ScoreError(f"{not_ours} ({e})") from None
    complete = text == "" or text.endswith("\n")
    lines = io.StringIO(text, newline="\n").readlines()[:None if complete else -1]  # only \n ends a row
    if not lines:
        return [], complete
    if output_format(path) == "csv":
        reader = csv.DictReader(lines)
        _check_columns(reader.fieldnames or [], columns, not_ours)
        return [{k: csv_value(v) for k, v in row.items()} for row in reader], complete
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise ScoreError(f"{not_ours} (line {number} is not JSON)") from None
            if not isinstance(row, dict):
                raise ScoreError(f"{not_ours} (line {number} is not a JSON object)")
            _check_columns(list(row), columns, not_ours)
            rows.append(row)
    return rows, complete


def _check_columns(found: list[str], columns: dict, not_ours: str) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ScoreError(f"{not_ours} (it lacks the columns {shown})")


class TableWriter:
    """Rows into .csv/.jsonl, appended and flushed as they come, or into .parquet, in row groups
    written beside the output and moved into place by close(). `rows` are earlier rows that stay
    before the new ones; `rewrite` replaces a CSV/JSONL file with them first (a cut-off last line,
    or rows left out)."""

    def __init__(self, path: Path, columns: dict, metadata: dict, rows: list[dict] = (), rewrite: bool = False):
        self.path, self.columns, self.fmt = Path(path), columns, output_format(Path(path))
        with self._writing():
            self._start(metadata, rows, rewrite)

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (a full disk, a folder gone) is one line: what was written stays, --resume goes on."""
        try:
            yield
        except OSError as e:
            raise ScoreError(f"cannot write {self.path}: {e.strerror or e}; the rows written before are kept: "
                             "make room (or fix the folder) and rerun the same command with --resume") from None

    def _start(self, metadata: dict, rows: list[dict], rewrite: bool) -> None:
        columns = self.columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            types = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
            self._schema = pa.schema([(k, types[t]) for k, t in columns.items()],
                                     metadata={"dfdetect": json.dumps(metadata)})
            self._writer = pq.ParquetWriter(self._partial, self._schema)
            self._buffer: list[dict] = []
            for row in rows:
                self._write(row)
            return
        if rewrite:
            self._open(self._partial, "w")
            for row in rows:
                self._write(row)
            self._file.close()
            os.replace(self._partial, self.path)
        self._open(self.path, "a")

    def _open(self, path: Path, mode: str) -> None:
        new = mode == "w" or not path.exists() or path.stat().st_size == 0
        self._file = open(path, mode, newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, list(self.columns)) if self.fmt == "csv" else None
        if new and self._csv:
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        with self._writing():
            self._write(row)

    def _write(self, row: dict) -> None:
        if self.fmt == "parquet":
            self._buffer.append(row)
            if len(self._buffer) >= 10_000:
                self._flush()
        elif self._csv:
            self._csv.writerow({k: "" if row.get(k) is None else csv_cell(row[k]) for k in self.columns})
            self._file.flush()
        else:
            self._file.write(json.dumps({k: row.get(k) for k in self.columns}, ensure_ascii=False) + "\n")
            self._file.flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
            self._buffer = []

    def close(self) -> None:
        with self._writing():
            if self.fmt == "parquet":
                self._flush()
                self._writer.close()
                os.replace(self._partial, self.path)
            else:
                self._file.close()


# -- challenge score files (--format asvspoof5 | asvspoof2019) ---------------------------------------------
CHALLENGE_MEANING = "1 - P(fake) = P(bona fide): higher = more likely bona fide (the challenges' polarity)"
CHALLENGE_LLR_MEANING = "-llr: the bona fide LLR, ln p(x|bona fide) - ln p(x|spoof), higher = bona fide"


def challenge_score(rows: list[dict]) -> tuple[str, str]:
    """(column, meaning) of a challenge file's scores: the bona fide LLR (-llr) when every ok row is
    calibrated, so the ASVspoof 5 package's actDCF and Cllr mean what they say; else 1 - P(fake)."""
    if rows and all(r.get("llr") not in (None, "") for r in rows):
        return "llr", CHALLENGE_LLR_MEANING
    return "score", CHALLENGE_MEANING


def status_table(out: Path) -> Path:
    """Where score keeps every input's row when --out is a challenge file: beside it, OUT.status.csv."""
    return out.with_name(out.stem + ".status.csv")


def challenge_name(row: dict) -> str:
    """The challenges' trial name of a row: the file (or archive member) name without folders and
    without its last extension (ASVspoof keys name `E_0000000001`, not `.../E_0000000001.flac`),
    as one field that no tab, space, newline or '#' in an untrusted name can split."""
    name = (row["member"] or row["path"]).rsplit("/", 1)[-1]
    stem, dot, _ = name.rpartition(".")
    return field_token(stem if dot and stem else name)


def write_challenge(path: Path, fmt: str, rows: list[dict]) -> tuple[int, int]:
    """The challenge file of the ok rows (failed and skipped inputs have no score, and a challenge file
    must not hold invented ones: they stay in the status table only). Written beside `path` and
    renamed into place, so a reader never sees half of it. Returns (scores written, rows left out).
    Two inputs with the same trial name (a/x.wav and b/x.flac) would make one trial with two scores:
    a ScoreError naming them."""
    if fmt not in CHALLENGE_FORMATS:
        raise ScoreError(f"unknown --format {fmt!r}; valid: table, {', '.join(CHALLENGE_FORMATS)}")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("score") is not None]
    names: dict[str, dict] = {}
    for row in ok:
        name = challenge_name(row)
        if name in names:
            first = names[name]
            raise ScoreError(f"--format {fmt}: {row['path']}{':' + row['member'] if row['member'] else ''} and "
                             f"{first['path']}{':' + first['member'] if first['member'] else ''} are both trial "
                             f"{name!r}; score them into separate --out files (every row is in the status table)")
        names[name] = row
    # Calibrated rows: the bona fide LLR -llr (as written, 6 decimals), which the ASVspoof 5 package's
    # actDCF and Cllr assume. Otherwise P(bona fide) = 1 - P(fake), the score as written: exact,
    # bounded, the order reversed, so EER and minDCF are dfdetect's, but it is not an LLR.
    column, _ = challenge_score(ok)
    lines = ["filename\tcm-score\n"] if fmt == "asvspoof5" else []
    sep = "\t" if fmt == "asvspoof5" else " "
    value = (lambda r: -float(r["llr"]) + 0.0) if column == "llr" else (lambda r: 1.0 - float(r["score"]))
    lines += [f"{name}{sep}{value(row):.6f}\n" for name, row in names.items()]
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ScoreError(f"cannot write {path}: {e.strerror or e}; the status table keeps every row: make room "
                         "and rerun the same command with --resume") from None
    return len(names), len(rows) - len(names)
