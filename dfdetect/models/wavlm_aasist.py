"""WavLM+AASIST: the reference study's "throw everything at the wall" model, three streams fused.

The reference study's numbers: "~350M+ parameters, ~1.3 GB per checkpoint" — frozen WavLM-Large (316.6M
parameters, ~1.27 GB as float32) plus this head. WavLM embeddings projected to 256 dimensions, mel
through the AASIST encoder, LFCC as a third spectral view, a fusion network with hidden dimension 256;
dropout 0.3; one logit (BCEWithLogits, positive = fake). WavLM runs once, at featurize time; the head
trains on the cached hidden states.

    WavLM  batch["wavlm"] [B, L, T, H] -> LayerNorm + softmax-weighted layer sum (blocks.LayerWeightedSum)
           -> Linear H -> 256 -> ReLU -> attentive statistics pooling over T [512] -> Linear -> ReLU  [256]
    mel    batch["mel"] [B, 2, 128, 301] -> the Mel-AASIST encoder (blocks.AASISTEncoder)    [64]
    LFCC   batch["lfcc"] [B, 60, 301] -> BatchNorm (LFCC is not normalised per clip) -> two 1-D
           conv-BN-ReLU layers (64 channels, the second stride 2) -> ASP [128] -> Linear -> ReLU  [64]
    fusion concat [384] -> Linear 256 -> ReLU -> dropout 0.3 -> Linear -> logit

All attentive statistics pooling is blocks.AttentiveStatsPool (one implementation).
With the defaults (H = 1024, L = 3): 2,706,389 trainable parameters (10.9 MB as float32 safetensors),
0.40 GMAC per clip (most of it the mel stream); deployed with WavLM-Large
(registry.WAVLM_LARGE_PARAMETERS), 319.3M parameters and 1.28 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dfdetect.models.blocks import AASISTEncoder, AASISTEncoderConfig, AttentiveStatsPool, LayerWeightedSum


@dataclass(frozen=True)
class WavLMAASISTConfig:
    hidden_size: int = 1024                  # WavLM-Large
    num_layers: int = 3                      # stored hidden states (the featurizer's default: 6, 12, 24)
    layer_norm: bool = True                  # normalise each layer before weighting (s3prl's option)
    wavlm_dim: int = 256                     # WavLM projected to 256 (the reference study)
    wavlm_attention_dim: int = 128           # its ASP's attention hidden size
    mel: AASISTEncoderConfig = field(default_factory=AASISTEncoderConfig)   # the mel stream: Mel-AASIST's encoder
    lfcc_features: int = 60                  # 20 LFCC + delta + delta-delta
    lfcc_channels: int = 64
    lfcc_embedding_dim: int = 64
    fusion_hidden: int = 256                 # the reference study's fusion hidden size
    dropout: float = 0.3


class WavLMStream(nn.Module):
    """[B, L, T, H] -> [B, wavlm_dim]: layer sum, projection, ASP over time, linear."""

    def __init__(self, config: WavLMAASISTConfig):
        super().__init__()
        c = config
        self.layer_sum = LayerWeightedSum(c.num_layers, c.layer_norm)
        self.projection = nn.Linear(c.hidden_size, c.wavlm_dim)
        self.pool = AttentiveStatsPool(c.wavlm_dim, c.wavlm_attention_dim)
        self.out = nn.Linear(2 * c.wavlm_dim, c.wavlm_dim)

    def forward(self, layers: Tensor) -> Tensor:
        x = torch.relu(self.projection(self.layer_sum(layers)))     # [B, T, wavlm_dim]
        return torch.relu(self.out(self.pool(x.transpose(1, 2))))


class LFCCEncoder(nn.Module):
    """[B, 60, T] -> [B, lfcc_embedding_dim]: input BN, two 1-D conv-BN-ReLU layers, ASP, linear."""

    def __init__(self, config: WavLMAASISTConfig):
        super().__init__()
        c, ch = config, config.lfcc_channels
        self.input_norm = nn.BatchNorm1d(c.lfcc_features)
        self.convs = nn.Sequential(
            nn.Conv1d(c.lfcc_features, ch, 5, padding=2, bias=False), nn.BatchNorm1d(ch), nn.ReLU(),
            nn.Conv1d(ch, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(ch), nn.ReLU())
        self.pool = AttentiveStatsPool(ch, ch // 2)
        self.out = nn.Linear(2 * ch, c.lfcc_embedding_dim)

    def forward(self, lfcc: Tensor) -> Tensor:
        return torch.relu(self.out(self.pool(self.convs(self.input_norm(lfcc)))))


class WavLMAASIST(nn.Module):
    """batch["wavlm"], batch["mel"], batch["lfcc"] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("wavlm", "mel", "lfcc")

    def __init__(self, config: WavLMAASISTConfig = WavLMAASISTConfig()):
        super().__init__()
        self.config = c = config
        self.wavlm = WavLMStream(c)
        self.mel = AASISTEncoder(c.mel)
        self.lfcc = LFCCEncoder(c)
        self.fusion = nn.Sequential(
            nn.Linear(c.wavlm_dim + c.mel.embedding_dim + c.lfcc_embedding_dim, c.fusion_hidden), nn.ReLU(),
            nn.Dropout(c.dropout))
        self.classifier = nn.Linear(c.fusion_hidden, 1)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The fused representation before the logit, [B, fusion_hidden]."""
        dtype = self.classifier.weight.dtype
        streams = [self.wavlm(batch["wavlm"].to(dtype)), self.mel(batch["mel"].to(dtype)),
                   self.lfcc(batch["lfcc"].to(dtype))]
        return self.fusion(torch.cat(streams, dim=1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.embed(batch)).squeeze(-1)
