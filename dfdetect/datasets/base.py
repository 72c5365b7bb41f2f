"""What every dataset adapter returns: one clip table, plus the problems found while building it.

An adapter (one module per corpus, like lhotse's recipes) exposes

    NAME: str                      # the name used by `--dataset`
    DESCRIPTION: str               # one line for `dfdetect datasets list`
    def prepare(root: Path) -> DatasetIndex

`prepare` raises `DatasetLayoutError` when the root is not the corpus at all (the message names
the file or folder it expected and where). Anything wrong with individual rows or files (a file
named in a protocol that is missing, a label it cannot read) becomes a `Problem` in the index and
never stops the rest: one bad row in 100,000 must not cost the other 99,999.

Labels everywhere: 1 = fake (spoof), 0 = real (bona fide).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dfdetect.errors import DfdetectError

FAKE, REAL = 1, 0

# Spellings seen in the wild, lower-cased with spaces/underscores/hyphens removed.
_LABEL_SPELLINGS = {
    "fake": FAKE, "spoof": FAKE, "spoofed": FAKE, "deepfake": FAKE, "synthetic": FAKE, "1": FAKE,
    "real": REAL, "bonafide": REAL, "genuine": REAL, "human": REAL, "0": REAL,
}


class DatasetLayoutError(DfdetectError):
    """The root folder does not look like the dataset: says what was expected where."""


@dataclass(frozen=True)
class Clip:
    clip_id: str          # unique within the dataset
    path: str             # absolute path to the audio file
    label: int            # 1 = fake, 0 = real
    split: str            # train / dev / eval / test / all ...
    generator: str = ""   # attack id or generator family; "" for real or unknown
    speaker: str = ""
    codec: str = ""
    language: str = ""
    date: str = ""
    source: str = ""      # where the clip came from (website, corpus part, ...)


@dataclass(frozen=True)
class Problem:
    where: str            # file (and line/row) the problem is about
    message: str          # what is wrong and what to do


@dataclass
class DatasetIndex:
    dataset: str
    root: str
    clips: list[Clip] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def counts(self) -> dict:
        """Counts per split, label and generator: what `datasets show` prints."""
        by_split: dict[str, Counter] = {}
        generators: Counter = Counter()
        for c in self.clips:
            by_split.setdefault(c.split, Counter())["fake" if c.label == FAKE else "real"] += 1
            if c.label == FAKE:
                generators[c.generator or "(unknown)"] += 1
        return {
            "clips": len(self.clips),
            "real": sum(c.label == REAL for c in self.clips),
            "fake": sum(c.label == FAKE for c in self.clips),
            "by_split": {s: dict(cnt) for s, cnt in sorted(by_split.items())},
            "fake_by_generator": dict(sorted(generators.items())),
            "problems": len(self.problems),
        }

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "counts": self.counts(),
            "problems": [asdict(p) for p in self.problems],
        }


def parse_label(text: str) -> int | None:
    """Map a label spelling to 1 (fake) / 0 (real); None when the spelling is unknown."""
    key = str(text).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return _LABEL_SPELLINGS.get(key)


def require(path: Path, what: str, expected_layout: str) -> Path:
    """Fail with a message naming the expected file when a dataset root has the wrong layout."""
    if not path.exists():
        raise DatasetLayoutError(
            f"expected {what} at {path}, but it does not exist.\nExpected layout:\n{expected_layout}"
        )
    return path


def list_files(folder: Path) -> set[str]:
    """Names of the regular entries in a folder, read once (one scandir instead of a stat per row)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if not e.is_dir()}
    except FileNotFoundError:
        return set()


# ---------------------------------------------------------------------------------------------
# Helpers shared by the adapters: reading metadata text, keeping paths inside the root, checking
# files with one scandir per folder, and collecting clips with duplicate-id / missing-file checks.
# ---------------------------------------------------------------------------------------------

def read_text(path: Path) -> tuple[str, Problem | None]:
    """Read a metadata file as text (UTF-8, a BOM tolerated).

    Bytes that are not UTF-8 are replaced rather than fatal; the returned Problem says so.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8-sig", errors="replace")
        return text, Problem(str(path), f"not valid UTF-8 (first bad byte at offset {exc.start}); "
                                        "undecodable bytes were replaced with U+FFFD")


REPEATS_LISTED = 20          # rows repeating a clip's audio listed one by one; the rest are counted
MAX_PROBLEMS = 10_000        # problems listed per index; the rest are counted in the last
MAX_JSON_BYTES = 16 << 20   # a metadata JSON file (dataset_info.json ...): far above any real one


class BadJson(ValueError):
    """A metadata JSON file that cannot be read: the message says why (not the path)."""


def load_json(path: Path | str, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in a metadata file, bounded: over `max_bytes`, not UTF-8, not JSON, or nested
    past Python's recursion limit is BadJson (json recurses per level: a deep file is a RecursionError)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadJson(f"over {max_bytes >> 20} MiB, more than any dataset metadata")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BadJson("not UTF-8 text") from None
    except ValueError as exc:
        raise BadJson(f"not JSON ({exc})") from None
    except RecursionError:
        raise BadJson("nested deeper than Python's recursion limit") from None


def path_inside(root: str, rel: str) -> str | None:
    """Absolute, normalised path of `rel` taken under `root`; None when it leaves `root`.

    Lexical only (os.path.normpath, symlinks are not resolved): `..` that climbs out of the root
    and absolute paths elsewhere are refused; an absolute path that lies under the root is fine.
    """
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, rel))
    prefix = base if base.endswith(os.sep) else base + os.sep
    if full == base or full.startswith(prefix):
        return full
    return None


def inside_real(real_root: str, real_path: str) -> bool:
    """Whether a resolved path is `real_root` or lies under it."""
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


class IndexBuilder:
    """Builds one DatasetIndex: duplicate ids, files listed but missing, paths escaping the root.

    Every check ends as a Problem in the index; only `add` decides whether a clip is kept:
    a duplicate id is skipped, a listed-but-missing file is kept (later stages record it as an
    error, so every input is accounted for).
    """

    def __init__(self, dataset: str, root: Path | str):
        self.root = os.path.normpath(os.path.abspath(root))
        self.index = DatasetIndex(dataset=dataset, root=self.root)
        self._ids: set[str] = set()
        self._listings: dict[str, set[str]] = {}
        self._bases: dict[tuple[str, str], bool] = {}
        self.real_root = os.path.realpath(self.root)
        self._real_folders: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        self._repeats = self._unlisted = 0

    def first_use(self, path: str, where: str) -> bool:
        """False when an earlier row already made a clip of this audio (one clip per file or segment:
        a 39 KB run-length-encoded table can name one file millions of times). The first
        REPEATS_LISTED repeats are problems; `finish` counts the rest in one."""
        first = self._paths.get(path)
        if first is None:
            self._paths[path] = where
            return True
        self._repeats += 1
        if self._repeats <= REPEATS_LISTED:
            self.problem(where, f"the same audio as {first}; row skipped (one clip per audio)")
        return False

    def finish(self) -> DatasetIndex:
        """The index, with the repeats `first_use` did not list counted in one problem."""
        if self._repeats > REPEATS_LISTED:   # past MAX_PROBLEMS too: this count is never folded in
            more = self._repeats - REPEATS_LISTED
            self.index.problems.append(Problem(self.root, f"{more:,} more rows repeat audio an earlier row already "
                                                          f"made a clip of; skipped (the first {REPEATS_LISTED} are "
                                                          "listed)"))
        return self.index

    def link_outside(self, path: str) -> str | None:
        """Where `path` really leads when a symlink (of the file or of a folder above it) takes it
        outside the root; None when it stays inside (or does not exist). The folder's real path is
        cached, so a table of many rows costs one lstat per row."""
        folder, name = os.path.split(os.path.abspath(path))
        real = self._real_folders.get(folder)
        if real is None:
            real = self._real_folders[folder] = os.path.realpath(folder)
        target = os.path.join(real, name)
        if os.path.islink(target):
            target = os.path.realpath(target)
        return None if inside_real(self.real_root, target) else target

    def problem(self, where: str, message: str) -> None:
        """Record a problem; past MAX_PROBLEMS, the last one counts the rest (a table of millions of
        bad rows must not cost a problem each)."""
        if len(self.index.problems) < MAX_PROBLEMS:
            self.index.problems.append(Problem(str(where), message))
            return
        self._unlisted += 1
        self.index.problems[-1] = Problem(self.root, f"{self._unlisted + 1:,} more problems, not listed (the "
                                                     f"first {MAX_PROBLEMS - 1:,} are)")

    def rel(self, path: Path | str) -> str:
        """A path shown relative to the root when it is under it (for readable messages)."""
        p = os.path.abspath(path)
        try:
            r = os.path.relpath(p, self.root)
        except ValueError:
            return p
        return p if r.startswith("..") else r.replace(os.sep, "/")

    def resolve(self, rel: str, where: str, base: str | None = None,
                boundary: str | None = None) -> str | None:
        """`rel` under `base` (default: the root) as an absolute path, or None plus a Problem when
        it is empty or escapes `boundary` (default: the root)."""
        if not rel:
            self.problem(where, "empty file name; row skipped")
            return None
        base = os.path.abspath(base) if base else self.root
        boundary = boundary or self.root
        if os.sep not in rel and "/" not in rel and rel not in (".", ".."):
            # A plain file name (the common case, once per row): only its folder needs checking.
            inside = self._bases.get((base, boundary))
            if inside is None:
                inside = self._bases[(base, boundary)] = path_inside(boundary, base) is not None
            if inside:
                return os.path.join(base, rel)
        full = path_inside(boundary, os.path.join(base, rel))
        if full is None:
            self.problem(where, f"path {rel!r} points outside {boundary}; row skipped")
        return full

    def is_file(self, path: str) -> bool:
        """Whether `path` is a non-directory entry, with one scandir per folder (cached)."""
        folder, name = os.path.split(path)
        names = self._listings.get(folder)
        if names is None:
            try:
                names = list_files(Path(folder))
            except OSError:            # not a directory, no permission, ...
                names = set()
            self._listings[folder] = names
        return name in names

    def add(self, clip: Clip, where: str, listed_in: str | None = None) -> bool:
        """Keep `clip` unless its id was seen already. With `listed_in` (e.g. "meta.csv line 7"),
        a file missing on disk is reported and the clip kept."""
        if clip.clip_id in self._ids:
            self.problem(where, f"duplicate clip id {clip.clip_id!r}; later row skipped")
            return False
        self._ids.add(clip.clip_id)
        if listed_in is not None and not self.is_file(clip.path):
            self.problem(where, f"{clip.path} listed in {listed_in} but missing "
                                "(kept; it will be recorded as an error)")
        self.index.clips.append(clip)
        return True


def csv_rows(text: str, delimiter: str = ","):
    """Yield (start_line, row) from CSV text, skipping blank lines. `start_line` is the 1-based
    line where the record begins (a quoted field may span lines). A csv.Error is yielded in place
    of the row, so the caller can report it with its line number and go on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, exc
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield start, row


def header_key(name: str) -> str:
    """Normalise a header cell: BOM and surrounding whitespace removed, lower-cased."""
    return name.replace("\ufeff", "").strip().lower()


def protocol_lines(text: str):
    """Yield (line_number, fields) of a whitespace-separated protocol file (spaces or tabs),
    skipping blank lines and lines starting with '#'."""
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield number, fields


def index_protocol_splits(b: IndexBuilder, root: Path, found, columns: tuple[str, ...],
                          make_clip, layout: str) -> None:
    """The ASVspoof family's shape: per split, a header-less whitespace-separated protocol file and
    a folder of `<FILE>.flac`. `found` lists (split, protocol path, audio folder name);
    `make_clip(row: dict, label, split, path) -> Clip` maps one row (keyed by `columns`, which
    must include FILE and KEY). Bad rows become problems; a split whose audio folder is missing is
    skipped with a problem; DatasetLayoutError when no split can be read at all."""
    read_any = False
    for split, proto, audio_name in found:
        audio = root / audio_name
        text, problem = read_text(proto)
        if problem:
            b.index.problems.append(problem)
        if not audio.is_dir():
            rows = sum(1 for _ in protocol_lines(text))
            b.problem(str(audio), f"{proto.name} is present but its audio folder {audio_name}/ is "
                                  f"missing: split {split!r} ({rows} rows) skipped")
            continue
        read_any = True
        shown = b.rel(proto)
        for line, fields in protocol_lines(text):
            where = f"{proto}:{line}"
            if len(fields) != len(columns):
                b.problem(where, f"{len(fields)} columns, expected {len(columns)} "
                                 f"({' '.join(columns)}); row skipped")
                continue
            row = dict(zip(columns, fields))
            label = parse_label(row["KEY"])
            if label is None:
                b.problem(where, f"unknown KEY {row['KEY']!r} (expected bonafide/spoof) for "
                                 f"{row['FILE']!r}; row skipped")
                continue
            path = b.resolve(row["FILE"] + ".flac", where, base=str(audio))
            if path is not None:
                b.add(make_clip(row, label, split, path), where, listed_in=f"{shown} line {line}")
    if not read_any:
        raise DatasetLayoutError(
            "found protocol file(s) " + ", ".join(str(p) for _, p, _ in found) + " but none of "
            "their audio folders (" + ", ".join(str(root / a) for _, _, a in found) + ") exists."
            f"\nExpected layout:\n{layout}")


def csv_records(b: IndexBuilder, path: Path, required: tuple[str, ...], layout: str):
    """Yield (where, line, row) for every good record of a CSV metadata file with a header; `row`
    maps lower-cased header names to stripped cells (`required` is matched case-insensitively).
    Unreadable records and wrong column counts become problems; missing required columns raise
    DatasetLayoutError naming the ones found."""
    text, problem = read_text(path)
    if problem:
        b.index.problems.append(problem)
    rows = csv_rows(text)
    header = next((row for _, row in rows if not isinstance(row, Exception)), None) or []
    cols = [header_key(h) for h in header]
    missing = [c for c in required if c.lower() not in cols]
    if missing:
        raise DatasetLayoutError(
            f"{path} has no column(s) {', '.join(repr(c) for c in missing)}; columns found: "
            f"{[h.strip() for h in header]}.\nExpected layout:\n{layout}")
    for line, row in rows:
        where = f"{path}:{line}"
        if isinstance(row, Exception):
            b.problem(where, f"unreadable CSV record ({row}); skipped")
        elif len(row) != len(cols):
            b.problem(where, f"{len(row)} columns, expected {len(cols)} ({', '.join(cols)}); row skipped")
        else:
            yield where, line, {c: cell.strip() for c, cell in zip(cols, row)}
