"""Reading a finished (or stopped) run back: its model at an epoch, its thresholds, and what it
needs to score raw audio (the frontend and WavLM it was trained on).

    run = load_run("runs/mel_aasist", epoch="best")
    run.model(batch) ...; run.threshold; run.frontend_config; run.wavlm_config
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.featurize.frontend import FrontendConfig
from dfdetect.train.architectures import build_model, get_architecture


class RunError(DfdetectError):
    """A run folder that cannot be used as asked; the message says what is missing."""


@dataclass
class LoadedRun:
    path: Path
    arch: str
    epoch: int
    model: torch.nn.Module          # in eval mode, on CPU
    config: dict                    # config.json as written by the trainer
    records: list[dict]             # metrics.jsonl, one per epoch

    @property
    def inputs(self) -> tuple[str, ...]:
        return get_architecture(self.arch).inputs

    @property
    def record(self) -> dict:
        return next(r for r in self.records if r["epoch"] == self.epoch)

    @property
    def threshold(self) -> float:
        """Decision threshold on P(fake): the validation EER threshold of the loaded epoch (chosen on
        held-out in-distribution data, never on test or OOD); 0.5 when validation had none."""
        value = self.record["sets"].get("val", {}).get("eer_threshold")
        return 0.5 if value is None else float(value)

    @property
    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.config["frontend"])

    @property
    def wavlm_config(self):
        """The WavLM the head's features came from (None for mel heads)."""
        info = self.config.get("wavlm")
        if not info or "wavlm" not in self.inputs:
            return None
        from dfdetect.featurize.wavlm import WavLMConfig

        return WavLMConfig(model=info["model"], layers=tuple(info["layers"]),
                           normalize=info.get("normalize"))

    @property
    def run_id(self) -> str:
        return f"{self.path.name}@epoch{self.epoch}"


def _read_json(file: Path, text: str | None = None, line: int | None = None):
    """One JSON value of a run file (the whole file, or one line of metrics.jsonl), or a RunError."""
    where = f"{file}:{line}" if line else str(file)
    try:
        return json.loads(file.read_text(encoding="utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{where}: not valid JSON ({e}); the run folder is damaged: retrain the run "
                       "or restore the file") from None


def load_run(path: str | Path, epoch: str | int = "best") -> LoadedRun:
    """The run's model at `epoch` ("best" by validation EER, "last", or a number)."""
    path = Path(path)
    config_file, metrics_file = path / "config.json", path / "metrics.jsonl"
    if not config_file.exists() or not metrics_file.exists():
        raise RunError(f"{path} is not a dfdetect run (no config.json / metrics.jsonl); "
                       "train one with `dfdetect train ... --out RUN`")
    config = _read_json(config_file)
    records = [_read_json(metrics_file, line, number) for number, line
               in enumerate(metrics_file.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not records:
        raise RunError(f"{path} has no finished epoch yet")
    try:
        epochs = [r["epoch"] for r in records]
        scored = [r for r in records if r["sets"].get("val", {}).get("eer") is not None]
        arch, model_options = config["config"]["arch"], config["model"]
    except (KeyError, TypeError, AttributeError) as e:
        raise RunError(f"{path}: config.json or metrics.jsonl lacks {e} (written by another tool or "
                       "damaged); retrain the run") from None
    if epoch == "best":
        number = min(scored, key=lambda r: (r["sets"]["val"]["eer"], r["epoch"]))["epoch"] if scored else epochs[-1]
    elif epoch == "last":
        number = epochs[-1]
    else:
        if not str(epoch).isdigit():
            raise RunError(f"epoch {epoch!r}: choose best, last or an epoch number")
        number = int(epoch)
        if number not in epochs:
            raise RunError(f"{path} has no epoch {number}; it has {epochs[0]}..{epochs[-1]}")
    weights = path / "checkpoints" / f"epoch_{number:03d}.safetensors"
    if not weights.exists():
        raise RunError(f"{path}: checkpoint {weights.name} is missing")
    try:
        model = build_model(arch, **model_options)
    except ConfigError as e:
        raise RunError(f"{config_file}: {e}. This dfdetect cannot build the run's head; use the dfdetect "
                       "version that trained it (config.json names it) or retrain") from None
    try:
        model.load_state_dict(load_file(str(weights)))  # safetensors: no pickle from the run folder runs
    except Exception as e:  # SafetensorError, or tensors that do not fit the head
        raise RunError(f"{weights}: not a checkpoint of this {arch} head ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:300]}); retrain the run or restore the file") from None
    model.eval()
    return LoadedRun(path, arch, number, model, config, records)
