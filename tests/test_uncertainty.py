"""Bootstrap intervals (dfdetect/uncertainty.py): exact on every resample, deterministic, calibrated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from dfdetect import uncertainty
from dfdetect.metrics import at_threshold, eer, min_dcf
from dfdetect.uncertainty import (
    THRESHOLD_METRICS,
    Bootstrap,
    SetMetrics,
    metric_intervals,
    resample_weights,
    resampled_clips,
)


def _set(rng, n=300, rounding=None):
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(labels * 1.2, 1.0)
    return labels, (np.round(scores, rounding) if rounding is not None else scores)


@pytest.mark.parametrize("rounding", [None, 1, 0])   # 0 and 1 decimal: many ties across labels
def test_vectorised_metrics_equal_the_plain_metrics_on_every_resample(rounding):
    rng = np.random.default_rng(3)
    labels, scores = _set(rng, rounding=rounding)
    weights = next(resample_weights(labels, n=150, seed=1))
    values = SetMetrics(labels, scores, thresholds={"0.5": 0.5}).values(weights)
    for b in range(weights.shape[1]):
        clips = resampled_clips(weights[:, b])
        lab, sco = labels[clips], scores[clips]
        assert values["eer"][b] == pytest.approx(eer(lab, sco)[0], abs=1e-12)
        assert values["min_dcf"][b] == pytest.approx(min_dcf(lab, sco)[0], abs=1e-12)
        assert values["auc"][b] == pytest.approx(roc_auc_score(lab, sco), abs=1e-12)
        plain = at_threshold(lab, sco, 0.5)
        for name in uncertainty.THRESHOLD_METRICS:
            assert values[f"at_0.5/{name}"][b] == pytest.approx(plain[name], abs=1e-12, nan_ok=True)


def test_resampling_is_stratified_and_grouped():
    labels = np.array([0] * 6 + [1] * 4)
    groups = np.array(["a", "a", "a", "b", "b", "c", "a", "a", "d", "d"])
    for weights in resample_weights(labels, groups, n=50, seed=0):
        assert (weights[labels == 0].sum(axis=0) > 0).all() and (weights[labels == 1].sum(axis=0) > 0).all()
        # clips of one (label, group) are drawn together: equal weights
        for label, group in {(0, "a"), (0, "b"), (1, "a"), (1, "d")}:
            rows = weights[(labels == label) & (groups == group)]
            assert (rows == rows[0]).all()
    clip_level = next(resample_weights(labels, n=50, seed=0))
    assert (clip_level[labels == 0].sum(axis=0) == 6).all() and (clip_level[labels == 1].sum(axis=0) == 4).all()


def test_intervals_are_seeded_and_deterministic():
    labels, scores = _set(np.random.default_rng(0))
    a = metric_intervals(labels, scores, thresholds={"0.5": 0.5}, boot=Bootstrap(n=200, seed=4))
    assert a == metric_intervals(labels, scores, thresholds={"0.5": 0.5}, boot=Bootstrap(n=200, seed=4))
    assert a != metric_intervals(labels, scores, thresholds={"0.5": 0.5}, boot=Bootstrap(n=200, seed=5))
    assert set(a) == {"eer_ci", "auc_ci", "min_dcf_ci", "at_0.5"}
    assert set(a["at_0.5"]) == {f"{m}_ci" for m in uncertainty.THRESHOLD_METRICS}
    point = eer(labels, scores)[0]
    assert a["eer_ci"][0] < point < a["eer_ci"][1]
    narrow = metric_intervals(labels, scores, boot=Bootstrap(n=200, seed=4, level=0.5))
    assert narrow["eer_ci"][1] - narrow["eer_ci"][0] < a["eer_ci"][1] - a["eer_ci"][0]


def test_a_metric_added_to_the_registry_gets_intervals(monkeypatch):
    """The generic path (any f(labels, scores)) sees the same resamples as the fast path."""
    monkeypatch.setitem(uncertainty.METRICS, "eer_again", lambda labels, scores: eer(labels, scores)[0])
    labels, scores = _set(np.random.default_rng(1), n=120)
    out = metric_intervals(labels, scores, boot=Bootstrap(n=60), metrics=("eer", "eer_again"))
    assert out["eer_again_ci"] == pytest.approx(out["eer_ci"], abs=1e-12)


def test_the_95_percent_interval_covers_the_true_eer_about_95_percent_of_the_time():
    """200 simulated sets with a known population EER: reals N(0,1), fakes N(d,1) -> EER = Phi(-d/2).
    Binomial noise of 200 sets at 95% is +-1.5 points (sd); the tolerance is 3 sd."""
    rng, d = np.random.default_rng(7), 1.5
    truth = norm.cdf(-d / 2)
    labels = np.r_[np.zeros(150, int), np.ones(250, int)]
    covered = 0
    for i in range(200):
        scores = rng.normal(labels * d, 1.0)
        low, high = metric_intervals(labels, scores, boot=Bootstrap(n=300, seed=i), metrics=("eer",))["eer_ci"]
        covered += low <= truth <= high
    assert abs(covered / 200 - 0.95) <= 0.045


def test_grouped_resampling_widens_the_interval_when_a_group_shares_an_effect():
    """Clips of one speaker share an offset: 40 clips per speaker are not 40 independent clips."""
    rng = np.random.default_rng(2)
    speakers = np.repeat(np.arange(30), 40)
    labels = rng.permutation(np.repeat([0, 1], 600))
    scores = rng.normal(labels * 1.5, 1.0) + rng.normal(0, 1.0, 30)[speakers]
    boot = Bootstrap(n=400, seed=0)
    by_clip = metric_intervals(labels, scores, boot=boot)["eer_ci"]
    by_speaker = metric_intervals(labels, scores, groups=speakers.astype(str), boot=boot)["eer_ci"]
    assert by_speaker[1] - by_speaker[0] > 1.5 * (by_clip[1] - by_clip[0])


def test_undefined_resamples_are_left_out():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.2, 0.3, 0.4])
    out = metric_intervals(labels, scores, thresholds={"high": 0.9}, boot=Bootstrap(n=50))
    assert np.isnan(out["at_high"]["precision_ci"]).all()   # nothing called fake in any resample
    assert out["at_high"]["recall_ci"] == [0.0, 0.0]


# -- evaluate: intervals beside every metric -------------------------------------------------------------
def _score_file(path, n=400, speakers=True):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    scores = 1 / (1 + np.exp(-rng.normal(labels * 2 - 1, 1.2)))
    head = "clip_id,score,label" + (",speaker" if speakers else "")
    rows = [f"c{i},{s:.6f},{'fake' if y else 'real'}" + (f",s{i % 20}" if speakers else "")
            for i, (s, y) in enumerate(zip(scores, labels))]
    path.write_text(head + "\n" + "".join(row + "\n" for row in rows))
    return path


def test_evaluate_json_gives_an_interval_beside_every_metric(tmp_path):
    import json

    from typer.testing import CliRunner

    from dfdetect.cli import app

    path = _score_file(tmp_path / "s.csv")
    out = CliRunner().invoke(app, ["evaluate", "--scores", str(path), "--json", "--bootstrap", "300"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    m = result["metrics"]
    keys = list(m)
    for name in ("eer", "auc", "min_dcf"):
        assert keys.index(f"{name}_ci") == keys.index(name) + 1
        assert m[f"{name}_ci"][0] <= m[name] <= m[f"{name}_ci"][1]
    for at in ("at_0.5", "at_eer"):
        for name in THRESHOLD_METRICS:
            assert m[at][f"{name}_ci"][0] <= m[at][name] <= m[at][f"{name}_ci"][1]
    assert result["intervals"]["groups"] == "speaker" and result["intervals"]["units"] == 40   # 20 per label
    assert result["intervals"]["resamples"] == 300 and result["intervals"]["level"] == 0.95
    by_clip = json.loads(CliRunner().invoke(app, ["evaluate", "--scores", str(path), "--json", "--bootstrap", "300",
                                                  "--ci-groups", "clip", "--ci-level", "0.9"]).output)
    assert by_clip["intervals"]["groups"] == "clip" and by_clip["intervals"]["units"] == 400
    assert by_clip["metrics"]["eer_ci"] != m["eer_ci"]
    none = json.loads(CliRunner().invoke(app, ["evaluate", "--scores", str(path), "--json", "--bootstrap", "0"]).output)
    assert "eer_ci" not in none["metrics"] and none["intervals"] is None


def test_evaluate_prints_each_metric_with_its_interval(tmp_path):
    import re

    from typer.testing import CliRunner

    from dfdetect.cli import app

    path = _score_file(tmp_path / "s.csv", speakers=False)
    out = CliRunner().invoke(app, ["evaluate", "--scores", str(path), "--bootstrap", "200"])
    assert out.exit_code == 0, out.output
    assert re.search(r"EER 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", out.output), out.output
    assert re.search(r"accuracy\W+\d+\.\d\d% \[\d+\.\d\d%, \d+\.\d\d%\]", out.output), out.output
    assert "[low, high]: 95% interval, 200 bootstrap resamples of the 400 clips" in out.output
    assert "not how it would do on another corpus" in out.output


@pytest.mark.parametrize("args, message", [
    (["--ci-groups", "speaker"], "--ci-groups speaker: this set names no speaker"),
    (["--ci-groups", "day"], "--ci-groups 'day': must be one of speaker, generator, source, clip"),
    (["--ci-level", "1.5"], "--ci-level 1.5"),
    (["--bootstrap", "-3"], "--bootstrap -3"),
])
def test_evaluate_refuses_bad_interval_options_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    path = _score_file(tmp_path / "s.csv", n=40, speakers=False)
    out = CliRunner().invoke(app, ["evaluate", "--scores", str(path), *args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_breakdown_groups_get_intervals_on_the_clips_they_are_measured_on(tmp_path):
    from dfdetect.evaluate.evaluation import evaluate_score_file
    from dfdetect.evaluate.score_files import read_scores

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    generators = np.where(labels == 1, np.where(np.arange(400) % 2, "A01", "A02"), "")
    scores = 1 / (1 + np.exp(-rng.normal(labels * 2 - 1 + (generators == "A02"), 1.0)))
    path = tmp_path / "s.csv"
    path.write_text("clip_id,score,label,generator\n" + "".join(
        f"c{i},{s:.6f},{'fake' if y else 'real'},{g}\n" for i, (s, y, g) in enumerate(zip(scores, labels, generators))))
    result = evaluate_score_file(read_scores(path), Bootstrap(n=200))
    a01 = result["breakdowns"]["generator"]["A01"]
    against_reals = (generators == "A01") | (labels == 0)
    expected = metric_intervals(labels[against_reals], scores[against_reals], boot=Bootstrap(n=200),
                                thresholds={"0.5": 0.5})
    assert a01["eer_ci"] == expected["eer_ci"]
    assert set(a01["at_0.5"]) == {"threshold", "recall", "recall_ci"}   # a fakes-only group: its recall alone
    assert a01["at_0.5"]["recall_ci"][0] <= a01["at_0.5"]["recall"] <= a01["at_0.5"]["recall_ci"][1]


def test_llr_metrics_get_intervals_on_the_llrs_not_on_the_probabilities():
    """act_dcf and cllr get intervals, and the decisions at the Bayes threshold (a threshold on the
    LLR, fake when llr > ln 1.9) are resampled on the LLRs. Fakes at P 0.645-0.654 have an LLR just
    below it (logit(0.655) = 0.642): every one is called real at the Bayes threshold, so accuracy
    there is exactly 0.5 in every stratified resample; read on P(fake) as if 0.642 were a
    probability, each would be called fake (accuracy 1)."""
    from dfdetect.evaluate.evaluation import evaluate_score_file
    from dfdetect.evaluate.score_files import ScoreTable

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(200, int)]
    scores = np.r_[rng.uniform(0.645, 0.654, 200), rng.uniform(0.1, 0.5, 200)]
    table = ScoreTable("s.csv", "csv", labels, scores, np.arange(400))
    result = evaluate_score_file(table, uncertainty.Bootstrap(n=200), None, "probability", 0.5)
    m = result["metrics"]
    assert m["at_bayes"]["accuracy"] == 0.5 and m["at_bayes"]["accuracy_ci"] == [0.5, 0.5]
    for key in ("act_dcf", "cllr"):   # act_dcf is 1 in every resample here: every fake missed
        low, high = m[f"{key}_ci"]
        assert low <= m[key] <= high, (key, m[key], m[f"{key}_ci"])
    assert m["cllr_ci"][0] < m["cllr_ci"][1]
