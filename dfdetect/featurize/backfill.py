"""Recording statistics for a store version featurized before they were kept: each clip decoded
again (no features computed), its statistics (featurize/recording.py, with the version's own
frontend) added to the clip table. `dfdetect audit STORE --add-statistics`."""

from __future__ import annotations

import numpy as np
import zarr

from dfdetect.featurize.audio import AudioError, decode
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.featurize.recording import clip_statistics
from dfdetect.store import open_store, parse_store_spec
from dfdetect.store.schema import (
    FILE_COLUMNS,
    NO_STAMP,
    OK,
    RECORDING_COLUMNS,
    RECORDING_STATISTICS_VERSION,
    file_stamp,
)
from dfdetect.store.writer import StoreLock, add_meta_columns


def add_statistics(spec: str) -> dict:
    """Add the recording statistics to STORE[@VERSION]; {"clips": decoded, "skipped": files gone,
    changed since featurize read them, or no longer decoding (NaN for those)}."""
    path, version, _ = parse_store_spec(spec)
    store = open_store(path, version)
    frontend = Frontend(FrontendConfig.from_dict(store.config["frontend"]))
    meta = store.meta
    values = {name: np.full(store.n_clips, np.nan, np.float32) for name in RECORDING_COLUMNS}
    done = skipped = 0
    with StoreLock(path):
        for row in np.flatnonzero(meta["status"] == OK):
            clip = str(meta["path"][row])
            stamp = file_stamp(clip)
            recorded = tuple(int(meta[k][row]) for k in FILE_COLUMNS) if set(FILE_COLUMNS) <= set(meta) else stamp
            try:
                if stamp != recorded and recorded != NO_STAMP:
                    raise AudioError(clip, "changed", "not the file featurize read")
                audio = decode(clip)
            except AudioError:
                skipped += 1
                continue
            for name, value in clip_statistics(frontend, audio, stamp[0]).items():
                values[name][row] = value
            done += 1
        group = zarr.open_group(path, mode="r+", path=store.version)
        add_meta_columns(group, values, {"recording_statistics": RECORDING_STATISTICS_VERSION})
    return {"clips": done, "skipped": skipped}
