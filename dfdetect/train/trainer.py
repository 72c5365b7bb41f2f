"""Training a head from cached features, every epoch evaluated on validation, test and OOD sets.

The reference study's lesson drives the defaults: out-of-distribution performance keeps moving long after the
training loss converges, so there is no early stopping unless asked for, every epoch is
checkpointed and measured on every set, and `best` is chosen by validation EER (which tracked
real-world performance in the reference study far better than test accuracy did).

    runs/NAME/
      config.json        the exact TrainConfig, the sets (store, version, frontend hash, rows)
      metrics.jsonl      one line per epoch: train loss/accuracy, every set's metrics, timings
      checkpoints/epoch_NNN.safetensors, best.safetensors (model weights only)
      state.safetensors + state.json   optimizer, RNG and progress, for --resume
      scores/{best,last}/SET.csv       per-clip scores (P(fake)) of the best and the last epoch
      run.json           environment (git commit, versions, device) and totals
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dfdetect import __version__
from dfdetect.errors import DfdetectError
from dfdetect.evaluate.metrics import evaluate_scores, json_safe
from dfdetect.store import parse_store_spec
from dfdetect.train.architectures import (build_model, config_to_dict, count_parameters,
                                          get_architecture)
from dfdetect.train.data import DataSet, FeatureLoader, open_set, stratified_split

# The reference study's training lengths: 50 epochs for mel-only heads, 15 for WavLM heads.
DEFAULT_EPOCHS = {False: 50, True: 15}


class TrainError(DfdetectError):
    """A run that cannot start or continue as asked; the message says what to do."""


@dataclass
class TrainConfig:
    arch: str
    train: str                          # STORE[@VERSION][:SPLIT]
    val: str | None = None              # default: a seeded, stratified 5% of train
    test: str | None = None
    ood: tuple[str, ...] = ()
    epochs: int | None = None           # default: the reference study's, 50 (mel) / 15 (WavLM)
    batch_size: int | None = None       # default: the reference study's, 128 (mel) / 64 (WavLM)
    lr: float = 5e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    amp: bool = True                    # CUDA only
    tf32: bool = True                   # CUDA only
    early_stopping: int | None = None   # patience in epochs on validation EER; None: off
    init_from: str | None = None        # a run folder whose best weights start this run
    holdout_generators: tuple[str, ...] = ()  # leave-one-generator-out: these fakes (+ a share of
    holdout_real_fraction: float = 0.2        # the reals) leave --train and form "ood:holdout"
    model: dict = field(default_factory=dict)   # head config overrides
    memory_budget_gb: float = 4.0       # load sets into RAM when they fit, else stream chunks

    def resolved(self) -> "TrainConfig":
        uses_wavlm = get_architecture(self.arch).uses_wavlm
        return dataclasses.replace(self, ood=tuple(self.ood), holdout_generators=tuple(self.holdout_generators),
                                   epochs=self.epochs or DEFAULT_EPOCHS[uses_wavlm],
                                   batch_size=self.batch_size or get_architecture(self.arch).batch_size)


# -- checks before anything expensive ----------------------------------------------------------------
def open_sets(config: TrainConfig) -> dict[str, DataSet]:
    """Train, val, test and OOD sets, checked against each other and the architecture."""
    arch = get_architecture(config.arch)
    train = open_set(config.train, "train")
    holdout = None
    if config.holdout_generators:
        train, holdout = hold_out_generators(train, config)
    if config.val:
        sets = {"train": train, "val": open_set(config.val, "val")}
    else:
        labels = train.labels
        if min((labels == 0).sum(), (labels == 1).sum()) < 2:
            raise TrainError(f"train set {config.train} needs at least 2 clips of each label to split off validation")
        rows, val_rows = stratified_split(train.rows, labels, config.val_fraction, config.seed)
        sets = {"train": DataSet("train", train.spec, train.store, rows),
                "val": DataSet("val", f"{train.spec} (seeded {config.val_fraction:.0%} split)", train.store, val_rows)}
    if config.test:
        sets["test"] = open_set(config.test, "test")
    if holdout is not None:
        sets[holdout.name] = holdout
    for spec in config.ood:
        name, spec = ood_name(spec)
        if name in sets:
            raise TrainError(f"two OOD sets are named {name}; name them with NAME=STORE[:SPLIT]")
        sets[name] = open_set(spec, name)
    for name, s in sets.items():
        missing = [f for f in arch.inputs if f not in s.store.feature_names]
        if missing:
            raise TrainError(
                f"{config.arch} reads {', '.join(arch.inputs)}, but the {name} store {s.store.path} has only "
                f"{', '.join(s.store.feature_names)}: featurize it with --features {','.join(sorted(set(arch.inputs) | set(s.store.feature_names)))}")
        labels = s.labels
        if name in ("train", "val") and len(np.unique(labels)) < 2:
            raise TrainError(f"the {name} set {s.spec} has only {'fake' if labels[0] else 'real'} clips; "
                             "training and model selection need both labels")
    frontends = {s.store.config.get("frontend_hash") for s in sets.values()}
    if len(frontends) > 1:
        raise TrainError("the sets were featurized with different frontends: " + "; ".join(
            f"{n}: {s.store.path}@{s.store.version} frontend {s.store.config.get('frontend_hash')}" for n, s in sets.items())
            + ". Featurize them all with the same frontend config")
    if arch.uses_wavlm:
        shapes = {(s.store.array("wavlm").shape[1:], tuple(s.store.config["wavlm"]["layers"])) for s in sets.values()}
        if len(shapes) > 1:
            raise TrainError(f"the sets hold different WavLM features (layers/shapes {sorted(shapes)}); "
                             "featurize them with the same --wavlm and --wavlm-layers")
    return sets


def hold_out_generators(train: DataSet, config: TrainConfig) -> tuple[DataSet, DataSet]:
    """Leave-one-generator-out: the held-out generators' fakes and a seeded share of the reals leave
    the training set and become the OOD set "ood:holdout", so generalization to an unseen generator
    is measured without a second corpus."""
    generators = train.store.meta["generator"][train.rows]
    labels = train.labels
    present = set(generators[labels == 1])
    missing = [g for g in config.holdout_generators if g not in present]
    if missing:
        raise TrainError(f"--holdout-generator {', '.join(missing)}: not among the fakes of {config.train} "
                         f"(generators: {', '.join(sorted(present)) or 'none recorded'})")
    held_fakes = (labels == 1) & np.isin(generators, config.holdout_generators)
    reals = np.flatnonzero(labels == 0)
    rng = np.random.default_rng([config.seed, 1])
    held_reals = rng.choice(reals, size=max(1, int(round(config.holdout_real_fraction * len(reals)))), replace=False)
    held = held_fakes.copy()
    held[held_reals] = True
    if held_fakes.all() or (labels[~held] == 1).sum() == 0:
        raise TrainError("holding out every generator leaves no fakes to train on")
    spec = f"{config.train} (generators {', '.join(config.holdout_generators)} held out)"
    return (DataSet("train", spec, train.store, train.rows[~held]),
            DataSet("ood:holdout", f"{config.train} (held-out generators {', '.join(config.holdout_generators)} "
                    f"+ {config.holdout_real_fraction:.0%} of the reals)", train.store, train.rows[held]))


def ood_name(spec: str) -> tuple[str, str]:
    """'NAME=STORE[:SPLIT]' -> ('ood:NAME', spec); without a name, the store's stem and split."""
    if "=" in spec.split("/")[0]:
        name, spec = spec.split("=", 1)
        return "ood:" + name, spec
    path, _, split = parse_store_spec(spec)
    return "ood:" + Path(path.rstrip("/")).stem + (f":{split}" if split else ""), spec


def model_overrides(config: TrainConfig, train: DataSet) -> dict:
    overrides = dict(config.model)
    if get_architecture(config.arch).uses_wavlm:  # the head's input size follows the store
        _, layers, _, hidden = train.store.array("wavlm").shape
        overrides.setdefault("hidden_size", hidden)
        overrides.setdefault("num_layers", layers)
    return overrides


# -- run folder ---------------------------------------------------------------------------------------
def prepare_run_dir(out: Path, resume: bool, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if resume:
            if not (out / "state.json").exists():
                raise TrainError(f"{out} has no state.json to resume from; start it with --force instead")
            return
        if not force:
            raise TrainError(f"{out} already holds a run; use --resume to continue it or --force to overwrite it")
        shutil.rmtree(out)
    elif resume:
        raise TrainError(f"nothing to resume in {out}")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_state(out: Path, epoch: int, model, optimizer, scaler, progress: dict) -> None:
    """Everything --resume needs, written atomically (a kill mid-write leaves the previous state)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(out / "state.safetensors.tmp"))
    meta = {"epoch": epoch, "param_groups": opt["param_groups"], "scaler": scaler.state_dict() if scaler else None,
            **progress}
    (out / "state.json.tmp").write_text(json.dumps(json_safe(meta)))
    os.replace(out / "state.safetensors.tmp", out / "state.safetensors")
    os.replace(out / "state.json.tmp", out / "state.json")


def load_state(out: Path, model, optimizer, scaler) -> dict:
    tensors = load_file(str(out / "state.safetensors"))
    meta = json.loads((out / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if scaler and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def write_scores(folder: Path, data: DataSet, rows: np.ndarray, scores: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = data.store.meta
    with open(folder / f"{data.name.replace(':', '_')}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "score", "generator", "split", "store_row"])  # score = P(fake)
        for r, s in zip(rows, scores):
            w.writerow([meta["clip_id"][r], int(meta["label"][r]), f"{s:.6f}", meta["generator"][r], meta["split"][r], int(r)])


# -- the loop -----------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, loader: FeatureLoader, device) -> tuple[np.ndarray, np.ndarray]:
    """(rows, P(fake)) for every clip of a set, in store order."""
    model.eval()
    rows, scores = [], []
    for batch in loader.epoch(0):
        x = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in loader.features}
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            scores.append(torch.sigmoid(model(x).float()).cpu().numpy())
        rows.append(batch["row"])
    rows, scores = np.concatenate(rows), np.concatenate(scores)
    order = np.argsort(rows)
    return rows[order], scores[order]


def train(config: TrainConfig, out: str | Path, resume: bool = False, force: bool = False,
          console=None) -> dict:
    """Train (or resume) one run into `out`; returns the last epoch's record."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = console or Console()
    out = Path(out)
    config = config.resolved()
    if resume and (out / "config.json").exists():  # continue the same run; only --epochs may grow
        saved = TrainConfig(**{**json.loads((out / "config.json").read_text())["config"]}).resolved()
        if dataclasses.replace(saved, epochs=config.epochs) != config:
            raise TrainError(f"--resume with a different config than {out}/config.json; only --epochs may change")
    sets = open_sets(config)                                      # all checks before any work
    prepare_run_dir(out, resume, force)
    arch = get_architecture(config.arch)
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    if device.type == "cuda" and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(config.seed)
    model = build_model(config.arch, **model_overrides(config, sets["train"])).to(device)
    if config.init_from:
        weights = Path(config.init_from) / "checkpoints" / "best.safetensors"
        if not weights.exists():
            raise TrainError(f"--init-from {config.init_from}: no {weights}")
        try:
            model.load_state_dict(load_file(str(weights), device=str(device)))
        except RuntimeError as e:
            raise TrainError(f"--init-from {config.init_from}: its weights do not fit {config.arch} ({e})") from None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and config.amp else None
    loss_fn = torch.nn.BCEWithLogitsLoss()

    budget = int(config.memory_budget_gb * (1 << 30))
    loaders = {name: FeatureLoader(s, arch.inputs, config.batch_size, shuffle=name == "train",
                                   seed=config.seed, memory_budget=budget) for name, s in sets.items()}
    progress = {"best_epoch": None, "best_val_eer": None, "epochs_since_best": 0}
    start = 1
    if resume:
        progress = load_state(out, model, optimizer, scaler)
        start = progress["epoch"] + 1
    else:
        (out / "config.json").write_text(json.dumps({
            "config": asdict(config), "model": config_to_dict(model.config),
            "parameters": count_parameters(model), "sets": {n: s.describe() for n, s in sets.items()},
            # what scoring raw audio needs to reproduce the features this head was trained on
            "frontend": sets["train"].store.config["frontend"], "wavlm": sets["train"].store.config.get("wavlm")},
            indent=2))
    (out / "run.json").write_text(json.dumps({
        "dfdetect_version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
        "device": str(device), "threads": torch.get_num_threads(),
        "loaders": {n: "in memory" if l.in_memory else "streaming" for n, l in loaders.items()}}, indent=2))

    record = {}
    for epoch in range(start, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = Progress(TextColumn(f"epoch {epoch}/{config.epochs}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=console, transient=True)
        task = bar.add_task("train", total=len(loaders["train"]), loss=0.0)
        bar.start()
        for batch in loaders["train"].epoch(epoch):
            x = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in arch.inputs}
            y = batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
                logits = model(x).float()
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            total_loss += loss.item() * len(y)
            correct += int(((logits > 0).float() == y).sum())
            seen += len(y)
            bar.update(task, advance=1, loss=total_loss / seen)
        bar.stop()
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        results, predictions = {}, {}
        for name in [n for n in sets if n != "train"]:
            rows, scores = predict(model, loaders[name], device)
            predictions[name] = (rows, scores)
        val_threshold = None
        for name, (rows, scores) in predictions.items():
            extra = {"val": val_threshold} if name != "val" and val_threshold is not None else None
            results[name] = evaluate_scores(sets[name].store.meta["label"][rows], scores, extra)
            if name == "val":
                val_threshold = results["val"]["eer_threshold"]
        record = {"epoch": epoch, "train": {"loss": total_loss / seen, "accuracy": correct / seen, "clips": seen},
                  "sets": results, "seconds": {"train": train_seconds, "eval": time.perf_counter() - t1}}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out / "checkpoints" / f"epoch_{epoch:03d}.safetensors"))
        val_eer = results["val"]["eer"]
        if progress["best_val_eer"] is None or val_eer < progress["best_val_eer"]:
            progress.update(best_epoch=epoch, best_val_eer=val_eer, epochs_since_best=0)
            shutil.copyfile(out / "checkpoints" / f"epoch_{epoch:03d}.safetensors", out / "checkpoints" / "best.safetensors")
            for name, (rows, scores) in predictions.items():
                write_scores(out / "scores" / "best", sets[name], rows, scores)
        else:
            progress["epochs_since_best"] += 1
        for name, (rows, scores) in predictions.items():
            write_scores(out / "scores" / "last", sets[name], rows, scores)
        save_state(out, epoch, model, optimizer, scaler, progress)
        console.print(epoch_line(record, config.epochs), highlight=False)
        if config.early_stopping and progress["epochs_since_best"] >= config.early_stopping:
            console.print(f"early stopping: validation EER has not improved for {config.early_stopping} epochs")
            break
    return record


def epoch_line(record: dict, epochs: int) -> str:
    """One line per epoch: test and OOD side by side, the reference study's central comparison."""
    parts = [f"epoch {record['epoch']:>3}/{epochs}", f"loss {record['train']['loss']:.4f}",
             f"acc {record['train']['accuracy']:.2%}"]
    for name, m in record["sets"].items():
        acc = m["at_0.5"]["accuracy"]
        parts.append(f"| {name} acc {acc:.2%} EER {m['eer']:.4f}")
    parts.append(f"| {record['seconds']['train'] + record['seconds']['eval']:.1f} s")
    return " ".join(parts)
