"""WavLM hidden states stored in 8 bits: one code per value, an offset and a step per channel.

Three WavLM-Large layers are 915 KB a clip in float16: ~165 GB for ASVspoof 5's 180K training
clips, more than a page cache holds. Stored as uint8 they take half (plus 24 KB of scales), so
the same corpus is read at memory speed on a machine with ~100 GB of RAM.

Each (clip, layer, channel) is quantized over its frames: offset = min, step = (max - min) / 255,
code = round((value - offset) / step), so every value comes back within step / 2 of what WavLM
gave. Affine rather than symmetric because WavLM's channels are not centred on zero, and per
clip so that a row is complete on its own (the store's unit). Every reader gets the dequantized
float16 (FeatureStore.read_rows), and live scoring applies the same round trip (WavLMExtractor),
so a head sees the same values whether its features come from a store or from audio. What it costs
in EER: docs/benchmarks.md (bench/wavlm_storage.py).
"""

from __future__ import annotations

import torch

STORAGES = ("float16", "uint8")   # how a store holds WavLM's layers; float16 is the default
LEVELS = 255
FP16_MAX = float(torch.finfo(torch.float16).max)


def quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values [..., frames, channels] -> (codes uint8 [..., frames, channels],
    scale float32 [..., 2, channels]: [..., 0, :] the offset, [..., 1, :] the step). Values are
    saturated to float16's range first, as float16 storage saturates them."""
    values = values.float().clamp(-FP16_MAX, FP16_MAX)   # so every dequantized value is a finite float16
    low, high = values.amin(dim=-2, keepdim=True), values.amax(dim=-2, keepdim=True)
    step = (high - low) / LEVELS
    step = torch.where(step > 0, step, torch.ones_like(step))   # a constant channel: every code 0
    codes = ((values - low) / step).round_().clamp_(0, LEVELS).to(torch.uint8)
    return codes, torch.cat([low, step], dim=-2)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
               work: torch.Tensor | None = None) -> torch.Tensor:
    """(codes, scale) of `quantize` -> float16 values (into `out` when given; `work`: a float32
    tensor of the codes' shape to compute in, so a reader allocates nothing per row). A NaN scale
    (a failed clip's row, or one never written) gives NaN values, as a float16 row would hold."""
    work = codes.float() if work is None else work.copy_(codes)
    values = torch.addcmul(scale[..., 0:1, :], work, scale[..., 1:2, :], out=work)
    return values.half() if out is None else out.copy_(values)
