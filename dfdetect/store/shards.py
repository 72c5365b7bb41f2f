"""Reading and writing a feature array's chunks straight from and to its shard files, at the speed
of the page cache.

zarr-python decodes a chunk at ~1.6 GB/s here whatever the codec (tensorstore too once the chunks
carry a CRC32C), while the training loader cuts batches from memory at ~5.5 GB/s: at a corpus that
does not fit in memory the reader, not the model, set the pace (docs/benchmarks.md). The stores
dfdetect writes keep feature chunks uncompressed (float16 features compress only 1.1-1.25x) with a
CRC32C each, inside Zarr v3 shards. For exactly that layout on a local disk this module reads a
chunk with one `preadv` that scatters its bytes into the caller's buffer (no intermediate copy),
and checks the CRC32C over the same bytes: 3-4x zarr-python. Everything else (compressed chunks of
stores written before, object stores, other byte orders) is read by zarr; `FeatureStore.read_rows`
chooses, and the tests check both give the same arrays and the same errors for damaged bytes.

Writing a featurize block (one whole shard) is the same in reverse: zarr-python took ~0.6 ms a clip
to encode a mel shard (~5x the bytes' checksum and one file write), an eighth of the pass's time.
`write_shard` writes the bytes zarr writes (the tests compare the files byte for byte): chunks in
order, an all-fill chunk left out, the whole shard into a temporary file renamed into place.

The layout read here is the Zarr v3 `sharding_indexed` codec's (zarr-specs, sharding v1.0): a
shard file is its inner chunks' encoded bytes followed by the index, one (offset, nbytes) uint64
pair per inner chunk in C order over the shard's chunk grid, then the index's own CRC32C; an inner
chunk never written has offset = nbytes = 2^64 - 1 and reads as the fill value.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from math import prod

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.storage import LocalStore

MISSING = np.uint64(2**64 - 1)
CRC_BYTES = 4


class ShardFiles:
    """Direct reads of one local array whose shards hold raw little-endian chunks + CRC32C."""

    def __init__(self, array: zarr.Array, root: str):
        meta = array.metadata
        self.array, self.root = array, root
        self.shard = tuple(meta.chunk_grid.chunk_shape)
        self.chunk = tuple(meta.codecs[0].chunk_shape)
        self.grid = tuple(s // c for s, c in zip(self.shard, self.chunk))   # inner chunks per shard
        self.itemsize = array.dtype.itemsize
        self.chunk_bytes = prod(self.chunk) * self.itemsize
        self._indexes: dict[tuple, np.ndarray | None] = {}

    @classmethod
    def of(cls, array: zarr.Array) -> ShardFiles | None:
        """A direct reader for `array`, or None when its layout is not the one read here."""
        store, meta = array.store, array.metadata
        if not isinstance(store, LocalStore) or sys.byteorder != "little" or len(meta.codecs) != 1:
            return None
        sharding = meta.codecs[0]
        plain = (BytesCodec(endian="little"), Crc32cCodec())
        one_byte = (BytesCodec(endian=None), Crc32cCodec())   # uint8 codes: no byte order to name
        if not (isinstance(sharding, ShardingCodec)
                and tuple(sharding.codecs) == (one_byte if array.dtype.itemsize == 1 else plain)
                and tuple(sharding.index_codecs) == plain and sharding.index_location.value == "end"):
            return None
        if any(s % c for s, c in zip(meta.chunk_grid.chunk_shape, sharding.chunk_shape)):
            return None
        return cls(array, os.path.join(str(store.root), array.path))

    def write_shard(self, start: int, values: np.ndarray) -> bool:
        """Write `values`, the rows from `start` of one whole shard, as zarr would; False (nothing
        written) when that is not a whole shard of an array chunked along rows only (then zarr
        writes it)."""
        rows, n = self.shard[0], self.array.shape[0]
        if (start % rows or len(values) != min(rows, n - start) or self.shard[1:] != self.array.shape[1:]
                or any(g != 1 for g in self.grid[1:])):
            return False
        step = self.chunk[0]
        fill = np.asarray(self.array.fill_value, self.array.dtype)
        index = np.full((self.grid[0], 2), MISSING, "<u8")
        pieces, offset = [], 0
        for i, at in enumerate(range(0, len(values), step)):
            chunk = values[at:at + step]
            if _all_fill(chunk, fill):
                continue   # zarr leaves an all-fill chunk out (it reads as the fill value)
            if len(chunk) < step:   # the array's last chunk, padded with the fill value as zarr does
                chunk = np.concatenate([chunk, np.broadcast_to(fill, (step - len(chunk), *chunk.shape[1:]))])
            raw = np.ascontiguousarray(chunk, self.array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
            pieces += [raw, google_crc32c.value(raw).to_bytes(4, "little")]
            index[i] = offset, raw.nbytes + CRC_BYTES
            offset += raw.nbytes + CRC_BYTES
        path = self._shard_path((start // rows, *([0] * (len(self.shard) - 1))))
        if not pieces:   # an all-fill shard is no file, as zarr leaves it
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return True
        raw_index = index.tobytes()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # zarr's own name: a killed writer's litter is removed the same way
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(partial, "wb") as f:
                f.writelines([*pieces, raw_index, google_crc32c.value(raw_index).to_bytes(4, "little")])
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            raise
        return True

    def read_into(self, start: int, targets: list) -> None:
        """The rows of the chunk that starts at row `start` (along the first axis), each into its
        target (an array of one row's shape; None: a row not wanted, read only for the checksum).
        Damaged bytes raise ValueError (as zarr's codecs do), which the store turns into its
        StoreError."""
        if start % self.chunk[0] or len(targets) > self.chunk[0]:
            raise ValueError(f"rows {start}..{start + len(targets)} are not one chunk of {self.chunk[0]}")
        inner = [range(0, n, c) for n, c in zip(self.array.shape[1:], self.chunk[1:])]
        for corner in np.ndindex(*(len(r) for r in inner)):
            at = (start, *(r[i] for r, i in zip(inner, corner)))
            part = tuple(slice(a, a + c) for a, c in zip(at[1:], self.chunk[1:]))
            self._read_chunk(at, [None if t is None else t[part] for t in targets])

    def _read_chunk(self, at: tuple[int, ...], regions: list) -> None:
        """One stored chunk, its rows scattered into `regions` (one per row, None: not wanted):
        one preadv straight into them, then the CRC32C over the same bytes."""
        shard_at = tuple(a // s for a, s in zip(at, self.shard))
        index = self._index(shard_at)
        inner = tuple((a % s) // c for a, s, c in zip(at, self.shard, self.chunk))
        if index is None or index[inner][0] == MISSING:
            for region in regions:
                if region is not None:
                    region[...] = self.array.fill_value
            return
        offset, nbytes = (int(v) for v in index[inner])
        if nbytes != self.chunk_bytes + CRC_BYTES:
            raise ValueError(f"chunk of {nbytes} bytes where {self.chunk_bytes + CRC_BYTES} are stored")
        scratch = _scratch(self.chunk, self.array.dtype)   # rows not wanted, or not contiguous
        pieces, copies = [], []
        for r in range(self.chunk[0]):
            region = regions[r] if r < len(regions) else None
            if region is not None and region.flags.c_contiguous:
                pieces.append(region.reshape(-1).view(np.uint8))
            else:
                pieces.append(scratch[r].reshape(-1).view(np.uint8))
                if region is not None:
                    copies.append((region, scratch[r]))
        stored = bytearray(CRC_BYTES)
        with open(self._shard_path(shard_at), "rb", buffering=0) as f:
            got = os.preadv(f.fileno(), [*pieces, stored], offset)
        if got != nbytes:
            raise ValueError(f"shard cut off: {got} of {nbytes} bytes of a chunk")
        crc = 0
        for piece in pieces:
            crc = google_crc32c.extend(crc, piece)
        if crc.to_bytes(4, "little") != bytes(stored):
            raise ValueError("Stored and computed checksum do not match")
        for region, row in copies:
            region[...] = row

    def _index(self, shard_at: tuple[int, ...]) -> np.ndarray | None:
        """The shard's (offset, nbytes) per inner chunk, CRC-checked, read once (None: no shard)."""
        if shard_at not in self._indexes:
            size = prod(self.grid) * 16
            try:
                with open(self._shard_path(shard_at), "rb", buffering=0) as f:
                    length = os.fstat(f.fileno()).st_size
                    if length < size + CRC_BYTES:
                        raise ValueError(f"shard of {length} bytes cannot hold its index")
                    raw = os.pread(f.fileno(), size + CRC_BYTES, length - size - CRC_BYTES)
            except FileNotFoundError:
                self._indexes[shard_at] = None
                return None
            if google_crc32c.value(raw[:size]).to_bytes(4, "little") != raw[size:]:
                raise ValueError("Stored and computed checksum of the shard index do not match")
            index = np.frombuffer(raw[:size], "<u8").reshape(*self.grid, 2)
            ends = index[..., 0] + index[..., 1]
            if ((index[..., 0] != MISSING) & (ends > length - size - CRC_BYTES)).any():
                raise ValueError("shard index points past the end of its file")
            self._indexes[shard_at] = index
        return self._indexes[shard_at]

    def _shard_path(self, shard_at: tuple[int, ...]) -> str:
        return os.path.join(self.root, self.array.metadata.encode_chunk_key(shard_at))


def _all_fill(chunk: np.ndarray, fill: np.ndarray) -> bool:
    if fill.dtype.kind == "f" and np.isnan(fill):
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill).all())


_local = threading.local()


def _scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A chunk-sized buffer for bytes read only to be checked, one per reader thread, reused (a
    fresh one each read would cost its page faults every time)."""
    key = (shape, np.dtype(dtype).str)
    buffers = _local.__dict__.setdefault("buffers", {})
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype)
    return buffers[key]
