"""Codec and corruption variants: real codecs, seeded corruptions."""

import numpy as np
import pytest

from dfdetect.featurize.variants import CORRUPTIONS, Variant, codec_round_trip


def _band_energy(y, lo, hi):
    spectrum = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    return spectrum[(f >= lo) & (f < hi)].sum()


@pytest.fixture
def noise():
    return (np.random.default_rng(0).standard_normal(48000) * 0.2).astype(np.float32)


def test_mp3_round_trip_removes_content_above_its_low_pass(noise):
    y = codec_round_trip(noise, "mp3", 32000)
    assert len(y) == len(noise)
    assert _band_energy(y, 7500, 8000) < 1e-3 * _band_energy(noise, 7500, 8000)   # gone
    assert _band_energy(y, 1000, 5000) > 0.8 * _band_energy(noise, 1000, 5000)    # kept
    assert np.corrcoef(noise[2000:-2000], y[2000:-2000])[0, 1] > 0.8              # aligned


def test_flac_is_lossless_up_to_16_bit(noise):
    y = codec_round_trip(noise, "flac", None)
    assert np.abs(y - noise).max() < 2e-4


@pytest.mark.parametrize("codec,rate", [("opus", 32000), ("aac", 64000)])
def test_other_codecs_round_trip(noise, codec, rate):
    y = codec_round_trip(noise, codec, rate)
    assert len(y) == len(noise) and np.isfinite(y).all() and not np.allclose(y, noise)


def test_corruptions_are_seeded_and_reproducible(noise):
    v = Variant.parse(None, "default", seed=3)
    assert v.corruptions == CORRUPTIONS
    a, b = v.apply(noise, "clip-1"), v.apply(noise, "clip-1")
    np.testing.assert_array_equal(a, b)
    others = [Variant.parse(None, "default", seed=4).apply(noise, "clip-1"), v.apply(noise, "clip-2")]
    assert any(not np.array_equal(a, o) for o in others)
    for kind in CORRUPTIONS:
        y = Variant.parse(None, kind).apply(noise, "x")
        assert len(y) == len(noise) and np.isfinite(y).all() and not np.array_equal(y, noise), kind


@pytest.mark.parametrize("codec,corrupt,message", [
    ("wav", None, "unknown codec"), ("flac:128k", None, "lossless"), ("mp3:fast", None, "bad bitrate"),
    (None, "noise,thunder", "unknown corruption"),
    ("random:64k", None, "random draws each clip's bitrate"),
    (None, "rawboost:4", "--corrupt rawboost:4: unknown RawBoost algorithm '4'"),
    (None, "rawboost:1+", "unknown RawBoost algorithm ''"),
])
def test_bad_variant_specs(codec, corrupt, message):
    with pytest.raises(ValueError, match=message):
        Variant.parse(codec, corrupt)


def test_no_variant():
    assert Variant.parse(None, None) is None
    assert Variant.parse("mp3").bitrate == 64000


# -- RawBoost (rawboost.py) ----------------------------------------------------------------------
@pytest.fixture
def speech4(speech):
    return speech[:48000].astype(np.float32)


def test_rawboost_specs_are_canonical_and_its_parameters_name_the_version():
    from dfdetect.featurize import rawboost

    assert Variant.parse(None, "rawboost").corruptions == ("rawboost:1+2",)   # the reference's default series
    assert Variant.parse(None, "noise, rawboost:3+1").corruptions == ("noise", "rawboost:1+3")
    described = Variant.parse(None, "rawboost:2").to_dict()
    assert described["rawboost"] == rawboost.PARAMETERS
    assert described["rawboost"]["convolutive"]["N_f"] == 5 and described["rawboost"]["stationary"]["SNRmin"] == 10
    # variants without RawBoost record what they always did (their versions keep their names)
    assert Variant.parse(None, "noise").to_dict() == {"codec": None, "bitrate": None, "corruptions": ["noise"],
                                                     "seed": 0}


@pytest.mark.parametrize("spec", ["rawboost:1", "rawboost:2", "rawboost:3", "rawboost:1+2", "rawboost:1+2+3"])
def test_rawboost_is_seeded_per_clip_and_changes_the_clip(speech4, spec):
    v = Variant.parse(None, spec, seed=5)
    a = v.apply(speech4, "clip-1")
    np.testing.assert_array_equal(a, Variant.parse(None, spec, seed=5).apply(speech4, "clip-1"))
    assert len(a) == len(speech4) and np.isfinite(a).all() and not np.allclose(a, speech4, atol=1e-4)
    assert not np.array_equal(a, v.apply(speech4, "clip-2"))


def test_rawboost_notch_filters_have_the_drawn_peak_gain_and_stop_bands():
    from scipy import signal

    from dfdetect.featurize.rawboost import PARAMETERS, notch_filter

    taps = notch_filter(np.random.default_rng(0), 16000, PARAMETERS["convolutive"], -12, -12)
    _, h = signal.freqz(taps, 1, worN=4096, fs=16000)
    assert 20 * np.log10(np.abs(h).max()) == pytest.approx(-12, abs=0.1)
    assert 20 * np.log10(np.abs(h).min()) < -12 - 20          # at least one real notch


def test_rawboost_additive_noises_stay_in_their_published_ranges(speech4):
    from dfdetect.featurize import rawboost

    x = speech4.astype(np.float64)
    for seed in range(5):
        y = rawboost.stationary_noise(np.random.default_rng(seed), x, 16000)
        snr = 10 * np.log10(np.sum(x ** 2) / np.sum((y - x) ** 2))
        assert 10 - 1e-6 <= snr <= 40 + 1e-6
        quiet = x * 0.3 / np.abs(x).max()   # peak 0.3: impulses of at most 3x stay below 1 (no rescaling)
        changed = np.mean(rawboost.impulsive_noise(np.random.default_rng(seed), quiet, 16000) != quiet)
        assert 0 < changed <= 0.10


# -- codecs: vorbis, random ---------------------------------------------------------------------
def test_vorbis_round_trips_at_the_nominal_bitrate_asked(noise):
    from dfdetect.featurize.audio import encode, vorbis_nominal_bitrate

    for kbps in (24, 48, 96):
        assert vorbis_nominal_bitrate(encode(noise, 16000, "ogg", bitrate=kbps * 1000)) == pytest.approx(
            kbps * 1000, rel=0.05)
    y = codec_round_trip(noise, "vorbis", 32000)
    assert len(y) == len(noise) and np.isfinite(y).all() and not np.allclose(y, noise)
    assert np.corrcoef(noise[2000:-2000], y[2000:-2000])[0, 1] > 0.5                  # aligned
    assert Variant.parse("vorbis").bitrate == 64000


def test_random_codec_draws_every_codec_and_bitrate_in_range_seeded_per_clip():
    from dfdetect.featurize.variants import RANDOM_CODECS, codec_label

    v = Variant.parse("random", seed=1)
    draws = [v.codec_of(f"clip-{i}") for i in range(400)]
    assert {c for c, _ in draws} == {"mp3", "aac", "opus", "vorbis"}
    assert all(16000 <= b <= 128000 and b // 1000 in RANDOM_CODECS[c] for c, b in draws)
    assert len(set(draws)) > 15
    assert draws == [Variant.parse("random", seed=1).codec_of(f"clip-{i}") for i in range(400)]
    assert draws != [Variant.parse("random", seed=2).codec_of(f"clip-{i}") for i in range(400)]
    assert codec_label(v, "clip-0") == f"{draws[0][0]}:{draws[0][1] // 1000}k"
    assert codec_label(Variant.parse("flac"), "x") == "flac" and codec_label(None, "x") == ""
    assert v.to_dict()["random_codecs"] == {k: list(r) for k, r in RANDOM_CODECS.items()}


def test_random_codec_round_trips_the_drawn_codec(noise):
    v = Variant.parse("random", seed=0)
    codec, bitrate = v.codec_of("k")
    np.testing.assert_array_equal(v.apply(noise, "k"), codec_round_trip(noise, codec, bitrate))


# -- vocoders (vocoders.py) ----------------------------------------------------------------------
def _envelope(y, frame=400):
    return np.sqrt(np.mean(y[:len(y) // frame * frame].reshape(-1, frame) ** 2, axis=1))


@pytest.mark.parametrize("name", ["world", "griffinlim"])
def test_vocoders_resynthesise_the_clip_seeded_per_clip(speech4, name):
    v = Variant.parse(vocode=name, seed=1)
    key = "a" + "~vocoded:" + name
    y = v.apply(speech4, key)
    assert len(y) == len(speech4) and np.isfinite(y).all() and y.dtype == np.float32
    np.testing.assert_array_equal(y, Variant.parse(vocode=name, seed=1).apply(speech4, key))
    assert np.corrcoef(_envelope(speech4), _envelope(y))[0, 1] > 0.8       # the same utterance ...
    assert np.abs(np.corrcoef(speech4, y)[0, 1]) < 0.9                      # ... resynthesised
    np.testing.assert_array_equal(v.apply(speech4, "a"), speech4)          # a real clip is left as it is


def test_griffinlim_draws_its_initial_phase_from_the_clip_and_leaves_torch_alone(speech4):
    import torch

    v = Variant.parse(vocode="griffinlim")
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = v.apply(speech4, "a~vocoded:griffinlim")
    assert torch.rand(1) == before                                          # the global generator untouched
    assert not np.array_equal(a, v.apply(speech4, "b~vocoded:griffinlim"))


def test_the_vocoder_registry_names_the_version_and_takes_new_vocoders(speech4):
    from dfdetect.featurize import vocoders

    described = Variant.parse(vocode="world", keep_real=True).to_dict()
    assert described["vocoder"] == {"name": "world", "parameters": vocoders.WORLD, "keep_real": True}
    vocoders.register("silence-test", lambda audio, sr, rng: np.zeros(len(audio) // 2), {"kind": "test"})
    try:
        y = Variant.parse(vocode="silence-test").apply(speech4, "x~vocoded:silence-test")
        assert len(y) == len(speech4) and not y.any()
    finally:
        del vocoders.VOCODERS["silence-test"]


@pytest.mark.parametrize("kwargs,message", [
    ({"vocode": "hifigan"}, "--vocode hifigan: unknown vocoder; choose one of world, griffinlim"),
    ({"keep_real": True}, "--vocode-keep-real"),
])
def test_bad_vocoder_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Variant.parse(**kwargs)


def test_vocoded_index_needs_real_clips_and_free_ids():
    from dfdetect.datasets.base import Clip, DatasetIndex
    from dfdetect.featurize.variants import vocoded_index

    fake = Clip("f1", "/x/f1.wav", 1, "train", generator="tts")
    real = Clip("r1", "/x/r1.wav", 0, "train", speaker="s1")
    world = Variant.parse(vocode="world")
    index = vocoded_index(DatasetIndex("d", "/x", [fake, real]), world)
    assert [(c.clip_id, c.label, c.generator, c.speaker) for c in index.clips] == [
        ("r1~vocoded:world", 1, "vocoded:world", "s1")]
    assert vocoded_index(DatasetIndex("d", "/x", [fake, real]), None).clips == [fake, real]
    with pytest.raises(ValueError, match="--vocode world: d at /x has no real clips to vocode"):
        vocoded_index(DatasetIndex("d", "/x", [fake]), world)
    odd = Clip("r0~vocoded:x", "/x/r0.wav", 0, "train")
    with pytest.raises(ValueError, match="clip id 'r0~vocoded:x' of d already holds"):
        vocoded_index(DatasetIndex("d", "/x", [real, odd]), world)
