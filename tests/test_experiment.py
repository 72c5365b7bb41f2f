"""Experiment files: every shipped study runs scaled down on generated data; errors name the line
before anything expensive starts; an interrupted study resumes without redoing finished runs."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.models.registry import ARCHITECTURES
from dfdetect.studies.experiment import ExperimentError, load_experiment

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated corpus with the splits the shipped files name (train, test, eval), a polished
    holdout without splits, and a tiny random WavLM."""
    base = tmp_path_factory.mktemp("experiment")
    corpus = base / "corpus"
    write_corpus(corpus, CorpusSpec(real=15, per_generator=4, min_seconds=1.0, max_seconds=2.0))
    shutil.copytree(corpus / "test", corpus / "eval")
    polished = base / "polished"
    shutil.copytree(corpus / "ood", polished)
    shutil.rmtree(corpus / "ood")
    return {"base": base, "corpus": corpus, "polished": polished,
            "wavlm": save_random_wavlm(base / "wavlm", size="tiny")}


def scaled_down(file: Path, data: dict, out: Path) -> list[str]:
    """--set overrides that run `file` on the generated data in seconds."""
    raw = load_experiment.__globals__["tomllib"].loads(file.read_text())
    sets = [f"experiment.stores_dir={json.dumps(str(out / 'stores'))}",
            f"experiment.runs_dir={json.dumps(str(out / 'runs'))}"]
    for name in raw.get("datasets", {}):
        root = data["polished"] if name == "polished" else data["corpus"]
        sets += [f"datasets.{name}.dataset=\"folder\"", f"datasets.{name}.root={json.dumps(str(root))}"]
    for name in raw.get("stores", {}):
        sets += [f"stores.{name}.wavlm={json.dumps(str(data['wavlm']))}", f"stores.{name}.wavlm_layers=[1, 2]",
                 f"stores.{name}.block_size=16"]
    for name, run in raw.get("runs", {}).items():
        arch = ARCHITECTURES[run["arch"]]
        if arch.fitted:   # fitted once by EM: no learning rate, a few mixtures
            sets += [f"runs.{name}.model.n_components=4"]
        else:
            sets += [f"runs.{name}.epochs=1", f"runs.{name}.batch_size=16", f"runs.{name}.lr=0.001"]
        if arch.inputs == ("wave",):   # raw-wave AASIST costs ~1 s a clip on a CPU; 8 sinc bands, not 70
            sets += [f"runs.{name}.model.sinc_filters=8"]
        if "seeds" in run:   # one seed each here; test_seeds.py trains a study's three
            sets += [f"runs.{name}.seeds=[0]"]
    return sets


# generalization.toml runs in its own test below, which checks what its runs drew as well
SHIPPED = [p for p in sorted(EXPERIMENTS.glob("*.toml")) if p.stem != "generalization"]


@pytest.mark.slow
@pytest.mark.parametrize("file", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_study_runs_scaled_down(file, data, tmp_path):
    run_scaled_down(file, data, tmp_path)


@pytest.mark.slow
def test_the_generalization_study_runs_scaled_down_with_its_variants(data, tmp_path):
    """generalization.toml as shipped (RawBoost, random codecs, the WORLD-vocoded corpus): its runs
    augment from the variant stores and train on two corpora at once, as the file says."""
    study = EXPERIMENTS / "generalization.toml"
    run_scaled_down(study, data, tmp_path / "out")
    experiment = load_experiment(study, scaled_down(study, data, tmp_path / "out"))
    mixing = {n: json.loads((experiment.run_dirs[n] / "config.json").read_text())["mixing"] for n in experiment.runs}
    recipes = [f"{n}/seed-0" for n in ("clean", "rawboost", "codec", "vocoded", "all")]   # scaled down: 1 seed
    assert [len(mixing[n]["augment"]) for n in recipes] == [0, 1, 1, 0, 2]
    assert [len(mixing[n]["corpora"]) for n in recipes] == [1, 1, 1, 2, 2]
    record = json.loads((experiment.run_dirs["all/seed-0"] / "metrics.jsonl").read_text().splitlines()[0])
    assert sum(record["train"]["draws"].values()) == sum(record["train"]["corpora"]) == record["train"]["clips"]


def run_scaled_down(file: Path, data: dict, tmp_path: Path) -> None:
    sets = scaled_down(file, data, tmp_path)
    args = ["experiment", "run", str(file), "--workers", "0"] + [a for s in sets for a in ("--set", s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    experiment = load_experiment(file, sets)
    status = runner.invoke(app, ["experiment", "status", str(file), "--json"] + [a for s in sets for a in ("--set", s)])
    rows = json.loads(status.output)
    assert {r["name"] for r in rows if r["kind"] == "store"} == set(experiment.stores)
    assert all(r["state"] == "complete" for r in rows if r["kind"] == "store")
    assert all(r["state"] == "done 1/1" for r in rows if r["kind"] == "run")
    for name in experiment.runs:
        record = json.loads((experiment.run_dirs[name] / "metrics.jsonl").read_text())
        assert any(k.startswith("ood:") for k in record["sets"]), name
    ranking = experiment.report_path.with_suffix(".md").read_text()
    assert all(f"| {name} |" in ranking for name in experiment.runs)  # the report ranks every run


def _write(tmp_path, text):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


STUDY = """
[experiment]
stores_dir = "stores"
runs_dir = "runs"

[datasets.demo]
dataset = "folder"
root = "{root}"

[stores.demo]
data = "demo"
features = ["mel"]
block_size = 16

[runs.first]
arch = "mel_cnn"
train = "demo:train"
test = "demo:test"
epochs = 1
batch_size = 16

[runs.second]
arch = "mel_cnn"
train = "demo:train"
ood = ["heldout=demo:eval"]
epochs = 2
batch_size = 16
"""


def test_an_interrupted_study_resumes_without_redoing_finished_runs(data, tmp_path):
    file = _write(tmp_path, STUDY.format(root=data["corpus"]))
    first = runner.invoke(app, ["experiment", "run", str(file), "--workers", "0", "--set", "runs.second.epochs=1"])
    assert first.exit_code == 0, first.output
    done = (tmp_path / "runs" / "first" / "checkpoints" / "epoch_001.safetensors").stat().st_mtime_ns
    again = runner.invoke(app, ["experiment", "run", str(file), "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "run first: done (1/1 epochs)" in again.output and "run second: partial (1/2 epochs)" in again.output
    assert (tmp_path / "runs" / "first" / "checkpoints" / "epoch_001.safetensors").stat().st_mtime_ns == done
    assert len((tmp_path / "runs" / "second" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("epochs = 1\n", "epochs = 1\nlearning_rate = 0.1\n", 1),
     r"study.toml:\d+: \[runs.first\] learning_rate: unknown key"),
    (lambda t: t.replace('root = "', 'root = "/nonexistent', 1),
     r"study.toml:8: \[datasets.demo\] root: dataset root /nonexistent"),
    (lambda t: t.replace('train = "demo:train"', 'train = "other:train"', 1),
     r"study.toml:\d+: \[runs.first\] train: unknown store 'other'"),
    (lambda t: t + '\n[runs.third]\narch = "mel_cnn"\ntrain = "demo:train"\nout = "runs/first"\n',
     r"\[runs.third\] out: writes to .* as run 'first' does"),
    (lambda t: t.replace("[runs.first]", "[runs.first]\ninit_from = \"second\"")
                .replace("[runs.second]", "[runs.second]\ninit_from = \"first\""),
     "cycle"),
    (lambda t: t.replace("[report]", "") + "\n[reports]\nout = 'x'\n", r"unknown section \[reports\]"),
])
def test_errors_name_the_line_before_anything_runs(data, tmp_path, edit, message):
    file = _write(tmp_path, edit(STUDY.format(root=data["corpus"])))
    with pytest.raises(ExperimentError, match=message):
        load_experiment(file)
    assert not (tmp_path / "stores").exists() and not (tmp_path / "runs").exists()


def test_a_store_version_that_does_not_exist(data, tmp_path):
    text = STUDY.format(root=data["corpus"])
    pinned = _write(tmp_path, text.replace('test = "demo:test"', 'test = "demo@v-000000000000:test"'))
    missing = r"study.toml:\d+: \[runs.first\] test: pins version v-000000000000 .* not been featurized"
    with pytest.raises(ExperimentError, match=missing):
        load_experiment(pinned)
    assert runner.invoke(app, ["experiment", "run", str(_write(tmp_path, text)), "--workers", "0"]).exit_code == 0
    pinned = _write(tmp_path, text.replace('test = "demo:test"', 'test = "demo@v-000000000000:test"'))
    with pytest.raises(ExperimentError, match=r"store 'demo' has no version 'v-000000000000'; it has v-"):
        load_experiment(pinned)


@pytest.mark.parametrize("edit,sets,fragments", [
    (None, ["runs.first.lr=nan"], ["--set runs.first.lr=nan: [runs.first] lr: lr nan: must be a positive"]),
    (lambda t: t.replace("epochs = 1\n", "epochs = nan\n", 1),
     [], ["study.toml:19: [runs.first] epochs: field 'epochs' is NaN; expected an integer"]),
    (lambda t: t.replace("epochs = 1\n", "epochs = 0\nearly_stopping = 0\n", 1),
     [], ["study.toml:20: [runs.first] early_stopping: early_stopping 0: must be"]),
    (None, ['runs.first.epochs="three"'], ["[runs.first] epochs:", "is \"three\"; expected an integer"]),
    (None, ["runs.second.batch_size=1"], ["--set runs.second.batch_size=1: [runs.second] batch_size: batch_size 1"]),
    (None, ["runs=5"], ["--set runs=5: [runs]: 5 is a value; [runs] is a table"]),
    (None, ["runs.first.arch.size=1"], ["--set 'runs.first.arch.size=1': runs.first.arch is a value, not a table"]),
    (None, ["runs.first.model.bogus=1"], ["[runs.first] model: unknown mel_cnn option(s) 'bogus'"]),
    (None, ['runs.first.val=["demo:train"]'], ["[runs.first] val:", "expected a string"]),   # train may be a list
    (None, ["runs.first.arch=\"big\""], ["[runs.first] arch: unknown architecture 'big'"]),
    (lambda t: t + "\n[report]\nout = 5\n", [], ["study.toml:30: [report] out: 5 is not a string"]),
    (None, ['stores.demo.windows="half"'], ["[stores.demo]", "windows 'half'", "centre", "all"]),
    (None, ["stores.demo.hop=1.0"], ["[stores.demo]", "--windows centre keeps one crop"]),
    (None, ['stores.demo.trim_silence="yes"'], ["[stores.demo]", "trim_silence 'yes': true or false"]),
    (lambda t: t + "\n[report]\nout = \"report.txt\"\n", [], ["[report] out: report.out", "is an HTML page"]),
    (lambda t: t + "\n[report]\nood = \"dfeval\"\n",
     [], ["[report] ood: no run has an OOD set 'dfeval'; they have: heldout"]),
    (None, ['stores.demo.features=["mel", "bogus"]'], ["[stores.demo]: unknown feature(s) bogus; features takes"]),
    (None, ["stores.demo.block_size=0"], ["[stores.demo]: block_size 0: must be"]),
    (None, ['stores.demo.vocode="hifigan"'], ["[stores.demo]: --vocode hifigan: unknown vocoder"]),
    (lambda t: t.replace('root = "', "root = 5 #", 1), [], ["study.toml:8: [datasets.demo] root: 5 is not a string"]),
    (lambda t: t.replace('runs_dir = "runs"', "runs_dir = ['runs']"),
     [], ["study.toml:4: [experiment] runs_dir: ['runs'] is not a string"]),
])
def test_the_whole_file_is_checked_before_any_work_naming_file_or_set_and_key(data, tmp_path, edit, sets, fragments):
    from conftest import one_line

    text = STUDY.format(root=data["corpus"])
    file = _write(tmp_path, edit(text) if edit else text)
    set_options = [a for s in sets for a in ("--set", s)]
    result = runner.invoke(app, ["experiment", "run", str(file), "--workers", "0", *set_options])
    message = one_line(result, *fragments)
    assert "--epochs" not in message and "--batch-size" not in message   # options the user never typed
    assert not (tmp_path / "stores").exists() and not (tmp_path / "runs").exists()


def test_a_file_that_is_not_utf8_is_one_line(data, tmp_path):
    from conftest import one_line

    file = tmp_path / "study.toml"
    latin1 = STUDY.format(root=data["corpus"]).replace("[runs.first]", "# caf\xe9\n[runs.first]").encode("latin-1")
    file.write_bytes(latin1)
    one_line(runner.invoke(app, ["experiment", "run", str(file)]), "study.toml: not UTF-8 text", "save it as UTF-8")
    one_line(runner.invoke(app, ["experiment", "status", str(file)]), "study.toml: not UTF-8 text")
