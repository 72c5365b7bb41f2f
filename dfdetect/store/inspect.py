"""Looking at feature stores from the outside: list them, describe one, verify every chunk, export.

Everything here returns plain data (dicts, lists, numbers, strings) that `dfdetect store ...`
renders as tables or JSON; nothing prints. Bad input (a path that is not a store, an unknown
version, a store without versions) raises `StoreError` with a one-line message.

    find_stores(DIR)            every store under DIR, one row per version           (store ls)
    store_info("s.zarr@v-..")   arrays, config, counts, files and windows of one version (store info)
    verify_store("s.zarr")      read every chunk, check shapes, finiteness, metadata  (store verify)
    export_hdf5("s.zarr", "x.h5", arrays=["mel"], split="train", status="ok")        (store export)
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import time
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import zarr

from dfdetect import __version__
from dfdetect.errors import check_output
from dfdetect.locks import ExclusiveLock
from dfdetect.store.schema import (
    ARRAY_NAMES,
    CLIP_COLUMNS,
    ERROR,
    OK,
    OUTCOME_COLUMNS,
    RECORDING_COLUMNS,
    SILENT_WINDOW,
    VERSION_PREFIX,
    WINDOW_COLUMNS,
    FeatureStore,
    StoreError,
    array_dtype,
    arrays_of,
    list_versions,
    open_store,
    parse_store_spec,
    wavlm_storage_of,
)

STATUSES = (OK, ERROR)
# Largest decoded slab read at once by verify (whole shards when they fit, else chunk rows).
READ_BYTES = 64 * 2 ** 20
MAX_PROBLEMS = 50


# -- helpers ------------------------------------------------------------------------------------
def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _dir_size(path: str) -> int | None:
    """Sum of the file sizes under a local folder; None for remote stores."""
    if "://" in path:
        return None
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def open_version(spec: str, require_complete: bool = False) -> tuple[FeatureStore, dict[str, dict]]:
    """The version named in 'PATH[@VERSION]' (else the newest, complete or not) and every
    version's attrs."""
    path, version, _ = parse_store_spec(spec)
    versions = list_versions(path)
    if not versions:
        raise StoreError(f"{path} is a dfdetect store without any version; write one with `dfdetect featurize`")
    return open_store(spec, require_complete=require_complete), versions


def _runs(rows) -> list[tuple[int, int]]:
    """Sorted row indices -> inclusive (first, last) runs of consecutive rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [rows.size - 1]])
    return [(int(rows[a]), int(rows[b])) for a, b in zip(starts, stops)]


def _rows_text(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


def _has(first: int, last: int) -> str:
    return "has" if first == last else "have"


def _codec_text(codec) -> str:
    try:
        d = codec.to_dict()
    except Exception:
        return type(codec).__name__
    conf = d.get("configuration") or {}
    inner = ", ".join(f"{k}={v}" for k, v in conf.items())
    return f"{d.get('name', type(codec).__name__)}({inner})" if inner else str(d.get("name"))


def _codecs(arr: zarr.Array) -> list[str]:
    out = [_codec_text(c) for c in arr.filters]
    if arr.serializer is not None:
        out.append(_codec_text(arr.serializer))
    out += [_codec_text(c) for c in arr.compressors]
    return out


def _dtype_text(dtype) -> str:
    return "str" if getattr(dtype, "kind", "?") in "OUT" else str(dtype)


def _arrays(group: zarr.Group) -> list[tuple[str, str, zarr.Array]]:
    """(name, kind, array) of every array in a version: features, meta columns, block_done."""
    out = [(n, "feature", group[n]) for n in ARRAY_NAMES if n in group]
    if "meta" in group:
        meta = group["meta"]
        out += [(f"meta/{n}", "meta", meta[n]) for n in sorted(meta.array_keys())]
    if "block_done" in group:
        out.append(("block_done", "index", group["block_done"]))
    known = {n for n, _, _ in out}
    out += [(n, "other", a) for n, a in sorted(group.arrays()) if n not in known]
    return out


def _block_counts(attrs: dict, group: zarr.Group) -> tuple[int | None, int | None]:
    try:
        done = group["block_done"][:]
        return int((done == 1).sum()), int(done.size)
    except Exception:
        n, size = attrs.get("n_clips"), attrs.get("block_size")
        return None, (-(-int(n) // int(size)) if n and size else None)


# -- ls -----------------------------------------------------------------------------------------
def _is_store_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "dfdetect_store" in (meta.get("attributes") or {})


def find_stores(root: str | Path) -> list[dict]:
    """One row per version of every store under `root` (recursively; stores are not entered)."""
    root = str(root)
    if not os.path.isdir(root):
        raise StoreError(f"{root} is not a folder")
    found = []
    if _is_store_dir(root):
        found.append(root)
    else:
        for folder, subdirs, _ in os.walk(root):
            keep = []
            for name in sorted(subdirs):
                full = os.path.join(folder, name)
                if name.startswith("."):
                    continue  # hidden folders (.git, .venv, ...) hold no stores worth listing
                if name.endswith(".zarr"):
                    if _is_store_dir(full):
                        found.append(full)
                    continue  # a store, or some other Zarr hierarchy: do not walk its chunks
                keep.append(name)
            subdirs[:] = keep
    rows = []
    for path in sorted(found):
        rows.extend(_store_rows(path))
    return rows


def _store_rows(path: str) -> list[dict]:
    try:
        root = zarr.open_group(path, mode="r")
        root_attrs = dict(root.attrs)
        versions = {name: g for name, g in root.groups() if name.startswith(VERSION_PREFIX)}
    except Exception as e:
        return [{"store": path, "dataset": None, "version": None, "problem": f"{type(e).__name__}: {e}"}]
    base = {"store": path, "dataset": root_attrs.get("dataset")}
    if not versions:
        return [{**base, "version": None, "clips": 0, "problem": "no versions"}]
    rows = []
    for name, group in sorted(versions.items(), key=lambda kv: str(kv[1].attrs.get("created", ""))):
        attrs = dict(group.attrs)
        row = {**base, "version": name, "clips": attrs.get("n_clips"), "ok": None, "errors": None,
               "complete": bool(attrs.get("complete", False)), "blocks_done": None, "blocks": None,
               "features": [n for n in ARRAY_NAMES if n in group],
               "windows": (attrs.get("config") or {}).get("windows"),
               "clip_seconds": ((attrs.get("config") or {}).get("frontend") or {}).get("clip_seconds"),
               "size_bytes": _dir_size(os.path.join(path, name)), "created": attrs.get("created")}
        row["blocks_done"], row["blocks"] = _block_counts(attrs, group)
        try:
            status = group["meta/status"][:]
            row["ok"], row["errors"] = int((status == OK).sum()), int((status == ERROR).sum())
        except Exception as e:
            row["problem"] = f"cannot read meta/status ({type(e).__name__}: {e})"
        rows.append(row)
    return rows


# -- info ---------------------------------------------------------------------------------------
def array_info(name: str, kind: str, arr: zarr.Array) -> dict:
    try:
        stored = int(arr.nbytes_stored())
    except Exception:
        stored = None
    nbytes = int(arr.nbytes)
    return {
        "name": name, "kind": kind, "shape": list(arr.shape), "dtype": _dtype_text(arr.dtype),
        "chunks": list(arr.chunks), "shards": list(arr.shards) if arr.shards else None,
        "codecs": _codecs(arr), "nbytes": nbytes, "nbytes_stored": stored,
        "ratio": (nbytes / stored) if stored else None,
        # what one more clip costs on disk: the number that sizes a corpus-scale store
        "stored_per_clip": (stored / arr.shape[0]) if stored and arr.shape and arr.shape[0] else None,
    }


def _counts(meta: dict[str, np.ndarray]) -> dict:
    label = meta.get("label")
    split = meta.get("split")
    status = meta.get("status")
    n = len(next(iter(meta.values()))) if meta else 0
    split = split if split is not None else np.full(n, "?", object)
    status_text = [str(s) or "(pending)" for s in status] if status is not None else ["?"] * n
    by_split: dict[str, Counter] = {}
    for s, lab in zip(split, label if label is not None else [None] * n):
        key = {0: "real", 1: "fake"}.get(None if lab is None else int(lab), "other")
        by_split.setdefault(str(s), Counter())[key] += 1
    by_status = Counter(status_text)
    error_kinds: Counter = Counter()
    if status is not None and "error_kind" in meta:
        error_kinds.update(str(k) or "(none)" for k in meta["error_kind"][status == ERROR])
    by_split_status: dict[str, Counter] = {}
    for s, st in zip(split, status_text):
        by_split_status.setdefault(str(s), Counter())[st] += 1
    generators: Counter = Counter()
    if label is not None and "generator" in meta:
        generators.update(str(g) or "(unknown)" for g in meta["generator"][label == 1])
    return {
        "by_split": {s: {"real": c.get("real", 0), "fake": c.get("fake", 0),
                         **({"other": c["other"]} if c.get("other") else {}), "total": sum(c.values())}
                     for s, c in sorted(by_split.items())},
        "by_status": dict(sorted(by_status.items())),
        "by_split_status": {s: dict(sorted(c.items())) for s, c in sorted(by_split_status.items())},
        "error_kinds": dict(error_kinds.most_common()),
        "fake_by_generator": dict(sorted(generators.items())),
    }


def coverage(meta: dict[str, np.ndarray], config: dict, stored_bytes: int) -> dict:
    """What the version's rows cover and what that costs on disk. A windowed version: its files
    (distinct `file`), rows, ok and silent windows, windows per file, the audio hours of its files
    and stored bytes per audio-hour. A centre version keeps one crop per file, so its files are its
    rows and the length of a file says nothing about its cost: bytes per stored clip instead."""
    frontend = config.get("frontend") or {}
    status = meta.get("status")
    n = len(status) if status is not None else 0
    base = {"windows": config.get("windows"), "clip_seconds": frontend.get("clip_seconds"), "rows": n,
            "ok": int((status == OK).sum()) if status is not None else None}
    if not config.get("windows"):
        return {**base, "files": n, "bytes_per_clip": stored_bytes / n if n else None,
                "audio_hours": None, "bytes_per_audio_hour": None,
                "note": f"a centre crop keeps {base['clip_seconds'] or 3:g} s of each file whatever its length, so "
                        "bytes per audio-hour would not size this store; bytes per stored clip does"}
    if "file" not in meta or "file_samples" not in meta:
        return {**base, "problem": "windowed version without meta/file or meta/file_samples"}
    files, first, rows = np.unique(meta["file"], return_index=True, return_counts=True)
    # a file that could not be decoded keeps one error row and has no window
    per_file = np.minimum(rows, meta["file_windows"][first]) if "file_windows" in meta else rows
    seconds = meta["file_samples"][first].astype(np.float64).sum() / int(frontend.get("sample_rate") or 16000)
    hours = float(seconds) / 3600
    kinds = meta.get("error_kind")
    silent = int((kinds == SILENT_WINDOW).sum()) if kinds is not None else 0
    errors = int((status == ERROR).sum()) - silent if status is not None else 0
    by_split = Counter(str(s) for s in meta["split"][first]) if "split" in meta else Counter()
    return {**base, "files": int(files.size), "ok_windows": base["ok"], "silent_windows": silent,
            "other_error_rows": errors,
            "windows_per_file": {"min": int(per_file.min()), "median": float(np.median(per_file)),
                                 "max": int(per_file.max())} if files.size else None,
            "files_by_split": dict(sorted(by_split.items())),
            "audio_hours": hours, "bytes_per_audio_hour": stored_bytes / hours if hours else None,
            "note": _cost_note(config["windows"])}


def _cost_note(windows: dict) -> str:
    if windows.get("keep") == "all":
        return "every window of a file is a row, so a file costs disk in proportion to its length"
    return (f"up to {windows.get('keep')} windows of a file are rows, so a file costs disk in proportion to its "
            "length up to that many windows")


def store_info(spec: str) -> dict:
    """Everything about one version (the named one, else the newest): arrays, config, counts."""
    store, versions = open_version(spec)
    attrs = store.attrs
    group = store.group
    root_attrs = dict(zarr.open_group(store.path, mode="r").attrs)
    arrays = [array_info(n, k, a) for n, k, a in _arrays(group)]
    total = sum(a["nbytes"] for a in arrays)
    stored = sum(a["nbytes_stored"] or 0 for a in arrays)
    blocks_done, n_blocks = _block_counts(attrs, group)
    config = attrs.get("config") or {}
    wavlm = config.get("wavlm")
    meta = {}
    meta_problems = []
    for name in (group["meta"].array_keys() if "meta" in group else []):
        try:
            meta[name] = group["meta"][name][:]
        except Exception as e:
            meta_problems.append(f"meta/{name}: {type(e).__name__}: {e}")
    return {
        "store": store.path,
        "version": store.version,
        "dataset": root_attrs.get("dataset"),
        "dataset_root": root_attrs.get("dataset_root"),
        "versions": [{"version": name, "complete": bool(a.get("complete", False)),
                      "created": a.get("created"), "clips": a.get("n_clips"),
                      "features": (a.get("config") or {}).get("features"),
                      "windows": (a.get("config") or {}).get("windows"),
                      "shown": name == store.version}
                     for name, a in sorted(versions.items(), key=lambda kv: str(kv[1].get("created", "")))],
        "n_clips": attrs.get("n_clips"),
        "block_size": attrs.get("block_size"),
        "complete": bool(attrs.get("complete", False)),
        "blocks_done": blocks_done,
        "blocks": n_blocks,
        "created": attrs.get("created"),
        "dfdetect_version": attrs.get("dfdetect_version"),
        "config_hash": attrs.get("config_hash"),
        "clip_table_hash": attrs.get("clip_table_hash"),
        "features": config.get("features"),
        "frontend": config.get("frontend"),
        "frontend_hash": config.get("frontend_hash"),
        "wavlm": wavlm,
        "wavlm_layers": (wavlm or {}).get("layers"),
        "wavlm_storage": wavlm_storage_of(wavlm) if wavlm else None,
        "config": config,
        "arrays": arrays,
        "nbytes": total,
        "nbytes_stored": stored,
        "ratio": total / stored if stored else None,
        "counts": _counts(meta),
        "coverage": coverage(meta, config, stored),
        "recording_statistics": {"version": attrs.get("recording_statistics"),
                                 "columns": [name for name in RECORDING_COLUMNS if name in meta]},
        "problems": meta_problems,
    }


# -- verify -------------------------------------------------------------------------------------
class _Problems:
    def __init__(self, limit: int):
        self.limit, self.items, self.count = limit, [], 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(message)


def _sync_keys(arr: zarr.Array) -> set[str]:
    """Every stored key under an array (one listing), relative to the store root."""
    from zarr.core.sync import sync

    async def collect():
        return {k async for k in arr.store.list_prefix(arr.path + "/")}

    return sync(collect())


def _expected_shapes(config: dict) -> dict:
    """Per-clip shape of each array, as its version recorded it (versions written before shapes
    were recorded: none, so only shapes the arrays agree on among themselves are checked)."""
    return {name: tuple(shape) for name, shape in (config.get("shapes") or {}).items()}


def _chunk_regions(arr: zarr.Array, start: int, stop: int):
    """(chunk coords, selection) of every chunk overlapping rows [start, stop)."""
    chunks = arr.chunks
    first, last = start // chunks[0], (stop - 1) // chunks[0]
    rest = [range(math.ceil(s / c)) for s, c in zip(arr.shape[1:], chunks[1:])]
    for coords in product(range(first, last + 1), *rest):
        sel = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coords, chunks, arr.shape))
        yield coords, sel


def _n_chunks(arr: zarr.Array, start: int, stop: int) -> int:
    if stop <= start:
        return 0
    per_row = math.prod(math.ceil(s / c) for s, c in zip(arr.shape[1:], arr.chunks[1:]))
    return ((stop - 1) // arr.chunks[0] - start // arr.chunks[0] + 1) * per_row


def _shard_key(arr: zarr.Array, chunk_coords) -> str:
    unit = arr.shards or arr.chunks
    coords = tuple(c * k // u for c, k, u in zip(chunk_coords, arr.chunks, unit))
    return f"{arr.basename}/" + arr.metadata.chunk_key_encoding.encode_chunk_key(coords)


class _Reader:
    """Reads row ranges of arrays, pinning decode failures to single chunks."""

    def __init__(self, problems: _Problems):
        self.problems = problems
        self.chunks = 0
        self.bytes = 0

    def read(self, name: str, arr: zarr.Array, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) and a mask of the rows that could not be decoded."""
        self.chunks += _n_chunks(arr, start, stop)
        bad = np.zeros(stop - start, bool)
        try:
            data = arr[start:stop]
            self.bytes += data.nbytes
            return data, bad
        except Exception:
            pass
        # Something in the range failed: read chunk by chunk to say which one.
        fill = arr.fill_value if arr.dtype.kind not in "OTU" else ""
        data = np.full((stop - start, *arr.shape[1:]), fill, dtype=arr.dtype)
        for coords, sel in _chunk_regions(arr, start, stop):
            rows = slice(max(sel[0].start, start), min(sel[0].stop, stop))
            try:
                block = arr[(rows, *sel[1:])]
                self.bytes += block.nbytes
            except Exception as e:
                self.problems.add(
                    f"{name}: cannot read chunk {coords} ({_rows_text(rows.start, rows.stop - 1)}, "
                    f"in shard {_shard_key(arr, coords)}): {type(e).__name__}: {e}")
                bad[rows.start - start:rows.stop - start] = True
                continue
            data[(slice(rows.start - start, rows.stop - start), *sel[1:])] = block
        return data, bad


def verify_store(spec: str, max_problems: int = MAX_PROBLEMS) -> dict:
    """Read every chunk of every array of one version and check it against the layout.

    Returns {"ok": bool, "problems": [first max_problems messages], "n_problems": all of them,
    "arrays", "chunks_read", "bytes_read", "seconds", ...}."""
    t0 = time.perf_counter()
    store, _ = open_version(spec)
    group, attrs, label = store.group, store.attrs, f"{store.path}@{store.version}"
    problems = _Problems(max_problems)
    reader = _Reader(problems)
    try:
        n = int(attrs["n_clips"])
        block_size = int(attrs["block_size"])
        if n < 0 or block_size <= 0:
            raise ValueError(f"n_clips={n}, block_size={block_size}")
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{label}: unusable n_clips / block_size attributes ({e})") from None
    done_rows, n_blocks_arrays = _verify_blocks(group, attrs, n, block_size, reader, problems)
    meta, n_meta_arrays = _verify_meta(group, n, done_rows, reader, problems)
    status = meta.get("status")
    ok_rows = done_rows & (status == OK) if status is not None else None
    error_rows = done_rows & (status == ERROR) if status is not None else None
    n_feature_arrays = _verify_features(store, attrs.get("config") or {}, n, ok_rows, error_rows, reader, problems)
    n_arrays = n_blocks_arrays + n_meta_arrays + n_feature_arrays
    return {
        "store": store.path, "version": store.version, "n_clips": n, "complete": bool(attrs.get("complete")),
        "ok": problems.count == 0, "problems": problems.items, "n_problems": problems.count,
        "arrays": n_arrays, "chunks_read": reader.chunks, "bytes_read": reader.bytes,
        "seconds": time.perf_counter() - t0,
    }


def _verify_blocks(group, attrs: dict, n: int, block_size: int, reader: _Reader,
                   problems: _Problems) -> tuple[np.ndarray, int]:
    """Which rows belong to blocks marked done, and whether the version says complete."""
    n_blocks, n_arrays = -(-n // block_size), 0
    done_rows = np.zeros(n, bool)
    if "block_done" not in group:
        problems.add("block_done: array missing")
    else:
        arr = group["block_done"]
        n_arrays += 1
        if arr.shape != (n_blocks,):
            problems.add(f"block_done: shape {list(arr.shape)}, expected [{n_blocks}] "
                         f"({n} clips in blocks of {block_size})")
        done, bad = reader.read("block_done", arr, 0, arr.shape[0])
        done = np.where(bad, 0, done)
        for b in np.flatnonzero(done[:n_blocks] == 1):
            done_rows[b * block_size:(b + 1) * block_size] = True
        missing = np.flatnonzero(done[:n_blocks] != 1)
        if arr.shape[0] < n_blocks:
            missing = np.union1d(missing, np.arange(arr.shape[0], n_blocks))
        for first, last in _runs(missing):
            what = f"block {first}" if first == last else f"blocks {first}-{last}"
            problems.add(f"block_done: {what} not done (rows {first * block_size}-"
                         f"{min((last + 1) * block_size, n) - 1}); rerun the featurize command to finish")
    if not attrs.get("complete", False):
        problems.add(f"version attribute complete is {attrs.get('complete')!r}, not true: the featurize "
                     "run did not finish")
    return done_rows, n_arrays


def _verify_meta(group, n: int, done_rows: np.ndarray, reader: _Reader,
                 problems: _Problems) -> tuple[dict[str, np.ndarray], int]:
    """Every metadata column present, one value per clip, readable and consistent."""
    meta: dict[str, np.ndarray] = {}
    meta_group = group["meta"] if "meta" in group else None
    if meta_group is None:
        problems.add("meta: group missing")
    present = sorted(meta_group.array_keys()) if meta_group is not None else []
    windowed = bool((group.attrs.get("config") or {}).get("windows"))   # a row per window: its file index too
    for name in (*CLIP_COLUMNS, *OUTCOME_COLUMNS, *(WINDOW_COLUMNS if windowed else ())):
        if meta_group is not None and name not in present:
            problems.add(f"meta/{name}: column missing")
    for name in present:
        arr = meta_group[name]
        if arr.ndim != 1 or arr.shape[0] != n:
            problems.add(f"meta/{name}: shape {list(arr.shape)}, expected [{n}] (one value per clip)")
        values, bad = reader.read(f"meta/{name}", arr, 0, arr.shape[0]) if arr.ndim == 1 else (None, None)
        if values is not None and values.shape[0] == n and not bad.any():
            meta[name] = values
    _check_meta(meta, done_rows, problems)
    return meta, len(present)


def _verify_features(store: FeatureStore, config: dict, n: int, ok_rows, error_rows, reader: _Reader,
                     problems: _Problems) -> int:
    """The arrays the config's features write: present, of the recorded shapes, every chunk read."""
    shapes = _expected_shapes(config)
    storage = wavlm_storage_of(config.get("wavlm"))
    try:
        expected = set(arrays_of(config.get("features") or [], storage))
    except StoreError as e:
        problems.add(f"config: {e}")
        expected = set()
    for name in sorted(expected - set(store.array_names)):
        problems.add(f"{name}: array missing (the config lists feature {name.split('_')[0]!r})")
    for name in store.array_names:
        if name not in expected:
            problems.add(f"{name}: array present but feature not in the version config {sorted(expected)}")
        _verify_feature(name, store.group[name], n, shapes.get(name), array_dtype(name, storage), ok_rows,
                        error_rows, reader, problems)
    return len(store.array_names)


def _check_meta(meta: dict[str, np.ndarray], done_rows: np.ndarray, problems: _Problems) -> None:
    def report(rows, what):
        for first, last in _runs(rows):
            problems.add(f"meta: {_rows_text(first, last)}: {what}")

    if "label" in meta:
        label = meta["label"]
        bad = np.flatnonzero(~np.isin(label, (0, 1)))
        report(bad, f"label not 0 or 1 (found {sorted(set(label[bad].tolist()))[:5]})")
    if "clip_id" in meta:
        ids = meta["clip_id"].astype(object)
        _check_ids(ids, meta.get("file"), problems)
        empty = np.flatnonzero(ids == "")
        report(empty, "empty clip_id")
    status = meta.get("status")
    if status is None:
        return
    bad = np.flatnonzero(done_rows & ~np.isin(status, STATUSES))
    for first, last in _runs(bad):
        found = sorted({str(s) for s in status[first:last + 1]})[:3]
        problems.add(f"meta/status: {_rows_text(first, last)}: status {found} not in {{ok, error}}")
    ok = done_rows & (status == OK)
    err = done_rows & (status == ERROR)
    for column in ("error", "error_kind"):
        if column not in meta:
            continue
        text = meta[column]
        empty = text == ""
        report(np.flatnonzero(ok & ~empty), f"status ok but meta/{column} is not empty")
        report(np.flatnonzero(err & empty), f"status error but meta/{column} is empty")


def _check_ids(ids: np.ndarray, files: np.ndarray | None, problems: _Problems) -> None:
    """A clip id names one file: one row's in a centre version; in a windowed one (`files`: each
    row's file) every window of a file carries the file's id, and no two files share one."""
    rows = np.arange(len(ids))
    windowed = files is not None and len(files) == len(ids)
    if windowed:
        _, first, of_row = np.unique(files, return_index=True, return_inverse=True)
        for a, b in _runs(np.flatnonzero(ids != ids[first][of_row])):
            problems.add(f"meta/clip_id: {_rows_text(a, b)}: not the clip_id of the file's other windows")
        ids, rows = ids[first], first
    counts = Counter(ids.tolist())
    dups = [i for i, c in counts.items() if c > 1]
    if dups:
        examples = ", ".join(f"{d!r} (rows {', '.join(map(str, rows[ids == d][:4]))})" for d in dups[:3])
        across = " across files" if windowed else ""
        problems.add(f"meta/clip_id: {len(dups)} id(s) occur more than once{across}: {examples}")


def _verify_feature(name: str, arr: zarr.Array, n: int, shape, dtype: str, ok_rows, error_rows,
                    reader: _Reader, problems: _Problems) -> None:
    if arr.dtype != np.dtype(dtype):
        problems.add(f"{name}: dtype {arr.dtype}, expected {dtype}")
    if arr.shape[0] != n:
        problems.add(f"{name}: {arr.shape[0]} rows, expected {n} (n_clips)")
        ok_rows = error_rows = None
    if shape is not None:
        got = tuple(arr.shape[1:])
        if len(got) != len(shape) or any(e is not None and g != e for g, e in zip(got, shape)):
            want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            problems.add(f"{name}: per-clip shape {list(got)}, expected {want} from the version config")
    if arr.size == 0:
        return
    # Shards (the unit of writing) that must exist: every one holding an ok row.
    missing_rows = np.zeros(arr.shape[0], bool)
    unit = arr.shards or arr.chunks
    keys = None
    if ok_rows is not None:
        try:
            keys = _sync_keys(arr)
        except Exception as e:
            problems.add(f"{name}: cannot list the stored shards ({type(e).__name__}: {e}); "
                         "missing shards are only caught by the finiteness check")
    if keys is not None:
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key
        rest = [range(math.ceil(s / u)) for s, u in zip(arr.shape[1:], unit[1:])]
        for i in np.unique(np.flatnonzero(ok_rows) // unit[0]):
            first, last = int(i) * unit[0], min((int(i) + 1) * unit[0], n) - 1
            for coords in product([int(i)], *rest):
                key = encode(coords)
                if f"{arr.path}/{key}" not in keys:
                    n_ok = int(ok_rows[first:last + 1].sum())
                    problems.add(f"missing shard {name}/{key} ({_rows_text(first, last)}, {n_ok} ok rows)")
                    missing_rows[first:last + 1] = True
    # Read every chunk: whole shards when they fit in READ_BYTES, else runs of chunk rows.
    row_bytes = max(1, math.prod(arr.shape[1:]) * arr.dtype.itemsize)
    step = arr.chunks[0] * max(1, min(unit[0] // arr.chunks[0], READ_BYTES // (row_bytes * arr.chunks[0])))
    for start in range(0, arr.shape[0], step):
        stop = min(start + step, arr.shape[0])
        data, bad = reader.read(name, arr, start, stop)
        if ok_rows is None or data.dtype.kind != "f":   # uint8 codes: their scale holds the NaN
            continue
        flat = data.reshape(stop - start, -1)
        finite = np.isfinite(flat).all(axis=1)
        empty = np.isnan(flat).all(axis=1)
        skip = bad | missing_rows[start:stop]
        for first, last in _runs(np.flatnonzero(ok_rows[start:stop] & ~finite & ~skip) + start):
            problems.add(f"{name}: {_rows_text(first, last)} {_has(first, last)} status ok but non-finite values "
                         f"(missing chunk or NaN/Inf data)")
        for first, last in _runs(np.flatnonzero(error_rows[start:stop] & ~empty & ~skip) + start):
            problems.add(f"{name}: {_rows_text(first, last)} {_has(first, last)} status error but "
                         f"{'is' if first == last else 'are'} not all NaN")


# -- export -------------------------------------------------------------------------------------
def export_hdf5(spec: str, out: str | Path, arrays: list[str] | None = None, split: str | None = None,
                status: str = OK, force: bool = False) -> dict:
    """Write the selected rows of a complete version to an HDF5 file, block by block.

    Datasets: one per feature array ([rows, ...] float16, uint8 WavLM codes dequantized),
    `meta/<column>` for every metadata column (strings as UTF-8 variable length), `store_row`
    (the rows' indices in the store).
    File attributes: config (JSON), store, version, dfdetect_version, filters. Written beside `out`
    and renamed into place; the temporary files of exports killed before are removed."""
    t0 = time.perf_counter()
    out = Path(out)
    path, _, spec_split = parse_store_spec(spec)
    split = split or spec_split
    if status not in (OK, ERROR, "all"):
        raise StoreError(f"--status must be ok, error or all, not {status!r}")
    check_output("--out", out)
    store, _ = open_version(spec, require_complete=True)
    names = list(arrays) if arrays else store.feature_names
    unknown = [a for a in names if a not in store.feature_names]
    if unknown:
        raise StoreError(f"{store.path}@{store.version} has no feature array {', '.join(map(repr, unknown))}; "
                         f"it has {', '.join(store.feature_names) or 'none'}")
    meta = store.meta
    if split is not None and split not in set(meta["split"].tolist()):
        raise StoreError(f"{store.path}@{store.version} has no split {split!r}; it has "
                         f"{', '.join(sorted(set(meta['split'].tolist())))}")
    if out.exists() and not force:
        raise StoreError(f"{out} exists; pass --force to overwrite it")
    rows = store.rows(split=split, status=None if status == "all" else status)
    with _export_lock(out):
        raw = _write_hdf5(out, store, names, meta, rows, split, status)
    return {"out": str(out), "store": store.path, "version": store.version, "rows": int(len(rows)),
            "arrays": names, "meta_columns": sorted(meta), "split": split, "status": status,
            "bytes_written": out.stat().st_size, "bytes_raw": int(raw),
            "seconds": time.perf_counter() - t0}


def _export_lock(out: Path) -> ExclusiveLock:
    """One export per file (`FILE.lock` beside it, gone when the export ends)."""
    def busy(holder: str) -> StoreError:
        return StoreError(f"--hdf5 {out} is being written by another store export ({holder}); wait for it to "
                          "finish or choose another file")
    return ExclusiveLock(str(out), busy, remove=True)


def _temporary(out: Path) -> Path:
    """Where the export is written before its rename onto `out` (a hidden file beside it)."""
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def _remove_leftovers(out: Path) -> None:
    """The temporary files of exports to `out` that were killed (kill -9, power loss): with the
    export's lock held no other export writes one, so every file of that naming is a leftover.
    Nothing else is touched."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.\d+\.tmp")
    for file in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        if pattern.fullmatch(file.name) and file.is_file() and not file.is_symlink():
            file.unlink(missing_ok=True)


def _write_hdf5(out: Path, store: FeatureStore, names: list[str], meta: dict, rows: np.ndarray,
                split: str | None, status: str) -> int:
    """The export written to a temporary file and renamed onto `out` (a kill leaves the previous
    file); returns the bytes written (uncompressed)."""
    import h5py

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = _temporary(out)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "config": json.dumps(store.config, sort_keys=True),
                "store": os.path.abspath(store.path) if "://" not in store.path else store.path,
                "version": store.version, "dfdetect_version": __version__,
                "store_dfdetect_version": str(store.attrs.get("dfdetect_version", "")),
                "dataset": str(dict(zarr.open_group(store.path, mode="r").attrs).get("dataset", "")),
                "split": split or "", "status": status, "rows": len(rows), "arrays": json.dumps(names),
                "labels": "1 = fake (spoof), 0 = real (bona fide)",
            })
            raw = _write_hdf5_meta(f, meta, rows) + _write_hdf5_features(f, store, names, rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return raw


def _write_hdf5_meta(f, meta: dict[str, np.ndarray], rows: np.ndarray) -> int:
    """`store_row` and every metadata column of the rows; returns the bytes written (uncompressed)."""
    import h5py

    f.create_dataset("store_row", data=rows.astype(np.int64), **_h5_layout((len(rows),), 8))
    raw = rows.size * 8
    for column, values in sorted(meta.items()):
        values = values[rows]
        if values.dtype.kind in "OTU":
            data = np.asarray([str(v) for v in values], dtype=object)
            f.create_dataset(f"meta/{column}", data=data, dtype=h5py.string_dtype("utf-8"),
                             **_h5_layout(data.shape, 32))
            raw += sum(len(v.encode()) for v in data)
        else:
            f.create_dataset(f"meta/{column}", data=values, **_h5_layout(values.shape, values.itemsize))
            raw += values.nbytes
    return raw


def _write_hdf5_features(f, store: FeatureStore, names: list[str], rows: np.ndarray) -> int:
    """The feature arrays of the rows, one store block at a time (FeatureStore.read_rows: whole
    chunks); returns the bytes written (uncompressed)."""
    block_size = int(store.attrs["block_size"])
    groups = np.split(rows, np.flatnonzero(np.diff(rows // block_size)) + 1) if rows.size else []
    raw = 0
    for name in names:
        row_shape, dtype = store.row_format(name)      # as read: uint8 WavLM codes dequantized
        shape = (len(rows), *row_shape)
        ds = f.create_dataset(name, shape=shape, dtype=dtype, **_h5_layout(shape, dtype.itemsize))
        pos = 0
        for idx in groups:
            data = store.read_rows([name], idx)[name]
            ds[pos:pos + idx.size] = data
            pos += idx.size
            raw += data.nbytes
    return raw


def _h5_layout(shape: tuple, itemsize: int) -> dict:
    """Chunked (about 1 MiB per chunk, whole rows where they fit), gzip-compressed, growable."""
    row = max(1, math.prod(shape[1:]) * itemsize)
    rows = max(1, min(max(shape[0], 1), (2 ** 20) // row))
    return {"chunks": (rows, *shape[1:]), "maxshape": (None, *shape[1:]), "compression": "gzip",
            "compression_opts": 4, "shuffle": True}
