"""Dataset adapters: one module per corpus, each turning a downloaded folder into a clip table.

    from dfdetect import datasets
    index = datasets.prepare("asvspoof2019_la", "/data/LA")
    index.counts(), index.problems

Every adapter module has NAME, DESCRIPTION, LAYOUT and ``prepare(root) -> DatasetIndex``
(see ``base.py``). Labels: 1 = fake (spoof), 0 = real (bona fide).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

from dfdetect.errors import ConfigError

from . import asvspoof5, asvspoof2019_la, deepfake_eval_2024, folder, hf, in_the_wild, lhotse, manifest
from .base import Clip, DatasetIndex, DatasetLayoutError, Problem

ADAPTERS: dict[str, ModuleType] = {
    m.NAME: m for m in (deepfake_eval_2024, asvspoof5, asvspoof2019_la, in_the_wild, folder, manifest, hf,
                        lhotse)
}

__all__ = ["ADAPTERS", "Clip", "DatasetIndex", "DatasetLayoutError", "Problem", "get_adapter",
           "parse_options", "prepare"]


def get_adapter(name: str) -> ModuleType:
    """The adapter module for `name` (case and '-'/'_' insensitive); ValueError lists valid names."""
    key = str(name).strip().lower().replace("-", "_")
    try:
        return ADAPTERS[key]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(ADAPTERS)}") from None


def prepare(name: str, root: str | Path, **options) -> DatasetIndex:
    """Index dataset `name` found at `root` (raises DatasetLayoutError when the layout is wrong).
    `options` are the adapter's own keyword arguments (`--option KEY=VALUE`); one it does not
    take is a ConfigError naming the ones it does."""
    adapter = get_adapter(name)
    params = [p for p in inspect.signature(adapter.prepare).parameters if p != "root"]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(f"--option {', '.join(unknown)}: dataset {adapter.NAME} takes "
                          f"{'only ' + ', '.join(params) if params else 'no options'}")
    return adapter.prepare(Path(root), **options)


def parse_options(items) -> dict[str, str]:
    """['label_column=is_fake', ...] (from `--option`, repeatable) -> {'label_column': 'is_fake'}."""
    options = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. label_column=is_fake")
        options[key.strip()] = value.strip()
    return options
