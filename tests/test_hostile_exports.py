"""Exported folders from strangers (`score --model DIR`, `Detector.from_pretrained`) and the export
command's own writes: every forged value is one documented error naming config.json or the weights,
before anything is allocated by it; an export never overwrites a run, a store or a file it did not
write, and a kill at any step never leaves a folder that loads as a mix of two exports."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dfdetect.api import Detector
from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.audio import encode
from dfdetect.models.pretrained import load_model, write_pretrained
from dfdetect.models.runs import EpochRecord, RunError, load_run
from tests.conftest import one_line

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "model"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def forge(exported, folder, edit, rehash=True):
    """A copy of the exported folder whose config.json `edit` changed (the frontend hash recomputed
    from the edited values with `rehash`, so the bounds, not the hash, have to refuse it)."""
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    if rehash:
        try:
            config["frontend_hash"] = hashlib_of(config["frontend"])
        except Exception:  # a frontend too broken to hash: the forger could not have either
            pass
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def hashlib_of(frontend: dict) -> str:
    import hashlib

    blob = json.dumps(frontend, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config):
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


FORGED = {
    # frontend numbers (the hash recomputed to match: the bound refuses them)
    "clip_seconds 1e5": (setter("frontend", "clip_seconds", 1e5), "frontend.clip_seconds"),
    "clip_seconds 2000": (setter("frontend", "clip_seconds", 2000.0), "frontend.clip_seconds"),
    "clip_seconds NaN": (setter("frontend", "clip_seconds", math.nan), "frontend.clip_seconds"),
    "n_mels 2e6": (setter("frontend", "mel", "n_mels", 2_000_000), "frontend.mel.n_mels"),
    "n_fft 2**28": (setter("frontend", "mel", "n_fft", 2 ** 28), "frontend.mel.n_fft"),
    "sample_rate 0": (setter("frontend", "sample_rate", 0), "frontend.sample_rate"),
    "sample_rate text": (setter("frontend", "sample_rate", "16000"), "frontend.sample_rate"),
    "hop 0": (setter("frontend", "mel", "hop_length", 0), "frontend.mel.hop_length"),
    "hop 1 (too many frames)": (setter("frontend", "lfcc", "hop_length", 1), "frames"),
    "f_max over Nyquist": (setter("frontend", "mel", "f_max", 20000.0), "sample_rate / 2"),
    "resample quality": (setter("frontend", "resample_quality", "best"), "resample_quality"),
    "frontend unknown field": (setter("frontend", "evil", 1), "evil"),
    "frontend version": (setter("frontend", "frontend_version", 99), "frontend_version"),
    # the hash must be the hash of the values
    "hash of other values": (lambda c: c["frontend"].update(clip_seconds=4.0), "frontend_hash"),
    # the decision threshold
    "threshold NaN": (setter("threshold", math.nan), "threshold"),
    "threshold inf": (setter("threshold", math.inf), "threshold"),
    "threshold -0.1": (setter("threshold", -0.1), "threshold"),
    "threshold 1.5": (setter("threshold", 1.5), "threshold"),
    "threshold text": (setter("threshold", "0.5"), "threshold"),
    # the head's config
    "dropout NaN": (setter("model_config", "dropout", math.nan), "dropout"),
    "dropout 5": (setter("model_config", "dropout", 5), "dropout"),
    "negative channels": (setter("model_config", "channels", [-32, 64, 128, 256]), "channels"),
    "stride 1e308": (setter("model_config", "stem_stride", 1e308), "stem_stride"),
    "embedding_dim 1.5e8": (setter("model_config", "embedding_dim", 150_000_000), "embedding_dim"),
    "embedding_dim 1e6": (setter("model_config", "embedding_dim", 1e6), "embedding_dim"),
    "model_config text": (setter("model_config", "big"), "model_config"),
    "bool as a size": (setter("model_config", "pool", True), "pool"),
    "precision": (setter("score_precision", "float8"), "score_precision"),
    "arch not text": (setter("arch", ["mel_cnn"]), "arch"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_config_values_are_the_documented_error(exported, tmp_path, case):
    edit, fragment = FORGED[case]
    folder = forge(exported, tmp_path / "forged", edit, rehash=case != "hash of other values")
    with pytest.raises(RunError) as error:       # the API's documented error, never a builtin
        Detector.from_pretrained(folder)
    assert "config.json" in str(error.value) and fragment in str(error.value), str(error.value)


def test_a_forged_folder_is_one_line_in_score(exported, tmp_path):
    folder = forge(exported, tmp_path / "forged", setter("frontend", "clip_seconds", 1e5))
    wav = tmp_path / "c.wav"
    wav.write_bytes(encode(synthesize("real", np.random.default_rng(0), 2), 16000, "wav"))
    result = runner.invoke(app, ["score", str(wav), "--model", str(folder), "--out", str(tmp_path / "s.csv"),
                                 "--workers", "0"])
    one_line(result, "config.json", "frontend.clip_seconds")
    assert not (tmp_path / "s.csv").exists()


def test_deep_json_under_the_size_bound_is_the_documented_error(exported, tmp_path):
    folder = tmp_path / "deep"
    shutil.copytree(exported, folder)
    (folder / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)   # 600 KB < 1 MiB
    with pytest.raises(RunError, match="not the config.json"):
        load_model(folder)
    result = runner.invoke(app, ["score", str(folder), "--model", str(folder), "--out", str(tmp_path / "s.csv")])
    one_line(result, "config.json")


def _resave(folder, weights):
    """model.safetensors replaced by `weights`, and config.json's checksum made to match, as a forger
    who knows the format would."""
    import hashlib

    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    if "files" in config:
        config["files"]["model.safetensors"]["sha256"] = hashlib.sha256(
            (folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))


def test_weights_of_the_wrong_dtype_are_refused_not_cast(exported, tmp_path):
    folder = tmp_path / "int8"
    shutil.copytree(exported, folder)
    weights = load_file(str(folder / "model.safetensors"))
    _resave(folder, {k: (v * 10).to(torch.int8) if v.is_floating_point() else v for k, v in weights.items()})
    with pytest.raises(RunError) as error:
        Detector.from_pretrained(folder)
    assert "model.safetensors" in str(error.value) and "I8" in str(error.value) and "F32" in str(error.value)


def test_a_head_that_cannot_take_its_frontends_features_is_refused_at_load(exported, tmp_path):
    """A consistent head and weights that score would feed features of another shape (a traceback,
    exit 3, in score before)."""
    from dfdetect.models.registry import build_model

    folder = forge(exported, tmp_path / "three", setter("model_config", "in_channels", 3))
    _resave(folder, {k: v.contiguous() for k, v in build_model("mel_cnn", in_channels=3).state_dict().items()})
    with pytest.raises(RunError, match="does not take the features"):
        Detector.from_pretrained(folder)
    wav = tmp_path / "c.wav"
    wav.write_bytes(encode(synthesize("real", np.random.default_rng(0), 2), 16000, "wav"))
    result = runner.invoke(app, ["score", str(wav), "--model", str(folder), "--out", str(tmp_path / "s.csv"),
                                 "--workers", "0"])
    one_line(result, "config.json", "does not take the features")


def test_weights_not_written_with_the_config_are_refused(exported, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(exported, folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()},
              str(folder / "model.safetensors"))
    with pytest.raises(RunError, match="sha256 differs"):
        load_model(folder)


CHILD = """
import json, resource, sys, time
from dfdetect.models.pretrained import load_model
from dfdetect.errors import DfdetectError
start = time.perf_counter()
outcomes, peaks = [], [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
for folder in sys.argv[1:]:
    try:
        load_model(folder)
        outcomes.append("loaded")
    except DfdetectError as e:
        outcomes.append(type(e).__name__)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({"outcomes": outcomes, "seconds": time.perf_counter() - start, "peaks_mb": peaks}))
"""


def test_head_sizes_cost_nothing_before_the_weights_are_checked(exported, tmp_path):
    """Sizes within the bounds but not the weights' (a 1.3 GB head on today's code) are refused from
    the safetensors header, with the head built on the meta device: no allocation by the config."""
    big = forge(exported, tmp_path / "big", lambda c: c["model_config"].update(channels=[32, 64, 128, 8192],
                                                                               embedding_dim=20_000))
    wide = forge(exported, tmp_path / "wide", setter("model_config", "embedding_dim", 60_000))
    plain = tmp_path / "plain"
    shutil.copytree(exported, plain)
    child = subprocess.run([sys.executable, "-c", CHILD, str(plain), str(big), str(wide)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["outcomes"] == ["loaded", "RunError", "RunError"], report
    # the plain head and torch alone take ~0.4 GB; a 20,000-wide embedding of 16,384 inputs is 1.3 GB
    assert report["peaks_mb"][-1] - report["peaks_mb"][1] < 100 and report["seconds"] < 60, report
    with pytest.raises(RunError, match="model.safetensors.*shape|model.safetensors.*the head's is"):
        load_model(big)


# -- where an export may be written ---------------------------------------------------------------------
def test_an_export_never_replaces_a_run_or_lands_in_a_folder_holding_one(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = (run / "config.json").read_bytes()
    result = runner.invoke(app, ["export", str(run), "--out", str(run), "--force"])
    one_line(result, "--out", "run folder")
    result = runner.invoke(app, ["export", str(run), "--out", str(run / "inside"), "--force"])
    one_line(result, "--out", "inside the run folder")
    assert (run / "config.json").read_bytes() == config and not (run / "inside").exists()
    assert load_run(run).epoch == load_run(run_dir).epoch
    holder = tmp_path / "holder"
    shutil.copytree(run_dir, holder / "r")
    (holder / "notes.txt").write_text("mine")
    stores = tmp_path / "stores"
    (stores / "x.zarr").mkdir(parents=True)
    (stores / "x.zarr" / "zarr.json").write_text("{}")
    for folder, what in ((holder, "holds a run"), (stores, "holds a store"), (stores / "x.zarr", "holds a store")):
        result = runner.invoke(app, ["export", str(run), "--out", str(folder), "--force"])
        one_line(result, "--out", what)
        assert not (folder / "config.json").exists()


def test_a_folder_of_someone_elses_model_is_not_taken_for_an_export(run_dir, tmp_path):
    """A Hugging Face model folder (config.json, model.safetensors, README.md) is not an export to
    replace: without --force it is refused and untouched."""
    hub = tmp_path / "wavlm-large"
    hub.mkdir()
    for name, text in (("config.json", '{"model_type": "wavlm"}'), ("model.safetensors", "weights"),
                       ("README.md", "their card")):
        (hub / name).write_text(text)
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(hub)])
    one_line(result, "--out", "not an exported dfdetect model", "--force")
    assert (hub / "config.json").read_text() == '{"model_type": "wavlm"}' and (hub / "README.md").read_text() \
        == "their card"


# -- a kill at any step of replacing an export -----------------------------------------------------------
class Killed(BaseException):
    """What kill -9 looks like to the code after it: nothing more runs (not an Exception: no handler
    of the writer may swallow it)."""


def _kill_at(monkeypatch, step):
    """Make the `step`-th file operation of the writer (a write, an fsync, an unlink or a rename) the
    last one that runs."""
    count = {"n": 0}

    def wrap(real):
        def op(*args, **kwargs):
            count["n"] += 1
            if count["n"] > step:
                raise Killed
            return real(*args, **kwargs)
        return op

    import dfdetect.models.pretrained as pretrained

    monkeypatch.setattr(pretrained.os, "replace", wrap(os.replace))
    monkeypatch.setattr(pretrained.os, "unlink", wrap(os.unlink))
    monkeypatch.setattr(pretrained.os, "fsync", wrap(os.fsync))
    monkeypatch.setattr(pretrained, "save_file", wrap(pretrained.save_file))
    return count


def _fingerprint(loaded):
    return loaded.threshold, float(sum(v.double().sum() for v in loaded.model.state_dict().values()))


def test_a_kill_at_any_step_of_replacing_an_export_never_loads_a_mix(run_dir, tmp_path, monkeypatch):
    old_run = load_run(run_dir)
    new_run = load_run(run_dir)
    with torch.no_grad():
        for v in new_run.model.parameters():
            v.add_(0.25)
    new_run.records = [EpochRecord({**r, "sets": {**r.sets, "val": {**r.sets.get("val", {}), "eer_threshold": 0.123}}})
                       for r in new_run.records]
    out = tmp_path / "model"
    write_pretrained(old_run, out, "old card")
    old, new = _fingerprint(load_model(out)), _fingerprint(new_run)
    assert old != new
    steps = 0
    while True:
        shutil.rmtree(out)
        write_pretrained(old_run, out, "old card")
        with monkeypatch.context() as m:
            count = _kill_at(m, steps)
            try:
                write_pretrained(new_run, out, "new card")
                finished = True
            except Killed:
                finished = False
        try:
            loaded = _fingerprint(load_model(out))
        except RunError as e:        # refused as cut off: never scored with a mix
            assert "export" in str(e) and "again" in str(e), str(e)
        else:
            assert loaded in (old, new), (steps, loaded)
            card = (out / "README.md").read_text()
            assert card == ("old card" if loaded == old else "new card"), steps
        # the rerun of the export finishes the job
        write_pretrained(new_run, out, "new card")
        assert _fingerprint(load_model(out)) == new
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        if finished:
            break
        steps += 1
    assert steps >= 5, count     # saves, fsyncs, the unlink and three renames were each cut


# -- --onnx FILE -------------------------------------------------------------------------------------------
def test_onnx_never_overwrites_without_force_nor_the_exports_own_files(run_dir, tmp_path):
    mine = tmp_path / "mine.onnx"
    mine.write_text("my own file")
    result = runner.invoke(app, ["export", str(run_dir), "--onnx", str(mine)])
    one_line(result, "--onnx", "exists", "--force")
    assert mine.read_text() == "my own file"
    out = tmp_path / "model"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(out)]).exit_code == 0
    weights = (out / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "config.json", "README.md"):
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--onnx", str(out / name),
                                     "--force"])
        one_line(result, "--onnx", "export")
    assert (out / "model.safetensors").read_bytes() == weights
    result = runner.invoke(app, ["export", str(run_dir), "--onnx", str(run_dir / "config.json"), "--force"])
    one_line(result, "--onnx", "run folder")


def test_onnx_weights_are_embedded_in_the_one_file(run_dir, tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(run_dir), "--onnx", str(path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]       # no m.onnx.data beside it
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert "embedded" in " ".join(result.output.split())
    start = time.perf_counter()
    result = runner.invoke(app, ["export", str(run_dir), "--onnx", str(path), "--force"])
    assert result.exit_code == 0 and time.perf_counter() - start < 120, result.output


# -- the model card -----------------------------------------------------------------------------------------
def test_names_in_the_card_never_become_links_or_rows(run_dir, tmp_path):
    """GFM (the hubs' renderer) links bare www.x.y, scheme://x.y and user@x.y: names are defanged."""
    import re

    from dfdetect.evaluate.model_card import model_card

    run = tmp_path / "www.evil.example user@evil.example\n| forged | row |"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["sets"]["train"]["spec"] = "https://evil.example/s.zarr:train (mail me: x@evil.example)"
    (run / "config.json").write_text(json.dumps(config))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record["sets"]["ood:x\n| forged | row |"] = record["sets"]["val"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    card = model_card(load_run(run))
    body = card.split("---\n", 2)[2]
    assert not re.search(r"(?:^|[\s*_~(])www\.[\w-]+\.[\w-]", body), body
    assert not re.search(r"[\w.+-]@[\w-]+\.[\w-]", body), body
    assert not re.search(r"(?:https?|ftp)://[\w-]", body), body
    assert not any(line.startswith("| forged") for line in body.splitlines()), body
    assert "www\\[.\\]evil.example" in body and "user\\[@\\]evil.example" in body   # still there to read
