"""`dfdetect score --format asvspoof5|asvspoof2019`: challenge score files that the challenges'
readers (and `dfdetect evaluate --scores-format asvspoof`) read back to the same numbers, with untrusted
names kept to one field and failed inputs left out (never given an invented score)."""

import csv
import json

import numpy as np
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.audio import encode

runner = CliRunner()

# name on disk -> label; the tab, newline, space, '#' and leading '=' are what a hostile archive
# or a careless uploader puts in names
CLIPS = {"E_0001.flac": "bonafide", "E_0002.wav": "spoof", "we\tird\nname #1.wav": "bonafide",
         "=cmd|x.wav": "spoof", "E 0005.wav": "spoof", "E_0006.wav": "bonafide"}


def corpus(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, (name, label) in enumerate(CLIPS.items()):
        kind = "real" if label == "bonafide" else "vocoder"
        audio = synthesize(kind, np.random.default_rng(i), 2.0)
        (d / name).write_bytes(encode(audio, 16000, "flac" if name.endswith(".flac") else "wav"))
    (d / "broken.wav").write_bytes(b"RIFF" + bytes(100))    # fails: no score can be written for it
    return d


def score(run_dir, d, out, fmt):
    return runner.invoke(app, ["score", str(d), "--model", str(run_dir), "--out", str(out), "--format", fmt,
                               "--workers", "0"])


def evaluate(args):
    result = runner.invoke(app, ["evaluate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_challenge_files_round_trip_through_evaluate(run_dir, tmp_path):
    d = corpus(tmp_path)
    tables = {}
    for fmt, name in (("asvspoof5", "scores.tsv"), ("asvspoof2019", "scores.txt")):
        out = tmp_path / fmt / name
        result = score(run_dir, d, out, fmt)
        assert result.exit_code == 1, result.output            # one input failed
        assert "1 failed or skipped inputs have no score" in " ".join(result.output.split())
        status = out.with_name(out.stem + ".status.csv")
        with open(status, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(CLIPS) + 1 and sum(r["status"] == "ok" for r in rows) == len(CLIPS)
        lines = out.read_text(encoding="utf-8").split("\n")
        assert lines[-1] == ""                                  # newline-terminated
        body = lines[1:-1] if fmt == "asvspoof5" else lines[:-1]
        if fmt == "asvspoof5":
            assert lines[0] == "filename\tcm-score"
        sep = "\t" if fmt == "asvspoof5" else " "
        # every trial one line of exactly two fields, whatever its name holds; broken.wav absent
        assert len(body) == len(CLIPS) and all(len(line.split(sep)) == 2 and len(line.split()) == 2 for line in body)
        written = dict(line.split(sep) for line in body)
        assert "broken" not in written and "E_0001" in written and "E\\x200005" in written
        assert "we\\x09ird\\x0aname\\x20\\x231" in written and "\\x3dcmd|x" in written
        # higher = bona fide: 1 - P(fake), the status table's score
        by_stem = {r["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: float(r["score"])
                   for r in rows if r["status"] == "ok"}
        assert sorted(float(v) for v in written.values()) == sorted(round(1 - p, 6) for p in by_stem.values())
        # the labels as an ASVspoof protocol (speaker, trial, -, -, key), then evaluate reads the file back
        protocol = tmp_path / fmt / "keys.txt"
        protocol.write_text("".join(f"S01 {t} - - {CLIPS[n]}\n" for t, n in zip(written, CLIPS)), encoding="utf-8")
        back = evaluate(["--scores", out, "--scores-format", "asvspoof", "--higher-is", "real", "--labels", protocol])
        assert back["source"]["clips"] == len(CLIPS)
        tables[fmt] = back["metrics"]
        # the same numbers as the table's own P(fake) scores with the same labels
        table = tmp_path / fmt / "own.csv"
        table.write_text("clip,score,label\n" + "".join(f"{t},{1 - float(v):.6f},{CLIPS[n]}\n"
                                                         for (t, v), n in zip(written.items(), CLIPS)))
        own = evaluate(["--scores", table])["metrics"]
        for key in ("eer", "auc", "min_dcf", "n_fake", "n_real"):
            assert back["metrics"][key] == own[key], key
        assert back["metrics"]["at_0.5"] == own["at_0.5"]
    assert tables["asvspoof5"] == tables["asvspoof2019"]


def test_challenge_file_refuses_two_inputs_with_one_trial_name(run_dir, tmp_path):
    d = tmp_path / "in"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    for sub, ext in (("a", "wav"), ("b", "flac")):
        (d / sub / f"x.{ext}").write_bytes(encode(synthesize("real", np.random.default_rng(0), 2.0), 16000, ext))
    out = tmp_path / "s.tsv"
    result = score(run_dir, d, out, "asvspoof5")
    assert result.exit_code == 2 and "are both trial 'x'" in " ".join(result.output.split())
    assert not out.exists() and (tmp_path / "s.status.csv").exists()   # every row kept, nothing half-written


def test_unknown_format_and_existing_challenge_file_are_usage_errors(run_dir, tmp_path):
    d = corpus(tmp_path)
    assert "unknown --format 'kaldi'" in " ".join(score(run_dir, d, tmp_path / "s.tsv", "kaldi").output.split())
    (tmp_path / "s.tsv").write_text("precious")
    result = score(run_dir, d, tmp_path / "s.tsv", "asvspoof5")
    assert result.exit_code == 2 and (tmp_path / "s.tsv").read_text() == "precious"
