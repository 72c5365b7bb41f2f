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

Reading is lazy and bounded: one clip's bytes per call. Parquet is read a row at a time (the
reader of the last row group is kept per process, so the neighbouring rows of one block are read
in one pass); Arrow one record batch at a time over a memory map (zero-copy unless compressed).
Compressed audio is inflated only within score's member bounds (`MAX_BYTES`, and beyond
`RATIO_GRACE` at most `MAX_RATIO`:1), judged from what the file declares before inflating: a
Parquet row group's audio column chunk (its footer's sizes), an Arrow record batch (the inflated
length that prefixes each compressed buffer). A row beyond them is the clip's `compression_bomb`
error, and a problem when the dataset is indexed.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

PREFIX = "dfdetect+ref:"
# Score's bounds on compressed input (score/sources.py reads them from here, the ground layer): no
# recording compresses past MAX_RATIO:1, checked beyond the first RATIO_GRACE bytes; MAX_BYTES is
# --max-file-mb's default (2048 MB).
MAX_RATIO = 2000
RATIO_GRACE = 1 << 20
MAX_BYTES = 2048 * 10**6


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
            value = _parquet_rows(ref.file, stamp, ref.row_group, ref.column).row(ref.row)
        else:
            value = _arrow_row(ref.file, stamp, ref.row, ref.column)
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


def inflation_problem(stored: int, inflated: int) -> str | None:
    """Why `stored` compressed bytes that declare `inflated` bytes are not inflated; None when fine."""
    if inflated > MAX_BYTES:
        return f"{stored:,} stored bytes inflate to {inflated:,}, over the {MAX_BYTES // 10**6} MB bound"
    if inflated > RATIO_GRACE and inflated > MAX_RATIO * max(stored, 1):
        return (f"{stored:,} stored bytes inflate to {inflated:,} (over {MAX_RATIO}:1, which no recording "
                "compresses to): a compression bomb")
    return None


def parquet_chunk_problem(metadata, row_group: int, column: str) -> str | None:
    """inflation_problem of `column`'s chunk (all its leaves) in one row group, from the footer."""
    meta = metadata.row_group(row_group)
    stored = inflated = 0
    for i in range(meta.num_columns):
        chunk = meta.column(i)
        if chunk.path_in_schema == column or chunk.path_in_schema.startswith(column + "."):
            stored += chunk.total_compressed_size
            inflated += chunk.total_uncompressed_size
    return inflation_problem(stored, inflated)


class _ParquetRows:
    """One row group's audio column read one row at a time, forward (a new reader to go back)."""

    def __init__(self, path: str, row_group: int, column: str):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(path)
        why = parquet_chunk_problem(self.file.metadata, row_group, column)
        if why is not None:
            raise RefError("compression_bomb", f"{path} row group {row_group}, column {column!r}: {why}; not read")
        self.row_group, self.column, self.next, self.batches = row_group, column, 0, None
        self.lock = threading.Lock()   # one reader, whichever thread decodes

    def row(self, row: int):
        with self.lock:
            return self._row(row)

    def _row(self, row: int):
        if self.batches is None or row < self.next:
            self.batches = self.file.iter_batches(batch_size=1, row_groups=[self.row_group], columns=[self.column],
                                                  use_threads=False)
            self.next = 0
        for batch in self.batches:
            self.next += 1
            if self.next - 1 == row:
                return batch.column(0)[0]
        raise IndexError(f"row {row} past the row group's end")


def _bytes_of(value) -> bytes | None:
    """bytes of an Audio struct scalar ({"bytes", "path"}) or of a binary scalar."""
    import pyarrow as pa

    if isinstance(value, pa.StructScalar):
        if not value.is_valid:
            return None
        value = value["bytes"]
    return value.as_py() if value.is_valid else None


@functools.lru_cache(maxsize=1)
def _parquet_rows(path: str, stamp: int, row_group: int, column: str) -> _ParquetRows:
    """The reader of the last row group read, per process."""
    return _ParquetRows(path, row_group, column)


def arrow_batches(path: str):
    """(schema, [(first row, rows, message, problem or None)]) of an Arrow IPC stream (as `save_to_disk`
    writes it) or file, over a memory map: nothing is inflated; the problem is inflation_problem
    of the batch's declared sizes."""
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    if source.read(6) == b"ARROW1":   # the file format: the stream follows the 8-byte magic
        source.seek(8)
    else:
        source.seek(0)
    reader = pa.ipc.MessageReader.open_stream(source)
    schema, batches, first = None, [], 0
    for message in reader:
        if message.type == "schema":
            schema = pa.ipc.read_schema(message)
        elif message.type == "record batch":
            rows, stored, inflated = _batch_sizes(message)
            batches.append((first, rows, message, inflation_problem(stored, inflated)))
            first += rows
        else:
            raise ValueError(f"an Arrow {message.type} message (dictionary-encoded columns are not read)")
    if schema is None:
        raise ValueError("no Arrow schema")
    return schema, batches


def _batch_sizes(message) -> tuple[int, int, int]:
    """(rows, stored body bytes, inflated bytes) of a record batch message, from its flatbuffer
    metadata (Message.header -> RecordBatch: length, buffers, compression) and, when compressed, the
    int64 inflated length that leads each buffer (-1: stored as is). pyarrow reads these only
    while inflating, so they are read here first."""
    meta, body = memoryview(message.metadata), message.body
    u32 = lambda at: int.from_bytes(meta[at:at + 4], "little")   # noqa: E731
    i64 = lambda view, at: int.from_bytes(view[at:at + 8], "little", signed=True)   # noqa: E731

    def fields(table: int) -> list[int]:   # the table's field positions (0: absent)
        vtable = table - int.from_bytes(meta[table:table + 4], "little", signed=True)
        size = int.from_bytes(meta[vtable:vtable + 2], "little")
        return [table + o if o else 0 for o in
                (int.from_bytes(meta[vtable + 4 + 2 * i:vtable + 6 + 2 * i], "little") for i in range((size - 4) // 2))]

    message_fields = fields(u32(0))
    header = message_fields[2] + u32(message_fields[2])
    batch = fields(header) + [0] * 5
    rows = i64(meta, batch[0]) if batch[0] else 0
    buffers = batch[2] + u32(batch[2]) if batch[2] else 0
    spans = [(i64(meta, buffers + 4 + 16 * i), i64(meta, buffers + 12 + 16 * i))
             for i in range(u32(buffers) if buffers else 0)]
    if not batch[3]:   # no BodyCompression: the body is the data
        return rows, body.size, body.size
    view = memoryview(body)
    inflated = 0
    for offset, length in spans:
        if length >= 8:
            declared = i64(view, offset)
            inflated += length - 8 if declared == -1 else declared
    return rows, body.size, inflated


@functools.lru_cache(maxsize=4)
def _arrow_index(path: str, stamp: int):
    return arrow_batches(path)


@functools.lru_cache(maxsize=1)
def _arrow_batch(path: str, stamp: int, index: int):
    """One record batch, inflated when compressed (the last one read, per process)."""
    import pyarrow as pa

    schema, batches = _arrow_index(path, stamp)
    return pa.ipc.read_record_batch(batches[index][2], schema)


def _arrow_row(path: str, stamp: int, row: int, column: str):
    schema, batches = _arrow_index(path, stamp)
    for index, (first, rows, _, problem) in enumerate(batches):
        if first <= row < first + rows:
            if problem is not None:
                raise RefError("compression_bomb", f"{path} rows {first}-{first + rows - 1}: {problem}; not read")
            return _arrow_batch(path, stamp, index).column(column)[row - first]
    raise IndexError(f"row {row} past the file's end")


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
