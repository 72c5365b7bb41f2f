"""In-the-Wild: real and deepfake recordings of public figures, collected from the internet.

31,779 WAV clips of 58 politicians and celebrities: 19,963 bona fide (~20.8 h) and 11,816 spoofed
(~17.2 h), from "Does Audio Deepfake Detection Generalize?" (Müller et al., Interspeech 2022).
Downloaded as ``release_in_the_wild.zip`` from https://deepfake-total.com/in_the_wild (also on
Hugging Face as ``mueller91/In-The-Wild``). It is an evaluation-only corpus: every clip gets split
``all``.

Expected layout (``root`` holds the extracted folder)::

    root/
      release_in_the_wild/
        meta.csv          header: file,speaker,label   (label: spoof / bona-fide)
        0.wav
        1.wav
        ...

``meta.csv`` may also sit directly in ``root`` (both places are checked, the one inside
``release_in_the_wild/`` first). ``root`` may also be ``release_in_the_wild/`` itself when it holds
``meta.csv`` and the WAV files. The speaker column is kept; the generator is unknown (empty).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Clip,
    DatasetIndex,
    DatasetLayoutError,
    IndexBuilder,
    csv_records,
    list_files,
    parse_label,
    require,
)

NAME = "in_the_wild"
DESCRIPTION = "In-the-Wild (31,779 clips of 58 public figures, bona-fide/spoof, eval only)"
AUDIO_DIR = "release_in_the_wild"
METADATA = "meta.csv"
LAYOUT = """\
  ROOT/
    release_in_the_wild/
      meta.csv        (header: file,speaker,label; label spoof / bona-fide;
                       may also be ROOT/meta.csv)
      0.wav
      1.wav
      ..."""


def _locate(root: Path) -> tuple[Path, Path]:
    """(metadata file, audio folder) for `root`, or DatasetLayoutError."""
    audio = root / AUDIO_DIR
    if audio.is_dir():
        for meta in (audio / METADATA, root / METADATA):
            if meta.is_file():
                return meta, audio
        raise DatasetLayoutError(
            f"expected {METADATA} at {audio / METADATA} or {root / METADATA}, but neither exists."
            f"\nExpected layout:\n{LAYOUT}")
    # root may be release_in_the_wild/ itself: meta.csv next to the WAV files.
    if (root / METADATA).is_file() and any(n.lower().endswith(".wav") for n in list_files(root)):
        return root / METADATA, root
    require(audio, f"the audio folder {AUDIO_DIR}/", LAYOUT)
    raise DatasetLayoutError(f"expected a folder at {audio}, found a file.\nExpected layout:\n{LAYOUT}")


def prepare(root: Path) -> DatasetIndex:
    """Index the In-the-Wild clips under `root`."""
    root = Path(root)
    require(root, "the In-the-Wild folder", LAYOUT)
    meta, audio = _locate(root)

    b = IndexBuilder(NAME, root)
    shown = b.rel(meta)
    for where, line, row in csv_records(b, meta, ("file", "label"), LAYOUT):
        name = row["file"]
        label = parse_label(row["label"])
        if label is None:
            b.problem(where, f"unknown label {row['label']!r} (expected spoof/bona-fide) for "
                             f"{name!r}; row skipped")
            continue
        path = b.resolve(name, where, base=str(audio))
        if path is None:
            continue
        b.add(Clip(clip_id=name, path=path, label=label, split="all", speaker=row.get("speaker", "")),
              where, listed_in=f"{shown} line {line}")
    return b.index
