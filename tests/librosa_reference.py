"""The reference study's frontend written independently with librosa, one clip at a time.

Not used by the pipeline: it is what the tests check `Frontend` against and what `bench/` times
`Frontend` against (the per-file loop a practitioner would otherwise write). librosa is in the
`test` extra, not a runtime dependency.
"""

from __future__ import annotations

import numpy as np
import scipy.fft


def mel(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """[2, 128, frames]: per-clip normalised log-mel (HTK scale, no filter norm) and its delta."""
    import librosa

    power = librosa.feature.melspectrogram(
        y=wave, sr=sr, n_fft=1024, hop_length=160, n_mels=128, fmin=20, fmax=7600,
        htk=True, norm=None, center=True, pad_mode="reflect", power=2.0)
    db = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0)
    norm = (db - db.mean()) / (db.std() + 1e-5)
    return np.stack([norm, librosa.feature.delta(norm, width=5, mode="nearest")])


def lfcc(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """[60, frames]: Hamming STFT (20 ms / 10 ms, n_fft 512), 20 triangular linear filters 0-4 kHz,
    log(energy + 1e-6), DCT-II (ortho) to 20 coefficients, delta, delta-delta."""
    import librosa

    spec = np.abs(librosa.stft(wave, n_fft=512, hop_length=160, win_length=320, window="hamming",
                               center=True, pad_mode="reflect")) ** 2
    freqs = np.linspace(0, sr / 2, 257)
    edges = np.linspace(0, 4000, 22)
    bank = np.zeros((20, 257))
    for i in range(20):
        lo, mid, hi = edges[i:i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    cep = scipy.fft.dct(np.log(bank @ spec + 1e-6), type=2, norm="ortho", axis=0)[:20]
    d1 = librosa.feature.delta(cep, width=5, mode="nearest")
    return np.concatenate([cep, d1, librosa.feature.delta(d1, width=5, mode="nearest")])


def load_clip(path, sr: int = 16000, clip_samples: int = 48000) -> np.ndarray:
    """librosa.load (decode, mono, resample) -> centre crop / end pad -> peak normalisation."""
    import librosa

    y, _ = librosa.load(path, sr=sr, mono=True)
    if len(y) >= clip_samples:
        start = (len(y) - clip_samples) // 2
        y = y[start:start + clip_samples]
    else:
        y = np.pad(y, (0, clip_samples - len(y)))
    return y / np.abs(y).max()
