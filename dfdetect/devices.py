"""Choosing the torch device: one rule for featurize (WavLM), train, evaluate and score."""

from __future__ import annotations

import torch

from dfdetect.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> the current GPU when CUDA is available, else the CPU; "cpu", "cuda", "cuda:N" as
    asked. A CUDA device always carries its index ("cuda" and "cuda:N" of the current GPU are one
    device, e.g. one cached WavLM). ConfigError when CUDA is asked for and absent."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device
