"""A whole study from one TOML file: stores to featurize, runs to train, the report at the end.

    [experiment]
    name = "main-comparison"
    stores_dir = "stores"            # relative to this file, or absolute
    runs_dir = "runs/main"

    [datasets.asv5]                  # roots from the environment: set them once for all studies
    dataset = "asvspoof5"
    root = "${DFDETECT_ASV5_ROOT}"

    [stores.asv5_mel]                # featurize options: features, codec, corrupt, wavlm, wavlm_layers,
    data = "asv5"                    # wavlm_storage, variant_seed, block_size, windows, window, hop,
                                     # trim_silence (defaults: FeaturizeConfig)
    features = ["mel", "lfcc"]

    [runs.mel_aasist]                # any `dfdetect train` option; sets name stores as STORE[:SPLIT],
    arch = "mel_aasist"              # OOD sets as [NAME=]STORE[:SPLIT], init_from a run of this file;
    train = "asv5_mel:train"         # train may be a list (several corpora), augment a list of stores
    ood = ["dfeval=dfeval_mel"]
    epochs = 50
    seeds = [0, 1, 2]                # optional: one run per seed, runs_dir/mel_aasist/seed-N (report: mean +- sd)

    [report]
    out = "report.html"              # relative to runs_dir

`dfdetect experiment run FILE` checks everything first (unknown keys, missing roots, unknown stores
or runs, two runs in one folder, an init_from cycle), then featurizes the stores that are not
complete, trains the runs that have not finished (resuming interrupted ones, skipping finished ones:
runs that share a store never recompute its features), and writes the report. `--set KEY=VALUE`
overrides any value (e.g. `--set runs.mel_aasist.epochs=2`, `--set datasets.asv5.root=/data/asv5`),
which is how the tests run scaled-down copies of the shipped studies.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from dfdetect.datasets import ADAPTERS
from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.evaluate.report import build_report
from dfdetect.evaluate.report import check_outputs as check_report_outputs
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.models.registry import make_config
from dfdetect.models.runs import RunFolder, seed_folder
from dfdetect.store import StoreError, open_store
from dfdetect.store.schema import list_versions
from dfdetect.train.trainer import TrainConfig, ood_name, train

SECTIONS = {"experiment": {"name", "stores_dir", "runs_dir", "description"},
            "datasets": None, "stores": None, "runs": None, "report": {"out", "ood"}}
DATASET_KEYS = {"dataset", "root"}
STORE_KEYS = {"data", "features", "codec", "corrupt", "variant_seed", "wavlm", "wavlm_layers", "wavlm_storage",
              "block_size", "vocode", "vocode_keep_real", "windows", "window", "hop", "trim_silence"}
RUN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} | {"out", "seeds"}
SET_KEYS = ("train", "val", "test")


class ExperimentError(DfdetectError):
    """An experiment file that cannot run as written; the message names the line."""


@dataclass
class Experiment:
    path: Path
    name: str
    stores_dir: Path
    runs_dir: Path
    datasets: dict[str, dict]
    stores: dict[str, dict]
    runs: dict[str, dict]          # name -> TrainConfig fields with store refs resolved to paths
    run_dirs: dict[str, Path]
    order: list[str]               # runs in an order where init_from comes first
    report: dict

    @property
    def report_path(self) -> Path:
        return Path(os.path.normpath(self.runs_dir / self.report.get("out", "report.html")))

    def store_path(self, name: str) -> str:
        return str(self.stores_dir / f"{name}.zarr")


def _line_of(text: str, table: str, key: str | None = None) -> int:
    """1-based line of `key` inside `[table]` (or of the table header), for error messages."""
    current, header_line = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[+\s*([^\]]+?)\s*\]+", stripped)
        if m:
            current = m.group(1)
            if current == table:
                header_line = number
                if key is None:
                    return number
            continue
        if current == table and key is not None and re.match(rf"^\"?{re.escape(key)}\"?\s*=", stripped):
            return number
    return header_line


def _expand(value, where: str):
    """${VAR} from the environment; an unset variable is an error naming it."""
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(1) not in os.environ:
            raise ExperimentError(f"{where}: environment variable {m.group(1)} is not set "
                                  f"(export {m.group(1)}=/path/to/the/dataset)")
        return os.environ[m.group(1)]
    return re.sub(r"\$\{(\w+)\}", sub, value)


def _apply_override(data: dict, assignment: str) -> str:
    """KEY.PATH=VALUE, VALUE parsed as TOML (so numbers, lists, booleans work; bare words are text);
    returns KEY.PATH."""
    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise ExperimentError(f"--set {assignment!r}: write KEY.PATH=VALUE, e.g. runs.mel_aasist.epochs=2")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = data
    for depth, part in enumerate(parts[:-1], 1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ExperimentError(f"--set {assignment!r}: {'.'.join(parts[:depth])} is a value, not a table, "
                                  "so it has no keys to set")
    node[parts[-1]] = value
    return ".".join(parts)


class _File:
    """An experiment file being read: every failure names the file, the line and the table, or the
    --set that gave the value."""

    def __init__(self, path: Path, text: str, overrides: dict[str, str]):
        self.path, self.text, self.base = path, text, path.parent
        self.overrides = overrides          # KEY.PATH -> the --set assignment that gave it

    def line(self, table: str, key: str | None = None) -> int:
        return _line_of(self.text, table, key)

    def where(self, table: str, key: str | None) -> str:
        """`--set ...` when the value (or a table holding it) came from one, else FILE:LINE."""
        dotted = f"{table}.{key}" if key else table
        for set_key, assignment in self.overrides.items():
            if dotted == set_key or dotted.startswith(set_key + "."):
                return f"--set {assignment}"
        line = self.line(table, key)
        given = [a for k, a in self.overrides.items() if k.startswith(dotted + ".")]
        return f"--set {given[0]}" if given and not line else f"{self.path}:{line}"

    def fail(self, table: str, key: str | None, message: str):
        raise ExperimentError(f"{self.where(table, key)}: [{table}]{' ' + key if key else ''}: {message}")

    def check_keys(self, table: str, given: dict, allowed: set[str]) -> None:
        for key in given:
            if key not in allowed:
                self.fail(table, key, f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")

    def check_strings(self, table: str, given: dict, keys) -> None:
        for key in keys:
            if key in given and not isinstance(given[key], str):
                self.fail(table, key, f"{given[key]!r} is not a string; write it in quotes")

    def check_tables(self, data: dict) -> None:
        """Every section a table, and in [datasets], [stores] and [runs] every entry one."""
        for section, value in data.items():
            if not isinstance(value, dict):
                self.fail(section, None, f"{value!r} is a value; [{section}] is a table")
            if SECTIONS.get(section, set()) is None:
                for name, entry in value.items():
                    if not isinstance(entry, dict):
                        self.fail(section, name, f"{entry!r} is a value; write it as a table [{section}.{name}]")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ExperimentError(f"no experiment file at {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExperimentError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                              "TOML files are UTF-8: save it as UTF-8") from None


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Parse and check the whole experiment file before any work: every key's kind and value (the
    runs' settings as `train` checks them, the report's), and the output folders; every error
    names the file and line (or the --set that gave the value) and the key."""
    path = Path(path)
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path}: not valid TOML ({e})") from None
    f = _File(path, text, {})
    for assignment in overrides:
        f.overrides[_apply_override(data, assignment)] = assignment
    for section in data:
        if section not in SECTIONS:
            f.fail(section, None, f"unknown section [{section}]; allowed: {', '.join(SECTIONS)}")
    f.check_tables(data)
    meta, report = data.get("experiment", {}), data.get("report", {})
    f.check_keys("experiment", meta, SECTIONS["experiment"])
    f.check_strings("experiment", meta, SECTIONS["experiment"])
    f.check_keys("report", report, SECTIONS["report"])
    f.check_strings("report", report, SECTIONS["report"])
    stores_dir = f.base / meta.get("stores_dir", "stores")
    runs_dir = f.base / meta.get("runs_dir", "runs")
    datasets = _read_datasets(f, data.get("datasets", {}))
    stores = _read_stores(f, data.get("stores", {}), datasets)
    runs, run_dirs = _read_runs(f, data.get("runs", {}), stores, stores_dir, runs_dir)
    experiment = Experiment(path, meta.get("name", path.stem), stores_dir, runs_dir, datasets, stores,
                            runs, run_dirs, _run_order(f, runs), report)
    for name in runs:
        _check_run_settings(f, experiment, name)
    _check_report(f, experiment)
    return experiment


def _check_run_settings(f: _File, experiment: Experiment, name: str) -> None:
    """The run's settings as `train` checks them (numbers, precision, the head's options), named
    by their keys in the file."""
    table = f"runs.{name.split('/')[0]}"   # a seed's run NAME/seed-N comes from [runs.NAME]
    try:
        config = train_config(experiment, name).resolved(option=lambda key: key)
    except ConfigError as e:
        key = "arch" if str(e).startswith("unknown architecture") else str(e).split(" ", 1)[0]
        f.fail(table, key if key in RUN_KEYS else None, str(e))
    try:
        make_config(config.arch, **config.model)
    except (ConfigError, TypeError, ValueError) as e:
        f.fail(table, "model", str(e))


def _check_report(f: _File, experiment: Experiment) -> None:
    """[report] out can be written (an .html page, not someone else's file) and ood names an OOD
    set of the runs."""
    if not experiment.runs:
        return
    try:
        check_report_outputs(experiment.report_path, force=False, option="report.out")
    except DfdetectError as e:
        f.fail("report", "out", str(e))
    ood = experiment.report.get("ood")
    names = {ood_name(spec)[0] for fields in experiment.runs.values() for spec in fields.get("ood", ())}
    names |= {"ood:holdout" for fields in experiment.runs.values() if fields.get("holdout_generators")}
    if ood is not None and (ood if ood.startswith("ood:") else "ood:" + ood) not in names:
        f.fail("report", "ood", f"no run has an OOD set {ood!r}; they have: "
                                f"{', '.join(sorted(n[4:] for n in names)) or 'none'}")


def _read_datasets(f: _File, tables: dict) -> dict:
    datasets = {}
    for name, d in tables.items():
        table = f"datasets.{name}"
        f.check_keys(table, d, DATASET_KEYS)
        f.check_strings(table, d, DATASET_KEYS)
        if d.get("dataset") not in ADAPTERS:
            f.fail(table, "dataset", f"unknown dataset {d.get('dataset')!r}; valid: {', '.join(ADAPTERS)}")
        if "root" not in d:
            f.fail(table, None, "needs root = \"...\"")
        root = f.base / _expand(d["root"], f"{f.path}:{f.line(table, 'root')}")  # absolute stays absolute
        if not root.exists():
            f.fail(table, "root", f"dataset root {root} does not exist")
        datasets[name] = {"dataset": d["dataset"], "root": root}
    return datasets


def _read_stores(f: _File, tables: dict, datasets: dict) -> dict:
    for name, s in tables.items():
        table = f"stores.{name}"
        f.check_keys(table, s, STORE_KEYS)
        f.check_strings(table, s, ("data",))
        if s.get("data") not in datasets:
            f.fail(table, "data", f"unknown dataset {s.get('data')!r}; declared: {', '.join(datasets) or 'none'}")
        try:   # the featurize options, checked as featurize checks them, before any work
            FeaturizeConfig.from_options(**{k: v for k, v in s.items() if k != "data"}).resolved(option=str)
        except (DfdetectError, TypeError, ValueError) as e:
            f.fail(table, None, str(e))
    return dict(tables)


def _read_runs(f: _File, tables: dict, stores: dict, stores_dir: Path, runs_dir: Path) -> tuple[dict, dict]:
    def resolve_set(table: str, key: str, ref: str) -> str:
        label = ""
        if key == "ood" and "=" in ref.split("/")[0]:
            label, ref = ref.split("=", 1)
            label += "="
        store, _, split = ref.partition(":")
        store_name, _, version = store.partition("@")
        if store_name not in stores:
            f.fail(table, key, f"unknown store {store_name!r}; declared: {', '.join(stores) or 'none'}")
        if version:
            _check_version(stores_dir / f"{store_name}.zarr", store_name, version,
                           lambda message: f.fail(table, key, message))
        path_ = str(stores_dir / f"{store_name}.zarr") + (f"@{version}" if version else "")
        return label + path_ + (f":{split}" if split else "")

    runs, run_dirs = {}, {}
    for name, r in tables.items():
        table = f"runs.{name}"
        f.check_keys(table, r, RUN_KEYS)
        if "arch" not in r or "train" not in r:
            f.fail(table, None, "needs arch and train")
        f.check_strings(table, r, ("out",))
        for key, value in r.items():
            problem = None if key in ("out", "seeds") else TrainConfig.field_problem(key, value)
            if problem:
                f.fail(table, key, problem)
        fields = {k: v for k, v in r.items() if k not in ("out", "seeds")}
        for key in SET_KEYS:
            if isinstance(fields.get(key), list):     # several training corpora: train = ["a:train", "b:train"]
                fields[key] = tuple(resolve_set(table, key, ref) for ref in fields[key])
            elif key in fields and fields[key]:
                fields[key] = resolve_set(table, key, fields[key])
        fields["augment"] = tuple(resolve_set(table, "augment", ref) for ref in fields.get("augment", ()))
        fields["ood"] = tuple(resolve_set(table, "ood", o) for o in fields.get("ood", ()))
        if "holdout_generators" in fields:
            fields["holdout_generators"] = tuple(fields["holdout_generators"])
        out = f.base / r["out"] if "out" in r else runs_dir / name
        clash = [other for other, d in run_dirs.items() if d.resolve() == out.resolve()]
        if clash:
            f.fail(table, "out" if "out" in r else None, f"writes to {out}, as run {clash[0]!r} does")
        for name_, fields_, out_ in _per_seed(f, table, name, fields, out, r.get("seeds")):
            folder = RunFolder(out_)
            if out_.exists() and not out_.is_dir():
                f.fail(table, "out" if "out" in r else None, f"{out_} is a file; a run writes a folder")
            if not folder.is_empty() and not folder.can_resume and not folder.is_created_run():
                f.fail(table, "out" if "out" in r else None, folder.not_a_run_message())
            runs[name_], run_dirs[name_] = fields_, out_
    for name, fields in runs.items():
        parent = fields.get("init_from")
        if parent is not None and parent not in runs and f"{parent}/seed-{fields.get('seed', 0)}" in runs:
            fields["init_from"] = parent = f"{parent}/seed-{fields.get('seed', 0)}"   # the same seed's parent
        if parent is not None and parent not in runs:
            f.fail(f"runs.{name.split('/')[0]}", "init_from", f"unknown run {parent!r}; declared: {', '.join(runs)}")
    return runs, run_dirs


def _per_seed(f: _File, table: str, name: str, fields: dict, out: Path, seeds) -> list[tuple[str, dict, Path]]:
    """[(name, fields, folder)]: the run itself, or with `seeds = [0, 1, 2]` one run per seed,
    NAME/seed-N in OUT/seed-N (models.runs.seed_folder), each trained as `seed = N`."""
    if seeds is None:
        return [(name, fields, out)]
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) < len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        f.fail(table, "seeds", f"{seeds!r}: give a list of distinct seeds >= 0, e.g. seeds = [0, 1, 2]")
    if "seed" in fields:
        f.fail(table, "seed", "give seed or seeds, not both")
    return [(f"{name}/seed-{s}", {**fields, "seed": s}, seed_folder(out, s)) for s in seeds]


def _run_order(f: _File, runs: dict) -> list[str]:
    """Runs in an order where every init_from parent trains before its child."""
    order, visiting = [], set()

    def visit(name: str):
        if name in order:
            return
        if name in visiting:
            f.fail(f"runs.{name.split('/')[0]}", "init_from", "init_from forms a cycle")
        visiting.add(name)
        parent = runs[name].get("init_from")
        if parent:
            visit(parent)
        order.append(name)
    for name in runs:
        visit(name)
    return order


def _check_version(store: Path, name: str, version: str, fail) -> None:
    """A pinned STORE@VERSION must exist already: featurize names versions by content, so a
    version that is not there is a typo or another machine's store."""

    if not store.exists():
        fail(f"pins version {version} of store {name!r}, which has not been featurized yet; "
             "drop @VERSION to use the version this file makes")
    try:
        versions = list_versions(str(store))
    except StoreError as e:
        fail(str(e))
    if version not in versions:
        fail(f"store {name!r} has no version {version!r}; it has {', '.join(versions) or 'none'}")


def train_config(experiment: Experiment, name: str) -> TrainConfig:
    fields = dict(experiment.runs[name])
    if fields.get("init_from"):
        fields["init_from"] = str(experiment.run_dirs[fields["init_from"]])
    return TrainConfig(**fields)


def run_state(experiment: Experiment, name: str) -> dict:
    """'done', 'partial' (resumable) or 'new', with the epochs finished."""
    folder = RunFolder(experiment.run_dirs[name])
    config = train_config(experiment, name).resolved()
    epochs = len(folder.records())
    if epochs >= config.epochs:
        return {"state": "done", "epochs": epochs, "of": config.epochs}
    if folder.can_resume:
        return {"state": "partial", "epochs": epochs, "of": config.epochs}
    return {"state": "new", "epochs": 0, "of": config.epochs}


def store_state(experiment: Experiment, name: str) -> str:

    try:
        open_store(experiment.store_path(name))
        return "complete"
    except StoreError:
        return "missing" if not Path(experiment.store_path(name)).exists() else "incomplete"


def run_experiment(experiment: Experiment, console, workers: int | None = None):
    """Featurize what is missing, train what is unfinished, write the report; returns the runs'
    states and the report (None without runs)."""

    for name, s in experiment.stores.items():
        data = experiment.datasets[s["data"]]
        # the store's keys are featurize's options (STORE_KEYS), with its one set of defaults
        config = FeaturizeConfig.from_options(**{k: v for k, v in s.items() if k != "data"}, workers=workers)
        console.rule(f"store {name}")
        result = featurize(data["dataset"], data["root"], experiment.store_path(name), config=config,
                           console=console)
        if not result.complete:
            raise ExperimentError(f"store {name} did not complete ({len(result.failed_blocks)} blocks failed); "
                                  "rerun `dfdetect experiment run` to retry them")
    states = {}
    for name in experiment.order:
        state = run_state(experiment, name)
        console.rule(f"run {name}: {state['state']} ({state['epochs']}/{state['of']} epochs)")
        if state["state"] != "done":
            train(train_config(experiment, name), experiment.run_dirs[name],
                  resume=state["state"] == "partial", force=state["state"] == "new", console=console)
        states[name] = run_state(experiment, name)
    report = None
    if experiment.runs:

        report = build_report([experiment.run_dirs[n] for n in experiment.order], experiment.report_path,
                              ood=experiment.report.get("ood"))
        console.print(f"report: {report.html} ({len(report.warnings)} warnings; tables in {report.markdown})")
    return states, report


def status_rows(experiment: Experiment) -> list[dict]:
    rows = [{"kind": "store", "name": n, "state": store_state(experiment, n), "path": experiment.store_path(n)}
            for n in experiment.stores]
    for name in experiment.order:
        state = run_state(experiment, name)
        row = {"kind": "run", "name": name, "state": f"{state['state']} {state['epochs']}/{state['of']}",
               "path": str(experiment.run_dirs[name])}
        records = RunFolder(experiment.run_dirs[name]).records()
        if records:
            last = records[-1]
            row["last"] = {k: {"acc": last.metric(k, "accuracy"), "eer": last.metric(k, "eer")} for k in last.sets}
        rows.append(row)
    return rows
