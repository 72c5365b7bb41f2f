"""Choosing the torch device and the compute precision: one rule for featurize (WavLM), train,
evaluate and score.

Precision names are torch dtype names ("float32", "bfloat16", "float16"). A model "runs at"
float32 without autocast, at a lower precision under torch.autocast of that dtype; `autocast`
below is the one place that turns a recorded precision into the context a forward runs in.
"""

from __future__ import annotations

import contextlib
import os

import torch

from dfdetect.errors import ConfigError

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What --device auto (every command's default) stands for, when set: cpu, cuda or cuda:N. Processes
# started from this one (dask workers) inherit it; e.g. DFDETECT_DEVICE=cpu keeps a GPU unused.
DEVICE_VARIABLE = "DFDETECT_DEVICE"


def device_variable() -> str | None:
    """$DFDETECT_DEVICE when it names a device (None when unset or "auto"). ConfigError naming the
    variable when it holds something else."""
    value = os.environ.get(DEVICE_VARIABLE, "").strip()
    if value in ("", "auto"):
        return None
    try:
        kind = torch.device(value).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"{DEVICE_VARIABLE}={value!r}: choose cpu, cuda or cuda:N (or unset it for auto)")
    return value


def auto_device() -> str:
    """What "auto" stands for: $DFDETECT_DEVICE when set (and not "auto"), else "cuda" when CUDA is
    available, else "cpu"."""
    return device_variable() or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> `auto_device()` (the current GPU when CUDA is available, else the CPU, unless
    $DFDETECT_DEVICE says otherwise); "cpu", "cuda", "cuda:N" as asked. A CUDA device always carries
    its index ("cuda" and "cuda:N" of the current GPU are one device, e.g. one cached WavLM).
    ConfigError when CUDA is asked for and absent."""
    where = f"--device {device}"
    if str(device) == "auto":
        device = auto_device()
        if device_variable():
            where = f"--device auto ({DEVICE_VARIABLE}={device})"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{where}: choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: CUDA is not available here; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: this machine has {torch.cuda.device_count()} visible GPU(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def local_devices(device: str) -> list[str]:
    """The devices a local run spreads one-model-per-device work over: every visible GPU for
    "cuda" (and for "auto" where it stands for cuda: `auto_device`), the one device named otherwise."""
    wanted = auto_device() if str(device) == "auto" else str(device)
    if wanted == "cuda" and torch.cuda.is_available():
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


# What a failed GPU allocation says where it is not a torch.cuda.OutOfMemoryError: cuBLAS and
# cuDNN allocate their own workspaces and report failure as a plain RuntimeError.
_OUT_OF_MEMORY = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the GPU running out of memory (what a smaller batch can cure)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in _OUT_OF_MEMORY))


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 on or off, both for CUDA's float32 matmuls (cuBLAS) and convolutions (cuDNN, whose own
    default is on), for the block; the caller's flags are given back after, so nothing changes
    process-wide. The CPU's float32 is untouched either way."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
