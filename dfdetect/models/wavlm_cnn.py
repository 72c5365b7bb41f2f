"""WavLM+CNN: cached, frozen WavLM-Large hidden states into the Mel-CNN body.

The reference study's numbers: "~350M+ parameters, ~1.3 GB per checkpoint" — that is frozen WavLM-Large
(316.6M parameters, ~1.27 GB as float32) plus "my Mel-CNN as the classifier head". Embedding 64,
dropout 0.3, one logit (BCEWithLogits, positive = fake). Here WavLM runs once, at featurize time, and
the head trains on its cached hidden states, so the trainable part is just the head below.

    batch["wavlm"] [B, L, T, H]  (the stored hidden states; L = 3, T = 149 for 3 s, H = 1024 for Large)
    -> per-layer LayerNorm (no affine), learned softmax-weighted sum over L (s3prl's featurizer) [B, T, H]
    -> Linear H -> 128                                                              [B, T, 128]
    -> a 1-channel [128 x T] map through the Mel-CNN body (blocks.CNNEncoder, in_channels=1) [B, 64]
    -> dropout 0.3 -> Linear -> logit

With the defaults (H = 1024, L = 3): 552,420 trainable parameters (2.2 MB as float32 safetensors),
0.09 GMAC per clip; deployed with WavLM-Large (registry.WAVLM_LARGE_PARAMETERS), 317.2M
parameters and 1.27 GB.

"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dfdetect.models.blocks import CNNEncoder, CNNEncoderConfig, LayerWeightedSum

_CNN = CNNEncoderConfig()


@dataclass(frozen=True)
class WavLMCNNConfig:
    hidden_size: int = 1024                  # WavLM-Large
    num_layers: int = 3                      # stored hidden states (the featurizer's default: 6, 12, 24)
    layer_norm: bool = True                  # normalise each layer before weighting (s3prl's option)
    projection_dim: int = 128                # H -> 128: the CNN sees a [128 x T] "spectrogram"
    channels: tuple[int, ...] = _CNN.channels    # the Mel-CNN body, as in mel_cnn.py
    stem_stride: int = _CNN.stem_stride
    pool: int = _CNN.pool
    embedding_dim: int = _CNN.embedding_dim
    dropout: float = 0.3

    def cnn_config(self) -> CNNEncoderConfig:
        return CNNEncoderConfig(in_channels=1, channels=self.channels, stem_stride=self.stem_stride,
                                pool=self.pool, embedding_dim=self.embedding_dim)


class WavLMCNN(nn.Module):
    """batch["wavlm"] [B, L, T, H] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("wavlm",)

    def __init__(self, config: WavLMCNNConfig = WavLMCNNConfig()):
        super().__init__()
        self.config = config
        self.layer_sum = LayerWeightedSum(config.num_layers, config.layer_norm)
        self.projection = nn.Linear(config.hidden_size, config.projection_dim)
        self.encoder = CNNEncoder(config.cnn_config())
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.embedding_dim, 1)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.layer_sum(batch["wavlm"].to(self.classifier.weight.dtype))
        x = self.projection(x).transpose(1, 2).unsqueeze(1)        # [B, 1, projection_dim, T]
        return self.encoder(x)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.embed(batch))).squeeze(-1)
