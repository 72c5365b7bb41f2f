"""The command line as a user runs it: `datasets list/show` and `demo`."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import GENERATORS, CorpusSpec, write_corpus
from dfdetect.demo.run import BEST_LINE, run_demo
from dfdetect.featurize.audio import encode

runner = CliRunner()
CHECK_DEMO = Path(__file__).resolve().parents[1] / ".ci" / "check-demo"   # what .ci/run checks the demo with


def check_demo(text: str) -> subprocess.CompletedProcess:
    """.ci/run's check of the demo's printed output, run as .ci/run runs it."""
    return subprocess.run([sys.executable, str(CHECK_DEMO), "-"], input=text, capture_output=True, text=True)


def test_datasets_list_names_every_adapter():
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0
    for name in ("deepfake_eval_2024", "asvspoof5", "asvspoof2019_la", "in_the_wild", "folder", "manifest"):
        assert name in result.output


def test_datasets_show_counts_a_clean_folder(tmp_path):
    write_corpus(tmp_path, CorpusSpec(real=5, per_generator=3, min_seconds=1, max_seconds=1.5))
    result = runner.invoke(app, ["datasets", "show", "folder", "--root", str(tmp_path), "--json", "--decode", "-1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # reals 3/1/1 over train/test/ood; seen generators 2/1 over train/test; the held-out one in ood
    assert report["counts"]["by_split"] == {"train": {"real": 3, "fake": 6}, "test": {"real": 1, "fake": 3},
                                            "ood": {"real": 1, "fake": 3}}
    assert report["counts"]["fake_by_generator"] == {g: 3 for g in GENERATORS}
    assert (report["counts"]["real"], report["counts"]["fake"]) == (5, 12)
    assert report["problems"] == []
    table = runner.invoke(app, ["datasets", "show", "folder", "--root", str(tmp_path)])
    assert "17 clips (5 real, 12 fake)" in table.output
    assert " ".join(["all splits", "5", "12", "17"]) in " ".join(table.output.replace("│", " ").split())


def test_datasets_show_finds_broken_audio_before_the_expensive_pass(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    t = np.arange(16000) / 16000
    (tmp_path / "real" / "ok.wav").write_bytes(encode(np.sin(2 * np.pi * 200 * t), 16000, "wav"))
    (tmp_path / "fake" / "silent.wav").write_bytes(encode(np.zeros(16000), 16000, "wav"))
    (tmp_path / "fake" / "not audio.mp3").write_text("<html>403 Forbidden</html>")
    result = runner.invoke(app, ["datasets", "show", "folder", "--root", str(tmp_path), "--decode", "-1"])
    assert result.exit_code == 1
    assert "silent.wav" in result.output and "[silent]" in result.output
    assert "not audio.mp3" in result.output and "[unknown_container]" in result.output


def test_datasets_show_wrong_root_names_the_expected_file(tmp_path):
    result = runner.invoke(app, ["datasets", "show", "in_the_wild", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "meta.csv" in result.output


def test_datasets_show_unknown_adapter(tmp_path):
    result = runner.invoke(app, ["datasets", "show", "timit", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "valid names" in result.output


def test_demo_runs_every_stage_and_accounts_for_every_file(tmp_path, monkeypatch):
    """The demo scaled down; the full-size `dfdetect demo` is README's first command, which .ci/run
    runs as written before the suite and checks (its files and what it prints)."""
    spec = CorpusSpec(real=6, per_generator=3, min_seconds=1.0, max_seconds=4.0, val_real=2, val_per_generator=1)
    monkeypatch.chdir(tmp_path)                  # a relative --out, as `dfdetect demo` gets by default
    printed = io.StringIO()
    summary = run_demo(Path("."), spec, console=Console(file=printed, width=80), workers=0)
    n_good = spec.real + spec.val_real + spec.per_generator * len(GENERATORS) + spec.val_per_generator * 3
    assert summary["index"]["clips"] == n_good + 2
    assert summary["index"]["by_split"]["val"] == {"real": 2, "fake": 3}   # seen families only
    featurized = summary["featurize"]
    assert featurized["complete"] and featurized["clips"] == n_good + 2 and featurized["ok"] == n_good
    assert featurized["errors"] == {"decode_failed": 1, "empty": 1}
    assert featurized["arrays"]["mel"] == [2, 128, 301] and featurized["arrays"]["lfcc"] == [60, 301]
    assert featurized["arrays"]["wavlm"][:2] == [2, 149]
    best = summary["best"]
    assert best["run"] in summary["study"] and best["epochs"] == 6 and 1 <= best["epoch"] <= 6
    assert all(0 <= best[k] <= 1 for k in ("test_eer", "test_accuracy", "ood_eer", "val_eer"))
    html = (tmp_path / "report.html").read_text()
    assert summary["study"] == {"mel_aasist": "done", "mel_cnn": "done", "mel_aasist_corrupt": "done",
                                "mel_cnn_corrupt": "done"}
    assert "mel_cnn_corrupt" in (tmp_path / "report.md").read_text()
    assert summary["score"]["rows"] == n_good + 2 and summary["score"]["scored"] == n_good
    assert summary["score"]["failed"] == 2 and summary["score"]["skipped"] == 0
    assert summary["score"]["errors"] == {"decode_failed": 1, "empty": 1}
    assert summary["report"]["html"] == str(tmp_path / "report.html") and "<img" in html
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html)
    assert sources and all(src.startswith("data:") for src in sources)   # self-contained: no fetches
    # The line .ci/run checks is printed whole (not wrapped at 80 columns) with the summary's numbers,
    # and .ci/check-demo judges exactly those (this scaled-down corpus need not pass it).
    line = next(x for x in printed.getvalue().splitlines() if x.startswith("best head: "))
    assert line.startswith(f"best head: {best['run']} test EER {best['test_eer']:.1%}, accuracy "
                           f"{best['test_accuracy']:.1%} at its threshold; unseen family EER {best['ood_eer']:.1%}")
    verdict = check_demo(printed.getvalue())
    passes = (round(best["test_eer"] * 100, 1) <= 10 and round(best["test_accuracy"] * 100, 1) >= 85
              and round(best["ood_eer"] * 100, 1) > round(best["test_eer"] * 100, 1))
    assert (verdict.returncode == 0) == passes, verdict.stderr


def best_line(**numbers) -> str:
    head = {"run": "mel_aasist", "epoch": 5, "epochs": 6, "threshold": 0.4321, "val_eer": 0.04,
            "test_eer": 0.05, "test_accuracy": 0.93, "ood_eer": 0.2}
    return BEST_LINE.format(**{**head, **numbers})


@pytest.mark.parametrize("numbers, problem", [
    ({}, None),
    ({"test_eer": 0.1, "test_accuracy": 0.85}, None),                       # the limits themselves pass
    ({"test_eer": 0.1042}, "test EER 10.4% > 10.0%"),
    ({"test_accuracy": 0.8472}, "test accuracy 84.7% < 85.0% at its threshold"),
    ({"ood_eer": 0.05}, "unseen-family EER 5.0% is not worse than test EER 5.0%"),
    ({"ood_eer": 0.03}, "unseen-family EER 3.0% is not worse"),
])
def test_ci_checks_the_demos_best_head_line(numbers, problem):
    """The line the demo prints (BEST_LINE) is the one .ci/check-demo parses, and each limit fails it."""
    verdict = check_demo(f"some output\n{best_line(**numbers)}\nreport: open report.html\n")
    if problem is None:
        assert verdict.returncode == 0, verdict.stderr
    else:
        assert verdict.returncode == 1 and problem in verdict.stderr and "mel_aasist" in verdict.stderr


def test_ci_fails_a_demo_without_its_best_head_line():
    verdict = check_demo("wrote 360 clips\nin distribution vs the unseen 'codec' family\n")
    assert verdict.returncode == 1 and "no 'best head: " in verdict.stderr


def test_demo_corpus_is_deterministic(tmp_path):
    spec = CorpusSpec(real=2, per_generator=1, min_seconds=1.0, max_seconds=1.5)
    a = write_corpus(tmp_path / "a", spec)
    b = write_corpus(tmp_path / "b", spec)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_demo_corpus_val_split_adds_clips_of_the_seen_families_only(tmp_path):
    """The demo's validation split: reals and seen generators, never the held-out family, and adding
    it changes no train/test/ood clip."""
    spec = CorpusSpec(real=5, per_generator=3, min_seconds=1.0, max_seconds=1.2)
    plain = write_corpus(tmp_path / "plain", spec)
    with_val = write_corpus(tmp_path / "val", CorpusSpec(**{**spec.__dict__, "val_real": 2, "val_per_generator": 1}))
    val = [p.relative_to(tmp_path / "val") for p in with_val if p.relative_to(tmp_path / "val").parts[0] == "val"]
    assert sorted(p.parent.as_posix() for p in val) == ["val/fake/bandlimited", "val/fake/griffinlim",
                                                        "val/fake/vocoder", "val/real", "val/real"]
    others = [p for p in with_val if p.relative_to(tmp_path / "val").parts[0] != "val"]
    assert [p.relative_to(tmp_path / "val") for p in others] == [p.relative_to(tmp_path / "plain") for p in plain]
    same = [(a, b) for a, b in zip(others, plain) if a.suffix not in (".ogg", ".opus")]   # Ogg: random serials
    assert same and all(a.read_bytes() == b.read_bytes() for a, b in same)
