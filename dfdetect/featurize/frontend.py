"""The reference study's audio frontend, exactly, behind one frozen and hashable config.

    decoded audio -> [trim_silence: leading and trailing silence cut] ->
    mono (mean of channels) -> 16 kHz (soxr, HQ) -> 3 s: centre crop / zero pad
    at the end -> peak normalisation (x / max|x|) -> features

Mel (the reference study's table): n_fft 1024 (Hann), hop 160, 128 mel bins (HTK scale, no filter-bank norm:
torchaudio's MelSpectrogram defaults), 20-7,600 Hz, power -> dB with top_db 80 (per clip), per-clip mean/std
normalisation, plus a delta channel (5-frame regression) -> [2, 128, 301].

LFCC (the reference study does not define it; we follow ASVspoof's LFCC-LCNN baseline): 20 ms Hamming window,
10 ms hop, n_fft 512, 20 linear filters 0-4 kHz, log energies, DCT-II (ortho) to 20 coefficients,
plus delta and delta-delta -> [60, 301]. Not normalised per clip (the baseline does not).

Wave: the prepared waveform itself, [48000] (what raw-waveform models such as AASIST read).

The same `Frontend` serves featurize, training and scoring, so a feature means the same thing in
every stage. `FrontendConfig.hash()` names a store version: change any field (or FRONTEND_VERSION,
when the code's arithmetic changes) and a new version is written beside the old one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import soxr
import torch
import torchaudio.functional as AF

from dfdetect.featurize.audio import Audio, AudioError, Source, decode, describe
from dfdetect.featurize.recording import speech_bounds

# Bump when the code computes something different for the same config.
FRONTEND_VERSION = 1

# The features the frontend computes from a prepared waveform (WavLM's are computed by featurize/wavlm.py).
FRONTEND_FEATURES = ("mel", "lfcc", "wave")

# Rows computed together by Frontend.features (see there).
FEATURE_CHUNK = 8


@dataclass(frozen=True)
class MelConfig:
    n_fft: int = 1024
    hop_length: int = 160
    n_mels: int = 128
    f_min: float = 20.0
    f_max: float = 7600.0
    top_db: float = 80.0
    delta_window: int = 5
    norm_eps: float = 1e-5  # guards the per-clip std


@dataclass(frozen=True)
class LfccConfig:
    n_fft: int = 512
    win_length: int = 320   # 20 ms
    hop_length: int = 160   # 10 ms
    n_filters: int = 20
    n_coefficients: int = 20
    f_min: float = 0.0
    f_max: float = 4000.0
    log_offset: float = 1e-6  # torchaudio's, inside log(energy + offset)
    delta_window: int = 5


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    clip_seconds: float = 3.0
    min_seconds: float = 0.1      # shorter clips are errors, not 3 s of padding
    silence_peak: float = 1e-5    # peak below -100 dBFS: nothing to normalise, an error
    resample_quality: str = "HQ"  # soxr quality
    # Cut leading and trailing silence (recording.speech_bounds) before the crop: the standard
    # mitigation of the silence shortcut. Named in the hash only when on, so every version
    # featurized without it keeps its name.
    trim_silence: bool = False
    mel: MelConfig = field(default_factory=MelConfig)
    lfcc: LfccConfig = field(default_factory=LfccConfig)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def mel_shape(self) -> tuple[int, int, int]:
        return (2, self.mel.n_mels, self.clip_samples // self.mel.hop_length + 1)

    @property
    def lfcc_shape(self) -> tuple[int, int]:
        return (3 * self.lfcc.n_coefficients, self.clip_samples // self.lfcc.hop_length + 1)

    def feature_shape(self, kind: str) -> tuple[int, ...]:
        """Per-clip shape of one of FRONTEND_FEATURES."""
        return {"mel": self.mel_shape, "lfcc": self.lfcc_shape, "wave": (self.clip_samples,)}[kind]

    def to_dict(self) -> dict:
        d = {"frontend_version": FRONTEND_VERSION, **asdict(self)}
        if not self.trim_silence:
            del d["trim_silence"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FrontendConfig:
        d = {k: v for k, v in d.items() if k != "frontend_version"}
        return cls(**{**d, "mel": MelConfig(**d["mel"]), "lfcc": LfccConfig(**d["lfcc"])})

    def hash(self) -> str:
        """Short, stable id of everything that determines the features."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class Frontend:
    """Waveform preparation (numpy, per clip) and features (torch, batched)."""

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        self.config = c = config
        n_freqs = c.mel.n_fft // 2 + 1
        self._mel_window = torch.hann_window(c.mel.n_fft)
        self._mel_bank = AF.melscale_fbanks(n_freqs, c.mel.f_min, c.mel.f_max, c.mel.n_mels,
                                            c.sample_rate, norm=None, mel_scale="htk")
        self._lfcc_window = torch.hamming_window(c.lfcc.win_length)
        self._lfcc_bank = AF.linear_fbanks(c.lfcc.n_fft // 2 + 1, c.lfcc.f_min, c.lfcc.f_max,
                                           c.lfcc.n_filters, c.sample_rate)
        self._dct = AF.create_dct(c.lfcc.n_coefficients, c.lfcc.n_filters, norm="ortho")

    # -- waveform -----------------------------------------------------------------------------
    def to_mono_16k(self, audio: Audio, where: str = "<audio>") -> np.ndarray:
        """Mono at the frontend's rate, full length. Raises AudioError for unusable audio."""
        c = self.config
        if audio.frames == 0:
            raise AudioError(where, "too_short", "no audio samples (zero-length clip)")
        if audio.duration < c.min_seconds:
            raise AudioError(
                where, "too_short",
                f"too short: {audio.frames} samples ({audio.duration * 1000:.1f} ms at "
                f"{audio.sample_rate} Hz); at least {c.min_seconds * 1000:.0f} ms is needed",
            )
        if not np.isfinite(audio.samples).all():
            bad = int((~np.isfinite(audio.samples)).sum())
            raise AudioError(where, "non_finite", f"{bad} samples are NaN or Inf; the file is corrupt")
        audio = self.source(audio)
        mono = audio.samples.mean(axis=0, dtype=np.float64).astype(np.float32)
        if audio.sample_rate != c.sample_rate:
            mono = soxr.resample(mono, audio.sample_rate, c.sample_rate, quality=c.resample_quality)
        return mono.astype(np.float32, copy=False)

    def source(self, audio: Audio) -> Audio:
        """The part of the decoded audio the frontend uses: all of it, or without its leading and
        trailing silence (`trim_silence`). Its samples must be finite."""
        if not self.config.trim_silence:
            return audio
        first, last = speech_bounds(audio.samples, audio.sample_rate)
        if (first, last) == (0, audio.frames):
            return audio
        return Audio(np.ascontiguousarray(audio.samples[:, first:last]), audio.sample_rate, audio.container,
                     audio.warnings)

    def crop_or_pad(self, wave: np.ndarray) -> np.ndarray:
        """Centre crop when longer than the clip, zero pad at the end when shorter."""
        n = self.config.clip_samples
        if len(wave) >= n:
            start = (len(wave) - n) // 2
            return wave[start:start + n]
        return np.pad(wave, (0, n - len(wave)))

    def peak_normalise(self, wave: np.ndarray, where: str = "<audio>") -> np.ndarray:
        peak = float(np.abs(wave).max())
        if peak < self.config.silence_peak:
            raise AudioError(
                where, "silent",
                f"silent: peak {peak:.2e} in the {self.config.clip_seconds:g} s clip "
                f"(below {self.config.silence_peak:g}); nothing to normalise",
            )
        return (wave / peak).astype(np.float32)

    def waveform(self, audio: Audio, where: str = "<audio>") -> np.ndarray:
        """The model's input waveform: [clip_samples] float32, peak 1."""
        return self.peak_normalise(self.crop_or_pad(self.to_mono_16k(audio, where)), where)

    def load(self, source: Source, where: str | None = None) -> np.ndarray:
        """Decode any audio file (path, bytes or stream) and prepare it: the one path from a file
        to the model's input that featurize, training and scoring share."""
        where = describe(source, where)
        return self.waveform(decode(source, where), where)

    # -- features (batched) -------------------------------------------------------------------
    @staticmethod
    def _power(waves: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
        """|STFT|^2 [B, freqs, frames], centred with reflect padding (torchaudio's Spectrogram).
        re^2 + im^2 directly: complex abs() takes a square root only to square it again, and
        summing a size-2 last dim is as slow; each was a quarter of the frontend's time."""
        spec = torch.stft(waves, n_fft, hop_length=hop, win_length=len(window), window=window,
                          center=True, pad_mode="reflect", return_complex=True)
        return spec.real.square() + spec.imag.square()

    @torch.inference_mode()
    def mel(self, waves: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, 2, n_mels, frames]: normalised log-mel and its delta."""
        c = self.config.mel
        power = self._power(waves, c.n_fft, c.hop_length, self._mel_window)
        mel = (self._mel_bank.T @ power).unsqueeze(1)  # [B, 1, mels, frames]
        # amplitude_to_DB applies top_db against the max over the last three dims, so the
        # singleton channel keeps the clamp per clip, as when clips are computed one by one.
        db = AF.amplitude_to_DB(mel, multiplier=10.0, amin=1e-10, db_multiplier=0.0, top_db=c.top_db)
        mean = db.mean(dim=(-2, -1), keepdim=True)
        std = db.std(dim=(-2, -1), keepdim=True, unbiased=False)
        norm = (db - mean) / (std + c.norm_eps)
        delta = AF.compute_deltas(norm, win_length=c.delta_window)
        return torch.cat([norm, delta], dim=1)

    @torch.inference_mode()
    def lfcc(self, waves: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, 3 * n_coefficients, frames]: LFCC, delta, delta-delta."""
        c = self.config.lfcc
        power = self._power(waves, c.n_fft, c.hop_length, self._lfcc_window)
        energies = self._lfcc_bank.T @ power                       # [B, filters, frames]
        base = self._dct.T @ torch.log(energies + c.log_offset)     # [B, coefficients, frames]
        d1 = AF.compute_deltas(base, win_length=c.delta_window)
        d2 = AF.compute_deltas(d1, win_length=c.delta_window)
        return torch.cat([base, d1, d2], dim=1)

    def features(self, waves: np.ndarray | torch.Tensor, kinds=("mel", "lfcc"),
                 dtype=np.float32) -> dict[str, np.ndarray]:
        """Features (any of FRONTEND_FEATURES) of prepared waveforms [B, clip_samples] as numpy
        arrays of `dtype` (float32, or float16: what stores and heads hold, cast by torch, which
        rounds as numpy does at a twentieth of the cost).

        Computed FEATURE_CHUNK rows at a time: a row's values do not depend on the rows beside it
        (tests check bit-identity), but a whole block's spectra (~160 MB for 128 clips) fall out
        of the cache and cost 1.6x as much per clip as a chunk's."""
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32))
        if x.ndim == 1:
            x = x.unsqueeze(0)
        compute = {"mel": self.mel, "lfcc": self.lfcc, "wave": lambda w: w}
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(x), FEATURE_CHUNK):
            part = x[start:start + FEATURE_CHUNK]
            for k in kinds:
                values = compute[k](part)
                if k not in out:
                    out[k] = np.empty((len(x), *values.shape[1:]), dtype)
                torch.from_numpy(out[k][start:start + len(part)]).copy_(values)
        return out if len(x) else {k: np.empty((0, *self.config.feature_shape(k)), dtype) for k in kinds}
