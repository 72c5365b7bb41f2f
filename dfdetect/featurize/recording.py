"""Recording statistics of a clip: how it was recorded, stored and cut, not what was said.

Computed once per clip by featurize from the decoded audio (before the frontend resamples, crops
or normalises it) and kept in the store's clip table (store/schema.py RECORDING_COLUMNS), so that
`dfdetect audit` can tell when one of them alone separates real from fake: a shortcut a detector
would learn instead of synthesis. With `--trim-silence` they describe the trimmed audio, the audio
the frontend used.

Definitions (x: the decoded samples, all channels, nominally in [-1, 1]; m: their mean over
channels; frames: consecutive FRAME_SECONDS pieces of m, the last one shorter):

    bitrate_kbps       file bytes * 8 / duration / 1000, rounded to a whole kb/s so that a WAV
                       header's share of a short file is no cue (NaN: the clip is not a plain file)
    leading_silence    seconds before the first active frame; a frame is active when its mean
                       power is within SILENCE_DB of the loudest frame's
    trailing_silence   seconds after the last active frame
    active_fraction    active frames / frames
    rms_dbfs           20 log10 sqrt(mean m^2)
    peak_dbfs          20 log10 max |x|
    clipping_fraction  share of samples with |x| >= CLIP_LEVEL
    dc_offset          mean of m
    bandwidth_hz       the frequency below which BANDWIDTH_ENERGY of the energy lies, in the mean
                       power spectrum (Hann, SPECTRUM_SIZE points) of up to SPECTRUM_FRAMES frames
                       spread over the clip, DC removed
    noise_floor_dbfs   the NOISE_PERCENTILE-th percentile of the frames' power, in dBFS (lower)

Levels are floored at FLOOR_DB (digital silence). Duration, sample rate, channels and container
are the clip table's own columns (store/schema.py OUTCOME_COLUMNS).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from dfdetect.store.schema import RECORDING_COLUMNS

FRAME_SECONDS = 0.02
SILENCE_DB = 40.0
CLIP_LEVEL = 0.999
BANDWIDTH_ENERGY = 0.99
SPECTRUM_SIZE = 512
SPECTRUM_FRAMES = 16
NOISE_PERCENTILE = 10
FLOOR_DB = -200.0

# column -> (what a warning calls it, its unit), for every statistic `audit` reads: the clip
# table's own columns first, then RECORDING_COLUMNS.
STATISTICS = {
    "duration": ("duration", "s"),
    "sample_rate": ("native sample rate", "Hz"),
    "channels": ("channel count", ""),
    "container": ("container", ""),
    "bitrate_kbps": ("bitrate", "kb/s"),
    "leading_silence": ("leading silence", "s"),
    "trailing_silence": ("trailing silence", "s"),
    "active_fraction": ("speech-active fraction", ""),
    "rms_dbfs": ("RMS level", "dBFS"),
    "peak_dbfs": ("peak level", "dBFS"),
    "clipping_fraction": ("clipping", ""),
    "dc_offset": ("DC offset", ""),
    "bandwidth_hz": ("bandwidth", "Hz"),
    "noise_floor_dbfs": ("noise floor", "dBFS"),
}
MISSING = {name: np.nan for name in RECORDING_COLUMNS}   # a clip that failed to decode


def _db(power) -> np.ndarray:
    return np.maximum(10 * np.log10(np.maximum(power, 1e-30)), FLOOR_DB)


def frame_power(mono: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """(mean power of each frame, samples per frame)."""
    size = max(1, int(round(rate * FRAME_SECONDS)))
    whole = len(mono) // size * size
    frames = mono[:whole].reshape(-1, size)
    # one pass, no squared copy; float32 sums (of <= 1,000 squares each) at 16x the float64 speed
    power = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / size
    if whole < len(mono):
        rest = mono[whole:].astype(np.float64)
        power = np.append(power, rest @ rest / len(rest))
    return power, size


def active_frames(power: np.ndarray) -> np.ndarray:
    """Frames within SILENCE_DB of the loudest one (all of them for digital silence)."""
    return _db(power) >= _db(power.max()) - SILENCE_DB


def mix(samples: np.ndarray) -> np.ndarray:
    """m: the mean over channels (a mono clip's one channel as it is)."""
    return samples[0] if len(samples) == 1 else samples.mean(axis=0)


def speech_bounds(samples: np.ndarray, rate: int) -> tuple[int, int]:
    """[first, last) samples from the first active frame's start to the last one's end: what
    `--trim-silence` keeps. `samples`: [channels, frames]."""
    power, size = frame_power(mix(samples), rate)
    active = np.flatnonzero(active_frames(power))
    return int(active[0]) * size, min(samples.shape[1], (int(active[-1]) + 1) * size)


_WINDOW = np.hanning(SPECTRUM_SIZE).astype(np.float32)


def bandwidth(mono: np.ndarray, rate: int, dc: float = 0.0) -> float:
    """The frequency below which BANDWIDTH_ENERGY of the energy of `mono` - `dc` lies."""
    x = mono
    n = SPECTRUM_SIZE
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    count = min(SPECTRUM_FRAMES, 1 + (len(x) - n) // n)
    step = (len(x) - n) // max(1, count - 1)    # frames evenly spread, read through a strided view
    x = np.ascontiguousarray(x)
    frames = np.lib.stride_tricks.as_strided(x, (count, n), (step * x.itemsize, x.itemsize), writeable=False)
    frames = (frames - np.float32(dc)) * _WINDOW
    spectrum = scipy.fft.rfft(frames, axis=1)    # float32, unlike numpy's
    # re^2 + im^2 (abs() takes a square root only to square it again), summed over frames
    cumulative = np.cumsum(np.einsum("ij,ij->j", spectrum.real, spectrum.real)
                           + np.einsum("ij,ij->j", spectrum.imag, spectrum.imag))
    if cumulative[-1] <= 0:
        return 0.0
    return float(np.searchsorted(cumulative, BANDWIDTH_ENERGY * cumulative[-1]) * rate / n)


def noise_floor(power: np.ndarray) -> float:
    """The NOISE_PERCENTILE-th percentile of the frames' power in dBFS (the lower neighbour: no
    interpolation; np.partition at a tenth of np.percentile's cost)."""
    k = int(NOISE_PERCENTILE / 100 * (len(power) - 1))
    return float(_db(np.partition(power, k)[k]))


def statistics(samples: np.ndarray, rate: int) -> dict[str, float]:
    """RECORDING_COLUMNS but the bitrate, of `samples` [channels, frames] float32 at `rate` Hz."""
    mono = mix(samples)
    power, size = frame_power(mono, rate)
    active = active_frames(power)
    where = np.flatnonzero(active)
    peak = max(float(samples.max()), -float(samples.min()))
    clipped = 0 if peak < CLIP_LEVEL else int(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL))
    counts = np.full(len(power), size)
    counts[-1] = len(mono) - size * (len(power) - 1)
    dc = float(mono.mean())
    return {
        "leading_silence": int(where[0]) * size / rate,
        "trailing_silence": max(0, samples.shape[1] - (int(where[-1]) + 1) * size) / rate,
        "active_fraction": float(active.mean()),
        "rms_dbfs": float(_db(power @ counts / len(mono))),
        "peak_dbfs": float(_db(peak * peak)),
        "clipping_fraction": float(clipped / samples.size),
        "dc_offset": dc,
        "bandwidth_hz": bandwidth(mono, rate, dc),
        "noise_floor_dbfs": noise_floor(power),
    }


def clip_statistics(frontend, audio, file_bytes: int) -> dict[str, float]:
    """The statistics featurize keeps of a clip: of the audio `frontend` used (Frontend.source),
    MISSING for a clip that failed (`audio` None); `file_bytes` its file's size (0: not a plain
    file, no bitrate)."""
    if audio is None:
        return MISSING
    try:
        used = frontend.source(audio)
        bitrate = round(file_bytes * 8 / audio.duration / 1000) if file_bytes else np.nan   # of the whole file
        return {"bitrate_kbps": bitrate, **statistics(used.samples, used.sample_rate)}
    except (MemoryError, ValueError, IndexError, FloatingPointError):
        return MISSING   # a clip the frontend prepared keeps its row: only its statistics are unknown
