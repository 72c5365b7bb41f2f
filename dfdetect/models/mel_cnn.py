"""Mel-CNN: the reference study's baseline, a small CNN on the 2-channel mel + delta map.

The reference study's numbers: ~400K parameters (435 KB per checkpoint), 2 input channels (normalised log-mel
and its delta, [2, 128, 301]), "a simple convolutional backbone", embedding 64, dropout 0.3, one
logit (BCEWithLogits, positive = fake). The reference study does not give the backbone, so it is the plainest
one that matches those numbers: four conv-BN-ReLU-maxpool blocks (32, 64, 128, 256 channels), the
first with stride 2 so the map shrinks 4x before any wide convolution (compute, not parameters,
sets the CPU cost), then global average + max pooling, a 64-d embedding, dropout, a linear logit.

With the defaults: 421,505 parameters, 1.7 MB as float32 safetensors (the reference study's 435 KB cannot hold
~400K float32 weights; it reads as ~1 byte per parameter), 0.14 GMAC per 3 s clip; ~4-5 ms per clip
forward on one CPU core at batch 32. The maps run channels-last (oneDNN's fast layout on CPU).

The body is `blocks.CNNEncoder` (any channel count, any [F, T] map): WavLM+CNN feeds it a
1-channel map of projected WavLM features (see wavlm_cnn.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dfdetect.models.blocks import CNNEncoder, CNNEncoderConfig


@dataclass(frozen=True)
class MelCNNConfig(CNNEncoderConfig):
    """The Mel-CNN: the CNN body on mel + delta (2 channels), then dropout and one logit."""
    dropout: float = 0.3


class MelCNN(nn.Module):
    """batch["mel"] [B, 2, 128, T] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("mel",)

    def __init__(self, config: MelCNNConfig = MelCNNConfig()):
        super().__init__()
        self.config = config
        self.encoder = CNNEncoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embedding_dim, 1)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        dtype = self.classifier.weight.dtype
        return self.encoder(batch["mel"].to(dtype))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.embed(batch))).squeeze(-1)
