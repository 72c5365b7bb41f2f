"""`dfdetect report` from real runs trained here: the reference study's tables, a self-contained page, and each
failure-signature warning firing on a run built to show it (and quiet on one that does not)."""

import copy
import json
import re
import shutil

import pytest
from conftest import train_tiny
from scipy.stats import pearsonr, spearmanr
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.evaluate.report import ReportError, build_report, find_warnings, read_run
from dfdetect.models.runs import RunError


@pytest.fixture(scope="module")
def runs(mel_store, tmp_path_factory):
    """Two real Mel-CNN runs (different seeds) on a tiny generated corpus."""
    base = tmp_path_factory.mktemp("report")
    return [train_tiny(mel_store, base / f"cnn_seed{seed}", seed=seed) for seed in (0, 1)]


def _records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def constructed(real_run, out, epochs=8, test_acc=0.90, val_eer=0.10, ood_acc=0.80, ood_recall=0.70,
                ood_spec=0.80, mcc=0.50, overrides=None):
    """A copy of a real run whose metrics.jsonl is rewritten: `epochs` epochs of healthy numbers
    (best validation at epoch 1), then `overrides(epoch, record)` to draw a failure signature."""
    shutil.copytree(real_run, out)
    template = _records(real_run)[0]
    lines = []
    for epoch in range(1, epochs + 1):
        r = copy.deepcopy(template)
        r["epoch"] = epoch
        r["sets"]["val"]["eer"] = val_eer + 0.001 * (epoch - 1)
        r["sets"]["test"]["at_0.5"]["accuracy"] = test_acc
        r["sets"]["ood:unseen"]["at_0.5"].update(accuracy=ood_acc, recall=ood_recall, specificity=ood_spec)
        for m in r["sets"].values():
            m["at_0.5"]["mcc"] = mcc
        if overrides:
            overrides(epoch, r)
        lines.append(json.dumps(r))
        checkpoint = out / "checkpoints" / f"epoch_{epoch:03d}.safetensors"
        if not checkpoint.exists():
            shutil.copy(out / "checkpoints" / "epoch_001.safetensors", checkpoint)
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_report_from_real_runs_is_self_contained_with_the_tables(runs, tmp_path):
    report = build_report(runs, tmp_path / "out" / "report.html")
    page = report.html.read_text()
    markdown = report.markdown.read_text()
    assert report.markdown == tmp_path / "out" / "report.md"
    # self-contained: every image inline, nothing fetched or linked
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert len(sources) == 2 * len(runs) and all(s.startswith("data:image/png;base64,") for s in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", page)   # base64 can spell anything
    assert "http" not in text and "href" not in text and "<link" not in text
    for text in ("Rank", "Test Acc", "unseen Acc", "unseen F1", "unseen EER", "Checkpoint MB", "Acc/MB", "<table>"):
        assert text in page, text
    # the ranking: by OOD accuracy at the best-validation epoch, as metrics.jsonl records it
    table = markdown.split("| Rank |")[1].split("\n\n")[0].splitlines()[2:]
    ranked = [row.split(" | ")[1] for row in table]
    infos = {r.name: r for r in report.runs}
    accuracies = [infos[n].metric(infos[n].best_epoch, "ood:unseen", "accuracy") for n in ranked]
    assert accuracies == sorted(accuracies, reverse=True) and set(ranked) == {p.name for p in runs}
    for row, name in zip(table, ranked):
        run = infos[name]
        best = next(r for r in _records(run.path) if r["epoch"] == run.best_epoch)
        assert f"{best['sets']['ood:unseen']['at_0.5']['accuracy']:.2%}" in row
        assert f"{best['sets']['test']['at_0.5']['accuracy']:.2%}" in row
    assert "at the last epoch" in markdown or "last epoch" in markdown
    assert "undefined: it needs at least 3 runs" in markdown
    # model size: the checkpoint file, measured
    size = (runs[0] / "checkpoints" / f"epoch_{infos[runs[0].name].best_epoch:03d}.safetensors").stat().st_size
    assert f"{size / 1e6:.3f}" in markdown and "421,505" in markdown


def test_each_warning_fires_on_a_run_built_to_show_it(runs, tmp_path):
    real = runs[0]
    healthy = constructed(real, tmp_path / "healthy")
    assert find_warnings(read_run(healthy)) == []

    def trap(epoch, r):   # the reference study's fine-tuned WavLM+AASIST: test 100% while validation EER ~0.5
        if epoch >= 3:
            r["sets"]["test"]["at_0.5"]["accuracy"] = 1.0
            r["sets"]["val"]["eer"] = 0.498
    warnings = find_warnings(read_run(constructed(real, tmp_path / "trap", overrides=trap)))
    assert [w.signature for w in warnings] == ["trap"]
    assert "epochs 3-8" in warnings[0].message and "100.00%" in warnings[0].message and "0.4980" in warnings[0].message

    all_real = constructed(real, tmp_path / "all_real", ood_recall=0.0074, ood_acc=0.59)
    warnings = find_warnings(read_run(all_real))
    assert {w.signature for w in warnings} == {"degenerate"}
    assert "everything real on ood:unseen" in warnings[0].message and "recall 0.74%" in warnings[0].message

    all_fake = constructed(real, tmp_path / "all_fake", ood_spec=0.0, ood_recall=1.0)
    warnings = find_warnings(read_run(all_fake))
    assert {w.signature for w in warnings} == {"degenerate"}
    assert "everything fake" in warnings[0].message and "specificity 0.00%" in warnings[0].message

    def negative(epoch, r):   # the reference study's FLAC-corrupt CNN
        r["sets"]["test"]["at_0.5"]["mcc"] = -0.0736
    warnings = find_warnings(read_run(constructed(real, tmp_path / "negative", overrides=negative)))
    assert {w.signature for w in warnings} == {"negative_mcc"}
    assert "MCC -0.0736 < 0 on test" in warnings[0].message

    def apart(epoch, r):   # test peaks at epoch 1 while OOD keeps improving to epoch 8 (seed Part 4)
        r["sets"]["test"]["at_0.5"]["accuracy"] = 0.99 - 0.01 * epoch
        r["sets"]["ood:unseen"]["at_0.5"]["accuracy"] = 0.5 + 0.04 * epoch
    warnings = find_warnings(read_run(constructed(real, tmp_path / "apart", overrides=apart)))
    assert [w.signature for w in warnings] == ["epoch_gap"]
    assert "epoch 1 (98.00%)" in warnings[0].message and "epoch 8 (82.00%)" in warnings[0].message

    def close(epoch, r):   # best test and best OOD two epochs apart: under max(3, 25% of 8)
        r["sets"]["test"]["at_0.5"]["accuracy"] = 0.9 + 0.01 * (epoch == 4)
        r["sets"]["ood:unseen"]["at_0.5"]["accuracy"] = 0.7 + 0.01 * (epoch == 6)
    assert find_warnings(read_run(constructed(real, tmp_path / "close", overrides=close))) == []

    report = build_report([healthy, all_real], tmp_path / "r.html")
    markdown = report.markdown.read_text()
    assert "> **warning:** all_real: calls (nearly) everything real" in markdown
    assert "healthy:" not in markdown.split("## Warnings")[1].split("## Model size")[0]


def test_correlation_across_three_or_more_runs(runs, tmp_path):
    paths = [constructed(runs[0], tmp_path / f"r{i}", test_acc=t, ood_acc=o)
             for i, (t, o) in enumerate([(0.99, 0.59), (0.96, 0.72), (0.985, 0.83)])]
    markdown = build_report(paths, tmp_path / "c.html").markdown.read_text()
    test, ood = [0.99, 0.96, 0.985], [0.59, 0.72, 0.83]
    assert f"Pearson {pearsonr(test, ood).statistic:.4f}" in markdown
    assert f"Spearman {spearmanr(test, ood).statistic:.4f}" in markdown
    ranked = [row.split(" | ")[1] for row in markdown.split("| Rank |")[1].split("\n\n")[0].splitlines()[2:]]
    assert ranked == ["r2", "r1", "r0"]


def test_cli_report_and_its_errors(runs, tmp_path):
    out = tmp_path / "cli" / "report.html"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out), "--ood", "unseen"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".md").is_file()
    with pytest.raises(ReportError, match="no run has an OOD set 'dfeval'; they have: unseen"):
        build_report(runs, tmp_path / "x.html", ood="dfeval")
    empty = tmp_path / "no_checkpoints"
    shutil.copytree(runs[0], empty)
    shutil.rmtree(empty / "checkpoints")
    with pytest.raises(RunError, match="checkpoint"):
        build_report([empty], tmp_path / "y.html")
    result = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "z.html")])
    assert result.exit_code == 2 and "checkpoint" in result.output


def _ranked_run(name: str, accuracy: float, eer: float, act_dcf: float | None):
    from pathlib import Path

    from dfdetect.evaluate.report import RunInfo
    from dfdetect.models.runs import EpochRecord

    ood = {"eer": eer, "auc": 1 - eer, "min_dcf": 0.1, "at_0.5": {"accuracy": accuracy, "f1": accuracy}}
    if act_dcf is not None:
        ood["act_dcf"] = act_dcf
    record = EpochRecord({"epoch": 1, "train": {}, "seconds": {}, "sets": {"ood:x": ood, "val": {"eer": 0.1}}})
    return RunInfo(Path(name), name, "Mel-CNN", "t", None, 1, 1, 1, [record])


@pytest.mark.parametrize("rank_by,order", [("accuracy", ["acc", "dcf", "uncal"]),
                                           ("eer", ["uncal", "dcf", "acc"]),
                                           ("act_dcf", ["dcf", "acc", "uncal"])])
def test_the_ranking_can_be_sorted_by_accuracy_eer_or_act_dcf(rank_by, order):
    from dfdetect.evaluate.report import Page, ranking_table

    runs = [_ranked_run("acc", 0.9, 0.2, 0.8), _ranked_run("dcf", 0.7, 0.15, 0.3), _ranked_run("uncal", 0.5, 0.1, None)]
    page = Page("t")
    ranking_table(page, runs, ["ood:x"], "ood:x", "best", rank_by)
    (_, headers, rows), = page.blocks
    assert [row[1] for row in rows] == order
    assert ("x actDCF" in headers) == (rank_by == "act_dcf")
    if rank_by == "act_dcf":   # the uncalibrated run has no actDCF: undefined, ranked last
        assert rows[-1][headers.index("x actDCF")] == "undefined"


def test_rank_by_is_checked_before_any_work(tmp_path):
    with pytest.raises(ReportError, match="--rank-by 'cllr': choose one of accuracy, eer, act_dcf"):
        build_report([tmp_path / "nothing"], tmp_path / "r.html", rank_by="cllr")
