"""Dataset variants made at featurize time: a codec round trip and seeded corruptions.

The reference study compared ASVspoof5 stored as FLAC vs MP3 and clean vs "corrupt" training audio, and found
that codec and corruption change what a detector learns (MP3 smears the artifacts; corruption never
helped). A variant is applied to every clip after decoding and before the frontend (on the 16 kHz
mono waveform), and is part of the store version's config, so each variant is its own version.

Codec (`--codec`): a real encode and decode through the codec at 16 kHz mono, so a lossy codec
removes what it removes (MP3 and AAC low-pass and quantise; Opus runs at 48 kHz internally):
`flac`, `mp3[:BITRATE]` (default 64k), `opus[:BITRATE]` (default 32k), `aac[:BITRATE]` (default 64k).

Corruption (`--corrupt`): the reference study does not define its corrupt set, so this is ours. A spec is a
comma-separated list of kinds, or `default` for all of them; each clip gets ONE kind drawn from the
list, with parameters drawn from the ranges below, seeded by (seed, clip id), so a store is the
same on every run and machine:

    noise       white or pink noise at 5-30 dB SNR
    reverb      exponentially decaying noise impulse response, RT60 0.2-0.8 s
    clip        hard clipping at 10-50% of the peak
    bandlimit   low-pass at 2-5 kHz (telephone / cheap microphones)
    resample    down to 8 or 11.025 kHz and back (lost high band, resampler artifacts)
    packetloss  20 ms frames zeroed with probability 2-10%

RawBoost (`rawboost[:ALGORITHMS]`, e.g. `rawboost:1+2`; rawboost.py) is a kind too, with the published
algorithms and default parameter ranges; it is not in `default`, whose stores keep their versions.
A version using it records RawBoost's parameters in its variant, so they name the version.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import soxr

from dfdetect.errors import ConfigError
from dfdetect.featurize import rawboost
from dfdetect.featurize.audio import decode, encode

CODECS = {"flac": None, "mp3": 64_000, "opus": 32_000, "aac": 64_000}   # codec -> default bitrate
CORRUPTIONS = ("noise", "reverb", "clip", "bandlimit", "resample", "packetloss")
RATE = 16000


@dataclass(frozen=True)
class Variant:
    codec: str | None = None
    bitrate: int | None = None
    corruptions: tuple[str, ...] = ()
    seed: int = 0

    @classmethod
    def parse(cls, codec: str | None = None, corrupt: str | None = None, seed: int = 0) -> Variant | None:
        """From the CLI's `--codec mp3:32k` / `--corrupt noise,reverb|default`; None when neither."""
        name = bitrate = None
        if codec:
            name, _, rate = codec.lower().partition(":")
            if name not in CODECS:
                raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)} (e.g. mp3:64k)")
            if rate and name == "flac":
                raise ConfigError("flac is lossless: it takes no bitrate")
            try:
                bitrate = int(float(rate.rstrip("k")) * 1000) if rate else CODECS[name]
            except ValueError:
                raise ConfigError(f"bad bitrate in {codec!r}; write e.g. mp3:64k") from None
        kinds = parse_corruptions(corrupt) if corrupt else ()
        if name is None and not kinds:
            return None
        return cls(name, bitrate, kinds, seed)

    def to_dict(self) -> dict:
        """What the store version records (and hashes into its name)."""
        described = {**asdict(self), "corruptions": list(self.corruptions)}
        if any(k.startswith("rawboost") for k in self.corruptions):
            described["rawboost"] = rawboost.PARAMETERS
        return described

    def apply(self, wave: np.ndarray, key: str) -> np.ndarray:
        """The variant of one clip's 16 kHz mono waveform; `key` (the clip id) seeds it."""
        if self.corruptions:
            digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            kind = self.corruptions[rng.integers(len(self.corruptions))]
            wave = corruption(kind)(rng, wave.astype(np.float64)).astype(np.float32)
        if self.codec:
            wave = codec_round_trip(wave, self.codec, self.bitrate)
        return wave


def parse_corruptions(corrupt: str) -> tuple[str, ...]:
    """`noise,rawboost:2+1` -> ("noise", "rawboost:1+2"): known kinds, RawBoost spelt canonically."""
    if corrupt.strip() == "default":
        return CORRUPTIONS
    kinds = [k.strip() for k in corrupt.split(",")]
    kinds = [rawboost.name(rawboost.parse(k)) if k.split(":")[0] == "rawboost" else k for k in kinds]
    unknown = [k for k in kinds if k not in CORRUPTIONS and not k.startswith("rawboost:")]
    if unknown:
        raise ConfigError(f"--corrupt: unknown corruption(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(CORRUPTIONS)}, rawboost[:1|2|3|1+2|...], or 'default' for the first six")
    return tuple(kinds)


def corruption(kind: str):
    """The function (rng, float64 wave) -> wave of one kind of `Variant.corruptions`."""
    if kind.startswith("rawboost:"):
        algorithms = rawboost.parse(kind)
        return lambda rng, x: rawboost.apply(rng, x, algorithms, RATE)
    return CORRUPT[kind]


def codec_round_trip(wave: np.ndarray, codec: str, bitrate: int | None) -> np.ndarray:
    """Encode and decode through a real codec; returns 16 kHz mono of the input's length (encoder
    delay and padding trimmed by aligning on the input)."""
    peak = float(np.abs(wave).max()) or 1.0
    scaled = (wave / peak * 0.9).astype(np.float32)            # codecs clip above full scale
    rate = 48000 if codec == "opus" else RATE                   # Opus runs at 48 kHz
    x = soxr.resample(scaled, RATE, rate) if rate != RATE else scaled
    audio = decode(encode(x, rate, codec, bitrate=bitrate))
    y = audio.samples.mean(axis=0)
    if audio.sample_rate != RATE:
        y = soxr.resample(y, audio.sample_rate, RATE)
    offset = _delay(scaled, y)
    y = y[offset:offset + len(wave)]
    return (np.pad(y, (0, len(wave) - len(y))) / 0.9 * peak).astype(np.float32)


def _delay(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 4096) -> int:
    """Encoder delay in samples: the lag of the decoded signal that best matches the input."""
    n = min(len(reference), len(decoded) - max_lag, 32000)
    if n <= 0:
        return 0
    ref = reference[:n]
    scores = [float(np.dot(ref, decoded[lag:lag + n])) for lag in range(0, max_lag, 16)]
    coarse = int(np.argmax(scores)) * 16
    fine = range(max(0, coarse - 16), coarse + 17)
    return max(fine, key=lambda lag: float(np.dot(ref, decoded[lag:lag + n])))


# -- corruptions: each takes (rng, float64 wave) and returns a wave of the same length ----------
def _noise(rng, x):
    white = rng.standard_normal(len(x))
    if rng.uniform() < 0.5:  # pink: 1/f power, by shaping white noise in the frequency domain
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        white = np.fft.irfft(spectrum, n=len(x))
    snr = rng.uniform(5, 30)
    power = np.mean(x ** 2) or 1e-12
    return x + white * np.sqrt(power / 10 ** (snr / 10) / np.mean(white ** 2))


def _reverb(rng, x):
    rt60 = rng.uniform(0.2, 0.8)
    t = np.arange(int(rt60 * RATE)) / RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    wet = np.convolve(x, ir)[: len(x)]
    return wet * (np.abs(x).max() / (np.abs(wet).max() or 1.0))


def _clip(rng, x):
    level = rng.uniform(0.1, 0.5) * np.abs(x).max()
    return np.clip(x, -level, level)


def _bandlimit(rng, x):
    cutoff = rng.uniform(2000, 5000)
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / RATE) > cutoff] = 0
    return np.fft.irfft(spectrum, n=len(x))


def _resample(rng, x):
    low = int(rng.choice([8000, 11025]))
    y = soxr.resample(soxr.resample(x, RATE, low), low, RATE)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


def _packetloss(rng, x):
    frame = RATE // 50  # 20 ms
    p = rng.uniform(0.02, 0.10)
    y = x.copy()
    for start in range(0, len(x), frame):
        if rng.uniform() < p:
            y[start:start + frame] = 0
    return y


CORRUPT = {"noise": _noise, "reverb": _reverb, "clip": _clip, "bandlimit": _bandlimit,
           "resample": _resample, "packetloss": _packetloss}
