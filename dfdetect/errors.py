"""The one base class for errors a user can cause, at the ground of the package.

Every stage raises a subclass of `DfdetectError` (a dataset that is not laid out as expected, a
store or run that cannot be used, an experiment file that cannot run, a score file or option that
cannot be evaluated...). Its message names the file and says what to do. The CLI catches
`DfdetectError` in one place and prints that message as one line (exit code 2); anything else is
a bug in dfdetect and keeps its traceback.
"""

from __future__ import annotations

import math


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
