import numpy as np
import pytest

from dfdetect.demo.corpus import synthesize


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """3.7 s of the demo's speech-like 'real' audio at 16 kHz (a real signal, not a test tone)."""
    return synthesize("real", np.random.default_rng(7), 3.7)
