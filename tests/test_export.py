"""`dfdetect export RUN --out DIR`: a folder of JSON, safetensors and a model card that scores the
same files to the same numbers as the run, and that loading refuses when it is anything else."""

import csv
import json

import numpy as np
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.audio import encode
from dfdetect.models.pretrained import load_model
from dfdetect.models.runs import load_run
from tests.conftest import one_line

runner = CliRunner()


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_an_exported_folder_scores_like_its_run(run_dir, tmp_path):
    out = tmp_path / "model"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    run = load_run(run_dir)
    assert config["arch"] == "mel_cnn" and config["frontend_hash"] == run.frontend_hash
    assert config["threshold"] == run.threshold and config["wavlm"] is None
    card = (out / "README.md").read_text()
    assert "library_name: dfdetect" in card and f"Metrics at epoch {run.epoch}" in card and "| val |" in card
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        (d / f"c{i}.wav").write_bytes(encode(synthesize("real" if i % 2 else "vocoder", np.random.default_rng(i),
                                                        1.5 + 2 * i), 16000, "wav"))
    tables = {}
    for name, model in (("run", run_dir), ("export", out)):
        table = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["score", str(d), "--model", str(model), "--out", str(table), "--workers", "0"])
        assert result.exit_code == 0, result.output
        tables[name] = rows(table)
    assert tables["run"].keys() == tables["export"].keys() and len(tables["run"]) == 4
    for path, row in tables["run"].items():
        other = tables["export"][path]
        assert (row["score"], row["decision"], row["threshold"], row["windows"], row["frontend_hash"]) == \
            (other["score"], other["decision"], other["threshold"], other["windows"], other["frontend_hash"])


def test_the_card_has_every_set_including_ood(mel_store, tmp_path):
    from tests.conftest import train_tiny

    run = train_tiny(mel_store, tmp_path / "run", epochs=2)
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--epoch", "last"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "m" / "README.md").read_text()
    for name in ("| val |", "| test |", "| ood:unseen | out of distribution |"):
        assert name in card, card
    assert "Metrics at epoch 2" in card
    # EER and minDCF with the intervals the epoch recorded; each set named with how its files were scored
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["sets"]["ood:unseen"]
    low, high = record["eer_ci"]
    assert low < record["eer"] < high     # an interval with width, so the row shows a real one
    row = (f"| ood:unseen | out of distribution | centre 3 s crop | {record['n']} | "
           rf"{record['eer']:.4f} \[{low:.4f}, {high:.4f}\] |")
    assert row in card, [line for line in card.splitlines() if line.startswith("| ood")]
    assert "95% bootstrap intervals" in card


def test_loading_refuses_pickles_and_forged_folders(run_dir, tmp_path):
    out = tmp_path / "model"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(out)]).exit_code == 0
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((out / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    d = tmp_path / "c.wav"
    d.write_bytes(encode(synthesize("real", np.random.default_rng(0), 2), 16000, "wav"))
    result = runner.invoke(app, ["score", str(d), "--model", str(pickled), "--out", str(tmp_path / "s.csv")])
    one_line(result, "pickled weights", "never loaded")
    (out / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()), "arch": "evil"}))
    result = runner.invoke(app, ["score", str(d), "--model", str(out), "--out", str(tmp_path / "t.csv")])
    one_line(result, "config.json", "unknown architecture")
    (out / "config.json").write_text("[1]" * 10)
    try:
        load_model(out)
    except Exception as e:
        assert "not the config.json of an exported dfdetect model" in str(e)
    else:
        raise AssertionError("a forged config.json loaded")


def test_onnx_export_of_the_mel_heads_matches_pytorch(run_dir, tmp_path):
    import onnxruntime

    result = runner.invoke(app, ["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    diff = float(result.output.split("max abs diff of P(fake)")[1].split()[0])
    assert diff < 1e-5, result.output
    # the graph on windows the frontend made, batch size other than the export's
    from dfdetect.featurize.frontend import Frontend
    from dfdetect.models.onnx_export import verification_windows

    run = load_run(run_dir)
    x = verification_windows(Frontend(run.frontend_config), 3)
    got = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"mel": x})[0]
    import torch

    with torch.inference_mode():
        want = torch.sigmoid(run.model({"mel": torch.from_numpy(x)})).numpy()
    assert got.shape == (3,) and np.abs(got - want).max() < 1e-5
