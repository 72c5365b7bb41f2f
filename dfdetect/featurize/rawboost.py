"""RawBoost (Tak, Kamble, Patino, Todisco, Evans, ICASSP 2022): data boosting on the raw waveform.

Three algorithms, usable alone or in series (1 -> 2 -> 3, the order the paper's reference code
applies them in; its parallel mode is not offered):

    1  linear and non-linear convolutive noise: the signal and its powers x^2..x^N_f, each through
       its own random multi-band notch FIR filter (the linear term at gain minG-maxG dB, the
       non-linear ones minBiasLinNonLin-maxBiasLinNonLin dB below it), summed: a channel/codec
       coloration plus harmonic distortion
    2  impulsive signal-dependent additive noise: up to P % of the samples, chosen at random, get
       g_sd * x * (u1 * u2), u1, u2 uniform in [-1, 1] (clicks scaled by the signal)
    3  stationary signal-independent additive noise: white noise through a random notch FIR
       filter, added at SNRmin-SNRmax dB

A notch filter bank is `nBands` band-stop FIR filters (Hamming window, minCoeff-maxCoeff taps,
made odd) with centres in minF-maxF Hz and widths minBW-maxBW Hz, cascaded and scaled to a peak
gain drawn in the given range. `PARAMETERS` are the published defaults (the reference
implementation's command-line defaults, github.com/TakHemlata/SSL_Anti-spoofing); they are
recorded in the store version's variant, so changing them names a new version.

Every random draw comes from the numpy Generator the caller passes, seeded per clip, so a store is
the same on every run.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from dfdetect.errors import ConfigError

ALGORITHMS = (1, 2, 3)
DEFAULT = (1, 2)   # the reference's default for the LA track (its "algo 5"); the DF track used 3 alone
PARAMETERS = {
    "convolutive": {"N_f": 5, "nBands": 5, "minF": 20, "maxF": 8000, "minBW": 100, "maxBW": 1000,
                    "minCoeff": 10, "maxCoeff": 100, "minG": 0, "maxG": 0,
                    "minBiasLinNonLin": 5, "maxBiasLinNonLin": 20},
    "impulsive": {"P": 10, "g_sd": 2},
    "stationary": {"SNRmin": 10, "SNRmax": 40},   # its filters: the convolutive bands and gains
}


def parse(spec: str, option: str = "--corrupt") -> tuple[int, ...]:
    """'rawboost' or 'rawboost:1+3' -> the algorithms in the order they run, e.g. (1, 3)."""
    _, sep, algos = spec.partition(":")
    if not sep:
        return DEFAULT
    chosen = set()
    for part in algos.split("+"):
        if part.strip() not in {str(a) for a in ALGORITHMS}:
            raise ConfigError(f"{option} {spec}: unknown RawBoost algorithm {part.strip()!r}; write rawboost:N "
                              "with N from 1, 2, 3, joined by + for a series (e.g. rawboost:1+2)")
        chosen.add(int(part))
    return tuple(sorted(chosen))


def name(algorithms: tuple[int, ...]) -> str:
    """The canonical spelling: what a store version records."""
    return "rawboost:" + "+".join(map(str, algorithms))


def apply(rng: np.random.Generator, x: np.ndarray, algorithms: tuple[int, ...], fs: int,
          parameters: dict = PARAMETERS) -> np.ndarray:
    """`x` (float64) through the given algorithms in series; same length."""
    steps = {1: convolutive_noise, 2: impulsive_noise, 3: stationary_noise}
    for a in algorithms:
        x = steps[a](rng, x, fs, parameters)
    return x


def notch_filter(rng: np.random.Generator, fs: int, bands: dict, min_gain: float, max_gain: float) -> np.ndarray:
    """FIR taps of `nBands` cascaded random band-stop filters, scaled to a random peak gain (dB)."""
    taps = np.ones(1)
    for _ in range(bands["nBands"]):
        centre = rng.uniform(bands["minF"], bands["maxF"])
        width = rng.uniform(bands["minBW"], bands["maxBW"])
        n = int(rng.integers(bands["minCoeff"], bands["maxCoeff"]))
        n += n % 2 == 0   # a band-stop FIR needs an odd length (a zero at Nyquist otherwise)
        low = max(centre - width / 2, 1e-3)
        high = min(centre + width / 2, fs / 2 - 1e-3)
        taps = np.convolve(taps, signal.firwin(n, [low, high], window="hamming", fs=fs))
    gain_db = rng.uniform(min(min_gain, max_gain), max(min_gain, max_gain))
    _, response = signal.freqz(taps, 1, fs=fs)
    return 10 ** (gain_db / 20) * taps / np.abs(response).max()


def _filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Linear-phase FIR filtering with its group delay removed, so the output lines up with x."""
    delay = (len(taps) - 1) // 2
    return signal.oaconvolve(x, taps)[delay:delay + len(x)]


def _limit(x: np.ndarray) -> np.ndarray:
    """Scaled down to peak 1 only when it exceeds it."""
    peak = np.abs(x).max()
    return x / peak if peak > 1 else x


def convolutive_noise(rng, x, fs, parameters=PARAMETERS):
    p = parameters["convolutive"]
    y = np.zeros_like(x)
    for order in range(1, p["N_f"] + 1):
        if order == 1:
            low, high = p["minG"], p["maxG"]
        else:   # the non-linear terms sit minBias-maxBias dB below the linear one
            low, high = p["minG"] - p["maxBiasLinNonLin"], p["maxG"] - p["minBiasLinNonLin"]
        y += _filter(x ** order, notch_filter(rng, fs, p, low, high))
    return _limit(y - y.mean())


def impulsive_noise(rng, x, fs, parameters=PARAMETERS):
    p = parameters["impulsive"]
    share = rng.uniform(0, p["P"]) / 100
    where = rng.permutation(len(x))[:int(len(x) * share)]
    factor = rng.uniform(-1, 1, len(where)) * rng.uniform(-1, 1, len(where))
    y = x.copy()
    y[where] += p["g_sd"] * x[where] * factor
    return _limit(y)


def stationary_noise(rng, x, fs, parameters=PARAMETERS):
    p, bands = parameters["stationary"], parameters["convolutive"]
    noise = _filter(rng.standard_normal(len(x)), notch_filter(rng, fs, bands, bands["minG"], bands["maxG"]))
    snr = rng.uniform(p["SNRmin"], p["SNRmax"])
    scale = np.linalg.norm(x) / (np.linalg.norm(noise) or 1.0) / 10 ** (snr / 20)
    return x + noise * scale
