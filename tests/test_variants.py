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
])
def test_bad_variant_specs(codec, corrupt, message):
    with pytest.raises(ValueError, match=message):
        Variant.parse(codec, corrupt)


def test_no_variant():
    assert Variant.parse(None, None) is None
    assert Variant.parse("mp3").bitrate == 64000
