"""Mel-AASIST: the reference study's winner, a multi-scale CNN with SE and attentive statistics pooling.

The reference study's numbers: ~2M parameters (2.2 MB per checkpoint); three multi-scale conv blocks, each with
parallel 3x3, 5x5 and 7x7-dilation-3 branches; squeeze-and-excitation with reduction 16; attentive
statistics pooling (ASP) over time; embedding 64; dropout 0.3; one logit (BCEWithLogits, positive =
fake). Input: batch["mel"], normalised log-mel + delta, [B, 2, 128, 301].

What the reference study leaves open, and what we chose (CPU cost is FLOPs, not parameters, so downsample
early and keep the wide layers where the map is small):

    mel [2, 128, 301]
    stem: two 3x3 stride-2 conv -> BN -> ReLU (16, 32 ch)   [32, 32, 76]
    block 1: 32 -> 48 channels, then max-pool 2             [48, 16, 38]
    block 2: 48 -> 96, then max-pool 2                      [96, 8, 19]
    block 3: 96 -> 240                                      [240, 8, 19]
    frequency collapse: conv spanning all 8 rows -> 512     [512, 19]   (a learned flatten + linear)
    ASP over time (learned attention -> weighted mean, std) [1024]
    embedding: linear -> BN -> ReLU                         [64]
    dropout 0.3 -> linear                                   logit

A multi-scale block: three parallel branches (3x3; 5x5; 7x7 with dilation 3, a 19x19 receptive field),
each in -> out/3 channels, concatenated -> BN -> ReLU -> 1x1 fuse -> BN -> SE (reduction 16) ->
+ residual (1x1 conv + BN when the width changes) -> ReLU -> max-pool. The maps run channels-last
(oneDNN's fast layout on CPU, ~1.5x faster here).

With the defaults: 2,103,674 parameters, 8.4 MB as float32 safetensors (the reference study's 2.2 MB cannot hold
~2M float32 weights; it reads as ~1 byte per parameter), 0.34 GMAC per 3 s clip; ~6-8 ms per clip
forward on one CPU core at batch 32 (bench/heads.py). Most parameters sit where
compute is cheap: block 3 and the collapse conv run on an 8 x 19 map.

The body is `blocks.AASISTEncoder` (mel -> 64-d embedding, also `MelAASIST.embed`); it and `AttentiveStatsPool` are
shared with WavLM+AASIST (wavlm_aasist.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dfdetect.models.blocks import AASISTEncoder, AASISTEncoderConfig


@dataclass(frozen=True)
class MelAASISTConfig(AASISTEncoderConfig):
    """The Mel-AASIST: the AASIST encoder on mel + delta, then dropout and one logit."""
    dropout: float = 0.3


class MelAASIST(nn.Module):
    """batch["mel"] [B, 2, 128, T] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("mel",)

    def __init__(self, config: MelAASISTConfig = MelAASISTConfig()):
        super().__init__()
        self.config = config
        self.encoder = AASISTEncoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embedding_dim, 1)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The AASIST encoder's 64-d embedding, [B, embedding_dim]."""
        return self.encoder(batch["mel"].to(self.classifier.weight.dtype))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.embed(batch))).squeeze(-1)
