"""What dfdetect may remove and overwrite: only what it wrote. A study or `train --force` never removes
a folder that is not a run dfdetect created; one train per run folder at a time; a report cut off
mid-write leaves the previous page, and its leftover is recognised as the report's own."""

import json
import os
import subprocess

import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.locks import ExclusiveLock
from dfdetect.models.runs import RunError, RunFolder
from dfdetect.train.trainer import TrainConfig, TrainError, train
from tests.conftest import one_line, train_tiny

runner = CliRunner()


def _tiny_config(store: str, epochs: int = 1) -> TrainConfig:
    return TrainConfig(arch="mel_cnn", train=f"{store}:train", test=f"{store}:test", epochs=epochs,
                       batch_size=16, lr=1e-3)


STUDY = """
[experiment]
stores_dir = "stores"
runs_dir = "runs"

[datasets.demo]
dataset = "folder"
root = "corpus"

[stores.demo]
data = "demo"
features = ["mel"]

[runs.m]
arch = "mel_cnn"
train = "demo:train"
epochs = 1
out = "{out}"
"""


@pytest.mark.parametrize("out", ["precious", "."])
def test_a_study_never_removes_a_folder_that_is_not_a_run(tmp_path, out):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("four years of work")
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(out=out))
    result = runner.invoke(app, ["experiment", "run", str(study), "--workers", "0"])
    one_line(result, "study.toml:", "[runs.m] out:", "already holds files dfdetect did not write as a run",
             "choose another output folder")
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "four years of work"
    assert study.exists() and (tmp_path / "corpus").is_dir()
    assert not (tmp_path / "stores").exists()    # refused before any work


def test_force_replaces_only_a_run_dfdetect_created(mel_store, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"already holds files dfdetect did not write as a run \(thesis.txt\)"):
        train(_tiny_config(mel_store), folder, force=True)
    # a config.json of someone else's, alone or in a run's layout, is not a run either
    (folder / "thesis.txt").unlink()
    (folder / "config.json").write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(TrainError, match="not a run dfdetect created"):
        train(_tiny_config(mel_store), folder, force=True)
    assert json.loads((folder / "config.json").read_text()) == {"learning_rate": 0.1}
    with pytest.raises(RunError, match="never removes"):
        RunFolder(folder).create()     # the one call that removes: it checks for itself
    assert (folder / "config.json").exists()

    run = train_tiny(mel_store, tmp_path / "run", epochs=1, ood=False)
    (run / "checkpoints" / "notes.txt").write_text("mine too")
    with pytest.raises(TrainError, match=r"checkpoints/notes.txt"):
        train(_tiny_config(mel_store), run, force=True)
    (run / "checkpoints" / "notes.txt").unlink()
    train(_tiny_config(mel_store), run, force=True)    # its own run: replaced
    assert len(RunFolder(run).records()) == 1


def test_a_run_being_trained_refuses_a_second_train(mel_store, tmp_path):
    run = train_tiny(mel_store, tmp_path / "run", epochs=1, ood=False)
    lines = (run / "metrics.jsonl").read_text()
    config = TrainConfig(arch="mel_cnn", train=f"{mel_store}:train", test=f"{mel_store}:test", epochs=2,
                         batch_size=16, lr=1e-3)
    with ExclusiveLock(str(run), lambda holder: AssertionError(holder)):   # a train holding the run
        with pytest.raises(TrainError, match=r"is being trained by pid \d+ .*wait for that training"):
            train(config, run, resume=True)
        with pytest.raises(TrainError, match="is being trained by"):
            train(config, run, force=True)
        result = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train", "--out",
                                     str(run), "--epochs", "2", "--batch-size", "16", "--resume"])
        one_line(result, f"--out {run} is being trained by pid {os.getpid()}")
    assert (run / "metrics.jsonl").read_text() == lines
    train(config, run, resume=True)      # once it is free
    assert [r["epoch"] for r in RunFolder(run).records()] == [1, 2]
    assert not (tmp_path / "run.lock").exists()


@pytest.fixture(scope="module")
def two_runs(mel_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("own-runs")
    return [train_tiny(mel_store, base / f"seed{seed}", epochs=1, seed=seed) for seed in (0, 1)]


def test_a_report_cut_off_while_written_leaves_the_previous_one(two_runs, tmp_path, monkeypatch):
    from dfdetect.evaluate import report

    page = tmp_path / "report.html"
    report.build_report(two_runs, page)
    before = page.read_bytes(), page.with_suffix(".md").read_bytes()
    monkeypatch.setattr(report.Page, "markdown", lambda self, name: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):   # the page of one run is written, then the kill
        report.build_report(two_runs[:1], page)
    assert (page.read_bytes(), page.with_suffix(".md").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]


def test_a_cut_off_report_and_its_leftovers_are_the_reports_own(two_runs, tmp_path):
    page, notes = tmp_path / "report.html", tmp_path / "report.md"
    page.write_bytes(b"")                                   # killed in place by an older dfdetect
    notes.write_bytes(b"# dfdetect rep")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".report.html.{dead.pid}.tmp"     # killed before its rename
    leftover.write_text("<!DOCTYPE html><html>")
    other = tmp_path / ".report.html.notes.tmp"             # not the report's naming: left alone
    other.write_text("mine")
    result = runner.invoke(app, ["report", *map(str, two_runs), "--out", str(page)])
    assert result.exit_code == 0, result.output
    assert page.read_text().startswith("<!DOCTYPE html>") and notes.read_text().startswith("# dfdetect report\n")
    assert not leftover.exists() and other.read_text() == "mine"
    notes.write_bytes(b"# dfdetect repo!")     # not the start of a report: someone's file
    one_line(runner.invoke(app, ["report", *map(str, two_runs), "--out", str(page)]), "report.md exists and is "
             "not a dfdetect report")
