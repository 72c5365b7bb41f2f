"""LFCC-LCNN: the ASVspoof 2021 LA/DF baseline (Wang & Yamagishi, "A comparative study on recent
neural spoofing countermeasures for synthetic speech detection", Interspeech 2021; the challenge's
published baseline code, nii-yamagishilab/project-NN-Pytorch-scripts).

    lfcc [B, 60, 301] -> frames first [B, 1, 301, 60]
    LCNN: nine convolutions, each followed by max-feature-map (MFM: the elementwise max of the
          two halves of the channels, which halves them), four 2x2 max-pools, BatchNorm without
          affine parameters between the blocks, dropout 0.7            [B, 32, 18, 3]
    frames [B, 18, 96] -> two bidirectional LSTM layers (96 -> 2 x 48), added to their input
    mean over time -> linear -> one logit (sigmoid, BCE: the baseline's "-sig" output)

Conv widths (before MFM): 5x5 64 | pool | 1x1 64, 3x3 96 | pool | 1x1 96, 3x3 128 | pool |
1x1 128, 3x3 64, 1x1 64, 3x3 64 | pool. The baseline computes its LFCC inside the model from the
waveform (20 ms / 10 ms frames, 512-point FFT, 20 linear filters, deltas: 60 dims), which is what
the store's `lfcc` array holds (featurize/frontend.py); it reads any number of frames (the LSTMs
and the mean do not care), the store's 3 s clip gives 301.

With the defaults: 269,729 parameters (convolutions 157,504, LSTMs 112,128, output 97), the same
layer list as the published baseline, whose count this is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LfccLCNNConfig:
    lfcc_dim: int = 60          # 20 coefficients + delta + delta-delta
    dropout: float = 0.7        # after the last pool, as the baseline


class MaxFeatureMap(nn.Module):
    """[B, 2C, ...] -> [B, C, ...]: the elementwise max of the two channel halves (LCNN's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.maximum(a, b)


def _conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    """A convolution to `out_channels` and MFM, which leaves half of them."""
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), MaxFeatureMap()]


class BLSTM(nn.Module):
    """[B, T, D] -> [B, T, D]: one bidirectional LSTM layer, D/2 units per direction."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


class LfccLCNN(nn.Module):
    """batch["lfcc"] [B, 60, T] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("lfcc",)

    def __init__(self, config: LfccLCNNConfig = LfccLCNNConfig()):
        super().__init__()
        self.config = config
        self.lcnn = nn.Sequential(
            *_conv(1, 64, 5), nn.MaxPool2d(2),
            *_conv(32, 64, 1), nn.BatchNorm2d(32, affine=False),
            *_conv(32, 96, 3), nn.MaxPool2d(2), nn.BatchNorm2d(48, affine=False),
            *_conv(48, 96, 1), nn.BatchNorm2d(48, affine=False),
            *_conv(48, 128, 3), nn.MaxPool2d(2),
            *_conv(64, 128, 1), nn.BatchNorm2d(64, affine=False),
            *_conv(64, 64, 3), nn.BatchNorm2d(32, affine=False),
            *_conv(32, 64, 1), nn.BatchNorm2d(32, affine=False),
            *_conv(32, 64, 3), nn.MaxPool2d(2),
            nn.Dropout(config.dropout))
        width = (config.lfcc_dim // 16) * 32      # 32 channels x the feature rows left after four pools
        self.recurrent = nn.Sequential(BLSTM(width), BLSTM(width))
        self.classifier = nn.Linear(width, 1)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The pooled frame embedding before the output layer, [B, 96]."""
        x = batch["lfcc"].to(self.classifier.weight.dtype).transpose(1, 2).unsqueeze(1)   # [B, 1, T, 60]
        h = self.lcnn(x)                                   # [B, 32, T/16, 60/16]
        h = h.permute(0, 2, 1, 3).flatten(2)               # [B, T/16, 96]
        return (self.recurrent(h) + h).mean(dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.embed(batch)).squeeze(-1)
