"""Choosing the torch device and the compute precision: one rule for featurize (WavLM), train,
evaluate and score.

Precision names are torch dtype names ("float32", "bfloat16", "float16"). A model "runs at"
float32 without autocast, at a lower precision under torch.autocast of that dtype; `autocast`
below is the one place that turns a recorded precision into the context a forward runs in.
"""

from __future__ import annotations

import contextlib

import torch

from dfdetect.errors import ConfigError

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def local_devices(device: str) -> list[str]:
    """The devices a local run spreads one-model-per-device work over: every visible GPU for
    "auto"/"cuda" (auto: the CPU when there is none), the one device named otherwise."""
    if str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(resolve_device(device))]


def bf16_native(device: torch.device) -> bool:
    """Whether `device` (not the current GPU) computes bfloat16 in hardware. Emulated bf16 (pre-Ampere
    GPUs) counts as no: it is correct but several times slower than float32 there."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def precision_dtype(name: str, what: str = "precision") -> torch.dtype:
    """A precision name -> its torch dtype; ConfigError naming `what` for anything else."""
    if name not in PRECISIONS:
        raise ConfigError(f"{what} {name!r}: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def precision_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, precision: str):
    """The context a forward at `precision` runs in on `device`: nothing for float32, torch.autocast
    of that dtype otherwise (CPU autocast included, so a run's precision is kept on any device)."""
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def run_precision(run_config: dict) -> str:
    """The precision a run scores at (TrainConfig.score_precision in its config.json). Runs
    written before it was recorded: float32, the precision evaluate and score always used."""
    return (run_config.get("config") or {}).get("score_precision", "float32")
