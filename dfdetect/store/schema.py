"""Layout of a feature store, and opening one for reading.

    NAME.zarr/                      root group   attrs: dfdetect_store, dataset, dataset_root
      v-<hash>/                     one version per (frontend config, features, WavLM model+layers,
                                    dtype, variant); attrs: config, config_hash, clip_table_hash,
                                    n_clips, block_size, complete, created, dfdetect_version
        mel          [N, 2, 128, 301]     float16
        lfcc         [N, 60, 301]         float16
        wave         [N, 48000]           float16   the prepared 16 kHz clip (raw-waveform heads)
        wavlm        [N, L, 149, 1024]    float16   (uint8 codes with --wavlm-storage uint8: quantize.py)
        wavlm_scale  [N, L, 2, 1024]      float32   uint8 storage only: per-channel offset and step
        wavlm_stats  [N, 25, 2, 1024]     float16   per-layer mean/std over time, all layers
        meta/        one 1-D array per clip-table column (clip_id, path, label, split, ...) and
                     per outcome column (status, error_kind, error, duration, sample_rate, ...,
                     size and mtime_ns of the file as featurize read it, the decoder's warning,
                     the recording statistics: OPTIONAL_COLUMNS, which stores written before them lack)
        block_done   [n_blocks] int8      1 when a block's rows are all written
    NAME.zarr.lock                  held (flock) by the featurize run writing this store

Rows are clips in the dataset adapter's order, bad clips included (status "error", features NaN):
every input is accounted for. Shards hold `block_size` rows and are the unit of writing: one
featurize block writes exactly one shard of every array, so parallel writers never share a shard
(zarr loses data when several processes write parts of one shard). Chunks inside shards are the
unit of reading (whole-chunk reads are fast; single rows are not). Float arrays are filled with
NaN, so a chunk that was never written is caught by the finiteness check in `store verify`
(uint8 codes through their scale, NaN until written: a block writes the codes, then the scale),
and every chunk carries a CRC32C so a corrupted one fails to read instead of returning garbage.
Completion is never inferred from chunk presence (missing chunks read as the fill value): each
block sets its `block_done` entry last, and the version's `complete` attribute is set only after
every block is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from dfdetect.errors import DfdetectError
from dfdetect.store.shards import ShardFiles

STORE_FORMAT = 1
VERSION_PREFIX = "v-"

# Columns copied from the dataset adapter's clip table when the version is created.
CLIP_COLUMNS = ("clip_id", "path", "label", "split", "generator", "speaker", "codec", "language",
                "date", "source")
# Columns each block fills with what it found when decoding its clips.
OUTCOME_COLUMNS = {
    "status": str,        # "ok" or "error"
    "error_kind": str,    # AudioError.kind ("" when ok)
    "error": str,         # the message ("" when ok)
    "duration": np.float32,      # seconds, of the original file
    "sample_rate": np.int32,     # original rate
    "channels": np.int16,
    "container": str,            # what the bytes were (wav, mp3, mp4, ...)
}
OK, ERROR = "ok", "error"
# What featurize saw of each clip's file (`file_stamp`, taken before decoding it): `score
# --features-from` uses a row only for a file that still has that size and mtime, and scores a
# changed one live. Not required by `store verify`: stores written before they were kept lack them
# (their files are all scored live), as does a version resumed from such a store.
FILE_COLUMNS = {"size": np.int64, "mtime_ns": np.int64}
# What the decoder library said about damage it decoded past ("" when nothing; Audio.warnings).
WARNING_COLUMN = "warning"
# The codec round trip a variant gave the clip ("opus:24k"; "" for none): `featurize --codec random`
# draws one per clip (featurize/variants.py).
VARIANT_CODEC_COLUMN = "variant_codec"
# Recording statistics of each clip (featurize/recording.py computes them; the store only keeps the
# named columns): a version records which definitions it holds in its "recording_statistics"
# attribute. Not part of a version's name, and stores written before them lack them (`audit` says so).
RECORDING_STATISTICS_VERSION = 1
RECORDING_COLUMNS = {name: np.float32 for name in (
    "bitrate_kbps", "leading_silence", "trailing_silence", "active_fraction", "rms_dbfs", "peak_dbfs",
    "clipping_fraction", "dc_offset", "bandwidth_hz", "noise_floor_dbfs")}
# Columns newer than the format: created with every version, written where present.
OPTIONAL_COLUMNS = {**FILE_COLUMNS, WARNING_COLUMN: str, VARIANT_CODEC_COLUMN: str, **RECORDING_COLUMNS}
# A windowed version (featurize --windows all|N, featurize/windows.py) has a row per window of each
# file: which file (its number in the dataset's clip table; clip_id and the clip columns repeat per
# window), the window's number as `dfdetect score` numbers them, where it lies (seconds), and the
# file's window count and length (16 kHz samples) when planned. Only windowed versions have them.
# A window row whose peak is below the silence level is an error row of this kind: `dfdetect score`
# leaves such a window out of its file's score, and featurize counts them apart from errors.
SILENT_WINDOW = "silent_window"
WINDOW_COLUMNS = {"file": np.int32, "window": np.int32, "window_start": np.float64, "window_end": np.float64,
                  "file_windows": np.int32, "file_samples": np.int64}
NO_STAMP = (0, 0)   # not a plain file (a datasets/refs.py path, a missing file), or not recorded


def file_stamp(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of a plain file, NO_STAMP for anything else: the one rule for "the file
    featurize read is the file here now"."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):   # missing, unreadable, a NUL in the name
        return NO_STAMP
    return (int(info.st_size), int(info.st_mtime_ns)) if stat.S_ISREG(info.st_mode) else NO_STAMP


class StoreError(DfdetectError):
    """A store that cannot be used as asked: the message says what is wrong and what to do."""


@contextlib.contextmanager
def reading_metadata(path: str):
    """zarr reading a store's metadata; a zarr.json that is not JSON (cut off by a kill or a full
    disk, or edited) is a StoreError naming that file, where zarr names none."""
    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{_damaged_metadata(path)}: not valid JSON ({e}); the store's metadata is damaged: "
                         "restore the store from a copy, or featurize into a new --out") from None


def _damaged_metadata(path: str) -> str:
    """The first zarr.json under a local store that does not parse (the store's path when none is
    found, or the store is remote)."""
    if "://" not in path:
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "c")     # c/: chunk data, no metadata
            if "zarr.json" in files:
                file = os.path.join(folder, "zarr.json")
                try:
                    with open(file, encoding="utf-8") as f:
                        json.load(f)
                except (ValueError, OSError):
                    return file
    return path


def compressors():
    # Feature chunks are stored raw with a CRC32C (corruption is an error, not garbage): float16
    # features compress only 1.1-1.25x (Blosc-zstd + bit-shuffle), and decompressing capped a
    # streaming epoch at ~0.6 GB/s where shards.py reads raw chunks at ~4 GB/s (docs/benchmarks.md).
    return [Crc32cCodec()]


def meta_compressors():
    # Metadata and progress markers: strings and small ints, zstd with its frame checksum.
    return [ZstdCodec(level=3, checksum=True)]


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def version_name(config: dict) -> str:
    return VERSION_PREFIX + content_hash(config)


# Feature -> the arrays it writes (in this order everywhere).
FEATURE_ARRAYS = {"mel": ("mel",), "lfcc": ("lfcc",), "wave": ("wave",), "wavlm": ("wavlm", "wavlm_stats")}
# Arrays read only as part of another's rows: uint8 WavLM codes' per-channel scale (quantize.py).
SCALE_ARRAYS = {"wavlm": "wavlm_scale"}
ARRAY_NAMES = (*(a for arrays in FEATURE_ARRAYS.values() for a in arrays), *SCALE_ARRAYS.values())

# What of WavLM's description names a version. The compute precision (float32 / bfloat16) is
# part of it: bf16 features differ from fp32 ones by more than float16 storage rounds away, so a
# store never mixes the two in one version, and a head is only fed features of the precision it
# was trained on. Device and library versions are recorded but do not split stores (a resumed
# run may land on another machine). Versions hash the precision only when it is not float32, so
# every float32 version keeps the name it had before precision was recorded.
# How the layers are stored (float16, or uint8 codes) names a version too, and the same way: only
# when it is not float16.
WAVLM_IDENTITY = ("model", "revision", "layers", "normalize", "precision", "storage")


def wavlm_precision_of(info: dict) -> str:
    """The compute precision a WavLM description records; descriptions written before it was
    recorded say it in "dtype" ("float32", "autocast bfloat16", "autocast float16")."""
    if info.get("precision"):
        return info["precision"]
    dtype = str(info.get("dtype") or "float32")
    return dtype.removeprefix("autocast ") if dtype else "float32"


def wavlm_storage_of(info: dict | None) -> str:
    """How a WavLM description's layers are stored ("float16" before storage was recorded)."""
    return (info or {}).get("storage") or "float16"


def wavlm_identity(info: dict) -> dict:
    """What of `info` names a version (precision and storage only when they are not float32 and
    float16: see above)."""
    identity = {k: info.get(k) for k in WAVLM_IDENTITY if k not in ("precision", "storage")}
    if wavlm_precision_of(info) != "float32":
        identity["precision"] = wavlm_precision_of(info)
    if wavlm_storage_of(info) != "float16":
        identity["storage"] = wavlm_storage_of(info)
    return identity


def arrays_of(features, wavlm_storage: str = "float16") -> tuple[str, ...]:
    """The arrays a version with these features holds, e.g. ("wavlm",) -> ("wavlm", "wavlm_stats")
    (and "wavlm_scale" when the layers are stored as uint8 codes)."""
    unknown = sorted(set(features) - set(FEATURE_ARRAYS))
    if unknown:
        raise StoreError(f"unknown feature(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(FEATURE_ARRAYS)}")
    names = [a for f, arrays in FEATURE_ARRAYS.items() if f in features for a in arrays]
    if "wavlm" in features and wavlm_storage == "uint8":
        names.append(SCALE_ARRAYS["wavlm"])
    return tuple(names)


def array_dtype(name: str, wavlm_storage: str = "float16") -> str:
    """The dtype an array is stored in: float16, but uint8 WavLM codes and their float32 scale."""
    if name in SCALE_ARRAYS.values():
        return "float32"
    return "uint8" if name == "wavlm" and wavlm_storage == "uint8" else "float16"


def wavlm_differences(want: dict, have: dict) -> list[str]:
    """How the WavLM that made `have` differs from `want` in what names a version ([] when the
    same). Keys `want` does not record (runs of older versions) are not compared."""
    def plain(v):
        return list(v) if isinstance(v, (list, tuple)) else v
    want = {**want, "precision": wavlm_precision_of(want)} if "dtype" in want or "precision" in want else want
    want = {**want, "storage": wavlm_storage_of(want)}
    have = {**have, "precision": wavlm_precision_of(have), "storage": wavlm_storage_of(have)}
    return [f"{k}: {plain(have.get(k))!r} instead of {plain(want[k])!r}" for k in WAVLM_IDENTITY
            if k in want and plain(want[k]) != plain(have.get(k))]


def version_config(frontend: dict, frontend_hash: str, features, wavlm: dict | None,
                   variant: dict | None, shapes: dict, windows: dict | None = None) -> tuple[dict, str]:
    """What a version records, and its name: the hash of everything that determines the features
    (frontend, features, dtype, variant, WavLM's identity, and the window protocol when it is not
    the centre crop: absent from every centre version, whose names stay what they were). Change
    any of it and a new version is written beside the old. `shapes` (array -> per-clip shape) is
    recorded, not hashed: the rest determines it, and `store verify` checks the arrays against it."""
    config = {"frontend": frontend, "frontend_hash": frontend_hash, "features": sorted(features),
              "dtype": "float16", "wavlm": wavlm, "variant": variant}
    if windows:
        config["windows"] = windows
    identity = {**config, "wavlm": wavlm and wavlm_identity(wavlm)}
    config["shapes"] = {name: [int(d) for d in shape] for name, shape in shapes.items()}
    return config, version_name(identity)


def parse_store_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'PATH[@VERSION][:SPLIT]' -> (path, version, split). A ':' inside a URL scheme (s3://) or a
    Windows drive is not a split separator."""
    path, split = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail and "/" not in tail and not tail.startswith("//") and len(head) > 1:
        path, split = head, tail
    version = None
    if "@" in path.rsplit("/", 1)[-1]:
        path, version = path.rsplit("@", 1)
    return path, version, split


@dataclass
class FeatureStore:
    """One version of a store, opened for reading."""

    path: str
    version: str
    group: zarr.Group
    _arrays: dict = field(default_factory=dict, repr=False, compare=False)
    _readers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def config(self) -> dict:
        return self.attrs["config"]

    def fit_problems(self, reads, frontend_hash: str | None, wavlm: dict | None, head: str) -> list[str]:
        """Why this version's features cannot feed `head`, which reads the arrays `reads` and was
        trained on features of `frontend_hash` and `wavlm` ([] when they can). The one
        compatibility rule: train, evaluate and score all ask it."""
        where, problems = f"{self.path}@{self.version}", []
        missing = [f for f in reads if f not in self.feature_names]
        if missing:
            problems.append(f"{head} reads {', '.join(reads)}, but {where} lacks {', '.join(missing)}; it has only "
                            f"{', '.join(self.feature_names) or 'no features'}: featurize it with --features "
                            f"{','.join(reads)}")
        have = self.config.get("frontend_hash")
        if frontend_hash is not None and have != frontend_hash:
            problems.append(f"different frontends: {where} was featurized with frontend {have}, {head}'s "
                            f"features with {frontend_hash}; featurize it with the same frontend config")
        if "wavlm" in reads and wavlm is not None:
            differ = wavlm_differences(wavlm, self.config.get("wavlm") or {})
            if differ:
                problems.append(f"{where} holds features of another WavLM than {head}'s ({'; '.join(differ)}); "
                                "featurize it with the same --wavlm, --wavlm-layers and --wavlm-storage")
        return problems

    def row_format(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of one row of `name` as read: as stored, but float16 for uint8 codes."""
        arr = self.array(name)
        return tuple(arr.shape[1:]), np.dtype(np.float16) if name in self._scales else arr.dtype

    def row_nbytes(self, name: str) -> int:
        """Bytes of one row of `name` as read (what a loader holds)."""
        shape, dtype = self.row_format(name)
        return int(np.prod(shape)) * dtype.itemsize

    def read_rows(self, names, rows) -> dict[str, np.ndarray]:
        """Rows of feature arrays, in the order given, one new buffer per array (read_rows_into).
        The loader and `score` both read here."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {}
        for name in names:
            shape, dtype = self.row_format(name)
            out[name] = np.empty((len(rows), *shape), dtype)
            self.read_rows_into(name, rows, list(out[name]))
        return out

    def read_rows_into(self, name: str, rows, targets: list) -> None:
        """Rows of one array, each into its target (an array of one row's shape: a row of a buffer,
        or a slot of a training batch). Every chunk holding a wanted row is read whole and once,
        in any order of `rows`: raw chunks by one scatter read straight into the targets
        (shards.py), others decoded by zarr a whole chunk at a time."""
        arr = self.array(name)
        step = arr.chunks[0]
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        chunk = rows[order] // step
        bounds = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(rows)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a == b:
                continue
            start = int(chunk[a]) * step
            wanted: list = [None] * min(step, arr.shape[0] - start)
            again = []                 # a row asked for twice: copied from its first target
            for i in order[a:b]:
                local = int(rows[i]) - start
                if wanted[local] is None:
                    wanted[local] = targets[i]
                else:
                    again.append((targets[i], wanted[local]))
            self._read_chunk(name, start, wanted)
            for target, first in again:
                target[...] = first

    @cached_property
    def _scales(self) -> dict[str, str]:
        """Array -> its scale array, for the arrays this version stores as uint8 codes."""
        with reading_metadata(self.path):
            return {name: scale for name, scale in SCALE_ARRAYS.items()
                    if scale in self.group and name in self.group and self.group[name].dtype == np.uint8}

    def _read_chunk(self, name: str, start: int, targets: list) -> None:
        """One whole chunk's rows into `targets` (None: not wanted); uint8 codes are read with
        their scales' chunk and come back dequantized (quantize.py)."""
        if name not in self._scales:
            self._read_stored(name, start, targets)
            return
        import torch

        from dfdetect.store.quantize import dequantize

        row, scale_row = self.array(name).shape[1:], self.array(self._scales[name]).shape[1:]
        codes, scales = _work((len(targets), *row), np.uint8), _work((len(targets), *scale_row), np.float32)
        work = torch.from_numpy(_work(row, np.float32))
        self._read_stored(name, start, [None if t is None else c for t, c in zip(targets, codes)])
        self._read_stored(self._scales[name], start, [None if t is None else c for t, c in zip(targets, scales)])
        for target, code, scale in zip(targets, codes, scales):
            if target is not None:
                dequantize(torch.from_numpy(code), torch.from_numpy(scale), torch.from_numpy(target), work)

    def _read_stored(self, name: str, start: int, targets: list) -> None:
        """One whole chunk, its rows into `targets` (None: not wanted); a chunk that fails to decode
        (its CRC32C, a cut-off shard) is a StoreError naming the store, the array and the rows, not
        a codec's traceback."""
        direct = self._direct(name)
        try:
            if direct is not None:
                direct.read_into(start, targets)
            else:
                block = self.array(name)[start:start + len(targets)]
                for target, row in zip(targets, block):
                    if target is not None:
                        target[...] = row
        except (ValueError, RuntimeError, IndexError, TypeError, OSError) as e:  # what bad bytes raise
            where = f"{self.path}@{self.version}"
            raise StoreError(
                f"{where}: array {name!r}, rows {start}-{start + len(targets) - 1}, cannot be read "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'}): the store "
                f"is damaged. `dfdetect store verify {where}` lists every damaged chunk; featurize into a new "
                "--out (or restore the store from a copy)") from None

    def _direct(self, name: str) -> ShardFiles | None:
        """The raw-shard reader of an array (None: zarr reads it), made once."""
        if name not in self._readers:
            self._readers[name] = ShardFiles.of(self.array(name))
        return self._readers[name]

    @property
    def n_clips(self) -> int:
        return int(self.attrs["n_clips"])

    @property
    def windows(self) -> dict | None:
        """The window protocol the version was written under (featurize/windows.py's
        WindowProtocol.to_dict()); None: one centre crop per clip."""
        return self.config.get("windows")

    def files(self, rows: np.ndarray) -> np.ndarray:
        """Each row's file: its window table's `file` (a centre version's rows are files)."""
        return self.meta["file"][rows] if self.windows else np.asarray(rows)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def array_names(self) -> list[str]:
        """The feature arrays this version stores (uint8 codes' scales included)."""
        with reading_metadata(self.path):
            return [k for k in ARRAY_NAMES if k in self.group]

    @property
    def feature_names(self) -> list[str]:
        """The features rows can be read of (scales are read with their codes)."""
        return [k for k in self.array_names if k not in SCALE_ARRAYS.values()]

    def array(self, name: str) -> zarr.Array:
        """A feature array, opened once (opening reads its metadata: ~1 ms, as long as decoding a
        few rows)."""
        if name not in self._arrays:
            if name not in self.group:
                raise StoreError(f"{self.path}@{self.version} has no array {name!r} "
                                 f"(it has {', '.join(self.feature_names)}); featurize with it first")
            with reading_metadata(self.path):
                self._arrays[name] = self.group[name]
        return self._arrays[name]

    @cached_property
    def meta(self) -> dict[str, np.ndarray]:
        """Every metadata column, read whole (one small read per column)."""
        with reading_metadata(self.path):
            g = self.group["meta"]
            return {name: g[name][:] for name in g.array_keys()}

    def rows(self, split: str | None = None, status: str | None = OK) -> np.ndarray:
        """Row indices of a split (None: all) with the given status (None: any)."""
        keep = np.ones(self.n_clips, bool)
        if split is not None:
            keep &= self.meta["split"] == split
        if status is not None:
            keep &= self.meta["status"] == status
        return np.flatnonzero(keep)


_WORK = threading.local()


def _work(shape: tuple, dtype) -> np.ndarray:
    """A buffer of this reader thread's, reused from chunk to chunk (uint8 codes and their
    dequantization: reusing them streams 1.3x faster than allocating them per chunk)."""
    buffers = _WORK.__dict__.setdefault("buffers", {})
    key = (tuple(shape), np.dtype(dtype).str)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype)
    return buffers[key]


def list_versions(path: str) -> dict[str, dict]:
    """version name -> attrs, for every version group in a store."""
    try:
        with reading_metadata(path):
            root = zarr.open_group(path, mode="r")
            return _versions(path, root)
    except zarr.errors.ContainsArrayError:
        raise StoreError(f"{path} is a Zarr array, not a dfdetect feature store (give the *.zarr folder)") from None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"no feature store at {path} ({e}); create one with `dfdetect featurize`") from None


def _versions(path: str, root: zarr.Group) -> dict[str, dict]:
    if "dfdetect_store" not in root.attrs:
        raise StoreError(f"{path} is a Zarr group but not a dfdetect feature store")
    return {name: dict(g.attrs) for name, g in root.groups() if name.startswith(VERSION_PREFIX)}


def open_store(spec: str, version: str | None = None, require_complete: bool = True) -> FeatureStore:
    """Open 'PATH[@VERSION]' for reading: the named version, else the newest complete one."""
    path, spec_version, _ = parse_store_spec(spec)
    version = version or spec_version
    versions = list_versions(path)
    if version is None:
        candidates = sorted((a.get("created", ""), name) for name, a in versions.items()
                            if a.get("complete") or not require_complete)
        if not candidates:
            state = ", ".join(f"{n} ({'complete' if a.get('complete') else 'incomplete'})"
                              for n, a in versions.items()) or "none"
            raise StoreError(f"{path} has no complete version (versions: {state}); rerun the same "
                             "`dfdetect featurize` command to finish it")
        version = candidates[-1][1]
    elif version not in versions:
        raise StoreError(f"{path} has no version {version!r}; it has: {', '.join(versions) or 'none'}")
    with reading_metadata(path):
        store = FeatureStore(path, version, zarr.open_group(path, mode="r", path=version))
    if require_complete and not store.complete:
        raise StoreError(f"{path}@{version} is incomplete; rerun its `dfdetect featurize` command to finish it")
    return store
