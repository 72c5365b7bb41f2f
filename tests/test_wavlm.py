"""The frozen WavLM extractor on a tiny random WavLM saved as a local model directory (the same
loading path as a real local copy), checked against a forward pass written out by hand. Offline:
the hub is never contacted (error paths run with HF_HUB_OFFLINE=1, the hub-cache path against a
cache folder built here)."""

import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import WavLMModel

from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.wavlm import (
    WavLMConfig,
    WavLMUnavailableError,
    clear_wavlm_cache,
    load_wavlm,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_random_wavlm(tmp_path_factory.mktemp("wavlm") / "tiny", size="tiny", seed=0)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_wavlm_cache()
    yield
    clear_wavlm_cache()


@pytest.fixture(scope="module")
def waves(speech):
    rng = np.random.default_rng(3)
    clips = [speech[i * 5000:i * 5000 + 48000] for i in range(3)]
    clips += [rng.standard_normal(48000) * 0.3, np.sin(np.arange(48000) / 16000 * 2 * np.pi * 220)]
    return np.stack([c / np.abs(c).max() for c in clips]).astype(np.float32)


def _config(model_dir, **kw) -> WavLMConfig:
    """The tiny model has 3 hidden states (input + 2 layers): the default (6, 12, 24) is Large's."""
    return WavLMConfig(model=str(model_dir), **{"layers": (0, 1, 2), **kw})


def _by_hand(model_dir, waves):
    """WavLMModel.from_pretrained + Wav2Vec2-style normalisation, all hidden states in float32."""
    model = WavLMModel.from_pretrained(model_dir).eval()
    x = torch.from_numpy(waves)
    x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)
    with torch.no_grad():
        return torch.stack(model(x, output_hidden_states=True).hidden_states, 1).numpy()


def test_shapes_dtypes_and_frames(tiny_dir, waves):
    ex = load_wavlm(_config(tiny_dir, layers=(0, 2)), device="cpu")
    out = ex(waves)
    assert ex.num_hidden_states == 3 and ex.hidden_size == 32
    assert ex.frames(48000) == 149
    assert out["layers"].shape == (5, 2, 149, 32) and out["layers"].dtype == np.float16
    assert out["stats"].shape == (5, 3, 2, 32) and out["stats"].dtype == np.float16
    for n in (400, 16000, 48000, 50001):  # the formula against the model's real output length
        assert ex(np.ones((1, n), np.float32))["layers"].shape[2] == ex.frames(n)
    assert ex(waves[0])["layers"].shape == (1, 2, 149, 32)          # one clip, no batch axis
    assert ex(waves[:0])["layers"].shape == (0, 2, 149, 32)         # an empty block


def test_matches_a_direct_forward_pass(tiny_dir, waves):
    ex = load_wavlm(_config(tiny_dir), device="cpu")
    out = ex(waves)
    ref = _by_hand(tiny_dir, waves)                                  # [B, 3, 149, 32]
    np.testing.assert_allclose(out["layers"].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    stats = np.stack([ref.mean(2), ref.std(2)], axis=2)              # [B, 3, 2, 32]
    np.testing.assert_allclose(out["stats"].astype(np.float32), stats, rtol=2e-3, atol=2e-3)


def test_batching_does_not_change_results(tiny_dir, waves):
    one = load_wavlm(_config(tiny_dir, batch_size=1), device="cpu")
    four = load_wavlm(_config(tiny_dir, batch_size=4), device="cpu")
    assert one is not four
    a, b = one(waves), four(waves)
    for k in ("layers", "stats"):
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3)


def test_input_is_normalised(tiny_dir, waves):
    ex = load_wavlm(_config(tiny_dir), device="cpu")
    assert ex.normalize and ex.info()["normalize"] is True
    np.testing.assert_allclose(ex(waves * 0.05 + 0.01)["layers"].astype(np.float32),
                               ex(waves)["layers"].astype(np.float32), atol=5e-3)
    raw = load_wavlm(_config(tiny_dir, normalize=False), device="cpu")
    assert raw.info()["normalize_source"] == "config"
    assert not np.allclose(raw(waves * 0.05)["layers"], raw(waves)["layers"], atol=5e-2)


def test_normalise_decision_without_preprocessor_config(tiny_dir, tmp_path):
    """No preprocessor_config.json: a layer-norm CNN (Large) normalises, a group-norm one (Base)
    does not."""
    layer = tmp_path / "layer"
    shutil.copytree(tiny_dir, layer)
    (layer / "preprocessor_config.json").unlink()
    assert load_wavlm(_config(layer), "cpu").normalize is True
    group = tmp_path / "group"
    model = WavLMModel.from_pretrained(layer)
    model.config.feat_extract_norm = "group"
    model.save_pretrained(group)
    ex = load_wavlm(_config(group), "cpu")
    assert ex.normalize is False and ex.normalize_source == "feat_extract_norm=group"


def test_loaded_once_per_process(tiny_dir):
    config = _config(tiny_dir)
    first = load_wavlm(config, device="cpu")
    assert load_wavlm(_config(tiny_dir), device="cpu") is first
    if not torch.cuda.is_available():
        assert load_wavlm(config, device="auto") is first


def test_bad_layer_index(tiny_dir):
    with pytest.raises(ValueError, match=r"0\.\.2"):
        load_wavlm(_config(tiny_dir, layers=(1, 3)), device="cpu")
    with pytest.raises(ValueError, match="0..2"):
        load_wavlm(_config(tiny_dir, layers=(-1,)), device="cpu")


@pytest.mark.parametrize("model", ["missing_dir", "not-a-user-xyz/no-such-wavlm-model"])
def test_unavailable_model_says_how_to_get_it(tmp_path, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = str(tmp_path / model) if model == "missing_dir" else model
    with pytest.raises(WavLMUnavailableError) as err:
        load_wavlm(WavLMConfig(model=model), device="cpu")
    message = str(err.value)
    assert model in message and "huggingface-cli download" in message and "--wavlm" in message


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WavLMUnavailableError, match="--wavlm"):
        load_wavlm(_config(tmp_path), device="cpu")


def test_local_revision_is_a_stable_content_hash(tiny_dir, tmp_path):
    config = _config(tiny_dir)
    info = load_wavlm(config, "cpu").info()
    assert info["revision"].startswith("sha256:") and len(info["revision"]) == 7 + 64
    clear_wavlm_cache()
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")              # same bytes, another place
    assert load_wavlm(_config(copy), "cpu").info()["revision"] == info["revision"]
    other = save_random_wavlm(tmp_path / "other", size="tiny", seed=1)
    assert load_wavlm(_config(other), "cpu").info()["revision"] != info["revision"]
    assert info["layers"] == [0, 1, 2]
    assert info["parameters"] > 0 and info["device"] == "cpu" and info["dtype"] == "float32"


def test_hub_id_loads_from_the_cache_offline(tiny_dir, tmp_path, monkeypatch):
    """A hub id found in the HF cache loads with HF_HUB_OFFLINE=1; its revision is the commit."""
    repo = tmp_path / "models--someone--tiny-wavlm"
    shutil.copytree(tiny_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = load_wavlm(WavLMConfig(model="someone/tiny-wavlm", layers=(1,)), device="cpu")
    assert ex.info()["revision"] == COMMIT and ex.normalize


def test_config_round_trip():
    config = WavLMConfig(model="x", layers=[3, 5], batch_size=2)
    assert config.layers == (3, 5)
    assert WavLMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        WavLMConfig(layers=())
