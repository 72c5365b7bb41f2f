"""The frontend against an independent librosa computation on real signals, plus the
waveform rules (mono, 16 kHz, centre crop / end pad, peak norm) and every bad clip."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("librosa")

import librosa_reference as reference

from dfdetect.featurize.audio import Audio, AudioError, encode
from dfdetect.featurize.frontend import FEATURE_CHUNK, Frontend, FrontendConfig, MelConfig


@pytest.fixture(scope="module")
def frontend():
    return Frontend()


def _signals(speech):
    rng = np.random.default_rng(1)
    t = np.arange(48000) / 16000
    sweep = np.sin(2 * np.pi * (50 * t + 1200 * t ** 2))
    return {"speech": speech[:48000], "sweep": sweep,
            "noise": rng.standard_normal(48000) * np.linspace(0.01, 1, 48000)}


def test_mel_matches_librosa(frontend, speech):
    for name, x in _signals(speech).items():
        wave = frontend.peak_normalise(x.astype(np.float32))
        ours = frontend.features(wave, kinds=("mel",))["mel"][0]
        ref = reference.mel(wave.astype(np.float64))
        assert ours.shape == ref.shape == (2, 128, 301)
        np.testing.assert_allclose(ours, ref, atol=2e-3, err_msg=name)


def test_lfcc_matches_a_first_principles_computation(frontend, speech):
    for name, x in _signals(speech).items():
        wave = frontend.peak_normalise(x.astype(np.float32))
        ours = frontend.features(wave, kinds=("lfcc",))["lfcc"][0]
        ref = reference.lfcc(wave.astype(np.float64))
        assert ours.shape == ref.shape == (60, 301)
        np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3, err_msg=name)


def test_batched_features_equal_clip_by_clip(frontend, speech):
    """top_db clamps per clip: a loud clip in the batch must not change a quiet one's features. A
    batch is computed FEATURE_CHUNK rows at a time; at one torch thread (a featurize worker's) every
    row is bit for bit what it is alone, and float16 output is exactly the float32 values rounded
    (what stores held before the chunking). More threads split the per-clip reductions their own
    way (float32 rounding, ~1e-7)."""
    loud = frontend.peak_normalise(speech[:48000])
    quiet = loud.copy()
    quiet[:24000] *= 1e-4  # a clip with a 80 dB dynamic range inside it
    rng = np.random.default_rng(3)
    noise = [frontend.peak_normalise(rng.standard_normal(48000).astype(np.float32)) for _ in range(FEATURE_CHUNK + 3)]
    waves = np.stack([loud, quiet, *noise])   # more than one chunk, the last one short
    kinds = ("mel", "lfcc", "wave")
    threaded = frontend.features(waves, kinds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = frontend.features(waves, kinds)
        half = frontend.features(waves, kinds, dtype=np.float16)
        singles = [frontend.features(w, kinds) for w in waves]
    finally:
        torch.set_num_threads(threads)
    for i, single in enumerate(singles):
        for k in kinds:
            np.testing.assert_array_equal(batch[k][i], single[k][0], err_msg=k)
            np.testing.assert_allclose(threaded[k][i], single[k][0], atol=1e-5, err_msg=k)
    for k in ("mel", "lfcc", "wave"):
        assert batch[k].dtype == np.float32 and half[k].dtype == np.float16
        np.testing.assert_array_equal(half[k], batch[k].astype(np.float16), err_msg=k)
    assert frontend.features(waves[:0])["mel"].shape == (0, 2, 128, 301)


def test_waveform_mono_resample_crop_pad_and_peak(frontend):
    rate = 44100
    t = np.arange(int(rate * 5.0)) / rate
    left = np.sin(2 * np.pi * 1000 * t) * 0.2
    ramp = np.linspace(-1, 1, len(t)) * 0.1  # tells where the crop came from
    audio = Audio(np.stack([left + ramp, left - ramp]).astype(np.float32), rate, "wav")
    wave = frontend.waveform(audio)
    assert wave.shape == (48000,) and wave.dtype == np.float32
    assert np.abs(wave).max() == pytest.approx(1.0)
    # channels averaged (the ramp cancels), 1 kHz kept, centre of the 5 s file
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) == pytest.approx(1000 * 3, abs=1)  # 1 kHz bin at 1/3 Hz spacing
    mono16 = frontend.to_mono_16k(audio)
    assert len(mono16) == 80000
    start = (80000 - 48000) // 2
    np.testing.assert_allclose(wave, mono16[start:start + 48000] / np.abs(mono16[start:start + 48000]).max(), atol=1e-6)


def test_short_clips_are_zero_padded_at_the_end(frontend):
    x = np.full((1, 16000), 0.25, np.float32)
    wave = frontend.waveform(Audio(x, 16000, "wav"))
    np.testing.assert_array_equal(wave[:16000], 1.0)
    np.testing.assert_array_equal(wave[16000:], 0.0)


def test_long_file_from_disk_end_to_end(frontend, tmp_path, speech):
    """An MP3 at 22.05 kHz stereo, with a lying extension, through the one shared load path."""
    x = np.stack([speech, speech * 0.5])
    import soxr
    x22 = soxr.resample(x.T, 16000, 22050).T
    (tmp_path / "clip.dat").write_bytes(encode(x22, 22050, "mp3"))
    wave = frontend.load(tmp_path / "clip.dat")
    assert wave.shape == (48000,) and np.isfinite(wave).all() and np.abs(wave).max() == pytest.approx(1)


def test_config_is_frozen_hashable_and_versioned():
    a, b = FrontendConfig(), FrontendConfig()
    assert a == b and hash(a) == hash(b) and a.hash() == b.hash()
    assert FrontendConfig.from_dict(a.to_dict()) == a
    changed = FrontendConfig(mel=MelConfig(n_mels=80))
    assert changed.hash() != a.hash()
    assert FrontendConfig(clip_seconds=4.0).hash() != a.hash()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.sample_rate = 8000
    assert a.mel_shape == (2, 128, 301) and a.lfcc_shape == (60, 301)


@pytest.mark.parametrize("samples,rate,kind,phrase", [
    (np.zeros((1, 0)), 16000, "too_short", "zero-length"),
    (np.full((1, 1), 0.5), 16000, "too_short", "1 samples"),
    (np.full((2, 100), 0.5), 44100, "too_short", "at least 100 ms"),
    (np.zeros((1, 48000)), 16000, "silent", "silent"),
    (np.array([[0.1, np.nan] * 8000]), 16000, "non_finite", "NaN or Inf"),
    (np.array([[0.1, np.inf] * 8000]), 16000, "non_finite", "NaN or Inf"),
])
def test_bad_clips(frontend, samples, rate, kind, phrase):
    with pytest.raises(AudioError) as err:
        frontend.waveform(Audio(samples.astype(np.float32), rate, "wav"), "clip.wav")
    assert err.value.kind == kind and phrase in str(err.value) and "clip.wav" in str(err.value)


def test_bad_files_on_disk_name_the_file(frontend, tmp_path):
    sf.write(tmp_path / "silence.flac", np.zeros(32000), 16000)
    sf.write(tmp_path / "nan.wav", np.full(32000, np.nan), 16000, subtype="FLOAT")
    sf.write(tmp_path / "zero.wav", np.zeros(0), 16000)
    for name, kind in [("silence.flac", "silent"), ("nan.wav", "non_finite"), ("zero.wav", "too_short")]:
        with pytest.raises(AudioError) as err:
            frontend.load(tmp_path / name)
        assert err.value.kind == kind and name in str(err.value)
