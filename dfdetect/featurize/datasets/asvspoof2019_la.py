"""ASVspoof 2019 Logical Access (LA): the classic TTS/VC spoofing countermeasure benchmark.

121,461 16 kHz FLAC utterances from VCTK speakers: train 25,380 and dev 24,844 (attacks A01-A06),
eval 71,237 (attacks A07-A19, of which A16 and A19 reuse A04 and A06). Distributed by the
University of Edinburgh on DataShare (https://datashare.ed.ac.uk/handle/10283/3336) as ``LA.zip``
under the ODC-By licence.

Expected layout (``root`` is the extracted ``LA/`` folder, or the folder that contains ``LA/``)::

    root/
      ASVspoof2019_LA_cm_protocols/
        ASVspoof2019.LA.cm.train.trn.txt    5 space-separated columns, no header:
        ASVspoof2019.LA.cm.dev.trl.txt        SPEAKER FILE - ATTACK KEY
        ASVspoof2019.LA.cm.eval.trl.txt
      ASVspoof2019_LA_train/flac/<FILE>.flac
      ASVspoof2019_LA_dev/flac/<FILE>.flac
      ASVspoof2019_LA_eval/flac/<FILE>.flac

KEY is ``bonafide``/``spoof`` (-> 0/1); ATTACK (``-`` for bona fide, A01-A19) becomes the generator.
A split whose protocol file is absent is absent; a protocol whose audio folder is missing is
reported as a problem and that split skipped; the root is rejected when no split can be read.
"""

from __future__ import annotations

from pathlib import Path

from .base import (FAKE, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, parse_label,
                   protocol_lines, read_text, require)

NAME = "asvspoof2019_la"
DESCRIPTION = "ASVspoof 2019 LA (121,461 FLAC utterances, bonafide/spoof, attacks A01-A19, train/dev/eval)"
PROTOCOL_DIR = "ASVspoof2019_LA_cm_protocols"
SPLITS = (  # split, protocol file, audio folder
    ("train", "ASVspoof2019.LA.cm.train.trn.txt", "ASVspoof2019_LA_train/flac"),
    ("dev", "ASVspoof2019.LA.cm.dev.trl.txt", "ASVspoof2019_LA_dev/flac"),
    ("eval", "ASVspoof2019.LA.cm.eval.trl.txt", "ASVspoof2019_LA_eval/flac"),
)
LAYOUT = """\
  ROOT/                             (the extracted LA/ folder, or its parent)
    ASVspoof2019_LA_cm_protocols/
      ASVspoof2019.LA.cm.train.trn.txt   (5 columns: SPEAKER FILE - ATTACK KEY)
      ASVspoof2019.LA.cm.dev.trl.txt
      ASVspoof2019.LA.cm.eval.trl.txt
    ASVspoof2019_LA_train/flac/<FILE>.flac
    ASVspoof2019_LA_dev/flac/<FILE>.flac
    ASVspoof2019_LA_eval/flac/<FILE>.flac"""

_COLUMNS = 5


def prepare(root: Path) -> DatasetIndex:
    """Index the ASVspoof 2019 LA splits under `root` (or under `root/LA`)."""
    root = Path(root)
    require(root, "the ASVspoof 2019 LA folder", LAYOUT)
    if not (root / PROTOCOL_DIR).is_dir() and (root / "LA" / PROTOCOL_DIR).is_dir():
        root = root / "LA"
    protocols = require(root / PROTOCOL_DIR, f"the protocol folder {PROTOCOL_DIR}/", LAYOUT)
    found = [(s, protocols / p, a) for s, p, a in SPLITS if (protocols / p).is_file()]
    if not found:
        raise DatasetLayoutError(
            f"expected at least one protocol file ({', '.join(p for _, p, _ in SPLITS)}) in "
            f"{protocols}, but none exists.\nExpected layout:\n{LAYOUT}")

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
                b.problem(where, f"{len(f)} columns, expected {_COLUMNS} (SPEAKER FILE - ATTACK KEY); "
                                 "row skipped")
                continue
            speaker, name, _, attack, key = f
            label = parse_label(key)
            if label is None:
                b.problem(where, f"unknown KEY {key!r} (expected bonafide/spoof) for {name!r}; "
                                 "row skipped")
                continue
            path = b.resolve(name + ".flac", where, base=str(audio))
            if path is None:
                continue
            generator = attack if label == FAKE and attack != "-" else ""
            b.add(Clip(clip_id=name, path=path, label=label, split=split, generator=generator,
                       speaker=speaker),
                  where, listed_in=f"{shown} line {line}")
    if not read_any:
        raise DatasetLayoutError(
            "found protocol file(s) " + ", ".join(str(p) for _, p, _ in found) + " but none of "
            "their audio folders (" + ", ".join(str(root / a) for _, _, a in found) + ") exists."
            f"\nExpected layout:\n{LAYOUT}")
    return b.index
