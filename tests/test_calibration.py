"""Calibration: P(fake) -> LLR maps, fitted at the end of training and by `dfdetect calibrate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import one_line
from typer.testing import CliRunner

from dfdetect.calibration import Calibration, CalibrationError, effective_prior, fit_calibration
from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.pipeline import featurize
from dfdetect.metrics import act_dcf, cllr, min_dcf
from dfdetect.models.runs import RunFolder, load_run
from dfdetect.train.trainer import TrainConfig, train

SPLITS = {"train": 80, "dev": 40, "test": 50}   # clips per class


def overlapping_corpus(root, seed: int = 3) -> None:
    """Speech-like reals; fakes the same voice with a 4 kHz tone whose level is drawn from 0 up, so
    the quietest fakes are indistinguishable from reals: the classes overlap."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    for split, n in SPLITS.items():
        for kind in ("real", "fake"):
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(n):
                audio = synthesize("real", rng, 1.0)[:16000]
                if kind == "fake":
                    level = rng.uniform(0, 0.08) * np.sqrt(np.mean(audio ** 2)) * np.sqrt(2)
                    audio = audio + level * np.sin(2 * np.pi * 4000 * t[: audio.size] + rng.uniform(0, 6.3))
                sf.write(folder / f"{kind}_{i:03d}.wav", audio.astype(np.float32), 16000)


@pytest.fixture(scope="module")
def overlap_run(tmp_path_factory):
    """A Mel-CNN on the overlapping classes, validated (and so calibrated) on the dev split."""
    base = tmp_path_factory.mktemp("overlap")
    overlapping_corpus(base / "corpus")
    store = str(base / "mel.zarr")
    featurize("folder", base / "corpus", store, features=("mel",), workers=0, block_size=64)
    config = TrainConfig(arch="mel_cnn", train=f"{store}:train", val=f"{store}:dev", test=f"{store}:test",
                         epochs=4, batch_size=16, lr=1e-3, seed=0)
    train(config, base / "run")
    return base / "run", store


def test_a_run_calibrated_on_dev_makes_good_decisions_on_test(overlap_run):
    """Done means: act_dcf <= 1.3 x min_dcf + 0.05 and Cllr < 1 on the test split."""
    run, _ = overlap_run
    record = RunFolder(run).records()[-1]
    test = record.sets["test"]
    assert 0 < test["min_dcf"] < 1, test          # the classes overlap, and the head ranks them
    assert test["act_dcf"] <= 1.3 * test["min_dcf"] + 0.05, test
    assert test["cllr"] < 1, test
    assert test["min_cllr"] <= test["cllr"]
    assert test["at_bayes"]["threshold_on"] == "llr"
    assert record.calibration["fitted_on"]["set"] == "val" and record.calibration["fitted_on"]["epoch"] == 4
    # the run's default calibration: the best epoch's, fitted on dev, in calibrations/val.json
    folder = RunFolder(run)
    assert folder.calibration_names() == ["val"]
    saved = folder.read_calibration("val")
    best = load_run(run, "best")
    assert saved.fitted_on["epoch"] == best.epoch and saved.fitted_on["n_real"] == SPLITS["dev"]
    assert best.calibration() == saved
    assert best.calibration("none") is None


def test_the_uncalibrated_probabilities_decide_worse(overlap_run):
    """What calibration is for: P(fake) read as an LLR (its logit) costs more than the calibrated LLR."""
    run, _ = overlap_run
    table = RunFolder(run).score_table("last", "test")
    rows = np.genfromtxt(table, delimiter=",", names=True, dtype=None, encoding="utf-8")
    labels, scores = rows["label"], rows["score"]
    calibration = RunFolder(run).records()[-1].calibration
    llrs = Calibration.from_dict(calibration).llr(scores)
    raw = np.log(np.clip(scores, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(scores, 1e-7, 1 - 1e-7))
    assert cllr(labels, llrs) < cllr(labels, raw)
    assert act_dcf(labels, llrs) <= act_dcf(labels, raw) + 1e-12
    assert min_dcf(labels, llrs)[0] == pytest.approx(min_dcf(labels, scores)[0])   # ranking unchanged


def gaussian_scores(n: int, seed: int = 0):
    """P(fake) whose logit is 3 x + 5 for x ~ N(+-1, 1): the true LLR is 2x, i.e. (logit - 5) * 2/3."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n, int), np.ones(n, int)]
    x = rng.normal(size=2 * n) + np.where(labels == 1, 1, -1)
    return labels, 1 / (1 + np.exp(-(3 * x + 5)))


def test_logistic_calibration_recovers_the_true_llr():
    labels, scores = gaussian_scores(5000)
    calibration = fit_calibration(labels, scores)
    assert calibration.slope == pytest.approx(2 / 3, rel=0.05)
    assert calibration.offset == pytest.approx(-10 / 3, abs=0.15)
    assert calibration.prior == pytest.approx(effective_prior()) == pytest.approx(0.5 / 1.45)


def test_pav_calibration_is_monotone_and_close_to_optimal():
    labels, scores = gaussian_scores(2000, seed=1)
    pav = fit_calibration(labels, scores, method="pav")
    grid = np.linspace(0.001, 0.999, 500)
    assert np.all(np.diff(pav.llr(grid)) >= 0)
    test_labels, test_scores = gaussian_scores(2000, seed=2)
    assert cllr(test_labels, pav.llr(test_scores)) < 0.6   # the true LLR's Cllr is ~0.5 here


def test_separable_data_gives_finite_llrs():
    labels = np.r_[np.zeros(30, int), np.ones(30, int)]
    scores = np.where(labels == 1, 0.9, 0.1)
    for method in ("logistic", "pav"):
        llrs = fit_calibration(labels, scores, method=method).llr(scores)
        assert np.isfinite(llrs).all() and (llrs[labels == 1] > llrs[labels == 0].max()).all()


def test_json_round_trip_keeps_what_it_was_fitted_on(tmp_path):
    labels, scores = gaussian_scores(50)
    for method in ("logistic", "pav"):
        calibration = fit_calibration(labels, scores, method=method, fitted_on={"set": "dev", "store": "s.zarr"})
        again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
        assert again == calibration
        np.testing.assert_array_equal(again.llr(scores), calibration.llr(scores))
        assert again.fitted_on | {} == {"set": "dev", "store": "s.zarr", "n_real": 50, "n_fake": 50,
                                        "method": method, "prior": calibration.prior}


@pytest.mark.parametrize("labels,scores,fragment", [
    (np.zeros(40, int), np.linspace(0, 1, 40), "only real clips"),
    (np.r_[np.zeros(30, int), np.ones(19, int)], np.linspace(0, 1, 49), "30 real and 19 fake"),
    (np.r_[np.zeros(30, int), np.ones(30, int)], np.r_[np.full(59, 0.5), np.nan], "NaN"),
])
def test_bad_calibration_data_is_refused(labels, scores, fragment):
    with pytest.raises(CalibrationError, match=fragment):
        fit_calibration(labels, scores)


def test_a_damaged_calibration_file_is_named(tmp_path):
    with pytest.raises(CalibrationError, match="not a dfdetect calibration"):
        Calibration.from_dict({"format": "dfdetect-calibration", "method": "logistic", "prior": 0.3,
                               "slope": float("nan"), "offset": 0}, "x.json")


def test_calibrate_stores_a_named_calibration_and_measures_it_held_out(overlap_run, tmp_path):
    import shutil

    run, store = overlap_run
    run = shutil.copytree(run, tmp_path / "run")    # the shared run keeps only its own calibration
    result = CliRunner().invoke(app, ["calibrate", str(run), "--on", f"{store}:dev", "--held-out", f"{store}:test",
                                      "--method", "pav", "--name", "mine", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    held = summary["held_out"]
    assert held["set"] == f"{store}:test" and held["n_real"] == held["n_fake"] == SPLITS["test"]
    assert summary["before_calibration"].startswith("val: logistic")   # the run's own, from training
    assert {"act_dcf", "cllr"} <= set(held["after"]) and held["min_cllr"] <= held["after"]["cllr"]
    folder = RunFolder(run)
    assert folder.calibration_names()[0] == "mine"          # the newest is the default
    calibration = load_run(run).calibration()
    assert calibration.name == "mine" and calibration.method == "pav"
    assert calibration.fitted_on["spec"] == f"{store}:dev" and calibration.fitted_on["n_fake"] == SPLITS["dev"]

    shown = CliRunner().invoke(app, ["calibrate", str(run), "--on", f"{store}:dev", "--name", "again"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "actDCF" in text and "->" in text and "optimistic" in text and "--held-out" in text

    evaluated = CliRunner().invoke(app, ["evaluate", str(run), "--on", f"{store}:test", "--calibration", "mine",
                                         "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["source"]["calibration"]["name"] == "mine"
    labels = held["n_real"]
    assert metrics["metrics"]["act_dcf"] == pytest.approx(held["after"]["act_dcf"]) and labels
    assert metrics["metrics"]["cllr"] == pytest.approx(held["after"]["cllr"])
    assert metrics["metrics"]["at_bayes"]["threshold_on"] == "llr"
    bare = CliRunner().invoke(app, ["evaluate", str(run), "--on", f"{store}:test", "--calibration", "none",
                                    "--json"])
    assert bare.exit_code == 0, bare.output
    bare = json.loads(bare.stdout)
    assert bare["metrics"]["act_dcf"] is None and "calibrate first" in bare["metrics"]["act_dcf_undefined"]
    assert bare["metrics"]["min_cllr"] is not None
    assert any("no calibration" in note for note in bare["notes"])


def test_calibrate_refuses_bad_input_in_one_line(run_dir, mel_store, overlap_run):
    runner = CliRunner()
    small = runner.invoke(app, ["calibrate", str(run_dir), "--on", f"{mel_store}:test"])
    one_line(small, "--on", "needs at least 20 of each")
    run, store = overlap_run
    one_line(runner.invoke(app, ["calibrate", str(run), "--on", f"{store}:dev", "--name", "../x"]),
             "calibration name")
    one_line(runner.invoke(app, ["evaluate", str(run), "--on", f"{store}:test", "--calibration", "nosuch"]),
             "no calibration 'nosuch'")
    one_line(runner.invoke(app, ["calibrate", str(run), "--on", f"{store}:dev", "--method", "platt"]),
             "--method 'platt'")


def read_challenge(path) -> dict[str, float]:
    lines = path.read_text().splitlines()
    assert lines[0] == "filename\tcm-score"
    return {name: float(value) for name, value in (line.split("\t") for line in lines[1:])}


def test_score_tables_carry_llrs_and_the_challenge_file_the_bona_fide_llr(overlap_run, tmp_path):
    """Done means: the --format asvspoof5 file of the calibrated run, read by the official formulas
    (bona fide LLR, higher = bona fide), gives dfdetect's act_dcf and cllr, and the decisions hold."""
    from test_calibration_metrics import ref_act_dcf, ref_cllr

    from dfdetect.api import Detector

    run, store = overlap_run
    test_audio = Path(store).parent / "corpus" / "test"
    out = tmp_path / "scores.txt"
    result = CliRunner().invoke(app, ["score", str(test_audio), "--model", str(run), "--out", str(out),
                                      "--format", "asvspoof5", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "scores.status.csv")))
    calibration = load_run(run).calibration()
    assert {r["calibration"] for r in rows} == {"val"}
    for r in rows:
        assert float(r["llr"]) == pytest.approx(calibration.llr([float(r["score"])])[0], abs=1e-4)
        assert r["llr_decision"] == ("fake" if float(r["llr"]) > 0.6418538861723947 else "real")
    bona_fide = read_challenge(out)
    labels = {Path(r["path"]).stem: int(Path(r["path"]).parent.name == "fake") for r in rows}
    assert set(bona_fide) == set(labels)
    names = sorted(labels)
    y = np.array([labels[n] for n in names])
    llrs = np.array([-bona_fide[n] for n in names])
    bona, spoof = [bona_fide[n] for n in names if not labels[n]], [bona_fide[n] for n in names if labels[n]]
    assert act_dcf(y, llrs) == pytest.approx(ref_act_dcf(bona, spoof), abs=1e-9)
    assert cllr(y, llrs) == pytest.approx(ref_cllr(bona, spoof), abs=1e-9)
    table_llrs = {Path(r["path"]).stem: float(r["llr"]) for r in rows}
    assert all(bona_fide[n] == pytest.approx(-table_llrs[n], abs=1e-9) for n in names)
    assert ref_act_dcf(bona, spoof) <= 1.3 * min_dcf(y, llrs)[0] + 0.05 and ref_cllr(bona, spoof) < 1

    detector = Detector.from_run(run)
    first = next(iter(sorted(test_audio.rglob("*.wav"))))
    scored = detector.score(first)
    assert scored.llr == pytest.approx(calibration.llr([scored.score])[0], abs=1e-4)
    assert scored.llr_decision in ("fake", "real")
    assert Detector.from_run(run, calibration="none").score(first).llr is None

    bare = tmp_path / "bare.txt"
    result = CliRunner().invoke(app, ["score", str(test_audio / "real"), "--model", str(run), "--out", str(bare),
                                      "--format", "asvspoof5", "--workers", "0", "--calibration", "none"])
    assert result.exit_code == 0, result.output
    bare_rows = list(csv.DictReader(open(tmp_path / "bare.status.csv")))
    assert all(r["llr"] == "" and r["calibration"] == "" for r in bare_rows)
    assert all(0 <= v <= 1 for v in read_challenge(bare).values())     # 1 - P(fake) without a calibration


def test_an_export_ships_its_calibration_and_its_card_says_so(overlap_run, tmp_path):
    from dfdetect.models.pretrained import load_pretrained

    run, _ = overlap_run
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## Calibration" in card and "Ships the calibration val: logistic" in card and "actDCF" in card
    loaded = load_pretrained(tmp_path / "export")
    assert loaded.calibration() == load_run(run).calibration()
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "bare"), "--calibration", "none"])
    assert result.exit_code == 0, result.output
    assert "No calibration ships" in (tmp_path / "bare" / "README.md").read_text()
    assert load_pretrained(tmp_path / "bare").calibration() is None


def test_the_report_has_a_calibration_section(overlap_run, tmp_path):
    from dfdetect.evaluate.report import build_report

    run, _ = overlap_run
    report = build_report([run], tmp_path / "report.html")
    markdown = report.markdown.read_text()
    assert "calibration (actDCF vs minDCF, Cllr vs minCllr)" in markdown
    test = RunFolder(run).records()[-1].sets["test"]   # epoch 4 is the best here too
    assert f"| test | {test['act_dcf']:.4f} | {test['min_dcf']:.4f} | {test['cllr']:.4f} |" in markdown
    assert "normalised Bayes error rate" in report.html.read_text()


def test_an_ood_set_whose_decisions_do_not_transfer_is_warned_about():
    from dfdetect.evaluate.report import RunInfo, find_warnings
    from dfdetect.models.runs import EpochRecord

    def record(act_dcf):
        sets = {"val": {"eer": 0.1, "min_dcf": 0.2, "act_dcf": 0.25, "at_0.5": {}},
                "ood:wild": {"eer": 0.2, "min_dcf": 0.3, "act_dcf": act_dcf, "at_0.5": {}}}
        return [EpochRecord(epoch=1, train={"loss": 0.1}, sets=sets, seconds={})]

    def run(act_dcf):
        return RunInfo(Path("r"), "r", "Mel-CNN", "x", None, 1, 1, 1, record(act_dcf))

    warned = [w for w in find_warnings(run(0.95)) if w.signature == "calibration"]
    assert len(warned) == 1 and "ood:wild: actDCF 0.9500 against minDCF 0.3000" in warned[0].message
    assert "recalibrate on data like yours" in warned[0].message
    assert not [w for w in find_warnings(run(0.45)) if w.signature == "calibration"]


def test_a_damaged_or_mismatched_calibration_is_a_one_line_error(overlap_run, tmp_path):
    import shutil

    run, store = overlap_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "calibrations" / "broken.json").write_text("{not json")
    one_line(CliRunner().invoke(app, ["evaluate", str(copy), "--on", f"{store}:test"]), "broken.json", "not valid JSON")
    (copy / "calibrations" / "broken.json").unlink()
    old = fit_calibration(np.r_[np.zeros(20, int), np.ones(20, int)], np.linspace(0.01, 0.99, 40),
                          fitted_on={"epoch": 1})
    RunFolder(copy).write_calibration("epoch1", old)
    one_line(CliRunner().invoke(app, ["evaluate", str(copy), "--on", f"{store}:test", "--calibration", "epoch1"]),
             "fitted on epoch 1, not 4", "--epoch 1")
    assert load_run(copy).calibration().name == "val"   # the default skips one of another epoch
