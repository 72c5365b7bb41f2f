"""ASVspoof 5: the 2024 spoofing-and-deepfake detection challenge corpus.

About 1.0 million 16 kHz FLAC utterances of English speakers from Multilingual LibriSpeech:
train ~182k (attacks A01-A08), dev ~141k (A09-A16), eval ~681k (A17-A32); bona fide speech plus
TTS/VC attacks (some adversarial) and, in dev/eval, codec and transmission conditions.
Distributed on Zenodo (record 14498691) by the ASVspoof consortium: ``flac_T_*.tar``,
``flac_D_*.tar``, ``flac_E_*.tar`` and ``ASVspoof5_protocols.tar``.

Expected layout (``root`` holds the extracted archives)::

    root/
      ASVspoof5.train.tsv          protocols: space-separated, no header, 10 columns
      ASVspoof5.dev.track_1.tsv      SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q
      ASVspoof5.eval.track_1.tsv     CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP
      flac_T/<FLAC_FILE_NAME>.flac   train audio
      flac_D/<FLAC_FILE_NAME>.flac   dev audio
      flac_E_eval/<FLAC_FILE_NAME>.flac  eval audio

The protocol files may also sit in ``root/ASVspoof5_protocols/`` (where the protocol archive
extracts them). KEY is ``bonafide``/``spoof`` (-> 0/1); ATTACK_LABEL (A01-A32, ``bonafide`` for
bona fide rows) becomes the generator, CODEC the codec (``-`` -> empty) and SPEAKER_ID the speaker.
Each split is optional: a protocol file that is absent means that split is absent. A protocol that
is present while its audio folder is not is reported as a problem and that split is skipped;
only when no split can be read at all is the root rejected.
"""

from __future__ import annotations

from pathlib import Path

from .base import FAKE, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, index_protocol_splits, require

NAME = "asvspoof5"
DESCRIPTION = "ASVspoof 5 (~1.0M FLAC utterances, bonafide/spoof, attacks A01-A32, train/dev/eval)"
PROTOCOL_DIR = "ASVspoof5_protocols"
SPLITS = (  # split, protocol file, audio folder
    ("train", "ASVspoof5.train.tsv", "flac_T"),
    ("dev", "ASVspoof5.dev.track_1.tsv", "flac_D"),
    ("eval", "ASVspoof5.eval.track_1.tsv", "flac_E_eval"),
)
LAYOUT = """\
  ROOT/
    ASVspoof5.train.tsv             (or ROOT/ASVspoof5_protocols/ASVspoof5.train.tsv)
    ASVspoof5.dev.track_1.tsv       (space-separated, no header, 10 columns:
    ASVspoof5.eval.track_1.tsv       SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q
                                     CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP)
    flac_T/<FLAC_FILE_NAME>.flac        (train)
    flac_D/<FLAC_FILE_NAME>.flac        (dev)
    flac_E_eval/<FLAC_FILE_NAME>.flac   (eval)
  At least one protocol file with its audio folder is needed."""

# FILE is FLAC_FILE_NAME in the challenge's documentation.
COLUMNS = ("SPEAKER_ID", "FILE", "SPEAKER_GENDER", "CODEC", "CODEC_Q", "CODEC_SEED", "ATTACK_TAG",
           "ATTACK_LABEL", "KEY", "TMP")


def _find_protocol(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / PROTOCOL_DIR / name):
        if candidate.is_file():
            return candidate
    return None


def prepare(root: Path) -> DatasetIndex:
    """Index the ASVspoof 5 splits whose protocol files are present under `root`."""
    root = Path(root)
    require(root, "the ASVspoof5 folder", LAYOUT)
    found = [(split, _find_protocol(root, proto), audio) for split, proto, audio in SPLITS]
    found = [(split, proto, audio) for split, proto, audio in found if proto is not None]
    if not found:
        raise DatasetLayoutError(
            f"expected at least one ASVspoof5 protocol file ({', '.join(p for _, p, _ in SPLITS)}) "
            f"in {root} or {root / PROTOCOL_DIR}, but none exists.\nExpected layout:\n{LAYOUT}")

    b = IndexBuilder(NAME, root)

    def make_clip(row: dict, label: int, split: str, path: str) -> Clip:
        attack, codec = row["ATTACK_LABEL"], row["CODEC"]
        return Clip(clip_id=row["FILE"], path=path, label=label, split=split, speaker=row["SPEAKER_ID"],
                    generator=attack if label == FAKE and attack not in ("-", "bonafide") else "",
                    codec="" if codec == "-" else codec)

    index_protocol_splits(b, root, found, COLUMNS, make_clip, LAYOUT)
    return b.index
