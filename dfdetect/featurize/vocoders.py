"""Copy-synthesis vocoders: real speech analysed and resynthesised, the cheapest source of
generator diversity for training fakes (Wang & Yamagishi, ICASSP 2023: spoofed training data
made from bona fide speech with vocoders improves generalization). `featurize --vocode NAME`
makes one fake from every real clip through the vocoder registered as NAME (variants.py).

A vocoder is a function (16 kHz mono float64 audio, sample rate, numpy Generator seeded per clip)
-> audio (any length; the caller fits it to the input's), registered with the parameters that
determine its output: they are recorded in the store version's variant, so changing them names a
new version. A neural vocoder (HiFi-GAN style, loaded from a local folder like WavLM) would be one
more `register` call with its folder and revision among the parameters, made when this module is
imported (featurize's dask workers import it; a registration made only in the coordinator at run
time does not reach them).

    world       WORLD (Morise et al. 2016) through pyworld: F0 by DIO refined by StoneMask,
                spectral envelope by CheapTrick, aperiodicity by D4C, 5 ms frames; resynthesised
                from those. Deterministic.
    griffinlim  the 80-band mel magnitude (1024-point FFT, hop 256: a 16 kHz neural vocoder's
                input) mapped back to a linear magnitude (torchaudio InverseMelScale, least
                squares) and given a phase by 32 Griffin-Lim iterations (momentum 0.99) from a
                random phase drawn from the clip's generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dfdetect.errors import ConfigError


@dataclass(frozen=True)
class Vocoder:
    name: str
    synthesize: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    parameters: dict


VOCODERS: dict[str, Vocoder] = {}


def register(name: str, synthesize, parameters: dict) -> Vocoder:
    """Add a vocoder under `name` (what `--vocode` and the generator column `vocoded:NAME` say)."""
    VOCODERS[name] = Vocoder(name, synthesize, dict(parameters))
    return VOCODERS[name]


def get(name: str, option: str = "--vocode") -> Vocoder:
    if name not in VOCODERS:
        raise ConfigError(f"{option} {name}: unknown vocoder; choose one of {', '.join(VOCODERS)}")
    return VOCODERS[name]


def vocode(name: str, audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """`audio` through the vocoder `name`, as float32 of the input's length."""
    y = np.asarray(get(name).synthesize(np.asarray(audio, np.float64), sr, rng), np.float32)
    return np.pad(y[:len(audio)], (0, max(0, len(audio) - len(y))))


# -- WORLD ---------------------------------------------------------------------------------------
WORLD = {"f0": "dio+stonemask", "envelope": "cheaptrick", "aperiodicity": "d4c", "frame_period_ms": 5.0}


def _world(audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    import pyworld

    period = WORLD["frame_period_ms"]
    f0, times = pyworld.dio(audio, sr, frame_period=period)
    f0 = pyworld.stonemask(audio, f0, times, sr)
    envelope = pyworld.cheaptrick(audio, f0, times, sr)
    aperiodicity = pyworld.d4c(audio, f0, times, sr)
    return pyworld.synthesize(f0, envelope, aperiodicity, sr, frame_period=period)


# -- Griffin-Lim from the mel --------------------------------------------------------------------
GRIFFINLIM = {"n_fft": 1024, "hop": 256, "n_mels": 80, "n_iter": 32, "momentum": 0.99, "from": "mel"}


@lru_cache(maxsize=4)
def _griffinlim_transforms(sr: int):
    from torchaudio.transforms import GriffinLim, InverseMelScale, MelSpectrogram

    p = GRIFFINLIM
    mel = MelSpectrogram(sr, n_fft=p["n_fft"], hop_length=p["hop"], n_mels=p["n_mels"], power=1.0)
    linear = InverseMelScale(p["n_fft"] // 2 + 1, n_mels=p["n_mels"], sample_rate=sr)
    phase = GriffinLim(n_fft=p["n_fft"], hop_length=p["hop"], power=1.0, n_iter=p["n_iter"], momentum=p["momentum"])
    return mel, linear, phase


def _griffinlim(audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    import torch

    mel, linear, phase = _griffinlim_transforms(sr)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2 ** 62)))   # GriffinLim's random initial phase, per clip
        magnitude = linear(mel(torch.from_numpy(audio).float()))
        return phase(magnitude).numpy()


register("world", _world, WORLD)
register("griffinlim", _griffinlim, GRIFFINLIM)
