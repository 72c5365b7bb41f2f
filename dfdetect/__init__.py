"""dfdetect: audio deepfake detection built for honest generalization experiments.

The public API (dfdetect/api.py) is loaded on first use, so `import dfdetect` stays light (no
torch) and the package root stays at the ground layer: `from dfdetect import Detector`."""

import importlib

__version__ = "0.1.0"
# featurize, train and evaluate live in dfdetect.api only: at the root those names are the subpackages
_API = ("Detector", "Result")


def __getattr__(name: str):
    # importlib, not an import statement: the root is imported by every layer, and only a caller
    # of the API (the top layer) reaches dfdetect.api through it
    if name in _API:
        return getattr(importlib.import_module("dfdetect.api"), name)
    raise AttributeError(f"module 'dfdetect' has no attribute {name!r}")
