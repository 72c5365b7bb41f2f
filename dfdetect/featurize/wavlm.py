"""Frozen WavLM features: the one expensive model of the featurize pass, run once per clip.

The waveform is the frontend's (16 kHz mono, 3 s = 48,000 samples, peak 1). WavLM turns it into
`num_hidden_states` sequences of `frames(48000) = 149` vectors (20 ms apart): hidden state 0 is the
transformer's input (the CNN features, projected, plus the convolutional position embedding) and
hidden state i is the output of transformer layer i; WavLM-Large has 24 layers, so 25 states of
1024 dims. Storing all 25 costs ~7.3 MiB per clip in float16, so the store keeps:

- "layers": the chosen hidden states in full, float16 [B, len(layers), frames, hidden];
- "stats": the per-state mean and (population) std over time for all hidden states, computed in
  float32 and stored as float16 [B, num_hidden_states, 2, hidden] (index 0 = mean, 1 = std), cheap
  enough for a head to learn a weighted sum over every layer without the full tensors.

With `WavLMConfig.storage = "uint8"` the layers are stored as 8-bit codes with a per-channel
offset and step (half the bytes, store/quantize.py), and "layers" is what such a store gives back.

Default layers (6, 12, 24): studies of SSL front-ends for anti-spoofing find the early and middle
layers of WavLM-Large / wav2vec 2.0 carry the most useful spoofing cues (acoustic detail the later,
more phonetic layers discard), so an early and a middle layer, plus the last layer that most
downstream recipes use.

Input normalisation: WavLM-Large was pre-trained on per-utterance zero-mean/unit-variance input (its
CNN uses layer norm, the fairseq pairing for normalised input); WavLM-Base was not. The decision is
made once per model and recorded in `info()`; see `WavLMExtractor._decide_normalize`.

Loading is offline-first: a local directory, else the Hugging Face cache, else (unless
HF_HUB_OFFLINE is set) the hub. A process loads the model once per (device, precision)
(`load_wavlm` is memoised), never per batch; featurize runs it in one process per device.

Precision: float32, or bfloat16 autocast (`wavlm_precision`: "auto" is bfloat16 on a GPU that
computes it in hardware, float32 everywhere else). Never float16: WavLM-Large has activations
beyond its range. The precision is part of what a store version and a run record, since bf16 and
fp32 features differ by more than a threshold can ignore. Out of CUDA memory, a call halves its
batch and retries (down to one clip), and keeps the smaller batch for the calls after.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dfdetect.devices import autocast, bf16_native, out_of_memory, resolve_device
from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.featurize.config import WAVLM_LAYERS, WAVLM_MODEL, WAVLM_STORAGE
from dfdetect.store.quantize import FP16_MAX, STORAGES, dequantize, quantize

# transformers is imported where it is used: importing this module stays cheap for runs that
# featurize only mel/LFCC.

# Wav2Vec2FeatureExtractor's epsilon in its zero-mean/unit-variance normalisation.
NORM_EPS = 1e-7

_HOW_TO_GET = (
    "Download it into the Hugging Face cache once with `hf download {model}` (huggingface_hub >= "
    "1.0; older versions: `huggingface-cli download {model}`) and rerun: it is then found in the "
    "cache, also offline. Or pass `--wavlm PATH` pointing at a local copy (a directory holding "
    "config.json and the model weights, as written by save_pretrained)."
)


class WavLMUnavailableError(DfdetectError, RuntimeError):
    """The WavLM weights could not be loaded; the message says how to get them."""


@dataclass(frozen=True)
class WavLMConfig:
    """What determines the WavLM features (hashable: it keys the per-process model cache).

    model: a hub id ("microsoft/wavlm-large") or a local directory with config.json + weights.
    revision: hub branch, tag or commit; ignored for local directories.
    layers: indices into the hidden states (0 = transformer input, i = output of layer i; 24 =
        last layer of Large) stored in full. Default: early, middle, last (module docstring).
    batch_size: clips per forward pass.
    normalize: per-utterance input normalisation; None decides from the model (module docstring).
    storage: how a store holds the layers: "float16", or "uint8" codes with a per-channel scale
        (half the bytes; store/quantize.py). Features come back as the store delivers them, so
        live scoring feeds a head what its training store fed it.
    """

    model: str = WAVLM_MODEL
    revision: str | None = None
    layers: tuple[int, ...] = WAVLM_LAYERS
    batch_size: int = 16
    normalize: bool | None = None
    storage: str = WAVLM_STORAGE

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise ConfigError("WavLMConfig.layers is empty: choose at least one hidden state")
        if self.storage not in STORAGES:
            raise ConfigError(f"WavLM storage {self.storage!r} (--wavlm-storage): choose {' or '.join(STORAGES)}")
        if self.batch_size < 1:
            raise ConfigError(f"WavLMConfig.batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> WavLMConfig:
        return cls(**{**d, "layers": tuple(d["layers"])})


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read now, not at import."""
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(model: str) -> bool:
    """A string meant as a directory (not a hub id of the form `org/name`)."""
    return (Path(model).expanduser().is_absolute() or model.startswith((".", "~"))
            or model.count("/") > 1 or "\\" in model)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _hash_local_dir(folder: Path) -> str:
    """sha256 over config.json and the weight files (names and bytes): a local copy's revision."""
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})
    for path in [folder / "config.json", *weights]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def _hub_commit(model: str, revision: str | None) -> str | None:
    """The commit the cached snapshot belongs to: its folder is named after the commit hash."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(model, "config.json", revision=revision)
    if not isinstance(path, str):
        return None
    snapshot = Path(path).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


class WavLMExtractor:
    """A frozen WavLM on one device: prepared waveforms [B, samples] -> float16 features.

    Build it with `load_wavlm` (cached per process). Calls are pure inference: eval mode, no
    gradients, `torch.inference_mode()`. The forward runs at `precision` ("float32", or
    "bfloat16" autocast: bf16 keeps float32's range, and WavLM-Large has activations that overflow
    float16). No process-wide setting (matmul precision, TF32 flags) is touched.
    """

    def __init__(self, config: WavLMConfig, device: torch.device, precision: str = "float32"):
        self.config = config
        self.device = device
        self.precision = precision
        self.batch_size = config.batch_size       # halved on CUDA out-of-memory (`_run_batches`)
        self._local = Path(config.model).expanduser().is_dir()
        self.model = self._load_model()
        self.model.float().eval().requires_grad_(False).to(device)
        self.normalize, self.normalize_source = self._decide_normalize()
        n = self.num_hidden_states
        bad = [i for i in config.layers if not 0 <= i < n]
        if bad:
            raise ConfigError(f"WavLM layer indices {bad} out of range: {config.model} has {n} hidden "
                             f"states, valid indices are 0..{n - 1} (0 = transformer input)")

    # -- loading --------------------------------------------------------------------------------
    def _unavailable(self, reason: str) -> WavLMUnavailableError:
        model = "microsoft/wavlm-large" if self._local or _looks_like_path(self.config.model) \
            else self.config.model
        return WavLMUnavailableError(f"WavLM model {self.config.model!r} is not available: {reason}. "
                                     + _HOW_TO_GET.format(model=model))

    def _load_model(self):
        """Local directory; else the HF cache; else, unless offline, the hub. Any failure to get
        weights becomes a WavLMUnavailableError that says how to get them."""
        from transformers import WavLMModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker per load is noise in a featurize log

        c = self.config
        if self._local:
            try:
                return WavLMModel.from_pretrained(str(Path(c.model).expanduser()), local_files_only=True)
            except Exception as e:  # any failure means: no usable weights there
                raise self._unavailable("the directory does not hold a loadable WavLM "
                                        f"({_first_line(e)})") from e
        if _looks_like_path(c.model):
            raise self._unavailable("no such directory")
        try:
            return WavLMModel.from_pretrained(c.model, revision=c.revision, local_files_only=True)
        except Exception as cached_error:  # not in the cache: try the hub if allowed
            if _offline():
                raise self._unavailable("not in the Hugging Face cache and HF_HUB_OFFLINE is set "
                                        f"({_first_line(cached_error)})") from cached_error
        try:
            return WavLMModel.from_pretrained(c.model, revision=c.revision)
        except Exception as e:
            raise self._unavailable("not in the Hugging Face cache and the download failed "
                                    f"({_first_line(e)})") from e

    def _decide_normalize(self) -> tuple[bool, str]:
        """Whether to normalise each clip to zero mean / unit variance, and why.

        Explicit config wins. Otherwise normalise when either the model's preprocessor_config.json
        says do_normalize, or its CNN uses layer norm (feat_extract_norm == "layer"): fairseq pairs
        the layer-norm CNN with normalised input, and WavLM's authors confirm Large was pre-trained
        on normalised input even though hub preprocessor configs of pre-trained-only checkpoints
        have been seen to say otherwise. A group-norm model (WavLM-Base) whose preprocessor config
        says nothing or False is left unnormalised.
        """
        if self.config.normalize is not None:
            return self.config.normalize, "config"
        from transformers import Wav2Vec2FeatureExtractor

        source = str(Path(self.config.model).expanduser()) if self._local else self.config.model
        layer_norm_cnn = self.model.config.feat_extract_norm == "layer"
        try:
            fe = Wav2Vec2FeatureExtractor.from_pretrained(source, revision=self.config.revision,
                                                          local_files_only=True)
        except Exception:  # no preprocessor_config.json: the architecture decides
            return layer_norm_cnn, f"feat_extract_norm={self.model.config.feat_extract_norm}"
        if fe.do_normalize or not layer_norm_cnn:
            return bool(fe.do_normalize), f"preprocessor_config do_normalize={fe.do_normalize}"
        return True, "feat_extract_norm=layer (preprocessor_config says do_normalize=False)"

    # -- shape ----------------------------------------------------------------------------------
    @property
    def num_hidden_states(self) -> int:
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def frames(self, n_samples: int) -> int:
        """Output frames for n_samples of input: the conv stack's floor((n - kernel) / stride) + 1."""
        n = int(n_samples)
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            n = (n - kernel) // stride + 1
        if n < 1:
            raise ValueError(f"{n_samples} samples are shorter than WavLM's receptive field")
        return n

    # -- provenance -----------------------------------------------------------------------------
    @functools.cached_property
    def revision(self) -> str | None:
        """Local directory: sha256 of config.json + weights. Hub: the cached snapshot's commit."""
        if self._local:
            return "sha256:" + _hash_local_dir(Path(self.config.model).expanduser())
        return _hub_commit(self.config.model, self.config.revision) or self.config.revision

    def info(self) -> dict:
        """Everything a store records about how its WavLM features were made."""
        import transformers

        return {
            "model": self.config.model,
            "revision": self.revision,
            "layers": list(self.config.layers),
            "num_hidden_states": self.num_hidden_states,
            "hidden_size": self.hidden_size,
            "normalize": self.normalize,
            "normalize_source": self.normalize_source,
            **compute_info(self.device, self.precision),
            "storage": self.config.storage,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "stats": "mean and population std over frames, float32 -> float16",
            "transformers_version": transformers.__version__,
        }

    # -- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, keys=("layers", "stats")) -> dict[str, torch.Tensor]:
        """One batch [b, samples] float32 on device -> `__call__`'s outputs named in `keys`, on device."""
        if self.normalize:
            var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
            x = (x - mean) / torch.sqrt(var + NORM_EPS)
        with autocast(self.device, self.precision):
            states = self.model(x, output_hidden_states=True).hidden_states
        layers = torch.stack([states[i].float() for i in self.config.layers], dim=1)
        stats = torch.stack([torch.stack(torch.std_mean(h.float(), dim=1, correction=0)[::-1], dim=1)
                             for h in states], dim=1)                      # [b, states, 2, hidden]
        out = {"stats": stats.clamp(-FP16_MAX, FP16_MAX).half()}
        if self.config.storage == "uint8":   # what the store holds, and the values it gives back
            out["codes"], out["scale"] = quantize(layers)   # saturated to float16's range, as below
            if "layers" in keys:             # featurize stores the codes and never reads these back
                out["layers"] = dequantize(out["codes"], out["scale"])
        else:   # beyond float16's range features are saturated, not stored as inf
            out["layers"] = layers.clamp(-FP16_MAX, FP16_MAX).half()
        return {k: out[k] for k in keys}

    def __call__(self, waves: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        """Prepared waveforms [B, samples] (or one [samples]) -> {"layers", "stats"} (float16).

        layers: [B, len(config.layers), frames(samples), hidden_size], as a store of
                config.storage delivers them
        stats:  [B, num_hidden_states, 2, hidden_size], [..., 0, :] mean, [..., 1, :] std
        With uint8 storage also what the store holds: "codes" (uint8, the shape of layers) and
        "scale" (float32 [B, len(config.layers), 2, hidden_size]).
        `keys` picks the outputs (default: layers and stats, and with uint8 storage codes and scale
        too); featurize asks for only what it stores. Clips run in batches of `batch_size`
        (config.batch_size, halved on CUDA out-of-memory); the result does not depend on the batching.
        """
        waves = np.asarray(waves, dtype=np.float32)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.ndim != 2:
            raise ValueError(f"expected waveforms [batch, samples], got shape {waves.shape}")
        count, frames, hidden = len(waves), self.frames(waves.shape[1]), self.hidden_size
        layers = (count, len(self.config.layers), frames, hidden)
        shapes = {"layers": (layers, np.float16), "stats": ((count, self.num_hidden_states, 2, hidden), np.float16)}
        if self.config.storage == "uint8":
            shapes["codes"] = (layers, np.uint8)
            shapes["scale"] = ((count, len(self.config.layers), 2, hidden), np.float32)
        keys = tuple(shapes) if keys is None else tuple(keys)
        unknown = set(keys) - set(shapes)
        if unknown:
            raise ValueError(f"no WavLM output {sorted(unknown)} with {self.config.storage} storage; "
                             f"choose from {sorted(shapes)}")
        out = {k: np.empty(*shapes[k]) for k in keys}
        start = 0
        while start < count:
            stop = min(start + self.batch_size, count)
            try:
                batch = self._forward(torch.from_numpy(waves[start:stop]).to(self.device), keys)
            except RuntimeError as e:   # torch.cuda.OutOfMemoryError is one
                if stop - start == 1 or not out_of_memory(e):
                    raise
                batch = None
            if batch is None:
                # Out of memory: retried at half the batch (kept for the next calls), once out of the
                # except block, whose traceback held the failed forward's memory.
                self.batch_size = max(1, (stop - start) // 2)
                torch.cuda.empty_cache()
                continue
            for key, values in batch.items():   # from the device straight into the result: one copy
                torch.from_numpy(out[key][start:stop]).copy_(values)
            start = stop
        return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def wavlm_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision WavLM runs at on `device`: "auto" is bfloat16 where the device computes it in
    hardware, float32 elsewhere (also on GPUs without native bf16: the float16 alternative
    overflows). A named precision is kept as asked: a run's or a store's recorded one (float16
    only so, for stores made on GPUs without bf16 before precision was chosen this way)."""
    if precision == "auto":
        return "bfloat16" if bf16_native(device) else "float32"
    if precision not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"WavLM precision {precision!r}: choose auto, float32 or bfloat16 "
                          "(float16 overflows in WavLM-Large)")
    return precision


def compute_info(device: str | torch.device, precision: str = "auto") -> dict:
    """Where and at what precision WavLM runs in this process, without loading it: what a store
    version records (asked of the process that runs the blocks)."""
    device = resolve_device(device)
    precision = wavlm_precision(device, precision)
    return {"precision": precision, "dtype": precision if precision == "float32" else f"autocast {precision}",
            "device": str(device), "device_name": device_name(device)}


_LOADED: dict[tuple[WavLMConfig, torch.device, str], WavLMExtractor] = {}
_LOCK = threading.Lock()


def load_wavlm(config: WavLMConfig = WavLMConfig(), device: str | torch.device = "auto",
               precision: str = "auto") -> WavLMExtractor:
    """The extractor for (config, device, precision), loaded at most once per process.

    device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N". precision: "auto"
    (`wavlm_precision`), "float32" or "bfloat16". Thread-safe: dask threads of one worker that ask
    at the same time share one load. Raises WavLMUnavailableError when the weights cannot be found,
    ValueError for a layer index outside the model.
    """
    device = resolve_device(device)
    key = (config, device, wavlm_precision(device, precision))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = WavLMExtractor(*key)
        return _LOADED[key]


def clear_wavlm_cache() -> None:
    """Forget the loaded extractors (frees their memory once no one else holds them)."""
    with _LOCK:
        _LOADED.clear()
