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

from .base import (FAKE, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, parse_label,
                   protocol_lines, read_text, require)

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

_COLUMNS = 10


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
        for line, f in protocol_lines(text):
            where = f"{proto}:{line}"
            if len(f) != _COLUMNS:
                b.problem(where, f"{len(f)} columns, expected {_COLUMNS} (SPEAKER_ID FLAC_FILE_NAME "
                                 "SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL "
                                 "KEY TMP); row skipped")
                continue
            speaker, name, _gender, codec, _q, _seed, _tag, attack, key, _tmp = f
            label = parse_label(key)
            if label is None:
                b.problem(where, f"unknown KEY {key!r} (expected bonafide/spoof) for {name!r}; "
                                 "row skipped")
                continue
            path = b.resolve(name + ".flac", where, base=str(audio))
            if path is None:
                continue
            generator = attack if label == FAKE and attack not in ("-", "bonafide") else ""
            b.add(Clip(clip_id=name, path=path, label=label, split=split, generator=generator,
                       speaker=speaker, codec="" if codec == "-" else codec),
                  where, listed_in=f"{shown} line {line}")
    if not read_any:
        raise DatasetLayoutError(
            "found protocol file(s) " + ", ".join(str(p) for _, p, _ in found) + " but none of "
            "their audio folders (" + ", ".join(str(root / a) for _, _, a in found) + ") exists."
            f"\nExpected layout:\n{LAYOUT}")
    return b.index
