"""Any corpus laid out as folders: ``real/`` and ``fake/``, optionally one folder per generator.

The adapter for your own data (or any corpus without a protocol file): no size, no download; the
folder names are the labels. Files are found recursively.

Expected layout::

    root/
      real/**/<any audio>              label 0 (bona fide)
      fake/<generator>/**/<any audio>  label 1; generator = the first folder under fake/
      fake/<any audio>                 label 1, generator "" (unknown)

or, with a split level (any sub-folder of ``root`` holding ``real/`` and/or ``fake/``; usually
``train/``, ``dev/``/``val/``, ``test/``/``eval/``)::

    root/
      train/real/...  train/fake/...
      test/real/...   test/fake/...

The split is the sub-folder's name; without a split level it is ``all`` (``root/real`` and
``root/fake`` win when both forms exist). ``real``/``fake`` are matched case-insensitively.
Audio extensions (case-insensitive): .wav .flac .mp3 .ogg .opus .m4a .mp4 .aac .dat .webm .aiff
.aif. Other files under real/ and fake/ are ignored and summarised in one problem; hidden files
and folders (a leading '.') are ignored silently. Symlinks are followed at every level, to
files and to folders alike, so a dataset assembled from links (``fake/gen_x -> /data/gen_x``) reads
as if copied: the generator is the link's name. A folder is indexed once: a link that leads back to
a folder above it (a loop) or to a folder already indexed is reported and not entered again.
clip_id is the path relative to ``root`` with '/' separators.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import FAKE, REAL, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, require

NAME = "folder"
DESCRIPTION = "Your own audio in real/ and fake/ (optionally fake/<generator>/, train/ test/ ...)"
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".aac",
                              ".dat", ".webm", ".aiff", ".aif"})
LAYOUT = """\
  ROOT/
    real/**/<audio>               (label 0, bona fide)
    fake/<generator>/**/<audio>   (label 1; generator = first folder under fake/)
    fake/<audio>                  (label 1, generator unknown)
  or with splits: ROOT/train/real/..., ROOT/train/fake/..., ROOT/test/real/..., ...
  audio: .wav .flac .mp3 .ogg .opus .m4a .mp4 .aac .dat .webm .aiff .aif"""

_SHOW = 5  # names shown in a summarising problem


def _subdir(parent: Path, name: str) -> Path | None:
    """`parent/name` when it is a folder; else a case-insensitive match; else None."""
    exact = parent / name
    if exact.is_dir():
        return exact
    try:
        with os.scandir(parent) as it:
            matches = sorted(e.name for e in it if e.name.lower() == name and e.is_dir())
    except OSError:
        return None
    return parent / matches[0] if matches else None


def _summary(names: list[str]) -> str:
    more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def prepare(root: Path) -> DatasetIndex:
    """Index every audio file under `root`'s real/ and fake/ folders (per split when present)."""
    root = Path(root)
    require(root, "the dataset folder", LAYOUT)
    if not root.is_dir():
        raise DatasetLayoutError(f"expected a folder at {root}, found a file.\nExpected layout:\n{LAYOUT}")

    if _subdir(root, "real") or _subdir(root, "fake"):
        splits = [("all", root)]
    else:
        with os.scandir(root) as it:
            subdirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        splits = [(name, root / name) for name in subdirs
                  if _subdir(root / name, "real") or _subdir(root / name, "fake")]
        if not splits:
            raise DatasetLayoutError(
                f"expected a real/ and/or fake/ folder in {root} (or in split folders such as "
                f"{root / 'train'}/real), but found neither.\nExpected layout:\n{LAYOUT}")

    b = IndexBuilder(NAME, root)
    ignored: list[str] = []
    tops = {(split, kind): _subdir(base, kind) for split, base in splits for kind in ("real", "fake")}
    # A link into another class folder must not relabel its files: those folders are walked as
    # themselves only. `indexed`: real path of every folder entered -> the path it was entered by.
    class_folders = {os.path.realpath(t): b.rel(t) for t in tops.values() if t is not None}
    indexed: dict[str, str] = {}
    for split, base in splits:
        for kind, label in (("real", REAL), ("fake", FAKE)):
            top = tops[split, kind]
            if top is None:
                b.problem(str(base / kind), f"no {kind}/ folder in {base}: split {split!r} has no "
                                            f"{kind} clips")
                continue
            n = _index_tree(b, top, label, split, ignored, indexed, class_folders)
            if n == 0:
                b.problem(str(top), f"{kind}/ holds no audio files: split {split!r} has no "
                                    f"{kind} clips")
    if ignored:
        b.problem(b.root, f"ignored {len(ignored)} files with non-audio extensions: "
                          f"{_summary(ignored)}")
    return b.index


def _index_tree(b: IndexBuilder, top: Path, label: int, split: str, ignored: list[str],
                indexed: dict[str, str], class_folders: dict[str, str]) -> int:
    """Add every audio file under `top` (depth first, sorted, symlinks followed); return how many
    were added. `indexed` holds the folders entered so far (real path -> path shown), shared by
    every call of one dataset, so that no folder is read twice and no link loop runs forever."""
    added = 0
    top_abs = os.path.abspath(top)
    # (folder, its real path, the real paths above it as a chain (real, the chain above), the path
    # shown, its generator). Real and shown paths grow from the parent's (realpath and relpath cost
    # O(depth) each: quadratic in a chain of nested folders); realpath only where a link leads.
    # Only a folder already indexed can be one above it, so the chain is walked only then.
    stack: list[tuple] = [(top_abs, os.path.realpath(top_abs), None, b.rel(top_abs), "")]
    while stack:
        folder, real, above, shown, generator = stack.pop()
        if not _first_visit(b, folder, real, above, shown, folder == top_abs, indexed, class_folders):
            continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            b.problem(folder, f"cannot read folder ({exc.strerror or exc}); its files are not indexed")
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{shown}/{e.name}"
            if e.is_dir():                 # a symlinked folder too
                real_sub = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
                sub_generator = e.name if folder == top_abs and label == FAKE else generator
                subdirs.append((e.path, real_sub, (real, above), rel, sub_generator))
                continue
            if os.path.splitext(e.name)[1].lower() not in AUDIO_EXTENSIONS:
                ignored.append(rel)
                continue
            if e.is_symlink() and not e.is_file():
                b.problem(e.path, "broken symlink (kept; it will be recorded as an error)")
            if b.add(Clip(clip_id=rel, path=os.path.normpath(e.path), label=label, split=split,
                          generator=generator), e.path):
                added += 1
        stack.extend(reversed(subdirs))
    return added


def _first_visit(b: IndexBuilder, folder: str, real: str, above, shown: str, is_top: bool,
                 indexed: dict[str, str], class_folders: dict[str, str]) -> bool:
    """Whether to enter `folder`: not a loop, not another class's folder, not indexed already (each
    refusal a problem). Marks it indexed."""
    if real in indexed and _in_chain(real, above):
        b.problem(folder, f"symlink loop: {shown} leads back to {real}, a folder above it; not entered again")
    elif not is_top and real in class_folders:
        b.problem(folder, f"{shown} leads to the class folder {class_folders[real]}; not entered here (its "
                          "files keep that folder's label)")
    elif real in indexed:
        b.problem(folder, f"{shown} is the same folder as {indexed[real]} (through a symlink); its files are "
                          "indexed once, there")
    else:
        indexed[real] = shown
        return True
    return False


def _in_chain(real: str, chain: tuple | None) -> bool:
    """Whether `real` is one of the folders above (a chain of (real path, the chain above it))."""
    while chain is not None:
        if chain[0] == real:
            return True
        chain = chain[1]
    return False
