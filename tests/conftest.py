import os

# The suite compares results with CPU references at tight tolerances (fp32 WavLM, exact scores), so
# its unmarked tests run on the CPU, on a GPU machine too: DFDETECT_DEVICE=cpu makes every `auto`
# device the CPU (dfdetect.devices; dask workers inherit it). Without DFDETECT_TEST_GPU=1 the GPU is
# hidden as well (torch reads CUDA_VISIBLE_DEVICES at its first CUDA call). DFDETECT_TEST_GPU=1
# leaves the GPU visible for the tests marked `gpu`, which name device "cuda" explicitly (GPU
# results against CPU references at the GPU precision's tolerances): on a GPU machine,
#     DFDETECT_TEST_GPU=1 python -m pytest -m gpu        (or the whole suite, without -m gpu)
# Without it, or without a GPU, they are skipped with the reason, never passed.
GPU_TESTS = os.environ.get("DFDETECT_TEST_GPU") == "1"
os.environ["DFDETECT_DEVICE"] = "cpu"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# pytest-xdist's workers (bench/gpu_device.sh's suite runs on 8) start with COLUMNS=80, and rich
# fixes a console's width from it when the console is made, at import: every CLI test that sets
# COLUMNS would then still read 80-column output. Without it, the width is read at each print.
# featurize's default features include WavLM (microsoft/wavlm-large): a test that runs the default
# must find a model it made (a local folder, or a hub cache it built), never download one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

import numpy as np  # noqa: E402 (after the environment above)
import pytest  # noqa: E402 (after the environment above)

from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus  # noqa: E402 (after the environment above)
from dfdetect.featurize.pipeline import featurize  # noqa: E402 (after the environment above)
from dfdetect.train.trainer import TrainConfig, train  # noqa: E402 (after the environment above)


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


def pytest_collection_modifyitems(config, items):
    import torch

    if GPU_TESTS and torch.cuda.is_available():
        return
    reason = ("GPU test: no CUDA device is visible" if GPU_TESTS else
              "GPU test: set DFDETECT_TEST_GPU=1 on a machine with a CUDA GPU to run it")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def train_tiny(store: str, out, epochs: int = 2, seed: int = 0, ood: bool = True, device: str = "auto"):
    """A real Mel-CNN run on `store` in seconds: test split, and the unseen family as OOD (on the
    CPU unless `device` names another: "auto" is the CPU in the suite)."""
    config = TrainConfig(arch="mel_cnn", train=f"{store}:train", test=f"{store}:test",
                         ood=(f"unseen={store}:ood",) if ood else (), epochs=epochs, batch_size=16,
                         lr=1e-3, seed=seed, device=device)
    train(config, out)
    return out


@pytest.fixture(scope="session")
def run_dir(mel_store, tmp_path_factory):
    """A one-epoch Mel-CNN run on `mel_store`, shared by the tests that score with a real run."""
    return train_tiny(mel_store, tmp_path_factory.mktemp("run") / "run", epochs=1, ood=False)


def one_line(result, *fragments):
    """A CLI result that is a usage error: exit 2, one line (no traceback), holding every fragment
    (the output's line breaks are rich's wrapping)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert text.count("error: ") == 1, result.output
    message = text[text.index("error: "):]      # what came before is progress or a dataset note
    for fragment in fragments:
        assert fragment in message, result.output
    return message
