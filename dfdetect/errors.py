"""The one base class for errors a user can cause, at the ground of the package.

Every stage raises a subclass of `DfdetectError` (a dataset that is not laid out as expected, a
store or run that cannot be used, an experiment file that cannot run, a score file or option that
cannot be evaluated...). Its message names the file and says what to do. The CLI catches
`DfdetectError` in one place and prints that message as one line (exit code 2); anything else is
a bug in dfdetect and keeps its traceback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


class DfdetectError(Exception):
    """Something the user can fix: the message says which file or option, what is wrong, what to do."""


class ConfigError(DfdetectError, ValueError):
    """An option or setting dfdetect does not accept (an unknown architecture, codec, dataset name,
    WavLM layer...). Also a ValueError, which is what such a value is."""


def check_range(option: str, value, low: float, high: float = float("inf"), low_open: bool = False) -> None:
    """ConfigError naming `option` unless `value` is a finite number in [low, high] ((low, high]
    with `low_open`). NaN and infinities never pass: they switch limits off or loop forever."""
    try:
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    except TypeError:
        ok = False
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
        kind = "a positive, finite number" if low > 0 or (low == 0 and low_open) else "a finite number"
        raise ConfigError(f"{option} {value!r}: must be {kind} {bound}")


def check_output(option: str, path, folder: bool = False) -> None:
    """ConfigError naming `option` unless `path` can be written, before any work: as a file (or,
    with `folder`, as a folder), not the other kind already, with no file where one of its folders
    must be, and the nearest existing folder writable."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise ConfigError(f"{option} {path} is a device, FIFO or socket, not a file dfdetect can write; "
                          "choose another place")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; give a folder (it is created if missing)")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; name the file to write (a file in it, or elsewhere)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, so nothing can be written under it; "
                                  "choose another place")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {path}: the folder {parent} is not writable for this user; "
                                  "choose another place")
            return
