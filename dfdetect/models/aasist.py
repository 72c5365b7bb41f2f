"""AASIST and AASIST-L: the field's raw-waveform reference system (Jung et al., "AASIST: Audio
Anti-Spoofing using Integrated Spectro-Temporal Graph Attention Networks", ICASSP 2022), as the
official configuration (clovaai/aasist, config/AASIST.conf and AASIST-L.conf) defines it.

    wave [B, 48000] (the prepared 3 s clip: 16 kHz, centre crop/pad, peak 1)
    sinc front end: 70 fixed mel-spaced band-pass filters, 129 taps -> |x| -> 3x3 max-pool
                    -> BN -> SELU                                      [B, 1, 23, T/3]
    encoder: six residual blocks (2x3 convs, 1x3 max-pool over time)   [B, 64, 23, T']
    spectral graph: max |.| over time -> 23 nodes (+ learned position) -> GAT -> top-k pool
    temporal graph: max |.| over frequency -> T' nodes -> GAT -> top-k pool
    two branches of heterogeneous graph attention over both graphs with a master node
    (HS-GAL), stacked twice and summed; element-wise max of the branches
    readout: max |.| and mean of each graph's nodes + the master node  [5 * 32]
    dropout 0.5 -> linear -> 2 classes

The official two-class output layer is kept so the parameter count is the published one
(AASIST 297,866; AASIST-L 85,306; `dfdetect models` shows them); the head's one logit is the
log-odds of the fake class, `out[:, 1] - out[:, 0]`, which is what a two-class softmax computes,
so BCE on it equals the official cross-entropy. The official recipe trains 100 epochs with Adam
(lr 1e-4, cosine schedule) at batch 24 on 64,600-sample (~4 s) clips with class weights 0.1/0.9;
dfdetect trains it like every head (AdamW, unweighted BCE, the 3 s clip the frontend prepares), and
the graph sizes follow the clip length (nothing in the model is tied to 64,600 samples). One quirk
of the official code is kept on purpose: a residual block's first convolution reads the block's
input, not its BN-SELU output (so `bn1` holds parameters that the forward pass never uses);
results are only comparable with the published ones if the network computes what theirs did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AASISTConfig:
    """The official AASIST configuration (config/AASIST.conf)."""
    sample_rate: int = 16000
    sinc_filters: int = 70                   # filts[0]: band-pass filters of the sinc front end
    sinc_kernel: int = 128                   # first_conv; made odd (129) as the official layer does
    blocks: tuple[tuple[int, int], ...] = ((1, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 64))
    gat_dims: tuple[int, int] = (64, 32)
    pool_ratios: tuple[float, float, float, float] = (0.5, 0.7, 0.5, 0.5)
    temperatures: tuple[float, float, float, float] = (2.0, 2.0, 100.0, 100.0)
    dropout: float = 0.5                     # before the output layer
    branch_dropout: float = 0.2              # on each HS-GAL branch's outputs
    graph_dropout: float = 0.2               # on every graph attention layer's input
    pool_dropout: float = 0.3                # on every graph pool's scoring input


@dataclass(frozen=True)
class AASISTLConfig(AASISTConfig):
    """The official AASIST-L, the light variant (config/AASIST-L.conf)."""
    blocks: tuple[tuple[int, int], ...] = ((1, 32), (32, 32), (32, 24), (24, 24), (24, 24), (24, 24))
    gat_dims: tuple[int, int] = (24, 32)
    pool_ratios: tuple[float, float, float, float] = (0.4, 0.5, 0.7, 0.5)


class SincFilters(nn.Module):
    """Fixed band-pass filters, band edges evenly spaced on the mel scale from 0 Hz to Nyquist,
    each an ideal band-pass (difference of two sincs) under a Hamming window. Not learned: a
    buffer rebuilt from the config, so it is not in the checkpoint."""

    def __init__(self, n_filters: int, kernel_size: int, sample_rate: int):
        super().__init__()
        kernel_size += kernel_size % 2 == 0          # odd, so the filter is centred
        # the official layer's grid: 257 FFT-bin frequencies -> mel -> n_filters + 1 edges
        hz = sample_rate / 2 * np.linspace(0, 1, 257)
        mel = 2595 * np.log10(1 + hz / 700)
        edges = 700 * (10 ** (np.linspace(mel.min(), mel.max(), n_filters + 1) / 2595) - 1)
        t = np.arange(-(kernel_size - 1) / 2, (kernel_size - 1) / 2 + 1)

        def low_pass(f):
            return 2 * f / sample_rate * np.sinc(2 * f * t / sample_rate)

        bank = np.stack([np.hamming(kernel_size) * (low_pass(hi) - low_pass(lo))
                         for lo, hi in zip(edges[:-1], edges[1:])])
        self.register_buffer("filters", torch.tensor(bank, dtype=torch.float32).unsqueeze(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, samples] -> [B, n_filters, samples - kernel + 1]."""
        return F.conv1d(x.unsqueeze(1), self.filters.to(x.dtype))


class ResidualBlock(nn.Module):
    """BN-SELU -> 2x3 conv -> BN-SELU -> 2x3 conv, + shortcut (1x3 conv when the width changes),
    -> 1x3 max-pool over time. The first block skips the leading BN-SELU."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False):
        super().__init__()
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, (2, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, (2, 3), padding=(0, 1))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, (1, 3), padding=(0, 1))
                         if in_channels != out_channels else nn.Identity())
        self.pool = nn.MaxPool2d((1, 3))

    def forward(self, x: Tensor) -> Tensor:
        # The official block computes selu(bn1(x)) and then convolves x itself (see the module
        # docstring); the unused branch is not computed here, which changes nothing.
        y = self.conv2(F.selu(self.bn2(self.conv1(x))))
        return self.pool(y + self.shortcut(x))


def _attention_vector(dim: int) -> nn.Parameter:
    weight = nn.Parameter(torch.empty(dim, 1))
    nn.init.xavier_normal_(weight)
    return weight


def _node_norm(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm over the feature dim of [B, nodes, D] (nodes count as batch rows)."""
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class GraphAttention(nn.Module):
    """One graph attention layer over a fully connected graph of nodes [B, N, D_in] -> [B, N, D_out]:
    attention from the element-wise product of every node pair (tanh projection, a learned vector,
    softmax with a temperature), an attended and a residual projection, BN, SELU."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = _attention_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        pairs = x.unsqueeze(2) * x.unsqueeze(1)                                 # [B, N, N, D]
        scores = torch.tanh(self.att_proj(pairs)) @ self.att_weight             # [B, N, N, 1]
        att = torch.softmax(scores.squeeze(-1) / self.temperature, dim=-1)      # each node's weights sum to 1
        x = self.proj_with_att(att @ x) + self.proj_without_att(x)
        return F.selu(_node_norm(self.bn, x))


class HeteroGraphAttention(nn.Module):
    """HS-GAL: graph attention over the union of two graphs (temporal nodes [B, Nt, D], spectral
    [B, Ns, D]), with separate attention vectors within each graph and across them, plus a master
    node that attends to every node. Returns (temporal, spectral, master), each projected to out_dim."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float, dropout: float):
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        self.att_weight11 = _attention_vector(out_dim)
        self.att_weight22 = _attention_vector(out_dim)
        self.att_weight12 = _attention_vector(out_dim)
        self.att_weightM = _attention_vector(out_dim)
        self.proj_with_att = nn.Linear(in_dim, out_dim)
        self.proj_without_att = nn.Linear(in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.drop = nn.Dropout(dropout)
        self.temperature = temperature

    def forward(self, x1: Tensor, x2: Tensor, master: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n1 = x1.shape[1]
        x = self.drop(torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1))   # [B, N, D]
        # master node: attention over every node, from the node-master product
        m_scores = torch.tanh(self.att_projM(x * master)) @ self.att_weightM          # [B, N, 1]
        m_att = torch.softmax(m_scores / self.temperature, dim=-2)
        master = self.proj_with_attM(m_att.transpose(1, 2) @ x) + self.proj_without_attM(master)
        # nodes: pairwise attention, one attention vector per block (within 1, within 2, across)
        hidden = torch.tanh(self.att_proj(x.unsqueeze(2) * x.unsqueeze(1)))          # [B, N, N, out]
        same1 = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        same1[:n1] = True
        within1 = same1[:, None] & same1[None, :]
        within2 = ~same1[:, None] & ~same1[None, :]
        s11, s22, s12 = (hidden @ torch.cat([self.att_weight11, self.att_weight22, self.att_weight12], 1)).unbind(-1)
        scores = torch.where(within1, s11, torch.where(within2, s22, s12))
        att = torch.softmax(scores / self.temperature, dim=-1)
        x = self.proj_with_att(att @ x) + self.proj_without_att(x)
        x = F.selu(_node_norm(self.bn, x))
        return x[:, :n1], x[:, n1:], master


class GraphPool(nn.Module):
    """Keep the top `ratio` of nodes by a learned sigmoid score, each scaled by its score."""

    def __init__(self, ratio: float, dim: int, dropout: float):
        super().__init__()
        self.ratio = ratio
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        scores = torch.sigmoid(self.proj(self.drop(h)))                            # [B, N, 1]
        keep = max(int(h.shape[1] * self.ratio), 1)
        index = torch.topk(scores, keep, dim=1).indices.expand(-1, -1, h.shape[-1])
        return torch.gather(h * scores, 1, index)


class AASIST(nn.Module):
    """batch["wave"] [B, samples] (float16 or float32) -> logits [B] (positive = fake)."""

    inputs = ("wave",)

    def __init__(self, config: AASISTConfig = AASISTConfig()):
        super().__init__()
        self.config = c = config
        self.sinc = SincFilters(c.sinc_filters, c.sinc_kernel, c.sample_rate)
        self.first_bn = nn.BatchNorm2d(1)
        self.encoder = nn.Sequential(*[ResidualBlock(i, o, first=n == 0) for n, (i, o) in enumerate(c.blocks)])
        channels, spectral_nodes = c.blocks[-1][1], c.sinc_filters // 3
        g0, g1 = c.gat_dims
        self.pos_S = nn.Parameter(torch.randn(1, spectral_nodes, channels))
        self.master1 = nn.Parameter(torch.randn(1, 1, g0))
        self.master2 = nn.Parameter(torch.randn(1, 1, g0))
        t = c.temperatures
        self.GAT_layer_S = GraphAttention(channels, g0, t[0], c.graph_dropout)
        self.GAT_layer_T = GraphAttention(channels, g0, t[1], c.graph_dropout)
        self.HtrgGAT_layer_ST11 = HeteroGraphAttention(g0, g1, t[2], c.graph_dropout)
        self.HtrgGAT_layer_ST12 = HeteroGraphAttention(g1, g1, t[2], c.graph_dropout)
        self.HtrgGAT_layer_ST21 = HeteroGraphAttention(g0, g1, t[2], c.graph_dropout)
        self.HtrgGAT_layer_ST22 = HeteroGraphAttention(g1, g1, t[2], c.graph_dropout)
        r = c.pool_ratios
        self.pool_S = GraphPool(r[0], g0, c.pool_dropout)
        self.pool_T = GraphPool(r[1], g0, c.pool_dropout)
        self.pool_hS1 = GraphPool(r[2], g1, c.pool_dropout)
        self.pool_hT1 = GraphPool(r[2], g1, c.pool_dropout)
        self.pool_hS2 = GraphPool(r[2], g1, c.pool_dropout)
        self.pool_hT2 = GraphPool(r[2], g1, c.pool_dropout)
        self.drop_way = nn.Dropout(c.branch_dropout)
        self.drop = nn.Dropout(c.dropout)
        self.out_layer = nn.Linear(5 * g1, 2)

    def _branch(self, first: HeteroGraphAttention, second: HeteroGraphAttention, pool_S: GraphPool,
                pool_T: GraphPool, nodes_T: Tensor, nodes_S: Tensor, master: Tensor):
        """Two stacked HS-GAL layers with graph pooling between them and a residual around the second."""
        out_T, out_S, master = first(nodes_T, nodes_S, master)
        out_T, out_S = pool_T(out_T), pool_S(out_S)
        aug_T, aug_S, aug_M = second(out_T, out_S, master)
        return [self.drop_way(v) for v in (out_T + aug_T, out_S + aug_S, master + aug_M)]

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The readout before the output layer, [B, 5 * gat_dims[1]]."""
        x = batch["wave"].to(self.out_layer.weight.dtype)
        x = F.max_pool2d(self.sinc(x).abs().unsqueeze(1), (3, 3))         # [B, 1, 23, T/3]
        e = self.encoder(F.selu(self.first_bn(x)))                         # [B, C, 23, T']
        nodes_S = self.pool_S(self.GAT_layer_S(e.abs().amax(dim=3).transpose(1, 2) + self.pos_S))
        nodes_T = self.pool_T(self.GAT_layer_T(e.abs().amax(dim=2).transpose(1, 2)))
        # the official model starts both branches from its un-expanded master parameters
        b1 = self._branch(self.HtrgGAT_layer_ST11, self.HtrgGAT_layer_ST12, self.pool_hS1, self.pool_hT1,
                          nodes_T, nodes_S, self.master1)
        b2 = self._branch(self.HtrgGAT_layer_ST21, self.HtrgGAT_layer_ST22, self.pool_hS2, self.pool_hT2,
                          nodes_T, nodes_S, self.master2)
        out_T, out_S, master = (torch.maximum(a, b) for a, b in zip(b1, b2))
        return torch.cat([out_T.abs().amax(dim=1), out_T.mean(dim=1), out_S.abs().amax(dim=1),
                          out_S.mean(dim=1), master.reshape(master.shape[0], -1)], dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.out_layer(self.drop(self.embed(batch)))
        return out[:, 1] - out[:, 0]          # log-odds of class 1 (fake) under the two-class softmax
