"""A CSV manifest: one row per clip, for any corpus that no other adapter knows.

No size and no download: you write it. ``root`` is either the CSV file itself or a folder that
contains ``manifest.csv``.

Expected format::

    path,label[,split][,clip_id][,generator][,speaker][,codec][,language][,date][,source]
    clips/a.wav,real,train
    clips/b.flac,fake,test,,tts-x

Required columns ``path`` and ``label``; the header is matched case-insensitively (a UTF-8 BOM,
surrounding spaces, and spaces/hyphens inside names are tolerated, so ``Clip ID`` is ``clip_id``).
Aliases: ``generator`` may be called ``attack`` or ``system``; ``path`` may be ``file`` or
``filename``; ``clip_id`` may be ``id``. The delimiter (comma, tab or semicolon) is taken from the
header line. ``label`` takes the usual spellings (fake/spoof/1, real/bonafide/bona-fide/0, ...).
``split`` defaults to ``all``; ``clip_id`` defaults to the path relative to the manifest's folder
(the absolute path for a file outside it).
A manifest is the user's own file, so its paths are taken as written, as Kaldi ``wav.scp``, lhotse
and Hugging Face manifests write them: absolute paths as they are, relative ones (``../audio/x.wav``
included) from the manifest's folder. Backslashes in paths are read as '/' separators. (Untrusted
lists, such as archive members in ``dfdetect score``, stay confined to their root.)
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .base import (
    Clip,
    DatasetIndex,
    DatasetLayoutError,
    IndexBuilder,
    csv_rows,
    header_key,
    parse_label,
    read_text,
    require,
)

NAME = "manifest"
DESCRIPTION = "A CSV you write: path,label[,split,clip_id,generator,speaker,codec,language,date,source]"
FILENAME = "manifest.csv"
LAYOUT = """\
  ROOT = a CSV file, or a folder holding manifest.csv:
    path,label[,split][,clip_id][,generator|attack|system][,speaker][,codec][,language][,date][,source]
    clips/a.wav,real,train
    clips/b.flac,fake,test,,tts-x
  paths absolute, or relative to the manifest's folder; label real/fake (or 0/1, bonafide/spoof)"""

COLUMNS = {  # field -> accepted header names (normalised), first match wins
    "path": ("path", "file", "filename"),
    "label": ("label",),
    "split": ("split",),
    "clip_id": ("clip_id", "id"),
    "generator": ("generator", "attack", "system"),
    "speaker": ("speaker",),
    "codec": ("codec",),
    "language": ("language",),
    "date": ("date",),
    "source": ("source",),
}
_DELIMITERS = (",", "\t", ";")


def _norm(name: str) -> str:
    return header_key(name).replace(" ", "_").replace("-", "_")


def _pick_delimiter(text: str) -> str:
    """The delimiter whose split of the header line yields both path and label (else the one
    giving the most columns)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    best, best_n = ",", 0
    for d in _DELIMITERS:
        names = {_norm(c) for c in next(csv.reader(io.StringIO(first), delimiter=d), [])}
        if any(a in names for a in COLUMNS["path"]) and "label" in names:
            return d
        if len(names) > best_n:
            best, best_n = d, len(names)
    return best


def prepare(root: Path) -> DatasetIndex:
    """Index the clips listed in a manifest CSV (`root` = the file, or a folder with manifest.csv)."""
    root = Path(root)
    require(root, "the manifest CSV (or a folder holding manifest.csv)", LAYOUT)
    manifest = root if root.is_file() else require(root / FILENAME, f"the manifest {FILENAME}", LAYOUT)
    folder = os.path.dirname(os.path.abspath(manifest))

    b = IndexBuilder(NAME, folder)
    b.index.root = os.path.abspath(root)
    text, problem = read_text(manifest)
    if problem:
        b.index.problems.append(problem)
    delimiter = _pick_delimiter(text)
    rows = csv_rows(text, delimiter)
    header = next((row for _, row in rows if not isinstance(row, Exception)), None) or []
    names = [_norm(h) for h in header]
    index: dict[str, int] = {}
    for field, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in names:
                index[field] = names.index(alias)
                break
    missing = [f for f in ("path", "label") if f not in index]
    if missing:
        raise DatasetLayoutError(
            f"{manifest} has no {' and no '.join(repr(m) for m in missing)} column; columns found: "
            f"{[h.strip() for h in header]} (delimiter {delimiter!r}).\nExpected layout:\n{LAYOUT}")

    shown = os.path.basename(manifest)
    for line, row in rows:
        where = f"{manifest}:{line}"
        if isinstance(row, Exception):
            b.problem(where, f"unreadable CSV record ({row}); skipped")
            continue
        if len(row) != len(header):
            b.problem(where, f"{len(row)} columns, expected {len(header)} "
                             f"({', '.join(h.strip() for h in header)}); row skipped")
            continue
        get = {f: row[i].strip() for f, i in index.items()}
        rel = get["path"].replace("\\", "/") if os.sep == "/" else get["path"]
        label = parse_label(get["label"])
        if label is None:
            b.problem(where, f"unknown label {get['label']!r} for {rel!r} (expected real/fake, "
                             "bonafide/spoof or 0/1); row skipped")
            continue
        if not rel:
            b.problem(where, "empty path; row skipped")
            continue
        path = os.path.normpath(os.path.join(folder, rel))   # an absolute `rel` stays as it is
        clip_id = get.get("clip_id") or b.rel(path)
        b.add(Clip(clip_id=clip_id, path=path, label=label, split=get.get("split") or "all",
                   generator=get.get("generator", ""), speaker=get.get("speaker", ""),
                   codec=get.get("codec", ""), language=get.get("language", ""),
                   date=get.get("date", ""), source=get.get("source", "")),
              where, listed_in=f"{shown} line {line}")
    return b.index
