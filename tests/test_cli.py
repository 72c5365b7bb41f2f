"""The command line as a user runs it: `datasets list/show` and `demo`."""

import json
import re
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import GENERATORS, CorpusSpec, write_corpus
from dfdetect.demo.run import run_demo
from dfdetect.featurize.audio import encode

runner = CliRunner()


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
    spec = CorpusSpec(real=6, per_generator=3, min_seconds=1.0, max_seconds=4.0)
    monkeypatch.chdir(tmp_path)                  # a relative --out, as `dfdetect demo` gets by default
    summary = run_demo(Path("."), spec, workers=0)
    n_good = spec.real + spec.per_generator * len(GENERATORS)
    assert summary["index"]["clips"] == n_good + 2
    featurized = summary["featurize"]
    assert featurized["complete"] and featurized["clips"] == n_good + 2 and featurized["ok"] == n_good
    assert featurized["errors"] == {"decode_failed": 1, "empty": 1}
    assert featurized["arrays"]["mel"] == [2, 128, 301] and featurized["arrays"]["lfcc"] == [60, 301]
    assert featurized["arrays"]["wavlm"][:2] == [2, 149]
    assert summary["train"]["epochs"] == 6 and 0 <= summary["train"]["ood_eer"] <= 1
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


def test_demo_corpus_is_deterministic(tmp_path):
    spec = CorpusSpec(real=2, per_generator=1, min_seconds=1.0, max_seconds=1.5)
    a = write_corpus(tmp_path / "a", spec)
    b = write_corpus(tmp_path / "b", spec)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
