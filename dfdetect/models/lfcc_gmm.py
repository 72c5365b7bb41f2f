"""LFCC-GMM: the ASVspoof 2019 baseline (Todisco et al., "ASVspoof 2019: future horizons in spoofed
and fake audio detection", Interspeech 2019): one diagonal-covariance Gaussian mixture per class
on LFCC frames, scored by the log-likelihood ratio.

    lfcc [B, 60, 301] -> 301 frames of 60 dims (LFCC + delta + delta-delta: the store's `lfcc`)
    score  = mean over frames of log p(frame | fake GMM) - log p(frame | real GMM)   (the challenge's
             score with the sign turned: higher = more likely fake)
    logit  = score / llr_scale
    P(fake) = sigmoid(logit)

Fitting is not gradient descent: `fit` runs scikit-learn's EM once per class on the training
set's frames (the trainer calls it as the run's single epoch). The challenge baseline used 512 mixtures
and every training frame; with a corpus-sized frame count EM takes hours, so each class's frames are
subsampled with the run's seed to `max_frames` (the numbers used are recorded in the run's epoch
record). Every frame of the store's 3 s clip counts, as for every head; a clip shorter than 3 s is
zero-padded, so its padding frames are the same constant LFCC for both classes.

Why `llr_scale`: the mean frame LLR of a well separated corpus is tens of nats, where sigmoid
rounds to exactly 0 or 1 and the scores of many clips tie (which moves the EER). Dividing by the
standard deviation of the training clips' scores (fitted, stored with the mixtures) keeps them
apart; the map is monotone and keeps 0 at 0, so EER, AUC and minDCF are those of the challenge's
score and the 0.5 threshold is its equal-prior Bayes decision (LLR 0).

The mixtures are parameters (weights, means, variances; float64, not trained by the optimizer), so
the run's checkpoint is an ordinary safetensors file of arrays: no pickled scikit-learn object.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dfdetect.errors import ConfigError

CLASSES = ("real", "fake")


@dataclass(frozen=True)
class LfccGMMConfig:
    lfcc_dim: int = 60
    n_components: int = 512        # the challenge baseline's mixtures
    max_frames: int = 100_000      # per class; more frames are subsampled (seeded)
    max_iter: int = 100            # EM iterations (scikit-learn's default)
    tol: float = 1e-3              # EM stops when the mean log-likelihood gains less
    reg_covar: float = 1e-6        # added to every variance (scikit-learn's default)
    init: str = "k-means++"        # scikit-learn's init_params: seeding only, no Lloyd iterations

    def __post_init__(self):
        for name in ("lfcc_dim", "n_components", "max_frames", "max_iter"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"lfcc_gmm {name} must be a positive integer, not {getattr(self, name)!r}")


class DiagonalGMM(nn.Module):
    """One mixture's arrays, and its per-frame log-likelihood (what scikit-learn's score_samples computes)."""

    def __init__(self, n_components: int, dim: int):
        super().__init__()
        fixed = dict(dtype=torch.float64, requires_grad=False)
        self.weights = nn.Parameter(torch.full((n_components,), 1 / n_components, **fixed), requires_grad=False)
        self.means = nn.Parameter(torch.zeros(n_components, dim, **fixed), requires_grad=False)
        self.variances = nn.Parameter(torch.ones(n_components, dim, **fixed), requires_grad=False)

    def set(self, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> None:
        with torch.no_grad():
            for p, v in ((self.weights, weights), (self.means, means), (self.variances, variances)):
                p.copy_(torch.as_tensor(v, dtype=torch.float64))

    def log_likelihood(self, x: Tensor) -> Tensor:
        """[..., dim] float64 -> [...]: log sum_k w_k N(x; mu_k, diag var_k)."""
        precision = 1 / self.variances                                             # [K, D]
        # sum_d (x - mu)^2 / var, expanded so the work is two matrix products
        mahalanobis = ((x * x) @ precision.T - 2 * x @ (self.means * precision).T
                       + (self.means ** 2 * precision).sum(1))
        log_det = torch.log(self.variances).sum(1)
        log_normal = -0.5 * (x.shape[-1] * math.log(2 * math.pi) + log_det + mahalanobis)
        return torch.logsumexp(log_normal + torch.log(self.weights), dim=-1)


class LfccGMM(nn.Module):
    """batch["lfcc"] [B, 60, T] -> logits [B] (positive = fake); fitted by `fit`, not by the optimizer."""

    inputs = ("lfcc",)
    fitted = True                  # the trainer calls fit() once instead of training epochs

    def __init__(self, config: LfccGMMConfig = LfccGMMConfig()):
        super().__init__()
        self.config = c = config
        self.real = DiagonalGMM(c.n_components, c.lfcc_dim)
        self.fake = DiagonalGMM(c.n_components, c.lfcc_dim)
        self.llr_scale = nn.Parameter(torch.ones((), dtype=torch.float64), requires_grad=False)

    def llr(self, batch: dict[str, Tensor]) -> Tensor:
        """The mean frame log-likelihood ratio, fake over real, [B] float64."""
        with torch.autocast(batch["lfcc"].device.type, enabled=False):   # float64 throughout
            frames = batch["lfcc"].to(torch.float64).transpose(1, 2)      # [B, T, D]
            return (self.fake.log_likelihood(frames) - self.real.log_likelihood(frames)).mean(dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return (self.llr(batch) / self.llr_scale).float()

    def fit(self, batches, counts: tuple[int, int], seed: int) -> dict:
        """Fit both mixtures on the training set. `batches()` gives a fresh pass over it (dicts with
        "lfcc", "label", "row", as the trainer's loader yields them) and `counts` its (real, fake)
        clips. Pass 1 gathers each class's frames (`clip_frames`: every frame while the class has
        at most max_frames, else an equal seeded share of each clip's, in store-row order, so the
        sample does not depend on the loader's order) and runs scikit-learn's EM (diagonal
        covariances, seeded); pass 2 scores the clips to set `llr_scale`. Returns what the run
        records: frames, EM iterations, convergence and seconds per class, and the scale."""
        from sklearn.mixture import GaussianMixture

        c, info = self.config, {}
        frames_per_clip = [max(1, c.max_frames // max(n, 1)) for n in counts]
        gathered: tuple[list, list] = ([], [])
        for batch in batches():
            for lfcc, label, row in zip(batch["lfcc"].numpy(), batch["label"].numpy(), batch["row"]):
                label = int(label)
                gathered[label].append((int(row), clip_frames(lfcc, frames_per_clip[label], seed, int(row))))
        for label, (name, target) in enumerate((("real", self.real), ("fake", self.fake))):
            frames = np.concatenate([f for _, f in sorted(gathered[label], key=lambda rf: rf[0])] or
                                    [np.zeros((0, c.lfcc_dim))])
            if len(frames) < c.n_components:
                raise ConfigError(f"lfcc_gmm: {len(frames)} {name} frames cannot fit {c.n_components} mixtures; "
                                  "lower n_components (a model option) or train on more clips")
            t0 = time.perf_counter()
            gmm = GaussianMixture(c.n_components, covariance_type="diag", tol=c.tol, reg_covar=c.reg_covar,
                                  max_iter=c.max_iter, init_params=c.init, random_state=seed).fit(frames)
            target.set(gmm.weights_, gmm.means_, gmm.covariances_)
            info[name] = {"frames": int(len(frames)), "em_iterations": int(gmm.n_iter_),
                          "converged": bool(gmm.converged_), "seconds": round(time.perf_counter() - t0, 3)}
        with torch.no_grad():
            llr = torch.cat([self.llr({"lfcc": b["lfcc"].to(self.llr_scale.device)}) for b in batches()]).cpu().numpy()
            spread = float(np.std(llr)) if len(llr) else 0.0
            self.llr_scale.fill_(spread if math.isfinite(spread) and spread > 0 else 1.0)
        info["llr_scale"] = float(self.llr_scale)
        return info


def clip_frames(lfcc: np.ndarray, count: int, seed: int, row: int) -> np.ndarray:
    """One clip's frames [dim, T] -> [m, dim] float64: all of them when count >= T, else `count`
    drawn without replacement by a generator seeded with (seed, row)."""
    frames = lfcc.T.astype(np.float64)
    if count >= len(frames):
        return frames
    pick = np.random.default_rng([seed, row]).choice(len(frames), size=count, replace=False)
    return frames[np.sort(pick)]
