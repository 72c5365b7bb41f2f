"""Dataset adapters: one module per corpus, each turning a downloaded folder into a clip table.

    from dfdetect import datasets
    index = datasets.prepare("asvspoof2019_la", "/data/LA")
    index.counts(), index.problems

Every adapter module has NAME, DESCRIPTION, LAYOUT and ``prepare(root) -> DatasetIndex``
(see ``base.py``). Labels: 1 = fake (spoof), 0 = real (bona fide).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from dfdetect.errors import ConfigError

from . import asvspoof5, asvspoof2019_la, deepfake_eval_2024, folder, in_the_wild, manifest
from .base import Clip, DatasetIndex, DatasetLayoutError, Problem

ADAPTERS: dict[str, ModuleType] = {
    m.NAME: m for m in (deepfake_eval_2024, asvspoof5, asvspoof2019_la, in_the_wild, folder, manifest)
}

__all__ = ["ADAPTERS", "Clip", "DatasetIndex", "DatasetLayoutError", "Problem", "get_adapter",
           "prepare"]


def get_adapter(name: str) -> ModuleType:
    """The adapter module for `name` (case and '-'/'_' insensitive); ValueError lists valid names."""
    key = str(name).strip().lower().replace("-", "_")
    try:
        return ADAPTERS[key]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(ADAPTERS)}") from None


def prepare(name: str, root: str | Path, **kwargs) -> DatasetIndex:
    """Index dataset `name` found at `root` (raises DatasetLayoutError when the layout is wrong)."""
    return get_adapter(name).prepare(Path(root), **kwargs)
