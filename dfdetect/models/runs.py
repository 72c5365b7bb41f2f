"""The run folder, the one owner of its layout, and reading a trained run back.

    runs/NAME/
      config.json        the exact TrainConfig, the head's config, the sets (store, version,
                         frontend hash, rows), the frontend and WavLM the features came from, the
                         mixing (each training corpus's rows and share, --balance, --augment's versions)
      metrics.jsonl      one line per epoch: train loss/accuracy (and what the epoch drew: clips per
                         --augment source, per corpus), every set's metrics, timings
      checkpoints/epoch_NNN.safetensors, best.safetensors (model weights only)
      state.safetensors + state.json   optimizer, RNG and progress, for --resume
      scores/{best,last}/SET.csv       per-clip scores (P(fake)) of the best and the last epoch
      calibrations/NAME.json           P(fake) -> LLR maps (dfdetect.calibration): "val", fitted at the
                         end of training on the best epoch's validation set, and `dfdetect calibrate`'s
      run.json           environment (git commit, versions, device) and totals

`RunFolder` names every file (the trainer writes through it; evaluate, report, score, the study
and the demo read through it) and holds the one best-epoch rule. What is read comes back as
`RunConfig` (config.json) and `EpochRecord` (a line of metrics.jsonl): the dicts as written, with
the keys readers use as properties, so no reader spells the files' keys. `load_run` gives the head at an
epoch with what scoring raw audio needs (the frontend and WavLM it was trained on):

    run = load_run("runs/mel_aasist", epoch="best")
    run.model(batch) ...; run.threshold; run.frontend_config; run.wavlm_config
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dfdetect.calibration import Calibration
from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.featurize.frontend import FrontendConfig
from dfdetect.featurize.wavlm import WavLMConfig
from dfdetect.metrics import json_safe
from dfdetect.models.registry import build_model, get_architecture
from dfdetect.names import csv_cell
from dfdetect.store.schema import wavlm_storage_of

STATE_KEY = "dfdetect_state"   # the progress, in state.safetensors' header
# A run folder's layout: what `RunFolder.create` may remove (with the ".tmp" of a replace cut off).
LAYOUT_FILES = {"config.json", "metrics.jsonl", "run.json", "state.json", "state.safetensors"}
LAYOUT_DIRS = {"checkpoints", "scores", "calibrations"}
_CHECKPOINT = re.compile(r"(epoch_\d{3,}|best)\.safetensors(\.tmp)?")
CALIBRATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CALIBRATION_FILE = re.compile(CALIBRATION_NAME.pattern + r"\.json(\.tmp)?")


# A per-clip score table (scores/{best,last}/SET.csv): its columns; score = P(fake).
SCORE_COLUMNS = ("clip_id", "label", "score", "generator", "split", "store_row")
# a set's metrics beside its thresholds' ("at_0.5", ...)
_TOP_LEVEL_METRICS = ("eer", "auc", "min_dcf", "act_dcf", "cllr", "min_cllr")


class RunError(DfdetectError):
    """A run folder that cannot be used as asked; the message says what is missing."""


class RunConfig(dict):
    """config.json as the trainer wrote it: {"config": TrainConfig fields, "model": the head's
    config, "parameters", "sets": {NAME: the set's description}, "frontend", "wavlm", "mixing"}."""

    @property
    def train_config(self) -> dict:
        """The TrainConfig fields ({} when not recorded: an exported model's)."""
        return self.get("config") or {}

    @property
    def arch(self) -> str:
        return self["config"]["arch"]

    @property
    def model_options(self) -> dict:
        return self["model"]

    @property
    def train_set(self) -> dict:
        """The train set's description: spec, store, version, rows, frontend_hash."""
        return self["sets"]["train"]

    @property
    def frontend(self) -> dict:
        return self["frontend"]

    @property
    def wavlm(self) -> dict | None:
        return self.get("wavlm")

    @property
    def score_precision(self) -> str:
        """The precision the run scores at. Runs written before it was recorded: float32, the
        precision evaluate and score always used."""
        return self.train_config.get("score_precision", "float32")

    def protocol(self, set_name: str) -> str:
        """How the run's set `set_name` was scored, in words ("centre 3 s crop", "all 3 s windows,
        hop 1.5 s, mean"): featurize/windows.py's WindowProtocol of the set's store version."""
        from dfdetect.featurize.windows import WindowProtocol

        windows = self.get("sets", {}).get(set_name, {}).get("windows")
        return WindowProtocol.words(windows, (self.get("frontend") or {}).get("clip_seconds"), self.aggregate)

    @property
    def aggregate(self) -> str:
        """How the run scores a file of a windowed set from its windows (featurize/windows.py);
        runs written before it was recorded: mean, `dfdetect score`'s default."""
        return self.train_config.get("aggregate", "mean")

    @property
    def tf32(self) -> bool:
        """Whether the run's CUDA forwards use TF32: validation chose its threshold so, and evaluate
        and score run so too."""
        return bool(self.train_config.get("tf32", True))

    @property
    def mixing(self) -> dict:
        """{"corpora": [{spec, store, version, rows, share}], "balance", "augment": [{spec, store,
        version, rows}], "augment_p"}; runs written before it was recorded: {}."""
        return self.get("mixing") or {}


class EpochRecord(dict):
    """One epoch of metrics.jsonl as the trainer wrote it: {"epoch", "train": loss, accuracy...,
    "sets": {NAME: metrics (eer, auc, min_dcf, eer_threshold, "at_0.5": accuracy, recall...)},
    "seconds"}."""

    @property
    def epoch(self) -> int:
        return self["epoch"]

    @property
    def train(self) -> dict:
        return self["train"]

    @property
    def sets(self) -> dict[str, dict]:
        return self["sets"]

    @property
    def draws(self) -> dict[str, int]:
        """Training clips read per source this epoch ("clean", then each --augment spec); {} without."""
        return self["train"].get("draws", {})

    @property
    def seconds(self) -> dict:
        return self["seconds"]

    @property
    def val_eer(self) -> float | None:
        return self.sets.get("val", {}).get("eer")

    @property
    def val_threshold(self) -> float | None:
        """The validation EER threshold on P(fake) (None when validation had none)."""
        return self.sets.get("val", {}).get("eer_threshold")

    @property
    def calibration(self) -> dict | None:
        """The calibration fitted on this epoch's validation scores (Calibration.to_dict), if any."""
        return self.get("calibration")

    def metric(self, name: str, key: str):
        """Set `name`'s metric `key`: eer/auc/min_dcf as stored, the rest at threshold 0.5 (None
        when not recorded); KeyError when the epoch has no such set."""
        metrics = self.sets[name]
        return metrics.get(key) if key in _TOP_LEVEL_METRICS else metrics["at_0.5"].get(key)

    def at_05(self, name: str) -> dict:
        """Set `name`'s metrics at threshold 0.5 (confusion counts included)."""
        return self.sets[name]["at_0.5"]

    def at_val(self, name: str) -> dict | None:
        """Set `name`'s metrics at the validation threshold, the run's decision threshold (None when
        validation had none, and for the val set itself)."""
        return self.sets[name].get("at_val")


def is_better(val_eer, best_val_eer) -> bool:
    """The best-epoch rule: the lowest validation EER wins, the earliest epoch on a tie; an epoch
    without a finite validation EER is never best (then `best` falls back to the last epoch)."""
    if val_eer is None or not math.isfinite(val_eer):
        return False
    return best_val_eer is None or val_eer < best_val_eer


class RunFolder:
    """Where each file of a run lives, and reading/writing the small ones."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.run_file = self.path / "run.json"
        self.state_file = self.path / "state.json"
        self.state_tensors = self.path / "state.safetensors"
        self.checkpoints = self.path / "checkpoints"
        self.best_checkpoint = self.checkpoints / "best.safetensors"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.safetensors"

    def scores(self, which: str) -> Path:
        """The folder of per-clip score tables of the "best" or the "last" epoch."""
        return self.path / "scores" / which

    def score_table(self, which: str, set_name: str) -> Path:
        """The per-clip score table (SCORE_COLUMNS) of set `set_name` at the "best" or "last" epoch."""
        return self.scores(which) / f"{set_name.replace(':', '_')}.csv"

    def write_score_table(self, which: str, set_name: str, columns: dict) -> None:
        """One score table from equal-length `columns` named as SCORE_COLUMNS (score = P(fake));
        names from the store are untrusted cells (names.csv_cell)."""
        table = self.score_table(which, set_name)
        table.parent.mkdir(parents=True, exist_ok=True)
        with open(table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SCORE_COLUMNS)
            for clip_id, label, score, generator, split, row in zip(*(columns[c] for c in SCORE_COLUMNS)):
                w.writerow([csv_cell(clip_id), int(label), f"{score:.6f}", csv_cell(generator), csv_cell(split),
                            int(row)])

    # -- calibrations (dfdetect.calibration's JSON) ---------------------------------------------------
    @property
    def calibrations(self) -> Path:
        return self.path / "calibrations"

    def calibration_file(self, name: str) -> Path:
        if name == "none" or not CALIBRATION_NAME.fullmatch(name):
            raise RunError(f"calibration name {name!r}: use letters, digits, '_', '.' and '-' (up to 64, "
                           "not 'none')")
        return self.calibrations / f"{name}.json"

    def write_calibration(self, name: str, calibration: Calibration) -> Path:
        """calibrations/NAME.json, replaced in one rename."""
        file = self.calibration_file(name)
        file.parent.mkdir(parents=True, exist_ok=True)
        _replace(file, lambda tmp: tmp.write_text(json.dumps(calibration.to_dict(), indent=2)))
        return file

    def read_calibration(self, name: str) -> Calibration:
        file = self.calibration_file(name)
        if not file.is_file():
            have = ", ".join(self.calibration_names()) or "none"
            raise RunError(f"{self.path} has no calibration {name!r} (it has: {have}); fit one with "
                           f"`dfdetect calibrate {self.path} --on STORE[:SPLIT] --name {name}`")
        return dataclasses.replace(Calibration.from_dict(_read_json(file), str(file)), name=name)

    def calibration_names(self) -> list[str]:
        """The run's calibrations, newest first (by when they were fitted)."""
        if not self.calibrations.is_dir():
            return []
        found = [(f.stem, f) for f in self.calibrations.glob("*.json") if CALIBRATION_NAME.fullmatch(f.stem)]
        return [name for _, name in sorted(((self.read_calibration(n).created_ns, n) for n, _ in found),
                                           reverse=True)]

    # -- state --------------------------------------------------------------------------------------
    @property
    def is_run(self) -> bool:
        return self.config_file.exists() and self.metrics_file.exists()

    @property
    def can_resume(self) -> bool:
        return self.state_tensors.exists() and self.state_file.exists()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    # -- reading ------------------------------------------------------------------------------------
    def read_config(self) -> RunConfig:
        config = _read_json(self.config_file)
        return RunConfig(config) if isinstance(config, dict) else config   # else: load_run names what it lacks

    def records(self) -> list[EpochRecord]:
        """metrics.jsonl, one record per finished epoch ([] when none finished). A last line without
        its newline that is not JSON is an epoch whose append was cut off (killed, disk full): it
        never finished, so it is not a record. A repeated epoch (a run resumed by an older dfdetect
        after a kill) counts once, as its later record: the one its checkpoint holds."""
        return [EpochRecord(record) if isinstance(record, dict) else record for _, record in self._record_lines()]

    def _record_lines(self) -> list[tuple[str, dict]]:
        """(line, record) per epoch, by the rules of `records`."""
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").split("\n")
        by_epoch: dict = {}    # the last item of `lines` is "" when the file ends in a newline
        for number, line in enumerate(lines, 1):
            if not line.strip() or (number == len(lines) and _cut_off(line)):
                continue
            record = _read_json(self.metrics_file, line, number)
            by_epoch[record.get("epoch", number) if isinstance(record, dict) else number] = (line, record)
        return list(by_epoch.values())

    @staticmethod
    def best_epoch(records: list[EpochRecord]) -> int | None:
        """The epoch `is_better` picks over the records; the last epoch when none has a validation
        EER; None when there are no records."""
        best, best_eer = None, None
        records = [EpochRecord(r) for r in records]    # plain dicts too
        for r in records:
            if is_better(r.val_eer, best_eer):
                best, best_eer = r.epoch, r.val_eer
        return best if best is not None else (records[-1].epoch if records else None)

    def foreign_files(self, limit: int = 5) -> list[str]:
        """Up to `limit` paths in the folder (relative to it) that are not part of a run's layout:
        what dfdetect did not write as a run. Links count as foreign (never followed)."""
        found: list[str] = []
        for entry in self._entries():
            rel = entry.relative_to(self.path)
            if not _in_layout(rel, entry):
                found.append(str(rel) + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
                if len(found) >= limit:
                    break
        return found

    def _entries(self):
        """Every path in the folder, a layout folder's contents included (foreign folders are not
        entered: the first foreign path is enough)."""
        if not self.path.is_dir():
            return
        for entry in sorted(self.path.iterdir()):
            yield entry
            if entry.name in LAYOUT_DIRS and entry.is_dir() and not entry.is_symlink():
                yield from sorted(entry.rglob("*"))

    def is_created_run(self) -> bool:
        """Whether the folder is one dfdetect created as a run (so `create` may replace it): only
        the run layout's files, and a config.json the trainer wrote (or, a kill after `create`,
        nothing but its empty folders)."""
        if self.foreign_files(1):
            return False
        if not self.config_file.exists():
            return not any(e.is_file() for e in self._entries())
        try:
            config = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(config, dict) and {"config", "model"} <= set(config)

    # -- writing (the trainer) ----------------------------------------------------------------------
    def create(self) -> None:
        """An empty run folder at `path`. What was there is removed only when it is a run folder
        dfdetect created (`is_created_run`): a folder holding anything else is refused, --force or
        not, so no call removes files dfdetect did not write as a run."""
        if not self.is_empty():
            if not self.is_created_run():
                raise RunError(self.not_a_run_message())
            for entry in self.path.iterdir():   # the contents: `path` may be a link the user made
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def not_a_run_message(self) -> str:
        foreign = self.foreign_files()
        held = (f"files dfdetect did not write as a run ({', '.join(foreign)}{', ...' * (len(foreign) >= 5)})"
                if foreign else "files that are not a run dfdetect created (its config.json is not the trainer's)")
        return (f"{self.path} already holds {held}; dfdetect never removes them (--force replaces only a run "
                "folder): choose another output folder, or move them away")

    def write_config(self, config: dict) -> None:
        self.config_file.write_text(json.dumps(config, indent=2))

    def write_run_info(self, info: dict) -> None:
        self.run_file.write_text(json.dumps(info, indent=2))

    def append_record(self, record: dict) -> None:
        """One line, written in one call and synced: the epoch is in the run for readers once this
        returns (the trainer writes it after the epoch's checkpoint and scores)."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def save_checkpoint(self, model: torch.nn.Module, epoch: int, best: bool) -> None:
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        _replace(self.checkpoint(epoch), lambda tmp: save_file(weights, str(tmp)))
        if best:
            _replace(self.best_checkpoint, lambda tmp: shutil.copyfile(self.checkpoint(epoch), tmp))

    def roll_back(self, epoch: int, best_epoch: int | None) -> None:
        """The run as its saved state (`epoch`, `best_epoch`) left it. An epoch's commit point is
        its state save, so what a kill left after the last one (a record, a checkpoint, a cut-off
        line) is dropped, and that epoch is trained again exactly as it was. metrics.jsonl keeps its
        lines as written, and is rewritten (atomically) only when something is dropped."""
        lines = self._record_lines()
        kept = [line for line, r in lines if isinstance(r, dict) and isinstance(r.get("epoch"), int)
                and r["epoch"] <= epoch]
        if self.metrics_file.exists() and self.metrics_file.read_text(encoding="utf-8", errors="replace") \
                != "".join(line + "\n" for line in kept):
            _replace(self.metrics_file, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept),
                                                                   encoding="utf-8"))
        for file in self.checkpoints.glob("epoch_*.safetensors"):
            number = file.stem.removeprefix("epoch_")
            if number.isdigit() and int(number) > epoch:
                file.unlink()
        if best_epoch is not None and self.checkpoint(best_epoch).exists():
            _replace(self.best_checkpoint, lambda tmp: shutil.copyfile(self.checkpoint(best_epoch), tmp))

    def save_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Everything --resume needs, committed by one rename: the progress rides in the tensor
        file's header, so a kill at any point leaves the previous state or the new one, never a mix.
        state.json is the readable copy."""
        text = json.dumps(json_safe(meta))
        _replace(self.state_tensors, lambda tmp: save_file(tensors, str(tmp), metadata={STATE_KEY: text}))
        _replace(self.state_file, lambda tmp: tmp.write_text(text))

    def read_state(self) -> dict:
        """The progress the state tensors were saved with (state.json for runs of older versions)."""
        try:
            with safe_open(str(self.state_tensors), "pt") as f:
                text = (f.metadata() or {}).get(STATE_KEY)
        except Exception as e:  # SafetensorError: not a safetensors file
            raise RunError(f"{self.state_tensors}: not a dfdetect state file ({type(e).__name__}); the run folder "
                           "is damaged: retrain it with --force") from None
        if text is None:
            return _read_json(self.state_file)
        return _read_json(self.state_tensors, text)


def _in_layout(rel: Path, entry: Path) -> bool:
    """Whether `rel` (inside a run folder) is a path of the run layout: its files (or a replace's
    leftover .tmp), checkpoints/*.safetensors, scores/{best,last}/*.csv. Never a link."""
    if entry.is_symlink():
        return False
    parts, is_dir = rel.parts, entry.is_dir()
    if len(parts) == 1:
        return (parts[0] in LAYOUT_DIRS and is_dir) or (
            not is_dir and parts[0].removesuffix(".tmp") in LAYOUT_FILES)
    if parts[0] == "checkpoints":
        return len(parts) == 2 and not is_dir and bool(_CHECKPOINT.fullmatch(parts[1]))
    if parts[0] == "calibrations":
        return len(parts) == 2 and not is_dir and bool(_CALIBRATION_FILE.fullmatch(parts[1]))
    if parts[0] == "scores":
        return parts[1] in ("best", "last") and (
            (len(parts) == 2 and is_dir) or (len(parts) == 3 and not is_dir and parts[2].endswith(".csv")))
    return False


def _replace(file: Path, write) -> None:
    """`write(tmp)` then one rename onto `file`: a kill mid-write leaves the previous file whole."""
    tmp = file.with_name(file.name + ".tmp")
    write(tmp)
    os.replace(tmp, file)


def _cut_off(line: str) -> bool:
    """Whether a last line without its newline is an append that was cut off (not JSON)."""
    try:
        json.loads(line)
        return False
    except json.JSONDecodeError:
        return True


def _read_json(file: Path, text: str | None = None, line: int | None = None):
    """One JSON value of a run file (the whole file, or one line of metrics.jsonl), or a RunError."""
    where = f"{file}:{line}" if line else str(file)
    try:
        return json.loads(file.read_text(encoding="utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{where}: not valid JSON ({e}); the run folder is damaged: retrain the run "
                       "or restore the file") from None


# -- a trained run, loaded -------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    path: Path
    arch: str
    epoch: int
    model: torch.nn.Module          # in eval mode, on CPU
    config: RunConfig               # config.json as written by the trainer
    records: list[EpochRecord]      # metrics.jsonl, one per epoch

    def __post_init__(self):        # an exported model gives the same shapes as plain dicts
        self.config = RunConfig(self.config)
        self.records = [EpochRecord(r) for r in self.records]

    @property
    def inputs(self) -> tuple[str, ...]:
        return get_architecture(self.arch).inputs

    @property
    def record(self) -> EpochRecord:
        return next(r for r in self.records if r.epoch == self.epoch)

    @property
    def threshold(self) -> float:
        """Decision threshold on P(fake): the validation EER threshold of the loaded epoch (chosen on
        held-out in-distribution data, never on test or OOD); 0.5 when validation had none."""
        value = self.record.val_threshold
        return 0.5 if value is None else float(value)

    @property
    def score_precision(self) -> str:
        return self.config.score_precision

    @property
    def tf32(self) -> bool:
        return self.config.tf32

    @property
    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.config.frontend)

    @property
    def frontend_hash(self) -> str:
        """The frontend of the features the head was trained on (what a store must match)."""
        return self.config.get("sets", {}).get("train", {}).get("frontend_hash") or self.frontend_config.hash()

    @property
    def wavlm_info(self) -> dict | None:
        """The WavLM the training features came from, as its store recorded it (None for mel heads)."""
        return self.config.wavlm if "wavlm" in self.inputs else None

    @property
    def wavlm_config(self):
        """The WavLM to run for live scoring: the model, revision, layers, normalisation and storage
        (float16 or uint8 round trip) the training features were made with (None for mel heads)."""
        info = self.wavlm_info
        if not info:
            return None

        return WavLMConfig(model=info["model"], revision=info.get("revision"), layers=tuple(info["layers"]),
                           normalize=info.get("normalize"), storage=wavlm_storage_of(info))

    @property
    def run_id(self) -> str:
        return f"{self.path.name}@epoch{self.epoch}"

    def calibration(self, name: str | None = None) -> Calibration | None:
        """The P(fake) -> LLR map for this epoch: `name` from calibrations/ ("none": None); by default
        the newest one fitted on this epoch, else the one fitted on this epoch's validation scores
        (its record's), else None (a run from before calibration). A named one fitted on another
        epoch is refused: its LLRs would describe another model."""
        if name == "none":
            return None
        folder = RunFolder(self.path)
        if name is not None:
            calibration = folder.read_calibration(name)
            fitted = calibration.fitted_on.get("epoch")
            if fitted is not None and fitted != self.epoch:
                raise RunError(f"calibration {name!r} of {self.path} was fitted on epoch {fitted}, not {self.epoch}: "
                               f"use --epoch {fitted}, or calibrate epoch {self.epoch} with `dfdetect calibrate`")
            return calibration
        if folder.is_run:   # an exported model's folder has no calibrations/ of a run
            for candidate in folder.calibration_names():
                calibration = folder.read_calibration(candidate)
                if calibration.fitted_on.get("epoch") == self.epoch:
                    return calibration
        record = self.record.calibration
        if not record:
            return None
        calibration = Calibration.from_dict(record, f"{self.path} epoch {self.epoch}'s record")
        return dataclasses.replace(calibration, name=f"epoch {self.epoch}'s validation")


def load_run(path: str | Path, epoch: str | int = "best") -> LoadedRun:
    """The run's model at `epoch` ("best" by validation EER, "last", or a number)."""
    folder = RunFolder(path)
    path = folder.path
    if not folder.is_run:
        raise RunError(f"{path} is not a dfdetect run (no config.json / metrics.jsonl); "
                       "train one with `dfdetect train ... --out RUN`")
    config = folder.read_config()
    records = folder.records()
    if not records:
        raise RunError(f"{path} has no finished epoch yet")
    try:
        epochs = [r.epoch for r in records]
        best = folder.best_epoch(records)
        arch, model_options = config.arch, config.model_options
    except (KeyError, TypeError, AttributeError) as e:
        raise RunError(f"{path}: config.json or metrics.jsonl lacks {e} (written by another tool or "
                       "damaged); retrain the run") from None
    if epoch == "best":
        number = best
    elif epoch == "last":
        number = epochs[-1]
    else:
        if not str(epoch).isdigit():
            raise RunError(f"epoch {epoch!r}: choose best, last or an epoch number")
        number = int(epoch)
        if number not in epochs:
            raise RunError(f"{path} has no epoch {number}; it has {epochs[0]}..{epochs[-1]}")
    weights = folder.checkpoint(number)
    if not weights.exists():
        raise RunError(f"{path}: checkpoint {weights.name} is missing")
    try:
        model = build_model(arch, **model_options)
    except ConfigError as e:
        raise RunError(f"{folder.config_file}: {e}. This dfdetect cannot build the run's head; use the dfdetect "
                       "version that trained it (config.json names it) or retrain") from None
    try:
        model.load_state_dict(load_file(str(weights)))  # safetensors: no pickle from the run folder runs
    except Exception as e:  # SafetensorError, or tensors that do not fit the head
        raise RunError(f"{weights}: not a checkpoint of this {arch} head ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:300]}); retrain the run or restore the file") from None
    model.eval()
    return LoadedRun(path, arch, number, model, config, records)


# -- seeds: one run folder per training seed, NAME/seed-N -------------------------------------------------
SEED_FOLDER = re.compile(r"^seed-(\d+)$")


def seed_folder(out: str | Path, seed: int) -> Path:
    """Where the run of `seed` goes when a run is trained with several seeds."""
    return Path(out) / f"seed-{seed}"


def seeded_name(path: str | Path) -> tuple[str, int | None]:
    """("NAME/seed-N", N) for a seed's folder, else (the folder's name, None)."""
    path = Path(path)
    found = SEED_FOLDER.match(path.name)
    if found is None:
        return path.name, None
    return f"{path.resolve().parent.name}/{path.name}", int(found.group(1))
