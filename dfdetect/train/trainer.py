"""Training a head from cached features, every epoch evaluated on validation, test and OOD sets.

The reference study's lesson drives the defaults: out-of-distribution performance keeps moving long after the
training loss converges, so there is no early stopping unless asked for, every epoch is
checkpointed and measured on every set, and `best` is chosen by validation EER (which tracked
real-world performance in the reference study far better than test accuracy did).

    train(config, out)          # open and check every set, then per epoch:
      train_one_epoch           #   AdamW on the train set
      evaluate_sets             #   every other set scored and measured (val first: its threshold)
      save_epoch                #   record, checkpoint, score tables, best by validation EER
      save_state                #   optimizer + RNG + progress, so --resume continues exactly

A fitted model (LFCC-GMM: `Architecture.fitted`) has one epoch, `fit_epoch`: its `fit` (EM) in
place of the optimizer's pass, then the same evaluation, record, checkpoint and scores as any head.

The run folder's layout and the best-epoch rule belong to `dfdetect.models.runs.RunFolder`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import lcm
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dfdetect import __version__
from dfdetect.calibration import Calibration, CalibrationError, fit_calibration
from dfdetect.devices import autocast, precision_dtype, resolve_device, tf32
from dfdetect.errors import ConfigError, DfdetectError, check_output, check_range
from dfdetect.featurize.windows import AGGREGATES, WindowProtocol, by_file, per_file
from dfdetect.locks import ExclusiveLock
from dfdetect.metrics import evaluate_scores, llr_metrics
from dfdetect.models.registry import build_model, config_to_dict, count_parameters, get_architecture
from dfdetect.models.runs import EpochRecord, RunFolder, is_better
from dfdetect.store import open_store, parse_store_spec
from dfdetect.train.data import DataSet, FeatureLoader, open_set, stratified_split
from dfdetect.train.mixing import (
    BALANCES,
    Augmentation,
    Balance,
    CorpusStack,
    Shifted,
    Variant,
    balance_weights,
    chunk_rows,
    same_clips,
)
from dfdetect.uncertainty import headline_intervals


class TrainError(DfdetectError):
    """A run that cannot start or continue as asked; the message says what to do."""


@dataclass
class TrainConfig:
    arch: str
    train: str | tuple[str, ...]        # STORE[@VERSION][:SPLIT], or several (one training set of them all)
    val: str | None = None              # default: a seeded, stratified 5% of train
    test: str | None = None
    ood: tuple[str, ...] = ()
    epochs: int | None = None           # default: the architecture's (the reference study's 50 mel / 15 WavLM)
    batch_size: int | None = None       # default: the architecture's (the reference study's 128 mel / 64 WavLM)
    lr: float | None = None             # default: the architecture's (5e-5 for the reference study's heads)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    amp: bool = True                    # CUDA only, training steps only (fp16 autocast + grad scaling)
    tf32: bool = True                   # CUDA only
    # The precision of every forward that scores with this run, on every device: validation (which
    # chooses the threshold), test, OOD, `evaluate` and `score`. float32 by default, so thresholds
    # chosen on a GPU hold on a CPU and back; bfloat16/float16 autocast when asked.
    score_precision: str = "float32"
    early_stopping: int | None = None   # patience in epochs on validation EER; None: off
    init_from: str | None = None        # a run folder whose best weights start this run
    holdout_generators: tuple[str, ...] = ()  # leave-one-generator-out: these fakes (+ a share of
    holdout_real_fraction: float = 0.2        # the reals) leave --train and form "ood:holdout"
    model: dict = field(default_factory=dict)   # head config overrides
    memory_budget_gb: float = 4.0       # load sets into RAM when they fit, else stream chunks
    augment: tuple[str, ...] = ()       # variant versions of the train store(s): each epoch, each clip
    augment_p: float = 0.5              # is read from one of them with this probability (mixing.py)
    augment_unit: str = "clip"          # clip: a draw per clip; chunk: per read unit (streams at full speed)
    balance: str = "none"               # none | corpus | generator | label: weighted sampling per epoch
    audit: bool = True                  # the shortcut audit of the train set before the first epoch
    # Windowed stores (featurize --windows, featurize/windows.py): each window of a training file is a
    # sample, at most this many per file (evenly spaced; None: all); val, test and OOD files are
    # scored as `dfdetect score` scores a file, their windows' scores aggregated by `aggregate`.
    max_windows_per_file: int | None = None
    aggregate: str = "mean"

    def resolved(self, option: Callable[[str], str] | None = None) -> TrainConfig:
        """Defaults filled in, every number checked (ConfigError naming the option: `option(field)`,
        by default the field's `dfdetect train` option, e.g. --batch-size; a study names the key)."""
        option = option or cli_option
        arch = get_architecture(self.arch)
        config = dataclasses.replace(self, ood=tuple(self.ood), holdout_generators=tuple(self.holdout_generators),
                                     train=train_specs(self.train), augment=tuple(self.augment),
                                     epochs=self.epochs or arch.epochs, batch_size=self.batch_size or arch.batch_size,
                                     lr=self.lr if self.lr is not None else arch.lr)
        check_range(option("epochs"), config.epochs, 1)
        check_range(option("batch_size"), config.batch_size, 2)     # BatchNorm trains on 2 rows or more
        if arch.fitted:
            if config.epochs != 1 or config.init_from or config.lr is not None:
                raise ConfigError(f"{arch.name} is fitted once (EM), not trained by the optimizer: it takes neither "
                                  f"{option('epochs')} other than 1, nor {option('lr')}, nor {option('init_from')}")
        else:
            check_range(option("lr"), config.lr, 0, 1, low_open=True)
        check_range(option("weight_decay"), config.weight_decay, 0)
        check_range(option("grad_clip"), config.grad_clip, 0, low_open=True)
        check_range(option("val_fraction"), config.val_fraction, 0, 0.5, low_open=True)
        check_range(option("memory_budget_gb"), config.memory_budget_gb, 0)
        precision_dtype(config.score_precision, option("score_precision"))
        check_range(option("holdout_real_fraction"), config.holdout_real_fraction, 0, 1, low_open=True)
        if config.early_stopping is not None:
            check_range(option("early_stopping"), config.early_stopping, 1)
        check_mixing(config, option)
        if config.max_windows_per_file is not None:
            check_range(option("max_windows_per_file"), config.max_windows_per_file, 1)
        if config.aggregate not in AGGREGATES:
            raise ConfigError(f"{option('aggregate')} {config.aggregate!r}: valid: {', '.join(AGGREGATES)}")
        return config

    @staticmethod
    def field_problem(name: str, value) -> str | None:
        """What is wrong with `value` (from JSON or TOML) as field `name`, or None: an unknown field,
        or a value of the wrong kind (e.g. "epochs": "three", "ood": 5)."""
        hints = typing.get_type_hints(TrainConfig)
        if name not in hints:
            return f"unknown field(s) {name!r}; valid: {', '.join(sorted(hints))}"
        if not _fits(value, hints[name]):
            shown = json.dumps(value, default=str)
            return f"field {name!r} is {shown[:60] + '...' * (len(shown) > 60)}; expected {_kind(hints[name])}"
        return None


# Fields that are `dfdetect train` options of another spelling; the rest are --config fields only.
_CLI_FIELDS = {"arch", "train", "val", "test", "ood", "epochs", "batch_size", "lr", "weight_decay", "seed", "device",
               "early_stopping", "init_from", "augment", "augment_p", "augment_unit", "balance",
               "max_windows_per_file", "aggregate"}


def cli_option(field_name: str) -> str:
    """How `dfdetect train` spells a TrainConfig field (--batch-size), or the --config field itself."""
    return "--" + field_name.replace("_", "-") if field_name in _CLI_FIELDS else field_name


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object",
          tuple: "a list", type(None): "null"}


def _fits(value, hint) -> bool:
    """Whether a JSON/TOML value can be a field of type `hint` (int, float, str, bool, dict,
    tuple[str, ...], X | None); a type outside these is not checked here."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in _KINDS:
        return isinstance(value, origin)
    return True


def _kind(hint) -> str:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in args)
    if origin is tuple and args:
        return f"a list of {_kind(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _KINDS.get(origin, str(hint))


# -- checks before anything expensive ----------------------------------------------------------------
def open_sets(config: TrainConfig) -> dict[str, DataSet]:
    """Train, val, test and OOD sets, checked against each other and the architecture."""
    train = open_train(config)
    holdout = None
    if config.holdout_generators:
        train, holdout = hold_out_generators(train, config)
    if config.val:
        sets = {"train": train, "val": open_set(config.val, "val")}
    else:
        sets = split_validation(train, config)
    if config.test:
        sets["test"] = open_set(config.test, "test")
    if holdout is not None:
        sets[holdout.name] = holdout
    for spec in config.ood:
        name, spec = ood_name(spec)
        if name in sets:
            raise TrainError(f"two OOD sets are named {name}; name them with NAME=STORE[:SPLIT]")
        sets[name] = open_set(spec, name)
    # Every set must fit the head as the train set's features define it (store.fit_problems, the
    # rule evaluate and score use too): same frontend, same WavLM, every array the head reads.
    for name, s in sets.items():
        problems = misfit(s.store, sets["train"].store, config.arch)
        if problems:
            raise TrainError(f"the {name} set {s.spec} does not fit the train set {sets['train'].spec}: "
                             + "; ".join(problems))
        labels = s.labels
        if name in ("train", "val") and len(np.unique(labels)) < 2:
            raise TrainError(f"the {name} set {s.spec} has only {'fake' if labels[0] else 'real'} clips; "
                             "training and model selection need both labels")
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
        raise TrainError(f"--holdout-generator {', '.join(missing)}: not among the fakes of {train.spec} "
                         f"(generators: {', '.join(sorted(present)) or 'none recorded'})")
    held_fakes = (labels == 1) & np.isin(generators, config.holdout_generators)
    # a windowed store's reals are held out file by file; a centre store's rows (by position, as always)
    files = train.files if train.windowed else np.arange(len(labels))
    reals = np.unique(files[labels == 0])
    rng = np.random.default_rng([config.seed, 1])
    held_reals = rng.choice(reals, size=max(1, int(round(config.holdout_real_fraction * len(reals)))), replace=False)
    held = held_fakes | np.isin(files, held_reals)
    if held_fakes.all() or (labels[~held] == 1).sum() == 0:
        raise TrainError("holding out every generator leaves no fakes to train on")
    spec = f"{train.spec} (generators {', '.join(config.holdout_generators)} held out)"
    return (DataSet("train", spec, train.store, train.rows[~held]),
            DataSet("ood:holdout", f"{train.spec} (held-out generators {', '.join(config.holdout_generators)} "
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


# -- several corpora, augmentation, balance (mixing.py draws them) ---------------------------------------
def train_specs(train) -> str | tuple[str, ...]:
    """--train as the config keeps it: one spec as a string, several as a tuple (a list read back
    from config.json or a study file included), so a resumed run compares equal."""
    if isinstance(train, (list, tuple)):
        return train[0] if len(train) == 1 else tuple(train)
    return train


def misfit(store, train_store, arch_name: str) -> list[str]:
    """What keeps `store` from serving beside the train store (FeatureStore.fit_problems, the rule
    evaluate and score use too): the same frontend and WavLM, every array the head reads."""
    reference = train_store.config
    return store.fit_problems(get_architecture(arch_name).inputs, reference.get("frontend_hash"),
                              reference.get("wavlm"), arch_name)


def spec_list(train) -> list[str]:
    """--train as a list of specs (one or several)."""
    return [train] if isinstance(train, str) else list(train)


def corpora_of(train: DataSet) -> list:
    """The training set's stores: several when stacked (CorpusStack), else its one store."""
    return train.store.stores if isinstance(train.store, CorpusStack) else [train.store]


def check_mixing(config: TrainConfig, option: Callable[[str], str]) -> None:
    check_range(option("augment_p"), config.augment_p, 0, 1)
    if config.augment_unit not in ("clip", "chunk"):
        raise ConfigError(f"{option('augment_unit')} {config.augment_unit!r}: choose clip or chunk")
    if config.balance not in BALANCES:
        raise ConfigError(f"{option('balance')} {config.balance!r}: choose one of {', '.join(BALANCES)}")
    specs = spec_list(config.train)
    if len(set(specs)) < len(specs) or not specs:
        raise ConfigError(f"{option('train')}: give each training set once (given: {', '.join(specs) or 'none'})")


def open_train(config: TrainConfig) -> DataSet:
    """The training set: one STORE[:SPLIT], or several stacked (CorpusStack), each checked against
    the first by the compatibility rule (FeatureStore.fit_problems)."""
    if isinstance(config.train, str):
        return open_set(config.train, "train")
    parts = [open_set(spec, "train") for spec in config.train]
    for part in parts[1:]:
        problems = misfit(part.store, parts[0].store, config.arch)
        if problems:
            raise TrainError(f"--train {part.spec} does not fit --train {parts[0].spec}: " + "; ".join(problems))
    stack = CorpusStack([p.store for p in parts])
    rows = np.concatenate([p.rows + o for p, o in zip(parts, stack.offsets)])
    return DataSet("train", " + ".join(config.train), stack, rows)


def split_validation(train: DataSet, config: TrainConfig) -> dict[str, DataSet]:
    """Train and a seeded, stratified `val_fraction` of it as validation: of each corpus on its own
    when there are several, so every corpus is validated in its proportion."""
    corpora = corpus_index(train)
    labels = train.labels
    # what is split: clips, or a windowed store's files (all of a file's windows on one side)
    units = train.files if train.windowed else np.arange(len(labels))
    what = "files" if train.windowed else "clips"
    if min(len(np.unique(units[labels == label])) for label in (0, 1)) < 2:
        raise TrainError(f"train set {train.spec} needs at least 2 {what} of each label to split off validation")
    kept, held = [], []
    for c in np.unique(corpora):
        mine = corpora == c
        if any(len(np.unique(units[mine & (labels == label)])) == 1 for label in (0, 1)):
            raise TrainError(f"train set {train.spec}: corpus {int(c) + 1} has a label with a single {what[:-1]}; "
                             f"validation is split per corpus and needs 2 or more {what} of each label it has")
        rows, val_rows = stratified_split(train.rows[mine], labels[mine], config.val_fraction, config.seed,
                                          groups=train.files[mine] if train.windowed else None)
        kept.append(rows)
        held.append(val_rows)
    kept_rows = limit_windows(train.store, np.sort(np.concatenate(kept)), config.max_windows_per_file)
    return {"train": DataSet("train", train.spec, train.store, kept_rows),
            "val": DataSet("val", f"{train.spec} (seeded {config.val_fraction:.0%} split)", train.store,
                           np.sort(np.concatenate(held)))}


def limit_windows(store, rows: np.ndarray, most: int | None) -> np.ndarray:
    """At most `most` windows of each file (evenly spaced, first and last kept), so one long file
    does not dominate an epoch; a centre store's rows are files and stay."""
    if most is None or not store.windows:
        return rows
    order, bounds = by_file(store.files(rows))
    keep = WindowProtocol(most)
    kept = [order[a + keep.selected(b - a)] for a, b in zip(bounds[:-1], bounds[1:])]
    return np.sort(rows[np.concatenate(kept)])


def open_mixing(config: TrainConfig, train: DataSet) -> tuple[Augmentation | None, Balance | None]:
    """--augment's variants (each checked: the train store's clip table, and the compatibility
    rule against the train features) and --balance's weights; None for what is not asked."""
    augmentation = None
    if config.augment:
        arch, stores = get_architecture(config.arch), corpora_of(train)
        variants = []
        for spec in config.augment:
            store = open_store(spec)
            problems = misfit(store, train.store, config.arch)
            if problems:
                raise TrainError(f"--augment {spec} does not fit the train set {train.spec}: " + "; ".join(problems))
            variants.append(variant_of(spec, store, stores, train.store))
        # "chunk": the clips of one read unit (whole chunks of every array the head reads) share a
        # draw, so streaming reads each chunk from one version only (docs/benchmarks.md)
        block = lcm(*(chunk_rows(train.store, f) for f in arch.inputs)) if config.augment_unit == "chunk" else 1
        augmentation = Augmentation(variants, config.augment_p, config.seed, block)
    balance = None
    if config.balance != "none":
        meta = train.store.meta
        balance = Balance(train.rows, balance_weights(config.balance, train.labels, meta["generator"][train.rows],
                                                      corpus_index(train)), config.seed)
    return augmentation, balance


def variant_of(spec: str, store, stores: list, clean) -> Variant:
    """The Variant of the train corpus whose clip table `store` has (read in the train set's rows)."""
    for corpus in stores:
        if store.path == corpus.path and store.version == corpus.version:
            raise TrainError(f"--augment {spec} is the train store's own version; give a variant "
                             "(featurized with --codec or --corrupt)")
    for i, corpus in enumerate(stores):
        if same_clips(store, corpus):
            ok = store.meta["status"] == "ok"
            if not isinstance(clean, CorpusStack):
                return Variant(spec, store, 0, ok)
            return Variant(spec, Shifted(store, int(clean.offsets[i])), int(clean.offsets[i]), ok)
    raise TrainError(f"--augment {spec}: its clip table is not the train store's ("
                     f"{', '.join(f'{s.path}@{s.version}' for s in stores)}); an augmentation must be a variant "
                     "featurized from the same dataset (featurize --codec / --corrupt)")


def corpus_index(train: DataSet) -> np.ndarray:
    return train.store.corpus_of(train.rows) if isinstance(train.store, CorpusStack) else np.zeros(len(train.rows), int)


def mixing_record(config: TrainConfig, train: DataSet, augmentation, balance) -> dict:
    """What config.json records of the mixing: the corpora (each one's rows and share of the
    training draws, as the weights say), the augmentation versions and p."""
    stores, specs, corpus = corpora_of(train), spec_list(config.train), corpus_index(train)
    weights = balance.weights if balance else np.full(len(train.rows), 1 / len(train.rows))
    corpora = [{"spec": spec, "store": s.path, "version": s.version, "rows": int((corpus == i).sum()),
                "share": float(weights[corpus == i].sum())} for i, (spec, s) in enumerate(zip(specs, stores))]

    def store_of(variant):   # a variant of a stacked corpus reads through Shifted
        return variant.store.store if isinstance(variant.store, Shifted) else variant.store

    variants = [{"spec": v.spec, "store": store_of(v).path, "version": store_of(v).version,
                 "rows": int(v.holds(train.rows).sum())} for v in (augmentation.variants if augmentation else [])]
    return {"corpora": corpora, "balance": config.balance, "augment": variants,
            "augment_p": config.augment_p if augmentation else None,
            "augment_unit": config.augment_unit if augmentation else None}


def make_loaders(config: TrainConfig, sets: dict[str, DataSet], mixing: tuple) -> dict[str, FeatureLoader]:
    """One loader per set; the train set's with the augmentation and balance."""
    arch, budget = get_architecture(config.arch), int(config.memory_budget_gb * (1 << 30))
    augmentation, balance = mixing
    return {name: FeatureLoader(s, arch.inputs, config.batch_size, shuffle=name == "train", seed=config.seed,
                                memory_budget=budget, augmentation=augmentation if name == "train" else None,
                                balance=balance if name == "train" else None) for name, s in sets.items()}


# -- the run folder's state (RunFolder owns the layout) -------------------------------------------------
def prepare_run(folder: RunFolder, config: TrainConfig, resume: bool, force: bool) -> None:
    """A run folder ready for this config: a fresh one, or (--resume) the same run with more epochs."""
    if resume:
        if folder.is_empty():
            raise TrainError(f"nothing to resume in {folder.path}")
        if not folder.can_resume:
            raise TrainError(f"{folder.path} has no state.json to resume from; start it with --force instead"
                             if folder.is_created_run() else f"--out {folder.not_a_run_message()}")
        saved = TrainConfig(**folder.read_config().train_config).resolved()
        if dataclasses.replace(saved, epochs=config.epochs) != config:   # only --epochs may grow
            raise TrainError(f"--resume with a different config than {folder.config_file}; only --epochs may change")
        state = folder.read_state()    # the commit point: what a kill left after it is undone
        folder.roll_back(state["epoch"], state.get("best_epoch"))
        return
    if not folder.is_empty():
        if not folder.is_created_run():   # --force or not: dfdetect removes only its own runs
            raise TrainError(f"--out {folder.not_a_run_message()}")
        if not force:
            raise TrainError(f"{folder.path} already holds a run; use --resume to continue it or --force to "
                             "overwrite it")
    folder.create()


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_state(folder: RunFolder, epoch: int, model, optimizer, scaler, progress: dict,
               device: torch.device) -> None:
    """Model, optimizer, RNG (the training device's CUDA RNG on a GPU) and progress: everything
    --resume needs."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict() if optimizer else {"state": {}, "param_groups": []}
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":   # only then: a CPU run on a GPU machine opens no CUDA context
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {**progress, "epoch": epoch, "param_groups": opt["param_groups"],
            "scaler": scaler.state_dict() if scaler else None}
    folder.save_state(tensors, meta)


def load_state(folder: RunFolder, model, optimizer, scaler, device: torch.device) -> dict:
    """What save_state saved, back in place. A state without "rng.cuda" (a CPU run) or with one that
    a CPU run on a GPU machine saved before it was tied to the device loads as well."""
    meta = folder.read_state()
    tensors = load_file(str(folder.state_tensors))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    if optimizer:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    if scaler and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def write_scores(folder: RunFolder, which: str, data: DataSet, rows: np.ndarray, scores: np.ndarray) -> None:
    """The set's per-clip scores of the "best" or "last" epoch (RunFolder owns the table)."""
    meta = data.store.meta
    folder.write_score_table(which, data.name, {
        "clip_id": meta["clip_id"][rows], "label": meta["label"][rows], "score": scores,
        "generator": meta["generator"][rows], "split": meta["split"][rows], "store_row": rows})


# -- the loop -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_settings(device: torch.device, config: TrainConfig):
    """The run's seed, (CUDA) TF32 as config.tf32 says (matmuls and convolutions alike: the flags
    evaluate and score use with this run, RunConfig.tf32) and deterministic cuDNN for the
    duration of training; the caller's RNG state and flags are given back after, so `train()`
    changes nothing process-wide. cuDNN's autotuner picks kernels by timing, and some pick
    non-deterministic ones, so --resume could not equal an uninterrupted run on a GPU without
    `deterministic` and no `benchmark`."""
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), tf32(config.tf32):
        torch.manual_seed(config.seed)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def build_head(config: TrainConfig, train_set: DataSet, device: torch.device):
    """The head (from --init-from's best weights when given) on `device`, its optimizer and scaler
    (None for a fitted model)."""
    model = build_model(config.arch, **model_overrides(config, train_set)).to(device)
    if config.init_from:
        weights = RunFolder(config.init_from).best_checkpoint
        if not weights.exists():
            raise TrainError(f"--init-from {config.init_from}: no {weights}")
        try:
            model.load_state_dict(load_file(str(weights), device=str(device)))
        except RuntimeError as e:
            raise TrainError(f"--init-from {config.init_from}: its weights do not fit {config.arch} ({e})") from None
    if get_architecture(config.arch).fitted:
        return model, None, None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and config.amp else None
    return model, optimizer, scaler


def train_one_epoch(model, loader: FeatureLoader, optimizer, scaler, device, config: TrainConfig,
                    epoch: int, console) -> dict:
    """One pass over the training set: AdamW steps on BCE-with-logits, gradients clipped, AMP on CUDA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = Progress(TextColumn(f"epoch {epoch}/{config.epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = bar.add_task("train", total=len(loader), loss=0.0)
    with bar:
        for batch in loader.epoch(epoch):
            x = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in loader.features}
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
    return {"loss": total_loss / seen, "accuracy": correct / seen, "clips": seen}


def fit_epoch(model, loader: FeatureLoader, device, config: TrainConfig, console) -> dict:
    """A fitted model's one epoch: `model.fit` on the training set, then the training set scored
    (so the record's loss and accuracy mean what they mean for every head), with what fit reports."""
    labels = loader.data.labels
    with console.status(f"fitting {config.arch} on {len(labels):,} training clips"):
        info = model.fit(lambda: loader.epoch(0), (int((labels == 0).sum()), int((labels == 1).sum())), config.seed)
        rows, scores = predict(model, loader, device)
    y = loader.data.store.meta["label"][rows].astype(np.float64)
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {"loss": loss, "accuracy": float(np.mean((scores >= 0.5) == y)), "clips": int(len(rows)), "fit": info}


@torch.no_grad()
def predict(model, loader: FeatureLoader, device, precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(rows, P(fake)) for every clip of a set, in store order, the forward at `precision` (the
    run's score_precision: the same in training, evaluate and score)."""
    model.eval()
    rows, scores = [], []
    for batch in loader.epoch(0):
        x = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in loader.features}
        with autocast(device, precision):
            scores.append(torch.sigmoid(model(x).float()).cpu().numpy())
        rows.append(batch["row"])
    rows, scores = np.concatenate(rows), np.concatenate(scores)
    order = np.argsort(rows)
    return rows[order], scores[order]


def evaluate_sets(model, sets: dict[str, DataSet], loaders: dict[str, FeatureLoader], device,
                  precision: str = "float32", aggregate: str = "mean"):
    """Every set but train, scored and measured per file (a windowed set's windows aggregated as
    `dfdetect score` aggregates them: featurize/windows.per_file); validation first, so the others
    are also measured at its EER threshold. Returns (metrics per set, (rows, scores) per set: a
    file's first row and its score)."""
    predictions = {name: per_file(sets[name].store, *predict(model, loaders[name], device, precision), aggregate)
                   for name in sets if name != "train"}
    results, val_threshold = {}, None
    for name, (rows, scores) in predictions.items():
        extra = {"val": val_threshold} if name != "val" and val_threshold is not None else None
        results[name] = evaluate_scores(sets[name].store.meta["label"][rows], scores, extra)
        results[name].update(headline_intervals(sets[name].store.meta["label"][rows], scores))  # curve bands
        if name == "val":
            val_threshold = results["val"]["eer_threshold"]
    return results, predictions


def calibrate_epoch(sets: dict[str, DataSet], predictions: dict, results: dict, epoch: int) -> dict:
    """{"calibration": JSON} of the epoch's calibration, fitted on its validation scores (so
    validation's own act_dcf and cllr are optimistic; the other sets' are honest), with every set's
    act_dcf, cllr and decisions at the Bayes threshold of its LLRs added to `results`; or
    {"calibration": None, "calibration_note": why} when validation cannot be calibrated (fewer than
    MIN_PER_CLASS clips of a class: its LLRs would be guesses)."""
    rows, scores = predictions["val"]
    labels = sets["val"].store.meta["label"][rows]
    fitted_on = {**sets["val"].describe(), "set": "val", "epoch": epoch}
    try:
        calibration = fit_calibration(labels, scores, fitted_on=fitted_on)
    except CalibrationError as e:
        return {"calibration": None, "calibration_note": f"no calibration: {e}"}
    for name, (rows, scores) in predictions.items():
        results[name].pop("act_dcf_undefined", None)
        results[name].update(llr_metrics(sets[name].store.meta["label"][rows], calibration.llr(scores)))
    return {"calibration": calibration.to_dict()}


def save_epoch(folder: RunFolder, record: EpochRecord, model, sets, predictions, progress: dict) -> bool:
    """The epoch's checkpoint, score tables and record (last: a record means its checkpoint is
    there); updates `progress` and says whether this epoch is the new best (RunFolder's rule:
    lowest validation EER). The state save after it commits the epoch for --resume."""
    epoch, val_eer = record.epoch, record.val_eer
    best = is_better(val_eer, progress["best_val_eer"])
    folder.save_checkpoint(model, epoch, best=best)
    if best:
        progress.update(best_epoch=epoch, best_val_eer=val_eer, epochs_since_best=0)
    else:
        progress["epochs_since_best"] += 1
    for which in ("best", "last") if best else ("last",):
        for name, (rows, scores) in predictions.items():
            write_scores(folder, which, sets[name], rows, scores)
    folder.append_record(record)
    return best


def train(config: TrainConfig, out: str | Path, resume: bool = False, force: bool = False,
          console=None) -> dict:
    """Train (or resume) one run into `out`; returns the last epoch's record."""
    from rich.console import Console

    console = console or Console()
    folder, config = RunFolder(out), config.resolved()
    check_output("--out", folder.path, folder=True)
    sets = open_sets(config)                                      # all checks before any work
    device = resolve_device(config.device)
    mixing = open_mixing(config, sets["train"])
    loaders = make_loaders(config, sets, mixing)
    with torch_settings(device, config):
        model, optimizer, scaler = build_head(config, sets["train"], device)   # checks --init-from
        with run_lock(folder):   # one writer per run: a second train (--resume, --force) is refused
            prepare_run(folder, config, resume, force)   # the folder is touched once everything is checked
            if resume:
                progress = load_state(folder, model, optimizer, scaler, device)
            else:
                progress = {"epoch": 0, "best_epoch": None, "best_val_eer": None, "epochs_since_best": 0}
                shortcuts = audit_training_set(sets["train"], console) if config.audit else None
                folder.write_config({
                    "config": asdict(config), "model": config_to_dict(model.config),
                    "parameters": count_parameters(model), "sets": {n: s.describe() for n, s in sets.items()},
                    # what scoring raw audio needs to reproduce the features this head was trained on
                    "frontend": sets["train"].store.config["frontend"],
                    "wavlm": sets["train"].store.config.get("wavlm"),
                    "mixing": mixing_record(config, sets["train"], *mixing), "audit": shortcuts})
            folder.write_run_info({
                "dfdetect_version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
                "device": str(device), "threads": torch.get_num_threads(),
                "loaders": {n: "in memory" if loader.in_memory else "streaming" for n, loader in loaders.items()}})
            return train_epochs(folder, config, model, (optimizer, scaler), sets, loaders, progress, device,
                                console)


def audit_training_set(train: DataSet, console) -> dict:
    """The shortcut audit of the train set (featurize/shortcuts.py): one warning line per cue a
    detector could learn instead of synthesis. It never stops training; what it found goes into
    config.json for the report."""
    from rich.markup import escape

    from dfdetect.featurize.shortcuts import audit_store
    from dfdetect.names import printable

    found = audit_store(train.store, train.rows)
    for line in found.warnings():
        console.print(f"[yellow]warning:[/] {escape(printable(line))}", soft_wrap=True)
    if found.warnings():
        console.print(f"(the shortcut audit of the train set: `dfdetect audit {escape(printable(train.spec))}` "
                      "shows every statistic; --no-audit skips it)", soft_wrap=True)
    return found.to_dict()


def run_lock(folder: RunFolder) -> ExclusiveLock:
    """The lock of one run folder (`NAME.lock` beside it, gone when training ends)."""
    def busy(holder: str) -> TrainError:
        return TrainError(f"--out {folder.path} is being trained by {holder}; wait for that training to "
                          "finish (or stop it) before training this run again (--resume or --force)")
    return ExclusiveLock(str(folder.path), busy, remove=True)


def train_epochs(folder: RunFolder, config: TrainConfig, model, steppers, sets, loaders, progress: dict,
                 device, console) -> dict:
    """The epochs after `progress["epoch"]`, each committed by its state save; returns the last
    record ({} when there was nothing left to train)."""
    arch, (optimizer, scaler) = get_architecture(config.arch), steppers
    record = {}
    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        t0, loaders["train"].seconds = time.perf_counter(), 0.0
        if arch.fitted:
            train_metrics = fit_epoch(model, loaders["train"], device, config, console)
        else:
            train_metrics = train_one_epoch(model, loaders["train"], optimizer, scaler, device, config, epoch,
                                            console)
        train_metrics.update(loaders["train"].counts)   # --augment's draws, each corpus's clips
        t1 = time.perf_counter()
        results, predictions = evaluate_sets(model, sets, loaders, device, config.score_precision, config.aggregate)
        calibration = calibrate_epoch(sets, predictions, results, epoch)
        record = EpochRecord(epoch=epoch, train=train_metrics, sets=results, **calibration,
                             seconds={"train": t1 - t0, "eval": time.perf_counter() - t1,
                                      "loader": loaders["train"].seconds})
        save_epoch(folder, record, model, sets, predictions, progress)
        save_state(folder, epoch, model, optimizer, scaler, progress, device)
        console.print(epoch_line(record, config.epochs), highlight=False)
        if config.early_stopping and progress["epochs_since_best"] >= config.early_stopping:
            console.print(f"early stopping: validation EER has not improved for {config.early_stopping} epochs")
            break
    save_val_calibration(folder)
    return record


def save_val_calibration(folder: RunFolder) -> None:
    """calibrations/val.json: the best epoch's calibration on its validation set, the run's default."""
    records = folder.records()
    best = RunFolder.best_epoch(records)
    record = next((r for r in records if r.epoch == best), None)
    if record is None or not record.calibration:
        return
    calibration = Calibration.from_dict(record.calibration)
    if "val" in folder.calibration_names() and folder.read_calibration("val") == calibration:
        return   # unchanged (a resume that kept the best epoch): rewriting would make it the newest again
    folder.write_calibration("val", calibration)


def epoch_line(record: EpochRecord, epochs: int) -> str:
    """One line per epoch: test and OOD side by side, the reference study's central comparison."""
    parts = [f"epoch {record.epoch:>3}/{epochs}", f"loss {record.train['loss']:.4f}",
             f"acc {record.train['accuracy']:.2%}"]
    for name in record.sets:
        parts.append(f"| {name} acc {record.metric(name, 'accuracy'):.2%} EER {record.metric(name, 'eer'):.4f}")
    seconds = record.seconds
    parts.append(f"| {seconds['train'] + seconds['eval']:.1f} s")
    if "loader" in seconds and seconds["train"] > 0:   # waiting for batches, of the training pass
        parts.append(f"(loader {seconds['loader'] / seconds['train']:.0%} of training)")
    return " ".join(parts)
