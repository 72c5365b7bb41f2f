"""One answer per file: `dfdetect score`'s table, Detector.score and Detector.score_many give a file
the same status, score and decision (score/per_file.py), at the threshold's edge, out of GPU memory
and with a model that gives NaN; the API's arguments and the command's --json summary."""

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dfdetect.api import Detector
from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.errors import DfdetectError
from dfdetect.featurize.audio import encode
from dfdetect.models.pretrained import write_pretrained
from dfdetect.models.runs import load_run
from dfdetect.score.options import ScoreOptions
from dfdetect.score.scoring import Scorer

runner = CliRunner()


def _wav(path, kind="real", seconds=1.2, seed=0):
    path.write_bytes(encode(synthesize(kind, np.random.default_rng(seed), seconds), 16000, "wav"))
    return path


def _table(args) -> dict:
    result = runner.invoke(app, ["score", *map(str, args), "--workers", "0"])
    assert result.exit_code in (0, 1), result.output
    out = args[args.index("--out") + 1]
    with open(out, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def _export(run, out, threshold: float | None = None):
    """`run` (its weights as set in memory) exported through the export's own writer, with `threshold`."""
    if threshold is not None:
        records = [{**r, "sets": {**r["sets"], "val": {**r["sets"].get("val", {}), "eer_threshold": threshold}}}
                   if r["epoch"] == run.epoch else r for r in run.records]
        run = dataclasses.replace(run, records=records)
    return write_pretrained(run, out, card="test export\n")


def _constant_run(run_dir, logit: float):
    """The run with every weight zero and the classifier's bias `logit`: every window scores
    sigmoid(logit), exactly, as the Scorer computes it."""
    run = load_run(run_dir)
    with torch.no_grad():
        for p in run.model.parameters():
            p.zero_()
        run.model.classifier.bias.fill_(logit)
    return run, float(Scorer(run, "cpu")({"mel": np.zeros((1, 2, 128, 301), np.float16)})[0])


@pytest.mark.parametrize("target", [0.6000004, 0.5999996])
def test_a_score_at_or_within_1e7_of_the_threshold_gets_one_decision_everywhere(run_dir, tmp_path, target):
    """The decision is taken on the unrounded score in the table and in the API; rounding to the
    table's 6 decimals first moves a score within 5e-7 of the threshold across it."""
    run, s = _constant_run(run_dir, math.log(target / (1 - target)))
    assert abs(round(s, 6) - s) > 2e-7   # the 6-decimal score is on the other side of thresholds near s
    clip = _wav(tmp_path / "clip.wav")   # 1.2 s: one window, so the file's score is s itself
    for n, threshold in enumerate((s, s - 1e-7, s + 1e-7, np.nextafter(s, 0.0), np.nextafter(s, 1.0))):
        exported = _export(run, tmp_path / f"model{n}", float(threshold))
        expected = "fake" if s >= threshold else "real"
        row = _table(["--model", exported, clip, "--out", tmp_path / f"s{n}.csv"])[str(clip)]
        detector = Detector.from_pretrained(exported)
        one, many = detector.score(clip), next(detector.score_many([clip]))
        assert float(row["threshold"]) == threshold == one.threshold
        assert row["decision"] == one.decision == many.decision == expected, (s, threshold)
        assert float(row["score"]) == one.score == many.score == round(s, 6)
    from dfdetect.score.per_file import FileRule

    assert FileRule(s).outcome(np.array([s])).decision == "fake"   # the rule itself, for evaluation's use


def test_a_window_out_of_gpu_memory_is_that_files_error_row_in_score_and_the_api(run_dir, tmp_path, monkeypatch):
    """Out of memory even at one window (the first window scored): that file's row is an
    out_of_memory error in the table, and the API returns the same row instead of raising; the
    next file is scored."""
    first, second = _wav(tmp_path / "a.wav", seed=1), _wav(tmp_path / "b.wav", "vocoder", 7.0, seed=2)
    forward, calls = Scorer._forward, []

    def out_of_memory_once(self, inputs):
        calls.append(len(next(iter(inputs.values()))))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, inputs)

    monkeypatch.setattr(Scorer, "_forward", out_of_memory_once)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    rows = _table(["--model", run_dir, first, second, "--out", tmp_path / "s.csv", "--batch-size", 1])
    calls.clear()
    results = {r.path: r for r in Detector.from_run(run_dir).score_many([first, second], batch_size=1)}
    for path in (str(first), str(second)):
        assert results[path].status == rows[path]["status"] and results[path].error_kind == rows[path]["error_kind"]
    oom = results[str(first)]
    assert oom.status == "error" and oom.error_kind == "out_of_memory" and oom.score is None and oom.decision is None
    assert "out of GPU memory" in oom.error and "out of GPU memory" in rows[str(first)]["error"]
    assert results[str(second)].status == "ok" and results[str(second)].score == float(rows[str(second)]["score"])


def test_weights_that_give_nan_make_error_rows_not_ok_rows_without_a_score(run_dir, tmp_path):
    run = load_run(run_dir)
    with torch.no_grad():
        for p in run.model.parameters():
            p.fill_(float("nan"))
    exported = _export(run, tmp_path / "nan-model")
    clips = [_wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav", "vocoder", 5.0, seed=3)]
    result = runner.invoke(app, ["score", *map(str, clips), "--model", str(exported), "--out",
                                 str(tmp_path / "s.csv"), "--workers", "0"])
    assert result.exit_code == 1 and "non_finite_score: 2" in result.output, result.output
    rows = _table(["--model", exported, *clips, "--out", tmp_path / "t.csv"])
    results = list(Detector.from_pretrained(exported).score_many(clips))
    for clip, r in zip(clips, results):
        row = rows[str(clip)]
        row_fields = (row["status"], row["error_kind"], row["score"], row["decision"])
        assert row_fields == ("error", "non_finite_score", "", "")
        assert (r.status, r.error_kind, r.score, r.decision) == ("error", "non_finite_score", None, None)
        assert "non-finite" in row["error"] and "non-finite" in r.error


def test_score_json_prints_the_summary_on_stdout(run_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _wav(folder / "a.wav", seconds=2.0)
    _wav(folder / "b.wav", "vocoder", 4.0, seed=4)
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(64))
    (folder / "link").symlink_to(tmp_path, target_is_directory=True)   # skipped: links to folders are not followed
    out = tmp_path / "s.jsonl"
    result = runner.invoke(app, ["score", str(folder), "--model", str(run_dir), "--out", str(out), "--workers", "0",
                                 "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)   # stdout holds the JSON and nothing else
    assert summary["out"] == summary["table"] == str(out) and summary["challenge"] is None
    assert summary["scored"] == 2 and summary["rows"] == 4 and summary["exit_code"] == 1
    assert summary["failed"]["total"] == 1 and sum(summary["failed"]["by_kind"].values()) == 1
    assert summary["skipped"] == {"total": 1, "by_kind": {"link": 1}}
    assert summary["audio_seconds"] == pytest.approx(6.0, abs=0.01)
    assert summary["files_per_second"] > 0 and summary["audio_hours_per_hour"] > 0
    assert len(out.read_text().splitlines()) == 4


def test_options_are_checked_once_for_the_command_and_the_api(run_dir):
    for options, message in ((ScoreOptions(aggregate="median"), "--aggregate"), (ScoreOptions(hop=0), "--hop"),
                             (ScoreOptions(top_k=2.5), "--top-k"), (ScoreOptions(batch_size=True), "--batch-size"),
                             (ScoreOptions(window=float("nan")), "--window"), (ScoreOptions(workers=-1), "--workers"),
                             (ScoreOptions(format="csv"), "--format")):
        with pytest.raises(DfdetectError, match=message):
            options.checked()
        with pytest.raises(DfdetectError, match=message):   # the API too, before any scoring
            Detector(load_run(run_dir), options)
    assert ScoreOptions(window=2.0, hop=0.5, workers=0).checked() == ScoreOptions(window=2.0, hop=0.5, workers=0)


@pytest.fixture(scope="module")
def detector(run_dir):
    return Detector.from_run(run_dir)


@pytest.mark.parametrize("call, argument", [
    (lambda d, p: d.score([str(p)] * 10_000), "audio"),
    (lambda d, p: d.score(torch.zeros(16000)), "audio"),
    (lambda d, p: d.score(np.zeros((16000, 2), np.float32), sample_rate=16000), "audio"),
    (lambda d, p: d.score(np.zeros((2, 3, 16000), np.float32), sample_rate=16000), "audio"),
    (lambda d, p: d.score(np.array(["a"] * 16000), sample_rate=16000), "audio"),
    (lambda d, p: d.score(np.zeros(16000, np.float32)), "sample_rate"),
    (lambda d, p: d.score(np.zeros(16000, np.float32), sample_rate=0), "sample_rate"),
    (lambda d, p: d.score(np.zeros(16000, np.float32), sample_rate=-16000), "sample_rate"),
    (lambda d, p: d.score(np.zeros(16000, np.float32), sample_rate="16000"), "sample_rate"),
    (lambda d, p: d.score(np.zeros(16000, np.float32), sample_rate=16000.5), "sample_rate"),
    (lambda d, p: d.score(p, sample_rate=16000), "sample_rate"),
    (lambda d, p: d.score_many(str(p)), "paths"),
    (lambda d, p: d.score_many([p, torch.zeros(3)]), "paths[1]"),
    (lambda d, p: d.score_many(torch.zeros(10_000)), "paths[0]"),
    (lambda d, p: d.score_many([p], batch_size=0), "batch_size"),
])
def test_api_arguments_that_are_not_audio_are_one_error_naming_them(detector, tmp_path, call, argument):
    clip = _wav(tmp_path / "a.wav")
    with pytest.raises(DfdetectError) as error:
        call(detector, clip)
    message = str(error.value)
    assert message.startswith(argument) and len(message) < 300, message
    assert isinstance(error.value, ValueError)


def test_api_arrays_of_samples_score_as_their_file(detector, tmp_path):
    stereo = np.stack([synthesize("real", np.random.default_rng(5), 2.0)] * 2).astype(np.float32)
    path = tmp_path / "stereo.wav"
    import soundfile as sf

    sf.write(path, stereo.T, 16000, subtype="FLOAT")
    expected = detector.score(path)
    assert expected.status == "ok"
    assert detector.score(stereo, sample_rate=16000).score == expected.score
    assert detector.score(stereo, sample_rate=np.int32(16000)).score == expected.score   # numpy ints are whole numbers
    assert detector.score(os.fspath(path)).score == expected.score
