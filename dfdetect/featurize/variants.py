"""Dataset variants made at featurize time: a codec round trip and seeded corruptions.

The reference study compared ASVspoof5 stored as FLAC vs MP3 and clean vs "corrupt" training audio, and found
that codec and corruption change what a detector learns (MP3 smears the artifacts; corruption never
helped). A variant is applied to every clip after decoding and before the frontend (on the 16 kHz
mono waveform), and is part of the store version's config, so each variant is its own version.

Codec (`--codec`): a real encode and decode through the codec at 16 kHz mono, so a lossy codec
removes what it removes (MP3 and AAC low-pass and quantise; Opus runs at 48 kHz internally):
`flac`, `mp3[:BITRATE]` (default 64k), `opus[:BITRATE]` (default 32k), `aac[:BITRATE]` (default 64k),
`vorbis[:BITRATE]` (default 64k; libvorbis's VBR quality whose nominal bitrate that is), or `random`:
each clip draws one codec and bitrate from `RANDOM_CODECS`, seeded by (seed, clip id) like the
corruptions (its own draw: adding it leaves a clip's corruption as it was). The clip table's
`variant_codec` column records each clip's round trip (e.g. "opus:24k").

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

Vocoded fakes (`--vocode NAME`, vocoders.py): the store's clip table holds, for every REAL clip of
the dataset, a fake clip `<clip id>~vocoded:NAME` (label fake, generator `vocoded:NAME`, the
source's path, split and speaker) whose audio is the source's through the vocoder, seeded per clip.
The dataset's own fakes are left out (they are in the clean store), and so are its reals unless
`--vocode-keep-real`: a vocoded store is meant to be trained on beside the clean store (`train
--train clean --train vocoded`), where keeping them would count every real clip twice; kept, each
real row precedes its vocoded copy and the store stands alone (bona fide vs its copy-synthesis).
A vocoded row's features are not its file's, so it records no file stamp: `score --features-from`
never takes them for the file's (it scores that file live).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import soxr

from dfdetect.datasets.base import FAKE, REAL, DatasetIndex
from dfdetect.errors import ConfigError
from dfdetect.featurize import rawboost, vocoders
from dfdetect.featurize.audio import decode, encode
from dfdetect.store.schema import NO_STAMP, file_stamp

CODECS = {"flac": None, "mp3": 64_000, "opus": 32_000, "aac": 64_000, "vorbis": 64_000}   # codec -> default bitrate
# `--codec random`: codec -> the bitrates (kbit/s) it draws from, the common steps in 16-128 kbit/s
# that the codec really delivers for 16 kHz mono: FFmpeg's AAC tops out near 75 kbit/s there, and
# libvorbis's quality scale spans 24-100 kbit/s (Opus runs at 48 kHz and takes them all).
RANDOM_CODECS = {"mp3": (16, 24, 32, 48, 64, 96, 128), "aac": (16, 24, 32, 48, 64),
                 "opus": (16, 24, 32, 48, 64, 96, 128), "vorbis": (24, 32, 48, 64, 96)}
RANDOM = "random"
VOCODED = "~vocoded:"   # a vocoded clip's id: its source clip's id, this, the vocoder's name
CORRUPTIONS = ("noise", "reverb", "clip", "bandlimit", "resample", "packetloss")
RATE = 16000


@dataclass(frozen=True)
class Variant:
    codec: str | None = None
    bitrate: int | None = None
    corruptions: tuple[str, ...] = ()
    seed: int = 0
    vocoder: str | None = None   # --vocode: the fakes this store makes from the real clips
    keep_real: bool = False      # --vocode-keep-real

    @classmethod
    def parse(cls, codec: str | None = None, corrupt: str | None = None, seed: int = 0, vocode: str | None = None,
              keep_real: bool = False) -> Variant | None:
        """From the CLI's `--codec mp3:32k` / `--corrupt noise,reverb|default` / `--vocode world`
        [`--vocode-keep-real`]; None when none."""
        if keep_real and not vocode:
            raise ConfigError("--vocode-keep-real keeps the real clips beside their vocoded copies: "
                              "it needs --vocode NAME")
        vocoder = vocoders.get(vocode.strip().lower()).name if vocode else None
        name = bitrate = None
        if codec:
            name, _, rate = codec.lower().partition(":")
            if name not in CODECS and name != RANDOM:
                raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)} (e.g. mp3:64k) or "
                                  f"{RANDOM} (one drawn per clip)")
            if rate and name == RANDOM:
                raise ConfigError(f"--codec {codec}: random draws each clip's bitrate; write --codec random")
            if rate and name == "flac":
                raise ConfigError("flac is lossless: it takes no bitrate")
            try:
                bitrate = int(float(rate.rstrip("k")) * 1000) if rate else CODECS.get(name)
            except ValueError:
                raise ConfigError(f"bad bitrate in {codec!r}; write e.g. mp3:64k") from None
        kinds = parse_corruptions(corrupt) if corrupt else ()
        if name is None and not kinds and vocoder is None:
            return None
        return cls(name, bitrate, kinds, seed, vocoder, bool(keep_real))

    def to_dict(self) -> dict:
        """What the store version records (and hashes into its name)."""
        described = {**asdict(self), "corruptions": list(self.corruptions)}
        del described["vocoder"], described["keep_real"]   # absent unless used: older versions keep their names
        if self.vocoder:
            described["vocoder"] = {"name": self.vocoder, "parameters": vocoders.get(self.vocoder).parameters,
                                    "keep_real": self.keep_real}
        if any(k.startswith("rawboost") for k in self.corruptions):
            described["rawboost"] = rawboost.PARAMETERS
        if self.codec == RANDOM:
            described["random_codecs"] = {name: list(rates) for name, rates in RANDOM_CODECS.items()}
        return described

    def codec_of(self, key: str) -> tuple[str | None, int | None]:
        """(codec, bitrate) of clip `key`'s round trip: drawn for `random`, else the variant's."""
        if self.codec != RANDOM:
            return self.codec, self.bitrate
        rng = _rng(f"{self.seed}:codec:{key}")
        name = sorted(RANDOM_CODECS)[rng.integers(len(RANDOM_CODECS))]
        rates = RANDOM_CODECS[name]
        return name, rates[rng.integers(len(rates))] * 1000

    def apply(self, wave: np.ndarray, key: str) -> np.ndarray:
        """The variant of one clip's 16 kHz mono waveform; `key` (the clip id) seeds it."""
        if self.vocodes(key):
            wave = vocoders.vocode(self.vocoder, wave, RATE, _rng(f"{self.seed}:vocode:{key}"))
        if self.corruptions:
            rng = _rng(f"{self.seed}:{key}")
            kind = self.corruptions[rng.integers(len(self.corruptions))]
            wave = corruption(kind)(rng, wave.astype(np.float64)).astype(np.float32)
        if self.codec:
            wave = codec_round_trip(wave, *self.codec_of(key))
        return wave

    def vocodes(self, key: str) -> bool:
        """Whether clip `key` is one of this store's vocoded fakes."""
        return self.vocoder is not None and key.endswith(VOCODED + self.vocoder)


def vocoded_index(index: DatasetIndex, variant: Variant | None) -> DatasetIndex:
    """The clip table a `--vocode` store holds (see the module's doc); `index` unchanged without one."""
    if variant is None or variant.vocoder is None:
        return index
    reals = [c for c in index.clips if c.label == REAL]
    if not reals:
        raise ConfigError(f"--vocode {variant.vocoder}: {index.dataset} at {index.root} has no real clips to vocode")
    clashing = [c.clip_id for c in index.clips if VOCODED in c.clip_id]
    if clashing:
        raise ConfigError(f"--vocode {variant.vocoder}: clip id {clashing[0]!r} of {index.dataset} already holds "
                          f"{VOCODED!r}, which names vocoded copies; rename it in the dataset")
    fakes = [dataclasses.replace(c, clip_id=c.clip_id + VOCODED + variant.vocoder, label=FAKE,
                                 generator=f"vocoded:{variant.vocoder}") for c in reals]
    pairs = zip(reals, fakes) if variant.keep_real else ((f,) for f in fakes)
    return dataclasses.replace(index, clips=[clip for pair in pairs for clip in pair])


def clip_stamp(variant: Variant | None, path: str, key: str) -> tuple[int, int]:
    """The file stamp a clip's row records: none for a vocoded fake (its features are not its file's)."""
    return NO_STAMP if variant is not None and variant.vocodes(key) else file_stamp(path)


def codec_label(variant: Variant | None, key: str) -> str:
    """What the clip table's variant_codec column says of clip `key`: "mp3:64k", "flac", "" (none)."""
    codec, bitrate = variant.codec_of(key) if variant else (None, None)
    return "" if codec is None else codec if bitrate is None else f"{codec}:{bitrate // 1000}k"


def _rng(text: str) -> np.random.Generator:
    """A generator seeded by `text` (the variant's seed and a clip id): the same on every machine."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


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
    audio = decode(encode(x, rate, "ogg" if codec == "vorbis" else codec, bitrate=bitrate))
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
