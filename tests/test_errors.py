"""One error handler for every command: what a user can cause is one line and exit 2, a bug in
dfdetect is its traceback, a line asking to report it, and exit 3."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import train_tiny
from typer.testing import CliRunner

import dfdetect.cli as cli
from dfdetect.datasets import DatasetLayoutError
from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.evaluate.evaluation import EvaluationError
from dfdetect.evaluate.report import ReportError
from dfdetect.featurize.audio import AudioError
from dfdetect.featurize.wavlm import WavLMUnavailableError
from dfdetect.models.runs import RunError
from dfdetect.score.scoring import ScoreError
from dfdetect.score.sources import SourceError
from dfdetect.store import StoreError
from dfdetect.studies.experiment import ExperimentError
from dfdetect.train.trainer import TrainError

runner = CliRunner()


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in text, result.output


def test_every_project_error_is_a_dfdetect_error():
    for cls in (DatasetLayoutError, StoreError, RunError, TrainError, ExperimentError, ScoreError,
                SourceError, EvaluationError, ReportError, AudioError, WavLMUnavailableError, ConfigError):
        assert issubclass(cls, DfdetectError), cls
    assert issubclass(ConfigError, ValueError)


@pytest.fixture(scope="module")
def tiny_run(mel_store, tmp_path_factory):
    return train_tiny(mel_store, tmp_path_factory.mktemp("errors") / "run", epochs=1, ood=False)


def _broken_copy(run, tmp_path, edit):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    edit(broken)
    return broken


def _set_arch(arch):
    def edit(run):
        config = json.loads((run / "config.json").read_text())
        config["config"]["arch"] = arch
        (run / "config.json").write_text(json.dumps(config))
    return edit


def test_score_with_a_run_of_an_unknown_architecture(tiny_run, tmp_path, speech):
    from dfdetect.featurize.audio import encode

    run = _broken_copy(tiny_run, tmp_path, _set_arch("mel_transformer"))
    (tmp_path / "a.wav").write_bytes(encode(speech, 16000, "wav"))
    result = runner.invoke(cli.app, ["score", str(tmp_path / "a.wav"), "--model", str(run),
                                     "--out", str(tmp_path / "s.csv")])
    assert_one_line_error(result, "config.json", "unknown architecture 'mel_transformer'", "retrain")
    for args in (["evaluate", str(run), "--on", "x.zarr"], ["report", str(run), "--out", str(tmp_path / "r.html")]):
        assert_one_line_error(runner.invoke(cli.app, args), "unknown architecture 'mel_transformer'")


@pytest.mark.parametrize("damage, fragments", [
    (lambda run: (run / "config.json").write_text("{not json"), ["config.json", "not valid JSON"]),
    (lambda run: (run / "metrics.jsonl").write_text('{"epoch": 1}\n'), ["lacks 'sets'"]),
    (lambda run: (run / "checkpoints" / "epoch_001.safetensors").write_bytes(b"\x00" * 64),
     ["epoch_001.safetensors", "not a checkpoint of this mel_cnn head"]),
])
def test_damaged_run_folders_are_one_line_errors(tiny_run, tmp_path, damage, fragments):
    run = _broken_copy(tiny_run, tmp_path, damage)
    result = runner.invoke(cli.app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert_one_line_error(result, *fragments)


def test_bad_epoch_and_option_values(tiny_run, tmp_path):
    assert_one_line_error(runner.invoke(cli.app, ["evaluate", str(tiny_run), "--on", "x.zarr", "--epoch", "first"]),
                          "epoch 'first'")
    assert_one_line_error(runner.invoke(cli.app, ["featurize", "--dataset", "folder", "--root", str(tmp_path),
                                                  "--wavlm-layers", "6,twelve"]), "--wavlm-layers", "integers")
    assert_one_line_error(runner.invoke(cli.app, ["train", "--arch", "mel_gpt", "--train", "x.zarr",
                                                  "--out", str(tmp_path / "r")]), "unknown architecture 'mel_gpt'")


def test_train_config_file_errors_name_the_file(tmp_path):
    args = ["train", "--arch", "mel_cnn", "--train", "x.zarr", "--out", str(tmp_path / "r"), "--config"]
    missing = tmp_path / "missing.json"
    assert_one_line_error(runner.invoke(cli.app, [*args, str(missing)]), str(missing), "No such file")
    bad = tmp_path / "bad.json"
    bad.write_text("epochs: 3")
    assert_one_line_error(runner.invoke(cli.app, [*args, str(bad)]), str(bad), "not a JSON file")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"epoch": 3}')
    assert_one_line_error(runner.invoke(cli.app, [*args, str(unknown)]), "unknown field(s) 'epoch'", "epochs")


def test_an_internal_error_keeps_its_traceback_and_asks_for_a_report(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("dfdetect.models.registry.model_summary", broken)
    result = runner.invoke(cli.app, ["models"])
    assert result.exit_code == 3
    assert "Traceback" in result.output and "ZeroDivisionError: a bug" in result.output
    assert "bug in dfdetect" in result.output and "report it" in result.output


def test_error_messages_are_text_not_markup(tmp_path):
    """Names a user controls ([brackets] in a folder name) reach the terminal as written."""
    odd = tmp_path / "[bold]x[/bold]"
    result = runner.invoke(cli.app, ["datasets", "show", "folder", "--root", str(odd)])
    assert_one_line_error(result, "[bold]x[/bold]")
