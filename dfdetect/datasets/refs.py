"""Audio that is not one whole file: bytes inside an Arrow/Parquet table, or a segment / channels
of a file. The datasets layer owns this path form; the decoder (`featurize/audio.py`) resolves it.

A `Clip.path` is a plain file path for every adapter except where the audio lives elsewhere:

    dfdetect+ref:kind=parquet&file=/abs/train-00000.parquet&row_group=3&row=17&column=audio
    dfdetect+ref:kind=arrow&file=/abs/data-00000-of-00001.arrow&row=17&column=audio
    dfdetect+ref:kind=file&file=/abs/rec.flac&channels=1&start=2.5&duration=4.0

`kind=parquet|arrow` name one row's embedded bytes (the ``bytes`` field of a Hugging Face Audio
struct, or a binary column); `kind=file` is a file with optional channel selection (0-based,
several: their mean, as the frontend's mono) and a segment in seconds. The prefix cannot be an
absolute path (those start with '/'), and a relative clip path never reaches the decoder (every
adapter makes paths absolute), so the two forms never meet.

Reading is lazy and bounded: one clip's bytes per call, with the last Parquet row group's audio
column and a memory map of each Arrow file kept per process (clips of one block are neighbouring
rows, so a row group is read once per block, not once per clip).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

PREFIX = "dfdetect+ref:"


class RefError(ValueError):
    """A reference that cannot be read: `kind` is the decoder's error kind, the message says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class AudioRef:
    kind: str                        # "parquet" | "arrow" | "file"
    file: str                        # absolute path of the table or audio file
    row: int = -1                    # row (within the row group for parquet; in the file for arrow)
    row_group: int = -1
    column: str = ""                 # the Audio struct column (its "bytes" field) or a binary column
    channels: tuple[int, ...] = ()   # () = every channel
    start: float = 0.0               # seconds
    duration: float | None = None    # seconds; None = to the end

    def to_path(self) -> str:
        fields = {"kind": self.kind, "file": self.file}
        if self.kind in ("parquet", "arrow"):
            fields.update(row=self.row, column=self.column)
            if self.kind == "parquet":
                fields["row_group"] = self.row_group
        if self.channels:
            fields["channels"] = ",".join(map(str, self.channels))
        if self.start:
            fields["start"] = repr(float(self.start))
        if self.duration is not None:
            fields["duration"] = repr(float(self.duration))
        return PREFIX + urlencode(fields)

    @property
    def whole(self) -> bool:
        """Whether the decoded audio is used as it is (no channel or segment selection)."""
        return not self.channels and not self.start and self.duration is None


def parse(source) -> AudioRef | None:
    """The reference in `source` when it is one (a str starting with PREFIX), else None."""
    if not isinstance(source, str) or not source.startswith(PREFIX):
        return None
    try:
        q = dict(parse_qsl(source[len(PREFIX):], keep_blank_values=True, strict_parsing=True))
        kind, file = q["kind"], q["file"]
        channels = tuple(int(c) for c in q["channels"].split(",")) if q.get("channels") else ()
        ref = AudioRef(kind=kind, file=file, row=int(q.get("row", -1)),
                       row_group=int(q.get("row_group", -1)), column=q.get("column", ""),
                       channels=channels, start=float(q.get("start", 0.0)),
                       duration=float(q["duration"]) if "duration" in q else None)
    except (KeyError, ValueError) as exc:
        raise RefError("bad_path", f"malformed dataset reference ({exc}); re-index the dataset") from None
    if kind not in ("parquet", "arrow", "file") or not os.path.isabs(file):
        raise RefError("bad_path", f"malformed dataset reference (kind {kind!r}, file {file!r}); "
                                   "re-index the dataset")
    return ref


def read_bytes(ref: AudioRef) -> bytes | None:
    """The clip's encoded audio bytes for kind parquet/arrow; None for kind file (read the file)."""
    if ref.kind == "file":
        return None
    try:
        stamp = os.stat(ref.file).st_mtime_ns   # a rewritten table is never served from the cache
    except FileNotFoundError:
        raise RefError("not_found", f"{ref.file} not found") from None
    except OSError as exc:
        raise RefError("unreadable", f"cannot read {ref.file} ({exc.strerror or exc})") from None
    try:
        if ref.kind == "parquet":
            values = _parquet_column(ref.file, stamp, ref.row_group, ref.column)
        else:
            values = _arrow_table(ref.file, stamp).column(ref.column)
        value = values[ref.row]
    except RefError:
        raise
    except (KeyError, IndexError) as exc:
        raise RefError("bad_path", f"{ref.file} has no row {ref.row} / column {ref.column!r} "
                                   f"({exc}); re-index the dataset") from None
    except Exception as exc:   # pyarrow raises several types for a damaged file
        raise RefError("unreadable", f"cannot read {ref.file} ({exc})") from None
    data = _bytes_of(value)
    if data is None:
        raise RefError("empty", f"{ref.file} row {ref.row}: no audio bytes in column {ref.column!r}")
    return data


def _bytes_of(value) -> bytes | None:
    """bytes of an Audio struct scalar ({"bytes", "path"}) or of a binary scalar."""
    import pyarrow as pa

    if isinstance(value, pa.StructScalar):
        if not value.is_valid:
            return None
        value = value["bytes"]
    return value.as_py() if value.is_valid else None


@functools.lru_cache(maxsize=1)
def _parquet_column(path: str, stamp: int, row_group: int, column: str):
    """One row group's audio column (the last one read, per process: bounded by the row group)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
    return table.column(column).combine_chunks()


@functools.lru_cache(maxsize=4)
def _arrow_table(path: str, stamp: int):
    """An Arrow IPC file (stream format, as `save_to_disk` writes it, or file format) as a table over
    a memory map: zero-copy, so only the pages of the rows read come into memory."""
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def select(samples, sample_rate: int, ref: AudioRef):
    """The channels and segment `ref` asks for, from decoded samples [channels, frames]."""
    samples = select_channels(samples, ref)
    if ref.start or ref.duration is not None:
        first, last = segment_frames(ref, sample_rate, samples.shape[1])
        samples = samples[:, first:last]
    return samples


def select_channels(samples, ref: AudioRef):
    """The channels `ref` asks for, from samples [channels, frames]."""
    if ref.channels:
        bad = [c for c in ref.channels if not 0 <= c < samples.shape[0]]
        if bad:
            raise RefError("bad_channel", f"channel(s) {bad} asked for, but the file has "
                                          f"{samples.shape[0]}; fix the manifest")
        samples = samples[list(ref.channels)]
    return samples


def segment_frames(ref: AudioRef, sample_rate: int, frames: int) -> tuple[int, int]:
    """[first, last) frames of `ref`'s segment in audio of `frames` frames; RefError when it lies
    outside (half a 10 ms frame of slack past the end: manifests round their durations)."""
    start, duration = ref.start, ref.duration
    if not math.isfinite(start) or (duration is not None and not math.isfinite(duration)):
        raise RefError("bad_segment", f"segment {start!r}+{duration!r} s is not finite; fix the manifest")
    first = int(round(start * sample_rate))
    last = frames if duration is None else first + int(round(duration * sample_rate))
    if first < 0 or last > frames + sample_rate // 200 or last <= first:
        raise RefError("bad_segment", f"segment {start:g}+{duration} s lies outside "
                                      f"the audio ({frames / sample_rate:g} s); fix the manifest")
    return first, min(last, frames)
