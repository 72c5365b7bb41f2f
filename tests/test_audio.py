"""Decoding: every listed format, made by the tests themselves; lying extensions; bad input."""

import io

import numpy as np
import pytest
import soundfile as sf

from dfdetect.featurize.audio import AudioError, decode, encode, sniff_container


def _tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def _aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over small lags: lossy codecs add a few ms of encoder delay."""
    n = min(len(a), len(b)) - 4096
    best = max(np.corrcoef(a[lag:lag + n], b[:n])[0, 1] for lag in range(0, 4096, 1))
    return float(best)


@pytest.mark.parametrize("fmt,tolerance", [
    ("wav_u8", 1 / 64), ("wav", 1 / 16000), ("wav_s24", 1e-6), ("wav_s32", 1e-7),
    ("wav_f32", 0.0), ("wav_f64", 1e-7), ("flac", 1 / 16000),
])
@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (96000, 6)])
def test_lossless_formats_round_trip(tmp_path, fmt, tolerance, rate, channels):
    x = _tone(rate, 0.5, channels)
    if fmt == "flac" and rate > 655350:
        pytest.skip()
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(encode(x, rate, fmt))
    audio = decode(path)
    assert audio.sample_rate == rate and audio.samples.shape == x.shape
    assert audio.samples.dtype == np.float32
    assert np.abs(audio.samples - x).max() <= tolerance


def test_wav_written_by_an_independent_writer(tmp_path):
    """Integer PCM as soundfile writes it, read back by us: scale and layout agree."""
    x = (np.arange(-100, 100, dtype=np.int16) * 100).reshape(-1, 2)
    sf.write(tmp_path / "a.wav", x, 22050, subtype="PCM_16")
    audio = decode(tmp_path / "a.wav")
    np.testing.assert_allclose(audio.samples, x.T / 32768.0)


@pytest.mark.parametrize("fmt,rate,container", [
    ("mp3", 44100, "mp3"), ("ogg", 22050, "ogg"), ("opus", 48000, "ogg"),
    ("m4a", 44100, "mp4"), ("mp4", 16000, "mp4"), ("aac", 24000, "aac"),
])
def test_lossy_formats_decode_to_the_signal(tmp_path, fmt, rate, container):
    x = _tone(rate, 1.0, 2)
    (tmp_path / f"clip.{fmt}").write_bytes(encode(x, rate, fmt))
    audio = decode(tmp_path / f"clip.{fmt}")
    assert audio.container == container
    assert audio.sample_rate == rate and audio.channels == 2
    assert abs(audio.frames - x.shape[1]) < 0.1 * rate  # encoder delay/padding only
    assert _aligned_correlation(audio.samples[0], x[0]) > 0.99


@pytest.mark.parametrize("fmt,name", [("m4a", "clip.dat"), ("mp3", "clip.wav"), ("flac", "clip.mp3"),
                                      ("wav", "noextension"), ("ogg", "clip.m4a")])
def test_the_extension_is_not_trusted(tmp_path, fmt, name):
    x = _tone(16000)
    (tmp_path / name).write_bytes(encode(x, 16000, fmt))
    audio = decode(tmp_path / name)
    assert audio.sample_rate == 16000 and audio.frames > 0.9 * 16000


def test_bytes_and_streams_decode_like_files():
    data = encode(_tone(16000), 16000, "flac")
    a, b = decode(data), decode(io.BytesIO(data))
    np.testing.assert_array_equal(a.samples, b.samples)


@pytest.mark.parametrize("head,container", [
    (b"RIFF\0\0\0\0WAVEfmt ", "wav"), (b"fLaC\0\0\0\x22", "flac"), (b"OggS\0\x02", "ogg"),
    (b"ID3\x04\0\0", "mp3"), (b"\xff\xfb\x90\x64", "mp3"), (b"\xff\xf1\x50\x80", "aac"),
    (b"\0\0\0\x20ftypM4A ", "mp4"), (b"\x1a\x45\xdf\xa3\x9f", "matroska"), (b"hello wo", None),
])
def test_sniffing(head, container):
    assert sniff_container(head) == container


@pytest.mark.parametrize("make,kind,phrase", [
    (lambda p: p.write_bytes(b""), "empty", "empty file"),
    (lambda p: p.mkdir(), "is_directory", "is a directory"),
    (lambda p: None, "not_found", "not found"),
    (lambda p: p.write_text("id,label\n1,fake\n"), "unknown_container", "not a recognised audio container"),
    (lambda p: p.write_bytes(encode(_tone(16000), 16000, "wav")[:30]), "decode_failed", "cannot decode wav"),
    (lambda p: p.write_bytes(b"\0\0\0\x20ftypM4A " + b"\0" * 200), "decode_failed", "cannot decode mp4"),
    (lambda p: p.write_bytes(encode(_tone(44100), 44100, "mp3")[:20]), "decode_failed", "cannot decode mp3"),
])
def test_bad_files_raise_a_specific_error_naming_the_file(tmp_path, make, kind, phrase):
    path = tmp_path / "bad input.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        decode(path)
    assert err.value.kind == kind
    assert str(path) in str(err.value) and phrase in str(err.value)
