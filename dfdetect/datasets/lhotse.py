"""lhotse manifests: a RecordingSet and a SupervisionSet (``.jsonl`` or ``.jsonl.gz``), read with
the standard library (the `lhotse` library is not needed). One clip per supervision.

Expected layout (``root`` is the folder; lhotse recipes write the second form)::

    root/recordings.jsonl[.gz]          + root/supervisions.jsonl[.gz]            split "all"
    root/<corpus>_recordings_<split>.jsonl.gz + root/<corpus>_supervisions_<split>.jsonl.gz

Every file whose name holds ``recordings`` is paired with the same name holding ``supervisions``;
the split is what follows ``recordings_`` (``all`` when nothing does).

- label: a supervision field, ``label_field`` (dotted, e.g. ``custom.label``); by default the first
  present of custom.label, custom.is_fake, custom.spoof, custom.key, custom.target, label. The usual
  spellings (fake/spoof/1, real/bonafide/0; booleans: true = fake); ``fake_values`` /
  ``real_values`` (comma-separated) replace them.
- generator: custom.generator / custom.attack / custom.system; speaker and language: the
  supervision's own fields; split: custom.split overrides the file's split.
- audio: the recording's sources. ``file`` sources are read (relative paths from the manifest's
  folder, as lhotse writes paths as given: the manifest is the user's own file, like a CSV
  manifest's, so absolute paths are taken as written). ``url``, ``command`` (never run: a manifest
  must not start programs), ``memory`` and ``shar`` sources, and recordings with ``transforms``
  (speed, volume, resampling: not applied by dfdetect), are refused: the supervision becomes a
  problem, never a clip of different audio.
- channels: the supervision's ``channel`` (an int or a list; several are averaged to mono, as the
  frontend does with every multi-channel file) is looked up in the sources' ``channels``; every
  channel asked for must come from one file source.
- segment: the supervision's ``start`` and ``duration`` (seconds) cut the audio (from WAV/FLAC/AIFF
  only the segment is read) before the frontend (its 3 s centre crop then applies to the segment);
  a segment outside the recording's declared duration is a problem.
clip_id is the supervision id. Bounds: a line over MAX_LINE_CHARS ends its file; times must be
finite and within MAX_SECONDS; a supervision repeating another's segment is a problem.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

from .base import FAKE, REAL, Clip, DatasetIndex, DatasetLayoutError, IndexBuilder, parse_label, require
from .refs import AudioRef

NAME = "lhotse"
DESCRIPTION = "lhotse manifests: recordings + supervisions .jsonl[.gz], label from a supervision field"
LAYOUT = """\
  ROOT/recordings.jsonl[.gz] + ROOT/supervisions.jsonl[.gz]            (split all)
  ROOT/<corpus>_recordings_<split>.jsonl.gz + ROOT/<corpus>_supervisions_<split>.jsonl.gz
  label from a supervision field (default custom.label, custom.is_fake, custom.spoof, ...);
  file sources only; channel and start/duration respected
  options: label_field fake_values real_values"""

LABEL_FIELDS = ("custom.label", "custom.is_fake", "custom.spoof", "custom.key", "custom.target", "label")
GENERATOR_FIELDS = ("custom.generator", "custom.attack", "custom.system")
_SLACK = 0.01   # seconds: manifests round durations
MAX_LINE_CHARS = 8 << 20   # one manifest line: a recording or supervision is well under a megabyte
MAX_SECONDS = 7 * 86_400   # start + duration of a segment, and a recording's duration: one week


def prepare(root: Path, label_field: str = "", fake_values: str = "", real_values: str = "") -> DatasetIndex:
    """Index every supervision of the lhotse manifests in `root`."""
    root = Path(root)
    require(root, "the folder holding the lhotse manifests", LAYOUT)
    if not root.is_dir():
        raise DatasetLayoutError(f"expected a folder at {root}, found a file.\nExpected layout:\n{LAYOUT}")
    pairs = []
    for rec in sorted(p for p in root.iterdir() if "recordings" in p.name and _is_jsonl(p.name)):
        sup = rec.with_name(rec.name.replace("recordings", "supervisions"))
        split = rec.name.split("recordings", 1)[1].split(".", 1)[0].strip("_-") or "all"
        pairs.append((split, rec, sup))
    if not pairs:
        raise DatasetLayoutError(f"found no *recordings*.jsonl[.gz] in {root}.\nExpected layout:\n{LAYOUT}")
    values = None
    if fake_values or real_values:
        values = {**{v.strip().lower(): FAKE for v in fake_values.split(",") if v.strip()},
                  **{v.strip().lower(): REAL for v in real_values.split(",") if v.strip()}}
    b = IndexBuilder(NAME, root)
    for split, rec, sup in pairs:
        if not sup.is_file():
            b.problem(str(sup), f"{rec.name} has no supervisions file {sup.name}: split {split!r} skipped")
            continue
        recordings = {}
        for where, r in _records(b, rec):
            if isinstance(r.get("id"), str):
                recordings[r["id"]] = (where, r)
            else:
                b.problem(where, "recording without an id; skipped")
        for where, s in _records(b, sup):
            _add(b, where, s, recordings, split, label_field, values)
    return b.finish()


def _is_jsonl(name: str) -> bool:
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def _records(b: IndexBuilder, path: Path):
    """(where, object) per line; unreadable lines become problems (a cut-off .gz ends the file, and
    so does a line over MAX_LINE_CHARS: one line of a small .gz can inflate to gigabytes)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    line = 0
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            while text := f.readline(MAX_LINE_CHARS + 1):
                line += 1
                if len(text) > MAX_LINE_CHARS:
                    b.problem(f"{path}:{line}", f"line longer than {MAX_LINE_CHARS:,} characters (no lhotse "
                                                "manifest line is); lines from here skipped")
                    return
                if text.strip():
                    yield from _record(b, f"{path}:{line}", text)
    except (OSError, EOFError) as exc:
        b.problem(f"{path}:{line + 1}", f"cannot read the rest of the file ({exc}); lines from here skipped")


def _record(b: IndexBuilder, where: str, text: str):
    try:
        obj = json.loads(text)
    except ValueError as exc:
        b.problem(where, f"not a JSON object ({exc}); line skipped")
        return
    except RecursionError:   # json recurses per level of nesting
        b.problem(where, "nested deeper than Python's recursion limit; line skipped")
        return
    if isinstance(obj, dict):
        yield where, obj
    else:
        b.problem(where, "not a JSON object; line skipped")


def _field(obj: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _label(s: dict, label_field: str, values):
    fields = (label_field,) if label_field else LABEL_FIELDS
    for name in fields:
        value = _field(s, name)
        if value is None:
            continue
        if values is not None:
            return name, value, values.get(str(value).strip().lower())
        if isinstance(value, bool):
            return name, value, FAKE if value else REAL
        return name, value, parse_label(value)
    return None, None, None


def _add(b: IndexBuilder, where: str, s: dict, recordings: dict, split: str, label_field: str, values) -> None:
    sid, rid = s.get("id"), s.get("recording_id")
    if not isinstance(sid, str) or not sid:
        b.problem(where, "supervision without an id; skipped")
        return
    field, value, label = _label(s, label_field, values)
    if field is None:
        b.problem(where, f"supervision {sid!r} has no label field (tried "
                         f"{', '.join((label_field,) if label_field else LABEL_FIELDS)}); pass --option "
                         "label_field=custom.NAME; skipped")
        return
    if label is None:
        b.problem(where, f"supervision {sid!r}: unknown label {value!r} in {field} (expected fake/spoof/1 "
                         "or real/bonafide/0; --option fake_values=... real_values=...); skipped")
        return
    if rid not in recordings:
        b.problem(where, f"supervision {sid!r} names recording {rid!r}, which the recordings file "
                         "does not hold; skipped")
        return
    rec_where, rec = recordings[rid]
    path = _audio(b, where, sid, s, rec, rec_where)
    if path is None:
        return
    custom = s.get("custom") if isinstance(s.get("custom"), dict) else {}
    generator = next((str(_field(s, g)) for g in GENERATOR_FIELDS if _field(s, g) is not None), "")
    clip = Clip(clip_id=sid, path=path.to_path() if not path.whole else path.file, label=label,
                split=str(custom.get("split") or split), generator=generator,
                speaker=str(s.get("speaker") or ""), language=str(s.get("language") or ""))
    if b.first_use(clip.path, where) and b.add(clip, where) and not b.is_file(path.file):
        b.problem(where, f"{path.file} (recording {rid!r}) is missing (kept; it will be recorded as an error)")


def _channels(src: dict) -> list[int] | None:
    """A source's channel list; None when it is not a list of integers."""
    channels = src.get("channels") or []
    ok = isinstance(channels, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in channels)
    return channels if ok else None


def _audio(b: IndexBuilder, where: str, sid: str, s: dict, rec: dict, rec_where: str) -> AudioRef | None:
    """The file, channels and segment of one supervision; None plus a problem when dfdetect cannot
    read exactly that audio."""
    def refuse(why: str) -> None:
        b.problem(where, f"supervision {sid!r}: {why}; skipped")

    if rec.get("transforms"):
        transforms = rec["transforms"] if isinstance(rec["transforms"], list) else [rec["transforms"]]
        kinds = [t.get("name", "?") if isinstance(t, dict) else "?" for t in transforms]
        return refuse(f"recording {rec['id']!r} ({rec_where}) has transforms {kinds}, which dfdetect does "
                      "not apply; featurize the audio they produce instead")
    sources = rec.get("sources") if isinstance(rec.get("sources"), list) else []
    wanted = s.get("channel", 0)
    wanted = wanted if isinstance(wanted, list) else [wanted]
    if not wanted or not all(isinstance(c, int) and not isinstance(c, bool) for c in wanted):
        return refuse(f"channel {s.get('channel')!r} is not an integer or a list of integers")
    sources = [src for src in sources if isinstance(src, dict)]
    if any(_channels(src) is None for src in sources):
        return refuse(f"recording {rec['id']!r} ({rec_where}) has a source whose channels are not a list of "
                      "integers")
    matching = [src for src in sources if set(wanted) & set(_channels(src))]
    if not matching:
        return refuse(f"channel(s) {wanted} are in none of recording {rec['id']!r}'s sources")
    src = matching[0]
    if len(matching) > 1 or not set(wanted) <= set(src["channels"]):
        return refuse(f"channels {wanted} come from several sources of recording {rec['id']!r}; dfdetect "
                      "reads one file per clip (one supervision per channel works)")
    if src.get("type") != "file":
        why = {"command": "a command source (dfdetect never runs a manifest's commands)",
               "url": "a url source (dfdetect reads local files only; download it first)"}
        return refuse(f"recording {rec['id']!r} has {why.get(src.get('type'), repr(src.get('type')) + ' source')}"
                      "; only file sources are read")
    name = src.get("source")
    if not isinstance(name, str) or not name or "\x00" in name:
        return refuse(f"recording {rec['id']!r}: file source {name!r} is not a file name")
    # the manifest's own rule (as manifest.py): absolute as written, relative from its folder
    file = os.path.normpath(os.path.join(b.root, name))
    try:
        start = float(s.get("start", 0.0))
        duration = float(s["duration"]) if s.get("duration") is not None else None
        total = float(rec["duration"]) if rec.get("duration") is not None else None
    except (TypeError, ValueError, OverflowError):
        return refuse("start / duration are not numbers")
    if not all(math.isfinite(t) and t <= MAX_SECONDS for t in (start, duration or 0.0, total or 0.0)) \
            or start + (duration or 0.0) > MAX_SECONDS:
        return refuse(f"segment {start!r}+{duration!r} s of recording {rec['id']!r} ({total!r} s): times must "
                      f"be finite and at most {MAX_SECONDS:,} s (a week)")
    if start < 0 or (duration is not None and duration <= 0) \
            or (total is not None and start + (duration or 0.0) > total + _SLACK):
        return refuse(f"segment {start:g}+{duration} s lies outside recording {rec['id']!r} "
                      f"({total} s)")
    channels = tuple(src["channels"].index(c) for c in wanted)
    if channels == tuple(range(len(src["channels"]))):
        channels = ()          # every channel of the file: nothing to select
    if total is not None and start == 0 and duration is not None and abs(duration - total) <= _SLACK:
        duration = None        # the whole recording
    return AudioRef(kind="file", file=file, channels=channels, start=start, duration=duration)
