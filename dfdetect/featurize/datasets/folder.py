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
and folders (a leading '.') are ignored silently. Symlinks to files are followed; symlinked
folders are not entered (reported). clip_id is the path relative to ``root`` with '/'
separators.
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
    linked_dirs: list[str] = []
    for split, base in splits:
        for kind, label in (("real", REAL), ("fake", FAKE)):
            top = _subdir(base, kind)
            if top is None:
                b.problem(str(base / kind), f"no {kind}/ folder in {base}: split {split!r} has no "
                                            f"{kind} clips")
                continue
            n = _index_tree(b, top, label, split, ignored, linked_dirs)
            if n == 0:
                b.problem(str(top), f"{kind}/ holds no audio files: split {split!r} has no "
                                    f"{kind} clips")
    if ignored:
        b.problem(b.root, f"ignored {len(ignored)} files with non-audio extensions: "
                          f"{_summary(ignored)}")
    if linked_dirs:
        b.problem(b.root, f"did not enter {len(linked_dirs)} symlinked folders (link the files "
                          f"instead, or point --root inside them): {_summary(linked_dirs)}")
    return b.index


def _index_tree(b: IndexBuilder, top: Path, label: int, split: str,
                ignored: list[str], linked_dirs: list[str]) -> int:
    """Add every audio file under `top` (depth first, sorted); return how many were added."""
    added = 0
    stack = [os.path.abspath(top)]
    top_abs = stack[0]
    while stack:
        folder = stack.pop()
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
            if e.is_dir(follow_symlinks=False):
                subdirs.append(e.path)
                continue
            if e.is_symlink() and e.is_dir():
                linked_dirs.append(b.rel(e.path))
                continue
            rel = b.rel(e.path)
            if os.path.splitext(e.name)[1].lower() not in AUDIO_EXTENSIONS:
                ignored.append(rel)
                continue
            if e.is_symlink() and not e.is_file():
                b.problem(e.path, "broken symlink (kept; it will be recorded as an error)")
            inner = os.path.relpath(folder, top_abs)
            generator = inner.split(os.sep)[0] if label == FAKE and inner != "." else ""
            if b.add(Clip(clip_id=rel, path=os.path.normpath(e.path), label=label, split=split,
                          generator=generator), e.path):
                added += 1
        stack.extend(reversed(subdirs))
    return added
