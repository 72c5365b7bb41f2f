"""The four heads: sizes against the reference study's numbers, the forward contract, that each can learn
(overfits a tiny batch), safetensors round trips, the registry's errors, and Mel-AASIST's CPU cost."""


import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from dfdetect.models.registry import (
    ARCHITECTURES,
    WAVLM_LARGE_PARAMETERS,
    build_model,
    config_to_dict,
    model_summary,
)

ARCHS = list(ARCHITECTURES)
# Small WavLM (hidden 32, 3 layers) keeps the WavLM heads' tests fast; the code path is the same.
SMALL = {"mel_cnn": {}, "mel_aasist": {}, "wavlm_cnn": {"hidden_size": 32},
         "wavlm_aasist": {"hidden_size": 32}}


def make_batch(arch, n, frames=301, wavlm_frames=149, hidden=32, layers=3, dtype=torch.float32, seed=0):
    """Random features with the store's shapes (mel [n, 2, 128, T], lfcc [n, 60, T], wavlm
    [n, L, T', H]); only the arrays the architecture reads."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"mel": (n, 2, 128, frames), "lfcc": (n, 60, frames), "wavlm": (n, layers, wavlm_frames, hidden)}
    return {k: torch.randn(shapes[k], generator=g).to(dtype) for k in ARCHITECTURES[arch].inputs}


def test_registry_fields():
    assert ARCHS == ["mel_cnn", "mel_aasist", "wavlm_cnn", "wavlm_aasist"]
    assert {a: ARCHITECTURES[a].batch_size for a in ARCHS} == {
        "mel_cnn": 128, "mel_aasist": 128, "wavlm_cnn": 64, "wavlm_aasist": 64}
    assert ARCHITECTURES["mel_aasist"].title == "Mel-AASIST"
    assert ARCHITECTURES["wavlm_aasist"].inputs == ("wavlm", "mel", "lfcc")


def test_parameter_counts_match_the_seed():
    sizes = {a: model_summary(a) for a in ARCHS}
    for a, s in sizes.items():
        print(f"{a}: {s['parameters']:,} params, {s['checkpoint_bytes'] / 1e3:.0f} KB"
              + (f", deployed {s['deployed_parameters'] / 1e6:.1f}M params, "
                 f"{s['deployed_bytes'] / 1e9:.2f} GB" if "deployed_bytes" in s else ""))
        assert s["checkpoint_bytes"] >= 4 * s["parameters"]      # float32 weights, measured
    assert 300_000 <= sizes["mel_cnn"]["parameters"] <= 500_000
    assert 1_500_000 <= sizes["mel_aasist"]["parameters"] <= 2_500_000
    for a in ("wavlm_cnn", "wavlm_aasist"):
        s = sizes[a]
        assert s["parameters"] > 0
        assert s["deployed_parameters"] == s["parameters"] + WAVLM_LARGE_PARAMETERS
        assert s["deployed_bytes"] > s["checkpoint_bytes"] + 1.2e9            # the reference study's ~1.3 GB
    assert "deployed_bytes" not in sizes["mel_aasist"]
    small = model_summary("wavlm_cnn", wavlm_hidden=32, wavlm_layers=2)
    assert small["config"]["hidden_size"] == 32 and small["config"]["num_layers"] == 2
    assert small["parameters"] < sizes["wavlm_cnn"]["parameters"]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape_finite_and_float16(arch):
    torch.manual_seed(0)
    model = build_model(arch, **SMALL[arch]).eval()
    batch = make_batch(arch, 4)
    with torch.no_grad():
        logits = model(batch)
        half = model({k: v.half() for k, v in batch.items()})
        rounded = model({k: v.half().float() for k, v in batch.items()})
    assert logits.shape == (4,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(half).all()
    assert torch.equal(half, rounded)                 # float16 in == the same values in float32
    # Reads only its own arrays: extra keys are ignored.
    with torch.no_grad():
        extra = model({**batch, "unused": torch.zeros(1), "wavlm_stats": torch.zeros(4, 25, 2, 32)})
    assert torch.equal(extra, logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_a_tiny_batch(arch):
    """8 random examples with fixed random labels: the loss must halve (train mode, dropout on).
    Shorter clips than 3 s keep it fast; every head pools over time, so any length works."""
    torch.manual_seed(0)
    model = build_model(arch, **SMALL[arch]).train()
    batch = make_batch(arch, 8, frames=101, wavlm_frames=49, seed=1)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0], (arch, losses[0], losses[-5:])


@pytest.mark.parametrize("arch", ARCHS)
def test_safetensors_round_trip(arch):
    torch.manual_seed(0)
    model = build_model(arch, **SMALL[arch])
    model.train()
    model(make_batch(arch, 4, frames=64, wavlm_frames=32))   # move BN running stats off their init
    model.eval()
    blob = safetensors_save({k: v.contiguous() for k, v in model.state_dict().items()})
    torch.manual_seed(1)
    fresh = build_model(arch, **config_to_dict(model.config)).eval()
    assert fresh.config == model.config
    fresh.load_state_dict(safetensors_load(blob), strict=True)
    batch = make_batch(arch, 4, seed=2)
    with torch.no_grad():
        assert torch.equal(model(batch), fresh(batch))


def test_build_model_errors():
    valid = "mel_cnn, mel_aasist, wavlm_cnn, wavlm_aasist"
    with pytest.raises(ValueError, match=f"unknown architecture 'aasist'; valid: {valid}"):
        build_model("aasist")
    with pytest.raises(ValueError, match="'embeding_dim'"):
        build_model("mel_cnn", embeding_dim=32)
    with pytest.raises(ValueError, match="mel.*'widths'"):
        build_model("wavlm_aasist", mel={"widths": 3})
    model = build_model("wavlm_aasist", hidden_size=16, mel={"channels": [12, 24, 48]})
    assert model.config.mel.channels == (12, 24, 48)
    with pytest.raises(ValueError, match="expected 3 WavLM layers, got 2"):
        build_model("wavlm_cnn", hidden_size=32)(make_batch("wavlm_cnn", 2, layers=2))
    with pytest.raises(ValueError, match="multiples of 3"):
        build_model("mel_aasist", channels=(32, 64, 128))
    with pytest.raises(ValueError, match=r"expected mel \[B, 2, 128, T\]"):
        build_model("mel_aasist")({"mel": torch.zeros(2, 2, 64, 50)})
