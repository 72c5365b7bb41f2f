"""The public Python API: a Detector scores a file to exactly what `dfdetect score` writes for it,
from a run or from an exported folder, and `import dfdetect` stays light."""

import csv
import subprocess
import sys

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.audio import encode

runner = CliRunner()


def test_detector_scores_what_the_command_writes(run_dir, tmp_path):
    from dfdetect import Detector

    d = tmp_path / "in"
    d.mkdir()
    for i, seconds in enumerate((1.2, 4.0, 7.5)):
        (d / f"c{i}.wav").write_bytes(encode(synthesize("vocoder" if i % 2 else "real",
                                                        np.random.default_rng(i), seconds), 16000, "wav"))
    (d / "broken.wav").write_bytes(b"RIFF" + bytes(64))
    out, windows = tmp_path / "s.csv", tmp_path / "w.csv"
    result = runner.invoke(app, ["score", str(d), "--model", str(run_dir), "--out", str(out), "--windows",
                                 str(windows), "--workers", "0"])
    assert result.exit_code == 1, result.output
    with open(out, newline="") as f:
        table = {r["path"]: r for r in csv.DictReader(f)}
    with open(windows, newline="") as f:
        window_rows = [r for r in csv.DictReader(f) if r["silent"] == "False"]
    detector = Detector.from_run(run_dir)
    results = list(detector.score_many([d], batch_size=5))
    assert [r.path for r in results] == list(table)
    for r in results:
        row = table[r.path]
        assert r.status == row["status"]
        if r.status == "ok":
            assert r.score == float(row["score"]) and r.decision == row["decision"]
            assert r.windows == [float(w["score"]) for w in window_rows if w["path"] == r.path]
            assert r.starts == [float(w["start"]) for w in window_rows if w["path"] == r.path]
        else:
            assert r.score is None and r.error_kind == row["error_kind"]
    one = detector.score(d / "c1.wav")
    assert one.score == float(table[str(d / "c1.wav")]["score"]) and one.threshold == float(row["threshold"])
    audio, rate = sf.read(d / "c1.wav", dtype="float32")
    assert detector.score(audio, sample_rate=rate).score == one.score   # an array scores as its file

    exported = tmp_path / "model"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(exported)]).exit_code == 0
    assert Detector.from_pretrained(exported).score(d / "c1.wav").score == one.score


def test_import_dfdetect_stays_light():
    code = "import sys, dfdetect; assert 'torch' not in sys.modules; dfdetect.Detector; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_readme_example_runs_as_written(run_dir, tmp_path, monkeypatch):
    import re
    import shutil
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- api example[^>]*-->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_dir, "runs/mel_cnn")
    Path("clips").mkdir()
    Path("clips/interview.wav").write_bytes(encode(synthesize("real", np.random.default_rng(3), 5.0), 16000, "wav"))
    Path("clips/empty.wav").write_bytes(b"")
    exec(compile(block, "README.md", "exec"), {})


def test_open_store_reads_what_the_store_holds(mel_store):
    from dfdetect.api import open_store
    from dfdetect.store.schema import open_store as schema_open

    store = open_store(mel_store)
    assert store.arrays == ("mel",)
    info = store.info()
    meta = store.meta
    assert meta.num_rows == info["n_clips"] and {"split", "label", "status"} <= set(meta.column_names)
    rows = store.read_rows(["mel"], [0, 2])
    expected = schema_open(mel_store).group["mel"][[0, 2]]
    assert rows["mel"].shape == (2, 2, 128, 301) and np.array_equal(rows["mel"], expected, equal_nan=True)
