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

from dfdetect.featurize.frontend import FrontendConfig
from dfdetect.train.architectures import build_model, get_architecture


class RunError(Exception):
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


def load_run(path: str | Path, epoch: str | int = "best") -> LoadedRun:
    """The run's model at `epoch` ("best" by validation EER, "last", or a number)."""
    path = Path(path)
    config_file, metrics_file = path / "config.json", path / "metrics.jsonl"
    if not config_file.exists() or not metrics_file.exists():
        raise RunError(f"{path} is not a dfdetect run (no config.json / metrics.jsonl); "
                       "train one with `dfdetect train ... --out RUN`")
    config = json.loads(config_file.read_text())
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        raise RunError(f"{path} has no finished epoch yet")
    epochs = [r["epoch"] for r in records]
    if epoch == "best":
        scored = [r for r in records if r["sets"].get("val", {}).get("eer") is not None]
        number = min(scored, key=lambda r: (r["sets"]["val"]["eer"], r["epoch"]))["epoch"] if scored else epochs[-1]
    elif epoch == "last":
        number = epochs[-1]
    else:
        number = int(epoch)
        if number not in epochs:
            raise RunError(f"{path} has no epoch {number}; it has {epochs[0]}..{epochs[-1]}")
    weights = path / "checkpoints" / f"epoch_{number:03d}.safetensors"
    if not weights.exists():
        raise RunError(f"{path}: checkpoint {weights.name} is missing")
    arch = config["config"]["arch"]
    model = build_model(arch, **config["model"])
    model.load_state_dict(load_file(str(weights)))  # safetensors: no pickle from the run folder runs
    model.eval()
    return LoadedRun(path, arch, number, model, config, records)
