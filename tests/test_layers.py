"""The package reads top to bottom: every import points down the pipeline (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import dfdetect

PACKAGE = Path(dfdetect.__file__).parent

# Lowest first. A module may import its own layer's modules and any lower layer, never a higher one.
LAYERS = [
    # the ground: corpora, metrics, errors, devices, locks
    {"dfdetect", "errors", "devices", "names", "locks", "metrics", "uncertainty", "calibration", "datasets"},
    {"store"},
    {"featurize"},
    {"models"},
    {"train", "score"},
    {"evaluate"},
    {"studies"},
    {"api"},
    {"demo", "cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """'dfdetect.store.schema' -> 'store'; 'dfdetect' -> 'dfdetect'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    here = "dfdetect." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, m) for line, m in found if m == "dfdetect" or m.startswith("dfdetect.")]


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__init__.py"}
    assert units <= set(RANK), f"give these a layer in tests/test_layers.py: {sorted(units - set(RANK))}"


def test_no_import_points_up():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = unit_of("dfdetect." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, module in imports_of(path):
            there = unit_of(module)
            if RANK[there] > RANK[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {module} ({there})")
    assert not upward, "imports pointing up the pipeline:\n" + "\n".join(upward)


def test_train_and_score_stay_apart():
    """Both sit on models; neither is the other's library (shared code belongs lower down)."""
    crossing = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
                for unit, other in (("train", "score"), ("score", "train"))
                for path in sorted((PACKAGE / unit).rglob("*.py"))
                for line, module in imports_of(path) if unit_of(module) == other]
    assert not crossing, "\n".join(crossing)
