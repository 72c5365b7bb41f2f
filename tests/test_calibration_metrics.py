"""act_dcf, cllr and min_cllr against independent computations of ASVspoof 5's definitions.

The references below are written from the evaluation package's formulas (calculate_modules.py:
compute_actDCF, calculate_CLLR, compute_mindcf), on the bona fide LLR (-llr, higher = bona fide)
as the package reads scores, with plain Python loops; min_cllr's reference is a hand-written PAV.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfdetect.metrics import act_dcf, bayes_threshold, cllr, min_cllr, min_dcf

P, CMISS, CFA = 0.05, 1.0, 10.0


def ref_act_dcf(bona: list[float], spoof: list[float], p=P, c_miss=CMISS, c_fa=CFA) -> float:
    threshold = -math.log(c_miss * (1 - p) / (c_fa * p))
    miss = sum(1 for s in bona if s < threshold) / len(bona)
    fa = sum(1 for s in spoof if s >= threshold) / len(spoof)
    return (c_miss * (1 - p) * miss + c_fa * p * fa) / min(c_fa * p, c_miss * (1 - p))


def softplus(x: float) -> float:
    """log(1 + e^x) exactly for any float (the package's log1p(exp(.)) overflows past 709)."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def ref_cllr(bona: list[float], spoof: list[float]) -> float:
    tar = sum(softplus(-s) for s in bona) / len(bona)
    non = sum(softplus(s) for s in spoof) / len(spoof)
    return 0.5 * (tar + non) / math.log(2)


def ref_min_dcf(bona: list[float], spoof: list[float]) -> float:
    """compute_mindcf over compute_det_curve's points, written as a loop over every sorted sample."""
    scores = sorted([(s, 1) for s in bona] + [(s, 0) for s in spoof], key=lambda t: t[0])  # stable
    best, tar_below, non_below = CFA * P * 1.0, 0, 0
    for _, is_tar in scores:
        tar_below += is_tar
        non_below += 1 - is_tar
        cost = CMISS * (1 - P) * tar_below / len(bona) + CFA * P * (len(spoof) - non_below) / len(spoof)
        best = min(best, cost)
    return best / min(CMISS * (1 - P), CFA * P)


def ref_pav(scores: list[float], labels: list[int]) -> dict[float, float]:
    """P(fake | score) by pool-adjacent-violators: tied scores form one block first."""
    blocks = []   # [sum of labels, count, scores]
    for s in sorted(set(scores)):
        members = [y for x, y in zip(scores, labels) if x == s]
        blocks.append([sum(members), len(members), [s]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count, keys = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][2] += keys
    return {s: total / count for total, count, keys in blocks for s in keys}


def ref_min_cllr(labels: list[int], scores: list[float]) -> float:
    posterior = ref_pav(scores, labels)
    prior = math.log(sum(labels) / (len(labels) - sum(labels)))

    def llr(p):
        return math.inf if p == 1 else -math.inf if p == 0 else math.log(p / (1 - p)) - prior

    def loss(x):   # softplus with the infinite LLRs PAV gives at the ends
        return 0.0 if x == -math.inf else softplus(x)

    real = [loss(llr(posterior[s])) for s, y in zip(scores, labels) if y == 0]
    fake = [loss(-llr(posterior[s])) for s, y in zip(scores, labels) if y == 1]
    return (sum(real) / len(real) + sum(fake) / len(fake)) / 2 / math.log(2)


def score_sets():
    """(name, labels, llrs): random LLRs, rounded ones (many ties, some at the Bayes threshold),
    one tiny class, and extreme LLRs beyond what exp() can hold."""
    rng = np.random.default_rng(30)
    sets = []
    for i in range(5):
        labels = rng.integers(0, 2, 300)
        sets.append((f"random{i}", labels, rng.normal(0, 3, 300) + 2.5 * labels - 1))
    labels = rng.integers(0, 2, 400)
    tied = np.round(rng.normal(0, 1.5, 400) + labels, 1)
    tied[:20] = -bayes_threshold()        # bona fide LLR exactly at the threshold
    sets.append(("ties", labels, tied))
    labels = np.r_[np.zeros(200, int), np.ones(3, int)]
    sets.append(("tiny fake class", labels, rng.normal(0, 2, 203) + 3 * labels))
    labels = np.r_[np.zeros(2, int), np.ones(150, int)]
    sets.append(("tiny real class", labels, rng.normal(0, 2, 152) + 3 * labels))
    labels = rng.integers(0, 2, 100)
    sets.append(("extreme", labels, rng.choice([-1, 1], 100) * rng.uniform(700, 1e4, 100)))
    return sets


@pytest.mark.parametrize("name,labels,llrs", score_sets(), ids=[s[0] for s in score_sets()])
def test_act_dcf_cllr_min_dcf_are_asvspoof5s(name, labels, llrs):
    bona, spoof = (-llrs[labels == 0]).tolist(), (-llrs[labels == 1]).tolist()
    assert act_dcf(labels, llrs) == pytest.approx(ref_act_dcf(bona, spoof), abs=1e-9)
    assert cllr(labels, llrs) == pytest.approx(ref_cllr(bona, spoof), abs=1e-9)
    assert min_dcf(labels, llrs)[0] == pytest.approx(ref_min_dcf(bona, spoof), abs=1e-9)
    assert math.isfinite(cllr(labels, llrs))


@pytest.mark.parametrize("name,labels,llrs", score_sets(), ids=[s[0] for s in score_sets()])
def test_min_cllr_is_cllr_after_pav(name, labels, llrs):
    expected = ref_min_cllr(labels.tolist(), llrs.tolist())
    assert min_cllr(labels, llrs) == pytest.approx(expected, abs=1e-6)
    assert min_cllr(labels, llrs) <= cllr(labels, llrs) + 1e-9   # recalibration never loses


def test_act_dcf_takes_the_stated_costs_and_prior():
    labels = np.array([0, 0, 1, 1])
    llrs = np.array([-1.0, 0.5, 0.0, 3.0])
    for p, c_miss, c_fa in ((0.5, 1, 1), (0.05, 1, 10), (0.2, 3, 1)):
        expected = ref_act_dcf([1.0, -0.5], [0.0, -3.0], p, c_miss, c_fa)
        assert act_dcf(labels, llrs, p, c_miss, c_fa) == pytest.approx(expected, abs=1e-12)


def test_the_direction_is_fake_vs_real():
    """Confident, right LLRs (higher = fake) cost nothing; the same numbers read the other way cost
    the most: a bona fide LLR passed in by mistake is never silently good."""
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    llrs = np.where(labels == 1, 20.0, -20.0)
    assert act_dcf(labels, llrs) == 0 and cllr(labels, llrs) < 1e-6
    assert act_dcf(labels, -llrs) > 1 and cllr(labels, -llrs) > 10


def test_uninformative_llrs_cost_one_bit_and_one_class_is_undefined():
    labels = np.r_[np.zeros(30, int), np.ones(10, int)]
    assert cllr(labels, np.zeros(40)) == pytest.approx(1.0)
    assert min_cllr(labels, np.zeros(40)) == pytest.approx(1.0)
    assert act_dcf(labels, np.zeros(40)) == pytest.approx(1.0)   # the cheaper way: accept everything
    for f in (act_dcf, cllr, min_cllr):
        assert math.isnan(f(np.zeros(5, int), np.arange(5.0)))


def write_scores(path, labels, values) -> None:
    path.write_text("clip_id,label,score\n" + "".join(
        f"c{i},{'spoof' if y else 'bonafide'},{float(v)!r}\n" for i, (y, v) in enumerate(zip(labels, values))))


def evaluate_json(*args) -> dict:
    import json

    from typer.testing import CliRunner

    from dfdetect.cli import app

    result = CliRunner().invoke(app, ["evaluate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_reads_other_systems_llrs_and_probabilities(tmp_path):
    """--score-type llr: the file's bona fide LLRs (--higher-is real) measured by ASVspoof 5's formulas;
    probability: P(bona fide) turned into an LLR with the training prior; score: undefined, said why."""
    name, labels, llrs = score_sets()[0]
    bona_fide = -llrs
    write_scores(tmp_path / "llr.csv", labels, bona_fide)
    m = evaluate_json("--scores", tmp_path / "llr.csv", "--higher-is", "real", "--score-type", "llr")["metrics"]
    bona, spoof = bona_fide[labels == 0].tolist(), bona_fide[labels == 1].tolist()
    assert m["act_dcf"] == pytest.approx(ref_act_dcf(bona, spoof), abs=1e-9)
    assert m["cllr"] == pytest.approx(ref_cllr(bona, spoof), abs=1e-9)
    assert m["min_cllr"] == pytest.approx(ref_min_cllr(labels.tolist(), llrs.tolist()), abs=1e-6)

    prior = 0.8    # a system trained on 80% fakes: its P(fake) is the LLR shifted by logit(0.8)
    p_bona = 1 / (1 + np.exp(llrs + math.log(prior / (1 - prior))))
    write_scores(tmp_path / "p.csv", labels, p_bona)
    m = evaluate_json("--scores", tmp_path / "p.csv", "--higher-is", "real", "--score-type", "probability",
                      "--train-prior", prior)["metrics"]
    assert m["act_dcf"] == pytest.approx(ref_act_dcf(bona, spoof), abs=1e-6)
    assert m["cllr"] == pytest.approx(ref_cllr(bona, spoof), abs=1e-6)

    m = evaluate_json("--scores", tmp_path / "llr.csv", "--higher-is", "real")["metrics"]
    assert m["act_dcf"] is None and m["cllr"] is None and "calibrate first" in m["act_dcf_undefined"]
    assert m["min_cllr"] == pytest.approx(ref_min_cllr(labels.tolist(), llrs.tolist()), abs=1e-6)
    assert m["min_dcf"] is not None and m["eer"] is not None


def test_bad_score_types_are_one_line_errors(tmp_path):
    from conftest import one_line
    from typer.testing import CliRunner

    from dfdetect.cli import app

    write_scores(tmp_path / "llr.csv", [0, 1, 0, 1], [-3.0, 2.0, 0.5, 4.0])
    runner = CliRunner()
    one_line(runner.invoke(app, ["evaluate", "--scores", str(tmp_path / "llr.csv"), "--score-type", "logit"]),
             "--score-type 'logit'")
    one_line(runner.invoke(app, ["evaluate", "--scores", str(tmp_path / "llr.csv"), "--score-type", "probability"]),
             "outside [0, 1]")
    one_line(runner.invoke(app, ["evaluate", "--scores", str(tmp_path / "llr.csv"), "--score-type", "probability",
                                 "--train-prior", "1"]), "--train-prior")


def test_the_bayes_error_plot_passes_through_asvspoof5s_operating_point():
    from dfdetect.metrics import bayes_error_curves

    eta = math.log(0.5 / 0.95)   # the effective prior log-odds of Pspoof 0.05, Cmiss 1, Cfa 10
    for _, labels, llrs in score_sets()[:5]:
        actual, minimum = bayes_error_curves(labels, llrs, np.array([eta, -3.0, 3.0]))
        assert actual[0] == pytest.approx(act_dcf(labels, llrs), abs=1e-12)
        assert minimum[0] == pytest.approx(min_dcf(labels, llrs)[0], abs=1e-12)
        assert (minimum <= actual + 1e-12).all() and (minimum <= 1 + 1e-12).all()
