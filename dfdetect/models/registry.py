"""Every architecture by name: what each reads, how to build one, how it trains, and how big it is.

    ARCHITECTURES["mel_aasist"].inputs          -> ("mel",)
    model = build_model("wavlm_cnn", hidden_size=768, num_layers=2)
    model_summary("wavlm_aasist")               -> parameters, checkpoint bytes, deployed size

Two families: the reference study's four heads (mel_cnn, mel_aasist, wavlm_cnn, wavlm_aasist) and
the field's reference systems (`baseline=True`: lfcc_gmm, lfcc_lcnn, aasist, aasist_l), which the
report shows as reference rows that every head has to beat. Each lives in its own file (aasist.py
holds AASIST and AASIST-L) with its config at the top; this module only names them. A config
round-trips through JSON with `config_to_dict` and `build_model(arch, **dict)` (lists become tuples,
nested ones too; a dict becomes a nested config).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from safetensors.torch import save as safetensors_save
from torch import nn

from dfdetect.errors import ConfigError
from dfdetect.models.aasist import AASIST, AASISTConfig, AASISTLConfig
from dfdetect.models.lfcc_gmm import LfccGMM, LfccGMMConfig
from dfdetect.models.lfcc_lcnn import LfccLCNN, LfccLCNNConfig
from dfdetect.models.mel_aasist import MelAASIST, MelAASISTConfig
from dfdetect.models.mel_cnn import MelCNN, MelCNNConfig
from dfdetect.models.wavlm_aasist import WavLMAASIST, WavLMAASISTConfig
from dfdetect.models.wavlm_cnn import WavLMCNN, WavLMCNNConfig

# Frozen WavLM-Large, which the WavLM heads need at scoring time (it runs live there; training reads
# the cache): 316.6M parameters (WavLM paper, Chen et al. 2022, Table 1: 316.62M), ~1.27 GB as float32
# -- the bulk of the reference study's "~350M+ parameters, ~1.3 GB per checkpoint" for its WavLM models.
WAVLM_LARGE_PARAMETERS = 316_620_000
WAVLM_LARGE_BYTES = WAVLM_LARGE_PARAMETERS * 4     # float32 weights


@dataclass(frozen=True)
class Architecture:
    name: str                       # registry key, e.g. "mel_aasist"
    title: str                      # for people, e.g. "Mel-AASIST"
    config_cls: type
    model_cls: type[nn.Module]
    batch_size: int                 # default; the reference study's (128 mel, 64 WavLM) or the baseline's own
    epochs: int                     # default; the reference study's (50 mel, 15 WavLM); 1 for a fitted model
    lr: float | None                # default learning rate (AdamW); None for a fitted model
    source: str                     # where it comes from, for people
    baseline: bool = False          # one of the field's reference systems (a reference row in reports)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The feature arrays the model reads from a batch."""
        return self.model_cls.inputs

    @property
    def uses_wavlm(self) -> bool:
        return "wavlm" in self.inputs

    @property
    def fitted(self) -> bool:
        """Fitted once by `model.fit` (EM), not trained by the optimizer epoch after epoch."""
        return getattr(self.model_cls, "fitted", False)


STUDY = "reference study"
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mel_cnn", "Mel-CNN", MelCNNConfig, MelCNN, 128, 50, 5e-5, STUDY),
    Architecture("mel_aasist", "Mel-AASIST", MelAASISTConfig, MelAASIST, 128, 50, 5e-5, STUDY),
    Architecture("wavlm_cnn", "WavLM+CNN", WavLMCNNConfig, WavLMCNN, 64, 15, 5e-5, STUDY),
    Architecture("wavlm_aasist", "WavLM+AASIST", WavLMAASISTConfig, WavLMAASIST, 64, 15, 5e-5, STUDY),
    # The reference systems, with their published recipes' batch sizes and learning rates (epochs:
    # the published 100 are halved to the reference study's mel budget; set --epochs to match them).
    Architecture("lfcc_gmm", "LFCC-GMM", LfccGMMConfig, LfccGMM, 256, 1, None, "ASVspoof 2019 baseline",
                 baseline=True),
    Architecture("lfcc_lcnn", "LFCC-LCNN", LfccLCNNConfig, LfccLCNN, 64, 50, 3e-4, "ASVspoof 2021 baseline",
                 baseline=True),
    Architecture("aasist", "AASIST", AASISTConfig, AASIST, 24, 50, 1e-4, "AASIST paper", baseline=True),
    Architecture("aasist_l", "AASIST-L", AASISTLConfig, AASIST, 24, 50, 1e-4, "AASIST paper", baseline=True),
)}


def get_architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


# Every value of a head's config (from `train --config` or an exported folder's config.json) is
# checked by the type of its default before anything is built, so a config of a few bytes cannot ask
# for gigabytes or a head that fails later: sizes are integers in [1, MAX_SIZE] (SIZE_LIMITS by
# name), tuples hold 1..MAX_ITEMS values, dropouts are in [0, 1), other floats in (0, MAX_FLOAT].
MAX_SIZE = 65_536
SIZE_LIMITS = {"max_frames": 10_000_000, "max_iter": 100_000, "sample_rate": 192_000,
               "sinc_filters": 1_024, "sinc_kernel": 4_096}   # the sinc bank is built in numpy, not lazily
MAX_ITEMS = 32
MAX_FLOAT = 1e6
MAX_TEXT = 100


def _checked(default, value, name: str, where: str):
    """`value` for the field `name` whose default is `default` (tuples as tuples), or a ConfigError."""
    def bad(must: str):
        shown = repr(value)
        return ConfigError(f"{where}.{name} {shown[:60] + '...' if len(shown) > 60 else shown}: must be {must}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        high = SIZE_LIMITS.get(name, MAX_SIZE)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise bad(f"an integer from 1 to {high:,}")
    elif isinstance(default, float):
        low_open, high = ("dropout" not in name), (1.0 if "dropout" in name or name == "pool_ratios" else MAX_FLOAT)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value > 0 if low_open else value >= 0) and (value < high if "dropout" in name else value <= high)
        if not ok:
            raise bad("a number in [0, 1)" if "dropout" in name else f"a number > 0 and <= {high:g}")
    elif isinstance(default, str):
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise bad(f"text of at most {MAX_TEXT} characters")
    elif isinstance(default, tuple) and default:
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_ITEMS:
            raise bad(f"a list of 1 to {MAX_ITEMS} values")
        return tuple(_checked(default[0], v, name, where) for v in value)
    return value


def _make(config_cls: type, overrides: dict[str, Any], where: str):
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: the options must be a JSON object, not {type(overrides).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {where} option(s) {', '.join(repr(u)[:60] for u in unknown[:10])}; "
                         f"valid: {', '.join(fields)}")
    values = {}
    for name, value in overrides.items():
        default = getattr(config_cls(), name)
        if dataclasses.is_dataclass(default):
            value = _make(type(default), value, f"{where}.{name}")
        else:
            value = _checked(default, value, name, where)
        values[name] = value
    return config_cls(**values)


def make_config(arch: str, **overrides):
    """The architecture's config with the reference study's defaults, changed by `overrides` (ValueError if unknown)."""
    return _make(get_architecture(arch).config_cls, overrides, arch)


def build_model(arch: str, **config_overrides) -> nn.Module:
    """A freshly initialised head. Unknown arch or override -> ValueError naming the valid choices."""
    return get_architecture(arch).model_cls(make_config(arch, **config_overrides))


def config_to_dict(config) -> dict:
    """JSON-friendly dict of a config; `build_model(arch, **config_to_dict(c))` rebuilds the same model."""
    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {k: config_to_dict(v) if dataclasses.is_dataclass(v) else plain(v)
            for k, v in ((f.name, getattr(config, f.name)) for f in dataclasses.fields(config))}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_bytes(model: nn.Module) -> int:
    """Size of the model's state_dict saved with safetensors (measured, not estimated)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return len(safetensors_save(state))


def model_summary(arch: str, wavlm_hidden: int = 1024, wavlm_layers: int = 3) -> dict:
    """Sizes for `dfdetect models`: parameters and checkpoint bytes of the head as trained, and for
    WavLM heads also the deployed size with frozen WavLM-Large (which scoring needs)."""
    a = get_architecture(arch)
    overrides = {"hidden_size": wavlm_hidden, "num_layers": wavlm_layers} if a.uses_wavlm else {}
    model = build_model(arch, **overrides)
    summary = {"arch": a.name, "title": a.title, "inputs": list(a.inputs), "batch_size": a.batch_size,
               "epochs": a.epochs, "source": a.source, "baseline": a.baseline,
               "parameters": count_parameters(model), "checkpoint_bytes": checkpoint_bytes(model),
               "config": config_to_dict(model.config)}
    if a.uses_wavlm:
        summary.update(wavlm_parameters=WAVLM_LARGE_PARAMETERS,
                       deployed_parameters=summary["parameters"] + WAVLM_LARGE_PARAMETERS,
                       deployed_bytes=summary["checkpoint_bytes"] + WAVLM_LARGE_BYTES)
    return summary
