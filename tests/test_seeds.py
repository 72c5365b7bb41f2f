"""Seeds as an axis: a study's `seeds = [0, 1, 2]` and `train --seeds` train one run folder per seed,
and the report gives their mean +- sd, the seed count and whether neighbours differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.evaluate.report import build_report
from dfdetect.models.runs import load_run
from dfdetect.studies.experiment import ExperimentError, load_experiment

runner = CliRunner()

STUDY = """
[experiment]
stores_dir = "{stores}"
runs_dir = "runs"

[datasets.demo]
dataset = "folder"
root = "{root}"

[stores.mel]
data = "demo"
features = ["mel"]
block_size = 16

[runs.cnn]
arch = "mel_cnn"
seeds = [0, 1, 2]
train = "mel:train"
test = "mel:test"
ood = ["unseen=mel:ood"]
epochs = 1
batch_size = 16
lr = 0.001

[runs.cnn_slow]
arch = "mel_cnn"
seeds = [0, 1, 2]
train = "mel:train"
test = "mel:test"
ood = ["unseen=mel:ood"]
epochs = 1
batch_size = 16
lr = 0.00001
"""


def _study(tmp_path, mel_store, text=STUDY):
    path = tmp_path / "study.toml"
    path.write_text(text.format(stores=Path(mel_store).parent, root=Path(mel_store).parent / "corpus"))
    return path


def test_a_study_with_three_seeds_trains_three_runs_and_reports_mean_and_sd(tmp_path, mel_store):
    study = _study(tmp_path, mel_store)
    experiment = load_experiment(study)
    assert list(experiment.runs) == [f"{n}/seed-{s}" for n in ("cnn", "cnn_slow") for s in (0, 1, 2)]
    result = runner.invoke(app, ["experiment", "run", str(study), "--workers", "0"])
    assert result.exit_code == 0, result.output
    for seed in (0, 1, 2):
        run = load_run(tmp_path / "runs" / "cnn" / f"seed-{seed}")
        assert run.config.train_config["seed"] == seed
    weights = [load_run(tmp_path / "runs" / "cnn" / f"seed-{s}").model.state_dict() for s in (0, 1)]
    assert any((weights[0][k] != weights[1][k]).any() for k in weights[0])   # really another seed
    markdown = experiment.report_path.with_suffix(".md").read_text()
    seeds = markdown.split("## Across seeds")[1].split("##")[0]
    rows = [line for line in seeds.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("| 3 seeds |" in row and " ± " in row for row in rows), seeds
    assert "p = " in rows[0] and "vs next (ood:unseen EER)" in seeds
    assert "n = 1 seed" in markdown                      # the per-run tables say what they stand on
    assert "| cnn/seed-0 |" in markdown                  # seed runs keep their own rows, named by seed
    html = experiment.report_path.read_text()
    assert "cnn: 3 seeds" in html and "EER per epoch over 3 seeds" in html
    # `dfdetect report` given the folder holding the seeds reads the three runs
    again = runner.invoke(app, ["report", str(tmp_path / "runs" / "cnn"), "--out", str(tmp_path / "cnn.html")])
    assert again.exit_code == 0 and "(3 runs," in again.output, again.output
    assert "| 1 | cnn | Mel-CNN | 3 seeds |" in (tmp_path / "cnn.md").read_text()


def test_a_report_of_single_runs_says_n_1_seed(tmp_path, mel_store):
    from conftest import train_tiny

    run = train_tiny(mel_store, tmp_path / "solo", epochs=1)
    report = build_report([run], tmp_path / "r.html")
    text = report.markdown.read_text()
    assert "Every run here stands on n = 1 seed" in text
    ranking = text.split("## Ranking")[1]
    # the EER cells carry the per-epoch interval the trainer recorded
    record = json.loads((Path(run) / "metrics.jsonl").read_text().splitlines()[0])
    low, high = record["sets"]["ood:unseen"]["eer_ci"]
    assert f"\\[{low:.4f}, {high:.4f}\\]" in ranking   # Markdown-escaped brackets


def test_train_seeds_writes_one_run_folder_per_seed(tmp_path, mel_store):
    out = tmp_path / "runs" / "cnn"
    result = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train", "--out", str(out),
                                 "--epochs", "1", "--batch-size", "16", "--seeds", "3,5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-5"]
    assert [load_run(out / f"seed-{s}").config.train_config["seed"] for s in (3, 5)] == [3, 5]
    bad = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train", "--out", str(out),
                              "--seeds", "1,1"])
    assert bad.exit_code == 2 and "--seeds '1,1': give distinct seeds" in bad.output


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("seeds = [0, 1, 2]", "seeds = [0, 0]", 1), r"study.toml:\d+: \[runs.cnn\] seeds: \[0, 0\]"),
    (lambda t: t.replace("seeds = [0, 1, 2]", "seeds = 3", 1), r"\[runs.cnn\] seeds: 3: give a list"),
    (lambda t: t.replace("seeds = [0, 1, 2]", "seeds = [0, 1]\nseed = 4", 1), r"\[runs.cnn\] seed: give seed or seeds"),
])
def test_bad_seeds_are_named_by_line(tmp_path, mel_store, edit, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(_study(tmp_path, mel_store, edit(STUDY)))
