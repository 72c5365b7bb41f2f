"""The one base class for errors a user can cause, at the ground of the package.

Every stage raises a subclass of `DfdetectError` (a dataset that is not laid out as expected, a
store or run that cannot be used, an experiment file that cannot run, a score file or option that
cannot be evaluated...). Its message names the file and says what to do. The CLI catches
`DfdetectError` in one place and prints that message as one line (exit code 2); anything else is
a bug in dfdetect and keeps its traceback.
"""

from __future__ import annotations


class DfdetectError(Exception):
    """Something the user can fix: the message says which file or option, what is wrong, what to do."""


class ConfigError(DfdetectError, ValueError):
    """An option or setting dfdetect does not accept (an unknown architecture, codec, dataset name,
    WavLM layer...). Also a ValueError, which is what such a value is."""
