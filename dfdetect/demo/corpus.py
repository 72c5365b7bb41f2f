"""A deterministic, offline corpus for the demo and the tests: "real" speech-like audio and four
"fake" generator families, each with the kind of artifact its real-world counterpart leaves.

Nothing here is speech, and nothing here is a benchmark: it exists so that every stage of dfdetect
can run end to end in seconds, with a held-out generator family to show out-of-distribution
behaviour. The families:

    real         source-filter speech: glottal pulses with jitter/shimmer and declining F0, moving
                 formants, fricative noise bursts
    vocoder      the same voice, but a perfectly steady pitch and faint tonal lines at multiples of
                 2 kHz (the periodic artifacts of transposed-convolution upsampling, as in GAN
                 vocoders)
    bandlimited  a TTS rendered at 8 kHz and upsampled: nothing above 4 kHz, over-smooth formant
                 glides, no fricatives
    griffinlim   magnitude kept, phase re-estimated by a few Griffin-Lim iterations: smeared
                 harmonics and transients ("phasey" speech)
    codec        a low-bitrate neural-codec-like resynthesis: band energies kept, fine structure
                 above 1.5 kHz replaced by noise (meant as the held-out, unseen family)

Every family gets room reverb and background noise at random (80% of reals, 50% of fakes), so the
recording conditions are not a shortcut. Files are written in the `folder` dataset layout with a split
level, in mixed formats and sample rates chosen independently of the label (so the container tells a model nothing):

    train/real, train/fake/{vocoder,bandlimited,griffinlim}   the seen generators
    val/real,   val/fake/{...}                                same generators, for choosing the epoch and
                                                              threshold (only when the spec asks for it)
    test/real,  test/fake/{...}                               same generators, held-out clips
    ood/real,   ood/fake/codec                                an unseen generator family
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from scipy.signal import fftconvolve  # long kernels (jitter smoothing, reverb): FFT, not direct

from dfdetect.featurize.audio import encode

GENERATORS = ("vocoder", "bandlimited", "griffinlim", "codec")
HELD_OUT_GENERATOR = "codec"

# (encoding, sample rate): mixed containers and rates, as scraped corpora are.
FORMATS = (
    ("wav", 16000), ("wav_f32", 44100), ("flac", 22050), ("flac", 16000),
    ("mp3", 24000), ("ogg", 48000), ("opus", 48000), ("m4a", 44100),
)
_EXTENSION = {"wav": "wav", "wav_f32": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg",
              "opus": "opus", "m4a": "m4a"}

_RATE = 16000          # synthesis rate
_FRAME, _HOP = 512, 128
_VOWELS = np.array([   # F1, F2, F3 (Hz) of a few vowels
    [730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
    [570, 840, 2410], [660, 1720, 2410], [440, 1020, 2240],
])


@dataclass(frozen=True)
class CorpusSpec:
    real: int = 120
    per_generator: int = 48
    min_seconds: float = 2.0
    max_seconds: float = 4.5
    seed: int = 0
    # A validation split of its own (reals and the seen generators; never the held-out family): clips
    # numbered after the others, so adding it changes no train/test/ood clip.
    val_real: int = 0
    val_per_generator: int = 0

    def jobs(self) -> list[tuple[str, int]]:
        """(family, index) of every clip; the val clips are the last `val_*` indices of a family."""
        jobs = [("real", i) for i in range(self.real + self.val_real)]
        for g in GENERATORS:
            extra = 0 if g == HELD_OUT_GENERATOR else self.val_per_generator
            jobs += [(g, i) for i in range(self.per_generator + extra)]
        return jobs

    def split_of(self, family: str, i: int) -> str:
        """The val clips, else the default split rule (`split_of`)."""
        if i >= (self.real if family == "real" else self.per_generator):
            return "val"
        return split_of(family, i)


def _stft(x: np.ndarray) -> np.ndarray:
    win = np.hanning(_FRAME).astype(np.float32)
    n = 1 + max(0, (len(x) - _FRAME)) // _HOP
    idx = np.arange(_FRAME)[None, :] + _HOP * np.arange(n)[:, None]
    return np.fft.rfft(x[idx] * win, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    win = np.hanning(_FRAME).astype(np.float32)
    frames = np.fft.irfft(spec, n=_FRAME, axis=1) * win
    out = np.zeros(length + _FRAME, np.float64)
    norm = np.zeros_like(out)
    for i, f in enumerate(frames):
        out[i * _HOP:i * _HOP + _FRAME] += f
        norm[i * _HOP:i * _HOP + _FRAME] += win ** 2
    return (out / np.maximum(norm, 1e-3))[:length]


def _formant_envelope(formants: np.ndarray, freqs: np.ndarray, bandwidth: float = 90.0) -> np.ndarray:
    """Spectral envelope [frames, bins] of a cascade of resonances at per-frame formants."""
    env = np.ones((len(formants), len(freqs)))
    for k in range(formants.shape[1]):
        f = formants[:, k:k + 1]
        env *= 1.0 / np.sqrt((1 + ((freqs[None, :] - f) / (bandwidth * (k + 1))) ** 2)
                             * (1 + ((freqs[None, :] + f) / (bandwidth * (k + 1))) ** 2))
    return env / env.max(axis=1, keepdims=True)


def _voice(rng: np.random.Generator, seconds: float, steady: bool, smooth: bool,
           fricatives: bool) -> np.ndarray:
    """Source-filter 'speech' at 16 kHz."""
    n = int(seconds * _RATE)
    t = np.arange(n) / _RATE
    f0_base = rng.uniform(95, 230)
    f0 = f0_base * (1.1 - 0.2 * t / seconds) * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    if not steady:  # jitter: slow random pitch wander, shimmer below
        f0 *= 1 + 0.02 * fftconvolve(rng.standard_normal(n), np.ones(400) / 20, mode="same")
    phase = np.cumsum(f0 / _RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal cycle
    if not steady:
        pulses *= 1 + 0.15 * rng.standard_normal(n)
    source = np.convolve(pulses, np.exp(-np.arange(64) / 6.0), mode="same")  # glottal tilt
    # syllables: voiced nuclei with gaps, amplitude envelope per syllable
    envelope = np.zeros(n)
    pos = int(rng.uniform(0.02, 0.15) * _RATE)
    targets, times = [], []
    while pos < n:
        length = int(rng.uniform(0.12, 0.3) * _RATE)
        seg = np.hanning(length) ** (0.5 if not smooth else 1.0)
        envelope[pos:pos + length] = seg[: max(0, min(length, n - pos))]
        targets.append(_VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.9, 1.1))
        times.append(pos + length // 2)
        pos += length + int(rng.uniform(0.03, 0.12) * _RATE)
    spec = _stft(source * envelope)
    frame_times = np.arange(len(spec)) * _HOP + _FRAME // 2
    targets = np.array(targets)
    kind = "linear" if smooth else "nearest"
    formants = np.stack([np.interp(frame_times, times, targets[:, k]) if kind == "linear"
                         else targets[np.abs(frame_times[:, None] - np.array(times)[None]).argmin(1), k]
                         for k in range(3)], axis=1)
    if not smooth:  # abrupt but slightly smoothed transitions, like real coarticulation
        kernel = np.ones(5) / 5
        formants = np.stack([np.convolve(formants[:, k], kernel, mode="same") for k in range(3)], 1)
    freqs = np.fft.rfftfreq(_FRAME, 1 / _RATE)
    speech = _istft(spec * _formant_envelope(formants, freqs), n)
    if fricatives:  # unvoiced noise bursts between syllables, high-passed
        noise = rng.standard_normal(n) * (envelope < 0.05)
        noise_spec = _stft(noise) * (freqs[None, :] > 3000)
        speech += 0.02 * _istft(noise_spec, n) * (rng.uniform(size=n) < 1.0)
    return speech / (np.abs(speech).max() + 1e-9)


def _room(rng: np.random.Generator, x: np.ndarray, snr_db: float) -> np.ndarray:
    """Short exponential reverb tail and background noise: what a real recording has."""
    rt = int(rng.uniform(0.05, 0.25) * _RATE)
    ir = rng.standard_normal(rt) * np.exp(-np.arange(rt) / (rt / 6))
    ir[0] = 1.0 / 0.3
    y = fftconvolve(x, ir * 0.3, mode="full")[: len(x)]
    y /= np.abs(y).max() + 1e-9
    noise = rng.standard_normal(len(y))
    noise *= np.sqrt(np.mean(y ** 2) / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    return y + noise


def _griffin_lim(rng: np.random.Generator, x: np.ndarray, iterations: int = 8) -> np.ndarray:
    magnitude = np.abs(_stft(x))
    angles = np.exp(2j * np.pi * rng.uniform(size=magnitude.shape))
    for _ in range(iterations):
        y = _istft(magnitude * angles, len(x))
        angles = np.exp(1j * np.angle(_stft(y)))
    return _istft(magnitude * angles, len(x))


def _codec(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Keep coarse band energies, replace fine structure above 1.5 kHz by shaped noise."""
    spec = _stft(x)
    freqs = np.fft.rfftfreq(_FRAME, 1 / _RATE)
    edges = np.geomspace(1500, 8000, 9)
    out = spec.copy()
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (freqs >= lo) & (freqs < hi)
        energy = np.sqrt(np.mean(np.abs(spec[:, band]) ** 2, axis=1, keepdims=True))
        noise = rng.standard_normal((len(spec), band.sum())) + 1j * rng.standard_normal((len(spec), band.sum()))
        out[:, band] = energy * noise / np.sqrt(2)
    # coarse quantisation of the low band's magnitude (few bits per bin)
    low = freqs < 1500
    mag = np.abs(out[:, low])
    step = mag.max() / 12 + 1e-9
    out[:, low] = np.round(mag / step) * step * np.exp(1j * np.angle(out[:, low]))
    return _istft(out, len(x))


def synthesize(kind: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One clip of family `kind` ("real" or one of GENERATORS) at 16 kHz, peak about 0.9."""
    if kind == "real":
        y = _voice(rng, seconds, steady=False, smooth=False, fricatives=True)
    elif kind == "vocoder":
        y = _voice(rng, seconds, steady=True, smooth=False, fricatives=True)
        t = np.arange(len(y)) / _RATE
        tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in (2000, 4000, 6000))
        y = y + 0.004 * tones * np.sqrt(np.mean(y ** 2)) / 0.05
    elif kind == "bandlimited":
        y = _voice(rng, seconds, steady=False, smooth=True, fricatives=False)
        y = soxr.resample(soxr.resample(y, _RATE, 8000), 8000, _RATE)
    elif kind == "griffinlim":
        y = _griffin_lim(rng, _voice(rng, seconds, steady=False, smooth=False, fricatives=True))
    elif kind == "codec":
        y = _codec(rng, _voice(rng, seconds, steady=False, smooth=False, fricatives=True))
    else:
        raise ValueError(f"unknown family {kind!r}; choose real or one of {GENERATORS}")
    # Rooms and noise for every family (most real clips, half the fakes: fakes get re-recorded and
    # reals get cleaned), so that "clean = fake" is not a shortcut a detector can learn.
    if rng.uniform() < (0.8 if kind == "real" else 0.5):
        y = _room(rng, y, rng.uniform(20, 40))
    return (0.9 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def split_of(family: str, i: int) -> str:
    """Seen families: 2/3 train, 1/3 test. Reals: 3/5 train, 1/5 test, 1/5 ood. Held out: ood."""
    if family == HELD_OUT_GENERATOR:
        return "ood"
    if family == "real":
        return {3: "test", 4: "ood"}.get(i % 5, "train")
    return "test" if i % 3 == 2 else "train"


def write_corpus(root: Path, spec: CorpusSpec = CorpusSpec()) -> list[Path]:
    """Write the corpus under root in the `folder` layout (see the module docstring); returns the
    files written.

    Every clip has its own seed derived from (spec.seed, family, index), so the corpus is the same
    on every machine and a clip does not change when the counts do."""
    root = Path(root)
    written = []
    for family, i in spec.jobs():
        rng = np.random.default_rng([spec.seed, (["real", *GENERATORS]).index(family), i])
        seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
        fmt, rate = FORMATS[rng.integers(len(FORMATS))]
        audio = synthesize(family, rng, seconds)
        if rate != _RATE:
            audio = soxr.resample(audio, _RATE, rate).astype(np.float32)
        split = root / spec.split_of(family, i)
        folder = split / "real" if family == "real" else split / "fake" / family
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{family}_{i:04d}.{_EXTENSION[fmt]}"
        path.write_bytes(encode(audio, rate, fmt))
        written.append(path)
    return written
