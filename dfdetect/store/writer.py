"""Creating a store version and writing it block by block (see schema.py for the layout).

Only the coordinator creates arrays (`create_version`); workers only call `write_block`, each on
its own shard-aligned row range, and mark the block done last.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from math import gcd

import numpy as np
import zarr

from dfdetect import __version__
from dfdetect.datasets import Clip
from dfdetect.errors import check_output
from dfdetect.locks import ExclusiveLock
from dfdetect.store.schema import (
    CLIP_COLUMNS,
    OPTIONAL_COLUMNS,
    OUTCOME_COLUMNS,
    RECORDING_STATISTICS_VERSION,
    STORE_FORMAT,
    StoreError,
    array_dtype,
    compressors,
    content_hash,
    meta_compressors,
    reading_metadata,
    wavlm_storage_of,
)
from dfdetect.store.shards import ShardFiles

# Rows per chunk (the unit of reading) for each feature array; shards hold a whole block.
# (A scale array's rows must match its codes': they are read chunk by chunk together.)
CHUNK_ROWS = {"mel": 16, "lfcc": 64, "wave": 16, "wavlm": 16, "wavlm_stats": 16, "wavlm_scale": 16}


def clip_table_hash(clips: list[Clip], columns: dict | None = None) -> str:
    """Identity of the rows: a resumed run must see the same clips (and windows) in the same order."""
    rows = [[c.clip_id, c.path, c.label, c.split] for c in clips]
    if columns:   # a windowed version: which window of which file each row is
        rows.append({name: np.asarray(values).tolist() for name, values in sorted(columns.items())})
    return content_hash(rows)


def StoreLock(store_path: str) -> ExclusiveLock:
    """The lock featurize holds on a local store while it writes (`NAME.zarr.lock`)."""
    return ExclusiveLock(store_path, lambda holder: StoreError(
        f"another featurize is writing {store_path} ({holder}); wait for it to finish, "
        "or write to a different --out"))


MAX_BLOCK_SIZE = 4096   # clips per block: a worker holds a block's features (WavLM: ~0.9 MB a clip)


def check_writable(path: str) -> None:
    """Before any work, that a store can be written at `path`: a local folder (or nothing yet), or
    a URL whose filesystem package (s3fs, gcsfs...) is installed. One line naming --out if not."""
    if "://" not in path:
        check_output("--out", path, folder=True)
        return
    import fsspec

    protocol = path.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise StoreError(f"--out {path}: {protocol}:// cannot be written here ({e}); install its fsspec "
                         "package (s3fs for s3://, gcsfs for gs://) or write to a local folder") from None


def create_version(path: str, version: str, config: dict, clips: list[Clip], shapes: dict,
                   block_size: int, dataset: str, dataset_root: str, columns: dict | None = None) -> zarr.Group:
    """Create (or reopen, when it matches) one version of a store; returns its group.

    `shapes` maps feature name -> per-clip shape; `columns`: a windowed version's WINDOW_COLUMNS
    (`clips` then holds each row's file). Reopening checks that the rows and the block
    size are the ones the version was started with, so a resumed run cannot mix two datasets. The
    version's attributes are its commit point: a version without them was cut off while being
    created (killed, a full disk), and is created again."""
    with _creating(path, version):
        with reading_metadata(path):
            root = zarr.open_group(path, mode="a")
            if "dfdetect_store" not in root.attrs:
                root.attrs.update({"dfdetect_store": STORE_FORMAT, "dataset": dataset,
                                   "dataset_root": dataset_root})
            if version in root and "clip_table_hash" not in root[version].attrs:
                # Its creation was cut off (killed, disk full): the attributes are written last, so
                # this holds no finished block. Created again; the store's other versions are untouched.
                del root[version]
            existing = root[version] if version in root else None
        table_hash = clip_table_hash(clips, columns)
        if existing is not None:
            group = existing
            attrs = group.attrs
            if attrs.get("clip_table_hash") != table_hash:
                raise StoreError(
                    f"{path}@{version} was started on a different clip list ({attrs.get('n_clips')} clips "
                    f"then, {len(clips)} now): the dataset changed. Write to a new --out, or delete "
                    f"{path} to start over")
            _remove_partial_writes(path)
            return group

        n = len(clips)
        group = root.create_group(version)
        storage = wavlm_storage_of(config.get("wavlm"))
        for name, shape in shapes.items():
            rows = gcd(CHUNK_ROWS[name], block_size)
            dtype = array_dtype(name, storage)
            group.create_array(
                name, shape=(n, *shape), dtype=dtype, fill_value=0 if dtype == "uint8" else np.nan,
                chunks=(rows, *shape) if name != "wavlm" else (rows, 1, *shape[1:]),
                shards=(block_size, *shape), compressors=compressors(),
            )
        meta = group.create_group("meta")
        table = {k: np.array([getattr(c, k) for c in clips]) for k in CLIP_COLUMNS}
        table["label"] = table["label"].astype(np.int8)
        for name, values in {**table, **(columns or {})}.items():
            _meta_array(meta, name, values.dtype if values.dtype.kind != "U" else str, n, block_size)[:] = values
        for name, dtype in {**OUTCOME_COLUMNS, **OPTIONAL_COLUMNS}.items():
            _meta_array(meta, name, dtype, n, block_size)
        n_blocks = -(-n // block_size)
        group.create_array("block_done", shape=(n_blocks,), dtype="int8", chunks=(1,), fill_value=0,
                           compressors=meta_compressors())
        group.attrs.update({   # last, in one write (zarr renames it into place): the version now exists
            "config": config, "config_hash": version, "clip_table_hash": table_hash, "n_clips": n,
            "block_size": block_size, "complete": False, "dfdetect_version": __version__,
            "recording_statistics": RECORDING_STATISTICS_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        })
        return group


@contextlib.contextmanager
def _creating(path: str, version: str):
    """A full disk (any OSError) while a version is created is one line; the rerun creates it again."""
    try:
        yield
    except OSError as e:
        raise StoreError(f"cannot create {path}@{version}: {e.strerror or e}; make room (or fix the folder) "
                         "and rerun the same command: the version is created again, other versions are "
                         "untouched") from None


def _remove_partial_writes(path: str) -> None:
    """A killed writer can leave zarr's temporary `*.partial` files behind; the blocks they belonged
    to are not marked done and will be rewritten, so the leftovers are only litter."""
    if "://" in path:
        return
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial"):
                os.remove(os.path.join(folder, name))


def _meta_array(meta: zarr.Group, name: str, dtype, n: int, block_size: int) -> zarr.Array:
    # One chunk per block: each block writes only its own chunk of the outcome columns.
    fill = "" if dtype is str else 0
    return meta.create_array(name, shape=(n,), dtype=dtype, chunks=(block_size,), fill_value=fill,
                             compressors=meta_compressors())


def pending_blocks(group: zarr.Group) -> list[int]:
    return [int(b) for b in np.flatnonzero(group["block_done"][:] == 0)]


def write_block(group: zarr.Group, block: int, features: dict[str, np.ndarray],
                outcomes: dict[str, list], mark_done: bool = True) -> None:
    """Write one block's rows of the given arrays (whole shards and chunks); with `mark_done`
    (the block's last writer), mark the block done after everything else is written."""
    size = int(group.attrs["block_size"])
    start = block * size
    stop = min(start + size, int(group.attrs["n_clips"]))
    for name, values in features.items():
        array = group[name]
        direct = ShardFiles.of(array)   # the same bytes as zarr's, ~5x as fast (shards.py)
        if direct is None or not direct.write_shard(start, values):
            array[start:stop] = values
    meta = group["meta"]
    for name, values in outcomes.items():
        if name in OPTIONAL_COLUMNS and name not in meta:   # a version started before they were kept
            continue
        column = meta[name]
        column[start:stop] = np.asarray(values, dtype=str if column.dtype.kind in "OUT" else column.dtype)
    if mark_done:
        group["block_done"][block] = 1


def mark_complete(group: zarr.Group) -> bool:
    """Set `complete` when every block is done; returns whether it is."""
    done = not pending_blocks(group)
    if done:
        group.attrs["complete"] = True
    return done


def add_meta_columns(group: zarr.Group, columns: dict[str, np.ndarray], attrs: dict) -> None:
    """Write whole clip-table columns into an existing version (created when missing), then set
    `attrs`: the commit point, so a run cut off in between leaves columns that the attributes do
    not vouch for (readers check the attribute), and the rerun writes them again."""
    meta = group["meta"]
    n, block_size = int(group.attrs["n_clips"]), int(group.attrs["block_size"])
    for name, values in columns.items():
        column = meta[name] if name in meta else _meta_array(meta, name, values.dtype, n, block_size)
        column[:] = values
    group.attrs.update(attrs)
