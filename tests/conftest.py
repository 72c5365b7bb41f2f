import os

# The suite compares results with CPU references at tight tolerances (fp32 WavLM, exact scores), so
# it runs on the CPU on a GPU machine too (torch reads this at its first CUDA call; dask workers
# inherit it). DFDETECT_TEST_GPU=1 leaves the GPU visible.
if os.environ.get("DFDETECT_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np
import pytest

from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus
from dfdetect.featurize.pipeline import featurize
from dfdetect.train.trainer import TrainConfig, train


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """3.7 s of the demo's speech-like 'real' audio at 16 kHz (a real signal, not a test tone)."""
    return synthesize("real", np.random.default_rng(7), 3.7)


@pytest.fixture(scope="session")
def mel_store(tmp_path_factory) -> str:
    """A small generated corpus (train/test/ood splits, 'codec' unseen) featurized to mel, shared
    by the tests that need real runs."""
    base = tmp_path_factory.mktemp("mel-store")
    write_corpus(base / "corpus", CorpusSpec(real=20, per_generator=6, min_seconds=1, max_seconds=2))
    store = str(base / "mel.zarr")
    featurize("folder", base / "corpus", store, features=("mel",), workers=0, block_size=16)
    return store


def train_tiny(store: str, out, epochs: int = 2, seed: int = 0, ood: bool = True):
    """A real Mel-CNN run on `store` in seconds: test split, and the unseen family as OOD."""
    config = TrainConfig(arch="mel_cnn", train=f"{store}:train", test=f"{store}:test",
                         ood=(f"unseen={store}:ood",) if ood else (), epochs=epochs, batch_size=16,
                         lr=1e-3, seed=seed)
    train(config, out)
    return out
