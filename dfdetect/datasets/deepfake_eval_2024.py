"""Deepfake-Eval-2024: in-the-wild deepfakes collected from social media and detection platforms.

About 1,980 audio clips, 56.5 hours in all (the corpus also has video and images; only the audio
part is read here): real and fake media circulated in 2024, manually labelled, from 88 websites
and in 52 languages, seconds to minutes long. Published by TrueMedia.org and partners with the
paper "Deepfake-Eval-2024: A Multi-Modal In-the-Wild Benchmark of Deepfakes Circulated in 2024"
(Chandra et al., 2025); distributed on Hugging Face (``nuriachandra/Deepfake-Eval-2024``, gated:
accept its terms first) under CC BY-SA 4.0.

Expected layout (``root`` is the folder holding both entries)::

    root/
      audio-metadata-publish.csv   columns: Filename, Date, Ground Truth, Public Comments,
                                            Finetuning Set
      audio-data/
        <Filename>                 .mp3 mostly; also .m4a, .mp4, .wav and a few .dat files
                                   (MP4/M4A containers; decoding handles them, this adapter only
                                   lists them)

Ground Truth is ``Real``/``Fake`` (-> 0/1). Finetuning Set is ``Train``/``Test`` and becomes the
split (lower-cased; an empty cell gives ``all``). Date is kept; Public Comments is free text (with
commas, quotes and newlines, hence a real CSV parser) and is not stored. The generator is unknown
for this corpus and left empty.
"""

from __future__ import annotations

from pathlib import Path

from .base import Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, csv_records, parse_label, require

NAME = "deepfake_eval_2024"
DESCRIPTION = "Deepfake-Eval-2024 audio (~1,980 in-the-wild clips, Real/Fake, Train/Test)"
METADATA = "audio-metadata-publish.csv"
AUDIO_DIR = "audio-data"
LAYOUT = """\
  ROOT/
    audio-metadata-publish.csv   (columns: Filename, Date, Ground Truth, Public Comments, Finetuning Set)
    audio-data/
      <Filename>                 (.mp3 / .m4a / .mp4 / .wav / .dat)"""

_REQUIRED = ("Filename", "Ground Truth")


def prepare(root: Path) -> DatasetIndex:
    """Index the Deepfake-Eval-2024 audio clips under `root`."""
    root = Path(root)
    require(root, "the Deepfake-Eval-2024 folder", LAYOUT)
    meta = require(root / METADATA, f"the metadata file {METADATA}", LAYOUT)
    audio = require(root / AUDIO_DIR, f"the audio folder {AUDIO_DIR}/", LAYOUT)
    if not audio.is_dir():
        raise DatasetLayoutError(f"expected the audio folder {AUDIO_DIR}/ at {audio}, but it is "
                                 f"not a folder.\nExpected layout:\n{LAYOUT}")

    b = IndexBuilder(NAME, root)
    for where, line, row in csv_records(b, meta, _REQUIRED, LAYOUT):
        name = row["filename"]
        label = parse_label(row["ground truth"])
        if label is None:
            b.problem(where, f"unknown label {row['ground truth']!r} in column 'Ground Truth' "
                             f"(expected Real/Fake) for {name!r}; row skipped")
            continue
        path = b.resolve(name, where, base=str(audio))
        if path is None:
            continue
        b.add(Clip(clip_id=name, path=path, label=label, split=row.get("finetuning set", "").lower() or "all",
                   date=row.get("date", "")),
              where, listed_in=f"{METADATA} line {line}")
    return b.index
