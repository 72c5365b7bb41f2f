"""What a featurize pass writes and how it runs: one config, its defaults here and only here.

`dfdetect featurize`, `dfdetect.api.featurize` (= `pipeline.featurize`) and study files
(`[stores.NAME]` tables) all build a `FeaturizeConfig` and run `config.resolved()`, so the same
inputs without options give the same store version whichever way they came in. `WavLMConfig`'s
defaults are the constants below too.

Importing this module stays cheap (no torch): the CLI reads the defaults for its help text.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfdetect.featurize.frontend import FrontendConfig
    from dfdetect.featurize.variants import Variant
    from dfdetect.featurize.wavlm import WavLMConfig
    from dfdetect.featurize.windows import WindowProtocol

# DESIGN.md's CLI contract (`featurize ... [--features mel,lfcc,wavlm]`) makes WavLM part of the
# default pass: frozen WavLM is the strongest of the three frontends, and the pass exists so that
# the expensive model runs once per clip. Without local weights the pass stops before any work,
# saying how to get them or to choose `--features mel,lfcc` (never a silent smaller store).
DEFAULT_FEATURES = ("mel", "lfcc", "wavlm")
WAVLM_MODEL = "microsoft/wavlm-large"
WAVLM_LAYERS = (6, 12, 24)     # early, middle, last of Large (featurize/wavlm.py says why)
WAVLM_STORAGE = "float16"
BLOCK_SIZE = 128               # clips per block = rows per shard


def default_out(dataset: str) -> str:
    """Where a store goes when no --out is given."""
    return f"stores/{dataset}.zarr"


def _wavlm() -> WavLMConfig:
    from dfdetect.featurize.wavlm import WavLMConfig

    return WavLMConfig()


def _windows() -> WindowProtocol:
    from dfdetect.featurize.windows import WindowProtocol

    return WindowProtocol()


def _frontend() -> FrontendConfig:
    from dfdetect.featurize.frontend import FrontendConfig

    return FrontendConfig()


@dataclass(frozen=True)
class FeaturizeConfig:
    """Every setting of a featurize pass. `features`, `wavlm` (when "wavlm" is in features),
    `frontend`, `variant` and `windows` (when not the centre crop) name the store version; the
    rest say how it runs.

    workers: local worker processes (None: one per core; 0: in this process, no dask).
    scheduler: tcp://HOST:PORT of a running dask scheduler (None: a local cluster).
    """
    features: tuple[str, ...] = DEFAULT_FEATURES
    wavlm: WavLMConfig = field(default_factory=_wavlm)
    frontend: FrontendConfig = field(default_factory=_frontend)
    variant: Variant | None = None
    windows: WindowProtocol = field(default_factory=_windows)   # featurize/windows.py: centre | all | N
    device: str = "auto"
    scheduler: str | None = None
    workers: int | None = None
    block_size: int = BLOCK_SIZE

    def replace(self, **given) -> FeaturizeConfig:
        """This config with the given values that are not None."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_options(cls, features: str | tuple | list | None = None, wavlm: str | None = None,
                     wavlm_layers=None, wavlm_storage: str | None = None, codec: str | None = None,
                     corrupt: str | None = None, variant_seed: int | None = None, vocode: str | None = None,
                     vocode_keep_real: bool | None = None, windows: str | int | None = None,
                     window: float | None = None, hop: float | None = None, trim_silence: bool | None = None,
                     **rest) -> FeaturizeConfig:
        """From the flat options the CLI and study files spell (None: the default)."""
        from dfdetect.featurize.variants import Variant
        from dfdetect.featurize.windows import WindowProtocol

        config = cls().replace(**rest)
        if isinstance(features, str):
            features = tuple(f.strip() for f in features.split(",") if f.strip())
        wavlm_config = dataclasses.replace(
            config.wavlm, **{k: v for k, v in (("model", wavlm), ("layers", wavlm_layers),
                                               ("storage", wavlm_storage)) if v is not None})
        variant = Variant.parse(codec, corrupt, 0 if variant_seed is None else variant_seed, vocode,
                                bool(vocode_keep_real))
        if trim_silence is not None and not isinstance(trim_silence, bool):
            from dfdetect.errors import ConfigError

            raise ConfigError(f"trim_silence {trim_silence!r}: true or false")
        if trim_silence:   # a frontend of its own (a new version): the silence shortcut's mitigation
            config = config.replace(frontend=dataclasses.replace(config.frontend, trim_silence=True))
        return config.replace(features=tuple(features) if features is not None else None,
                              wavlm=wavlm_config, variant=variant,
                              windows=WindowProtocol.parse(windows, window, hop))

    def resolved(self, option=lambda name: "--" + name.replace("_", "-")) -> FeaturizeConfig:
        """Defaults filled in (workers), features in the store's order, every value checked
        (StoreError/ConfigError naming the option: `option(field)`, by default featurize's
        command-line option; a study names its key)."""
        from dfdetect.errors import check_range
        from dfdetect.store.schema import FEATURE_ARRAYS, StoreError
        from dfdetect.store.writer import MAX_BLOCK_SIZE

        known = tuple(FEATURE_ARRAYS)
        features = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        unknown = [f for f in features if f not in known]
        if unknown or not features:
            raise StoreError(f"unknown feature(s) {', '.join(unknown) or '(none given)'}; "
                             f"{option('features')} takes a comma-separated subset of {','.join(known)}")
        check_range(option("block_size"), self.block_size, 1, MAX_BLOCK_SIZE)
        if self.workers is not None:
            check_range(option("workers"), self.workers, 0)
        return dataclasses.replace(self, features=tuple(f for f in known if f in features),
                                   windows=self.windows.resolved(self.frontend.clip_seconds),
                                   workers=(os.cpu_count() or 1) if self.workers is None else int(self.workers))
