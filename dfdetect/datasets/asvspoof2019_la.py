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

from .base import FAKE, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, index_protocol_splits, require

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

COLUMNS = ("SPEAKER", "FILE", "-", "ATTACK", "KEY")


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

    def make_clip(row: dict, label: int, split: str, path: str) -> Clip:
        attack = row["ATTACK"]
        return Clip(clip_id=row["FILE"], path=path, label=label, split=split, speaker=row["SPEAKER"],
                    generator=attack if label == FAKE and attack != "-" else "")

    index_protocol_splits(b, root, found, COLUMNS, make_clip, LAYOUT)
    return b.index
