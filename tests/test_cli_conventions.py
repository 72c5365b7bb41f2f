"""The conventions every command shares (README, CLI): whole tables when the output is not a
terminal, JSON on stdout with --json, --device auto, one-flag switches, help on every option, and
renamed options that still read their old spelling."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from dfdetect.cli import app

runner = CliRunner()
ROOT = Path(__file__).parents[1]


def _dfdetect(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """The CLI as a shell runs it: a process of its own, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, "-c", "from dfdetect.cli import app; app(prog_name='dfdetect')", *args],
                          env=env, timeout=120, **kwargs)


def _piped(args: list[str]) -> str:
    """`dfdetect ARGS | cat` typed at a 60-column terminal: stdin is that terminal, stdout a pipe."""
    terminal, shell_side = pty.openpty()
    fcntl.ioctl(shell_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    try:
        result = _dfdetect(args, stdin=shell_side, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        os.close(terminal)
        os.close(shell_side)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _to_file(args: list[str], tmp_path: Path) -> str:
    """`COLUMNS=60 dfdetect ARGS > f`."""
    out = tmp_path / "out.txt"
    with out.open("wb") as f:
        result = _dfdetect(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE, env={"COLUMNS": "60"})
    assert result.returncode == 0, result.stderr.decode()
    return out.read_text(encoding="utf-8")


def _json(args: list[str]):
    result = _dfdetect([*args, "--json"], stdin=subprocess.DEVNULL, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_models_piped_or_to_a_file_keeps_every_name_and_count_whole(tmp_path):
    rows = _json(["models"])
    assert len(rows) >= 8
    for text in (_piped(["models"]), _to_file(["models"], tmp_path)):
        assert "…" not in text
        lines = text.splitlines()
        for r in rows:
            # the row's name, parameter count, size and source whole, on one line
            whole = (r["arch"], f"{r['parameters']:,}", f"{r['checkpoint_bytes'] / 1e6:.2f} MB", r["source"])
            assert any(all(f" {cell} " in line for cell in whole) for line in lines), (whole, text)


def test_datasets_list_piped_keeps_every_description_whole_and_has_json(tmp_path):
    from dfdetect.datasets import ADAPTERS

    rows = _json(["datasets", "list"])
    assert [r["name"] for r in rows] == list(ADAPTERS)
    by_name = {r["name"]: r for r in rows}
    assert by_name["folder"]["options"] == [] and "label_column" in by_name["hf"]["options"]
    assert all(r["reads"] == ADAPTERS[r["name"]].DESCRIPTION for r in rows)
    for text in (_piped(["datasets", "list"]), _to_file(["datasets", "list"], tmp_path)):
        lines = text.splitlines()
        for r in rows:
            assert any(r["name"] in line and r["reads"] in line and " ".join(r["options"]) in line
                       for line in lines), (r, text)


def _options():
    """(command path, click option) for every option of every command."""
    def walk(command, path: str):
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            for param in command.params:
                if isinstance(param, TyperOption):
                    yield path, param
    return list(walk(typer.main.get_command(app), ""))


def test_every_device_option_defaults_to_auto():
    devices = {path: option.default for path, option in _options() if "--device" in option.opts}
    assert {"featurize", "train", "score", "evaluate"} <= set(devices)
    assert set(devices.values()) == {"auto"}, devices


def test_every_api_device_argument_defaults_to_auto_as_the_cli():
    import dataclasses
    import inspect

    from dfdetect import api
    from dfdetect.featurize.config import FeaturizeConfig

    functions = [api.evaluate, api.featurize, api.Detector.from_run, api.Detector.from_pretrained]
    defaults = {f.__qualname__: inspect.signature(f).parameters["device"].default for f in functions}
    if defaults["featurize"] is None:          # None: FeaturizeConfig's default, which the CLI uses too
        defaults["featurize"] = FeaturizeConfig().device
    defaults["TrainConfig"] = {f.name: f.default for f in dataclasses.fields(api.TrainConfig)}["device"]
    assert set(defaults.values()) == {"auto"}, defaults


def test_switches_are_one_flag_off_by_default():
    flags = [(path, option) for path, option in _options() if option.is_flag and option.name != "help"]
    assert any(path == "train" and "--force" in option.opts for path, option in flags)
    assert not [(path, option.secondary_opts) for path, option in flags if option.secondary_opts]
    assert not [(path, option.opts) for path, option in flags if option.default]


def test_every_option_has_help():
    assert not [(path, option.opts) for path, option in _options() if not option.help]


def test_writers_write_to_out():
    options = _options()
    writers = {path for path, option in options if "--out" in option.opts}
    assert {"featurize", "train", "score", "report", "export", "store export", "demo"} <= writers
    assert not [path for path, option in options if "--hdf5" in option.opts]


def test_evaluate_reads_scores_format_and_its_old_spelling(tmp_path):
    scores = tmp_path / "scores.txt"   # an extension that says nothing: the format is given
    scores.write_text("clip,score,label\n" + "".join(f"c{i},{i / 10:.1f},{int(i >= 5)}\n" for i in range(10)))
    new = runner.invoke(app, ["evaluate", "--scores", str(scores), "--scores-format", "csv", "--json"])
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout)["source"]["clips"] == 10 and "deprecated" not in new.stderr
    old = runner.invoke(app, ["evaluate", "--scores", str(scores), "--format=csv", "--json"])
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert "--format is deprecated; use --scores-format" in old.stderr
    assert "--format" not in runner.invoke(app, ["evaluate", "--help"]).output


def test_store_export_reads_its_old_spelling(tmp_path):
    result = runner.invoke(app, ["store", "export", str(tmp_path / "none.zarr"), "--hdf5", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert "--hdf5 is deprecated; use --out" in result.stderr
    assert "No such option" not in result.output and "none.zarr" in result.output   # it went on to the store
    assert "--hdf5" not in runner.invoke(app, ["store", "export", "--help"]).output
