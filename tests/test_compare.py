"""`dfdetect compare`: paired bootstrap differences, McNemar, and the join by clip id."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.evaluate.compare import System, compare, mcnemar, paired_p_value
from dfdetect.evaluate.evaluation import EvaluationError
from dfdetect.metrics import eer
from dfdetect.uncertainty import Bootstrap

runner = CliRunner()


def _pair(n=2000, eer_a=0.20, eer_b=0.15, seed=0):
    """Two systems on the same clips with population EERs eer_a and eer_b (Gaussian scores; the clips'
    shared difficulty makes the systems' errors correlated, as two detectors' are)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    difficulty = rng.normal(0, 0.7, n)
    sides = [labels * 2 * -norm.ppf(e) + difficulty + rng.normal(0, np.sqrt(1 - 0.49), n) for e in (eer_a, eer_b)]
    return labels, [1 / (1 + np.exp(-(s - s.mean()))) for s in sides]


def _write(path, labels, scores, ids=None):
    ids = ids if ids is not None else [f"clip{i}" for i in range(labels.size)]
    path.write_text("clip_id,score,label\n" + "".join(f"{c},{s:.8f},{'fake' if y else 'real'}\n"
                                                      for c, s, y in zip(ids, scores, labels)))
    return path


def test_a_planted_five_point_difference_is_found(tmp_path):
    labels, (a, b) = _pair()
    out = runner.invoke(app, ["compare", "--scores", str(_write(tmp_path / "a.csv", labels, a)),
                              "--scores", str(_write(tmp_path / "b.csv", labels, b)), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["delta_eer"] == pytest.approx(eer(labels, a)[0] - eer(labels, b)[0])
    assert 0.03 < result["delta_eer"] < 0.07
    low, high = result["delta_eer_ci"]
    assert 0 < low < result["delta_eer"] < high
    assert result["p_value"] < 0.01 and result["p_value_eer"] == result["p_value"]
    assert result["metrics"]["auc"]["delta"] < 0 and result["p_value_auc"] < 0.01
    assert result["mcnemar"]["only_b_right"] > result["mcnemar"]["only_a_right"]
    assert result["verdict"].startswith("B is better on EER") and "distinguishable from chance at 95%" in \
        result["verdict"] and "NOT" not in result["verdict"]
    shown = runner.invoke(app, ["compare", "--scores", str(tmp_path / "a.csv"), "--scores", str(tmp_path / "b.csv"),
                                "--bootstrap", "200"])
    assert shown.exit_code == 0 and "B is better on EER" in shown.output and "McNemar" in shown.output


def test_a_copy_with_tiny_noise_is_not_different(tmp_path):
    labels, (a, _) = _pair()
    copy = np.clip(a + np.random.default_rng(1).normal(0, 1e-4, a.size), 0, 1)
    out = runner.invoke(app, ["compare", "--scores", str(_write(tmp_path / "a.csv", labels, a)),
                              "--scores", str(_write(tmp_path / "b.csv", labels, copy)), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert abs(result["delta_eer"]) < 0.005
    assert result["p_value"] > 0.2 and result["mcnemar"]["p_value"] > 0.05
    assert "not distinguishable" in result["verdict"].lower()


def test_clips_are_joined_by_id_and_a_missing_clip_is_named(tmp_path):
    labels, (a, b) = _pair(n=200)
    ids = [f"clip{i}" for i in range(200)]
    order = np.random.default_rng(0).permutation(200)   # B lists the clips in another order
    path_a = _write(tmp_path / "a.csv", labels, a, ids)
    shuffled = _write(tmp_path / "b.csv", labels[order], b[order], [ids[i] for i in order])
    joined = json.loads(runner.invoke(app, ["compare", "--scores", str(path_a), "--scores", str(shuffled), "--json",
                                            "--bootstrap", "100"]).output)
    assert joined["metrics"]["eer"]["b"] == pytest.approx(eer(labels, b)[0])
    short = _write(tmp_path / "short.csv", labels[1:], b[1:], ids[1:])
    out = runner.invoke(app, ["compare", "--scores", str(path_a), "--scores", str(short)])
    assert out.exit_code == 2 and "1 clips of" in out.output and "clip0" in out.output, out.output
    flipped = _write(tmp_path / "flipped.csv", 1 - labels, b, ids)
    out = runner.invoke(app, ["compare", "--scores", str(path_a), "--scores", str(flipped)])
    assert out.exit_code == 2 and "another label" in out.output
    out = runner.invoke(app, ["compare", "--scores", str(path_a)])
    assert out.exit_code == 2 and "--scores A --scores B" in out.output


def test_paired_resampling_cancels_shared_errors():
    """Two systems that differ on a few clips only: the paired interval is far narrower than the
    intervals of the two EERs on their own would suggest."""
    labels, (a, _) = _pair(n=1000)
    b = a.copy()
    b[:20] = 1 - b[:20]
    result = compare(System("a", np.arange(1000).astype(str), labels, a),
                     System("b", np.arange(1000).astype(str), labels, b), Bootstrap(n=300))
    low, high = result["delta_eer_ci"]
    assert high - low < 0.03


def test_p_value_and_mcnemar_by_hand():
    assert paired_p_value(np.array([0.1] * 99 + [-0.1])) == pytest.approx(2 * 2 / 101)
    assert paired_p_value(np.zeros(50)) == 1.0
    labels = np.array([0, 0, 1, 1, 1])
    a = System("a", np.arange(5).astype(str), labels, np.array([0.1, 0.2, 0.9, 0.8, 0.7]), threshold=0.5)
    b = System("b", np.arange(5).astype(str), labels, np.array([0.6, 0.2, 0.9, 0.3, 0.7]), threshold=0.5)
    mc = mcnemar(a, b)
    assert (mc["only_a_right"], mc["only_b_right"]) == (2, 0) and mc["p_value"] == pytest.approx(0.5)


def test_one_label_is_refused():
    ones = System("a", np.arange(4).astype(str), np.ones(4, int), np.linspace(0, 1, 4))
    with pytest.raises(EvaluationError, match="every clip is fake"):
        compare(ones, ones)
