"""Every architecture: sizes against the reference study's numbers and the reference systems' published
counts, the forward contract, that each can learn (overfits a tiny batch), safetensors round trips
and the registry's errors."""


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
TRAINED = [a for a in ARCHS if not ARCHITECTURES[a].fitted]     # lfcc_gmm is fitted by EM (test_baselines.py)
# Small WavLM (hidden 32, 3 layers) and a small GMM keep the tests fast; the code path is the same.
SMALL = {"wavlm_cnn": {"hidden_size": 32}, "wavlm_aasist": {"hidden_size": 32}, "lfcc_gmm": {"n_components": 8}}


def make_batch(arch, n, frames=301, wavlm_frames=149, hidden=32, layers=3, dtype=torch.float32, seed=0):
    """Random features with the store's shapes (mel [n, 2, 128, T], lfcc [n, 60, T], wave
    [n, 160 (T - 1)], wavlm [n, L, T', H]); only the arrays the architecture reads."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"mel": (n, 2, 128, frames), "lfcc": (n, 60, frames), "wave": (n, 160 * (frames - 1)),
              "wavlm": (n, layers, wavlm_frames, hidden)}
    return {k: torch.randn(shapes[k], generator=g).to(dtype) for k in ARCHITECTURES[arch].inputs}


def test_registry_fields():
    assert ARCHS == ["mel_cnn", "mel_aasist", "wavlm_cnn", "wavlm_aasist", "lfcc_gmm", "lfcc_lcnn", "aasist",
                     "aasist_l"]
    assert {a: ARCHITECTURES[a].batch_size for a in ARCHS} == {
        "mel_cnn": 128, "mel_aasist": 128, "wavlm_cnn": 64, "wavlm_aasist": 64,
        "lfcc_gmm": 256, "lfcc_lcnn": 64, "aasist": 24, "aasist_l": 24}
    assert [a for a in ARCHS if ARCHITECTURES[a].baseline] == ["lfcc_gmm", "lfcc_lcnn", "aasist", "aasist_l"]
    assert [a for a in ARCHS if ARCHITECTURES[a].fitted] == ["lfcc_gmm"]
    assert ARCHITECTURES["mel_aasist"].title == "Mel-AASIST"
    assert ARCHITECTURES["wavlm_aasist"].inputs == ("wavlm", "mel", "lfcc")
    assert ARCHITECTURES["aasist"].inputs == ARCHITECTURES["aasist_l"].inputs == ("wave",)
    assert ARCHITECTURES["lfcc_lcnn"].inputs == ARCHITECTURES["lfcc_gmm"].inputs == ("lfcc",)


def test_reference_systems_have_their_published_sizes():
    """AASIST and AASIST-L: the official configurations' counts (clovaai/aasist README and paper);
    LFCC-LCNN: the count of the ASVspoof 2021 baseline's layer list; LFCC-GMM: two 512-mixture
    diagonal GMMs on 60-dim frames (weights, means, variances) and the LLR scale."""
    counts = {a: model_summary(a)["parameters"] for a in ("aasist", "aasist_l", "lfcc_lcnn", "lfcc_gmm")}
    assert counts == {"aasist": 297_866, "aasist_l": 85_306, "lfcc_lcnn": 269_729,
                      "lfcc_gmm": 2 * (512 + 2 * 512 * 60) + 1}
    # the sinc filters are fixed, so they are neither parameters nor in the checkpoint
    assert not any("sinc" in k for k in build_model("aasist").state_dict())


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
    model = build_model(arch, **SMALL.get(arch, {})).eval()
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


@pytest.mark.parametrize("arch", TRAINED)
def test_overfits_a_tiny_batch(arch):
    """8 examples: the loss must halve (train mode, dropout on). Feature heads memorise random
    features with fixed random labels; shorter clips than 3 s keep it fast (every head pools over
    time, so any length works). The raw-waveform models (a sinc bank and max-abs pooling, ~3 GFLOP
    per second of audio) get 0.25 s clips with a spectral cue instead: fakes are the same noise
    low-passed, as a vocoder leaves its mark, which they must learn to see."""
    torch.manual_seed(0)
    model = build_model(arch, **SMALL.get(arch, {})).train()
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)
    if "wave" in ARCHITECTURES[arch].inputs:
        noise = make_batch(arch, 8, frames=26, seed=1)["wave"]
        smooth = torch.nn.functional.avg_pool1d(noise[:, None], 5, 1, 2)[:, 0]
        wave = torch.where(labels[:, None] > 0, smooth, noise)
        batch, steps = {"wave": wave / wave.abs().amax(1, keepdim=True)}, 20
    else:
        batch, steps = make_batch(arch, 8, frames=101, wavlm_frames=49, seed=1), 40
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0], (arch, losses[0], losses[-5:])


@pytest.mark.parametrize("arch", ARCHS)
def test_safetensors_round_trip(arch):
    torch.manual_seed(0)
    model = build_model(arch, **SMALL.get(arch, {}))
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
    valid = "mel_cnn, mel_aasist, wavlm_cnn, wavlm_aasist, lfcc_gmm, lfcc_lcnn, aasist, aasist_l"
    with pytest.raises(ValueError, match=f"unknown architecture 'rawnet2'; valid: {valid}"):
        build_model("rawnet2")
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
