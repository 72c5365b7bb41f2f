"""Metrics checked against independent implementations (ASVspoof's EER loop, scikit-learn, a
brute-force minDCF), score files in every format with their bad rows named, and `dfdetect evaluate`
on a real run."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.evaluate.evaluation import EvaluationError, evaluate_run, evaluate_score_file
from dfdetect.evaluate.score_files import read_scores
from dfdetect.featurize.pipeline import featurize
from dfdetect.metrics import eer, evaluate_scores, json_safe, min_dcf
from dfdetect.models.runs import RunError, load_run
from dfdetect.store import open_store
from dfdetect.train.data import FeatureLoader, open_set
from dfdetect.train.trainer import predict


# -- independent reference implementations ---------------------------------------------------------------
def asvspoof_eer_loop(labels, scores):
    """ASVspoof's EER written out as a loop: bona fide is the target class scored higher = bona fide
    (so -P(fake)); targets then non-targets are sorted by a stable sort; at each candidate point the
    first k sorted trials are rejected; keep the first point with the smallest |FRR - FAR|."""
    target = [-s for s, y in zip(scores, labels) if y == 0]
    nontarget = [-s for s, y in zip(scores, labels) if y == 1]
    ordered = sorted([(s, True) for s in target] + [(s, False) for s in nontarget], key=lambda p: p[0])
    best, rejected_target, rejected_nontarget = None, 0, 0
    for k in range(len(ordered) + 1):
        if k:
            if ordered[k - 1][1]:
                rejected_target += 1
            else:
                rejected_nontarget += 1
        frr = rejected_target / len(target)
        far = (len(nontarget) - rejected_nontarget) / len(nontarget)
        if best is None or abs(frr - far) < best[0]:
            threshold = ordered[k - 1][0] if k else ordered[0][0] - 0.001
            best = (abs(frr - far), (frr + far) / 2, threshold)
    return best[1], -best[2]   # threshold back on P(fake)


def brute_force_min_dcf(labels, scores, p_spoof=0.05, c_miss=1.0, c_fa=10.0):
    """Every achievable decision (fake when score >= t, t over every score and +inf)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    real, fake = scores[labels == 0], scores[labels == 1]
    best = math.inf
    for t in list(np.unique(scores)) + [math.inf]:
        p_miss = np.mean(real >= t)     # bona fide rejected
        p_fa = np.mean(fake < t)        # spoofs accepted
        best = min(best, c_miss * (1 - p_spoof) * p_miss + c_fa * p_spoof * p_fa)
    return best / min(c_miss * (1 - p_spoof), c_fa * p_spoof)


def random_set(seed, n=300, decimals=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    return labels, (scores.round(decimals) if decimals is not None else scores)


# -- metrics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])
def test_eer_matches_the_asvspoof_loop_on_random_and_heavily_tied_scores(seed, decimals):
    labels, scores = random_set(seed, n=150 + 37 * seed, decimals=decimals)
    value, threshold = eer(labels, scores)
    expected_value, expected_threshold = asvspoof_eer_loop(labels, scores)
    assert value == pytest.approx(expected_value, abs=1e-12)
    assert threshold == pytest.approx(expected_threshold, abs=1e-12)
    if decimals is not None:
        result = evaluate_scores(labels, scores)
        assert result["tied_scores"] == len(scores) - len(np.unique(scores)) > 100
        assert result["mixed_ties"] > 0


def test_eer_convention_is_deterministic_and_ties_move_it():
    # Order of the clips does not matter (the convention fixes how ties sort) ...
    labels, scores = random_set(3, decimals=1)
    order = np.random.default_rng(0).permutation(len(labels))
    assert eer(labels[order], scores[order]) == eer(labels, scores)
    # ... but ties do: one real and one fake tied at 0.5 take the EER from 0 to 0.5 (the stable sort puts
    # the bona fide clip first among ties, so the DET curve passes through FRR = FAR = 0.5).
    labels = np.array([0, 0, 1, 1])
    tied = np.array([0.2, 0.5, 0.5, 0.9])
    untied = np.array([0.2, 0.49, 0.51, 0.9])
    assert eer(labels, untied)[0] == 0.0
    assert eer(labels, tied)[0] == asvspoof_eer_loop(labels, tied)[0] == 0.5
    result = evaluate_scores(labels, tied)
    assert result["tied_scores"] == 1 and result["mixed_ties"] == 2


@pytest.mark.parametrize("seed", range(4))
def test_other_metrics_match_scikit_learn(seed):
    labels, scores = random_set(seed)
    result = evaluate_scores(labels, scores, {"val": 0.42})
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores))
    for key, t in (("at_0.5", 0.5), ("at_eer", result["eer_threshold"]), ("at_val", 0.42)):
        predicted = (scores >= t).astype(int)
        m = result[key]
        tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
        assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
        assert m["precision"] == pytest.approx(precision_score(labels, predicted))
        assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(labels, predicted))
        assert m["specificity"] == pytest.approx(recall_score(labels, predicted, pos_label=0))
        assert m["f1"] == pytest.approx(f1_score(labels, predicted))
        assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted))
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)


def test_undefined_metrics_are_nan_and_null_never_zero():
    labels = np.array([0, 0, 1, 1])
    nothing_called_fake = evaluate_scores(labels, np.array([0.1, 0.2, 0.3, 0.4]))["at_0.5"]
    assert math.isnan(nothing_called_fake["precision"])
    assert nothing_called_fake["f1"] == 0.0   # 2TP / (2TP + FP + FN) exists: no fake was caught
    assert nothing_called_fake["recall"] == 0.0 and nothing_called_fake["specificity"] == 1.0
    one_class = evaluate_scores(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    for key in ("eer", "auc", "min_dcf"):
        assert math.isnan(one_class[key])
    assert math.isnan(one_class["at_0.5"]["mcc"]) and math.isnan(one_class["at_0.5"]["specificity"])
    assert "at_eer" not in one_class
    assert json.loads(json.dumps(json_safe(one_class)))["auc"] is None


@pytest.mark.parametrize("seed", range(4))
def test_min_dcf_matches_brute_force(seed):
    labels, scores = random_set(seed)
    value, threshold = min_dcf(labels, scores)
    assert value == pytest.approx(brute_force_min_dcf(labels, scores))
    # the threshold it reports achieves that cost
    real, fake = scores[labels == 0], scores[labels == 1]
    cost = 0.95 * np.mean(real >= threshold) + 10 * 0.05 * np.mean(fake < threshold)
    assert cost / 0.5 == pytest.approx(value)
    # On tied scores the DET curve (ASVspoof convention) also splits tie groups: never above brute force.
    labels, scores = random_set(seed, decimals=1)
    assert min_dcf(labels, scores)[0] <= brute_force_min_dcf(labels, scores) + 1e-12


def test_min_dcf_of_a_system_that_does_not_look_is_one():
    labels = np.array([0, 1] * 50)
    assert min_dcf(labels, np.full(100, 0.5))[0] == pytest.approx(1.0)
    assert min_dcf(labels, labels.astype(float))[0] == 0.0


# -- score files -----------------------------------------------------------------------------------------------
LABELS = [0, 0, 0, 1, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8, 0.3, 0.9]


def _expected():
    return evaluate_scores(np.array(LABELS), np.array(SCORES))


def test_csv_tsv_and_jsonl_give_the_same_metrics(tmp_path):
    spellings = ["bonafide", "Real", "bona-fide", "spoof", "FAKE", "1"]
    (tmp_path / "s.csv").write_text("clip_id,score,label,generator\n" + "".join(
        f"c{i},{s},{spellings[i]},{'A0' + str(i % 2) if y else ''}\n" for i, (s, y) in enumerate(zip(SCORES, LABELS))))
    (tmp_path / "s.tsv").write_text("filename\tcm-score\tkey\n" + "".join(
        f"c{i}\t{s}\t{y}\n" for i, (s, y) in enumerate(zip(SCORES, LABELS))))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"clip": f"c{i}", "prob": s, "truth": y}) + "\n"
                                              for i, (s, y) in enumerate(zip(SCORES, LABELS))))
    expected = _expected()
    for table in (read_scores(tmp_path / "s.csv"), read_scores(tmp_path / "s.tsv"),
                  read_scores(tmp_path / "s.jsonl", score_col="prob", label_col="truth")):
        result = evaluate_score_file(table, boot=None)   # the point estimates (intervals: test_uncertainty.py)
        assert result["metrics"] == expected
        assert table.lines.tolist() == [2, 3, 4, 5, 6, 7] if table.fmt != "jsonl" else [1, 2, 3, 4, 5, 6]
    result = evaluate_score_file(read_scores(tmp_path / "s.csv"))
    assert set(result["breakdowns"]["generator"]) == {"", "A00", "A01"}


def test_higher_is_real_flips_to_p_fake(tmp_path):
    (tmp_path / "p.csv").write_text("score,label\n" + "".join(f"{1 - s},{y}\n" for s, y in zip(SCORES, LABELS)))
    table = read_scores(tmp_path / "p.csv", higher_is="real")
    assert table.scores == pytest.approx(SCORES)
    assert evaluate_score_file(table)["metrics"]["eer"] == _expected()["eer"]
    # unbounded scores (log-likelihood ratios, higher = bona fide) are negated, and said not to be probabilities
    (tmp_path / "llr.csv").write_text("score,label\n" + "".join(f"{5 - 10 * s},{y}\n" for s, y in zip(SCORES, LABELS)))
    table = read_scores(tmp_path / "llr.csv", higher_is="real")
    assert evaluate_score_file(table)["metrics"]["eer"] == _expected()["eer"]
    assert any("not probabilities" in n for n in table.notes)
    assert read_scores(tmp_path / "p.csv").scores == pytest.approx([1 - s for s in SCORES])


def test_asvspoof_score_files_and_protocol_join(tmp_path):
    ids = [f"LA_E_{1000 + i}" for i in range(6)]
    keys = ["bonafide" if y == 0 else "spoof" for y in LABELS]
    attacks = ["-" if y == 0 else f"A{10 + i % 2}" for i, y in enumerate(LABELS)]
    bona_fide_high = [round(4 - 8 * s, 3) for s in SCORES]     # ASVspoof's own direction: higher = bona fide
    # 2019 CM: FILE ATTACK KEY SCORE
    (tmp_path / "cm2019.txt").write_text("# system X\n" + "".join(
        f"{i} {a} {k} {s}\n" for i, a, k, s in zip(ids, attacks, keys, bona_fide_high)))
    # ASVspoof 5 README: SPK FILE SCORE KEY
    (tmp_path / "cm5.txt").write_text("".join(f"E_01 {i} {s} {k}\n" for i, s, k in zip(ids, bona_fide_high, keys)))
    # 2021: FILE SCORE, keys in a protocol (SPK FILE ... ATTACK KEY ...)
    (tmp_path / "cm2021.txt").write_text("".join(f"{i} {s}\n" for i, s in zip(ids, bona_fide_high)))
    (tmp_path / "trial_metadata.txt").write_text("".join(
        f"LA_00{n} {i} alaw ita_tx {a} {k} notrim eval\n" for n, (i, a, k) in enumerate(zip(ids, attacks, keys))))
    expected = _expected()["eer"]
    for name, protocol in (("cm2019.txt", None), ("cm5.txt", None), ("cm2021.txt", tmp_path / "trial_metadata.txt")):
        table = read_scores(tmp_path / name, higher_is="real", protocol=protocol)
        assert table.fmt == "asvspoof"
        assert table.labels.tolist() == LABELS
        assert evaluate_score_file(table)["metrics"]["eer"] == expected, name
    result = evaluate_score_file(read_scores(tmp_path / "cm2021.txt", higher_is="real",
                                             protocol=tmp_path / "trial_metadata.txt"))
    assert set(result["breakdowns"]["generator"]) == {"", "A10", "A11"}
    # an In-the-Wild style meta.csv joins by file name without extension
    (tmp_path / "meta.csv").write_text("file,speaker,label\n" + "".join(
        f"{i}.wav,x,{'bona-fide' if y == 0 else 'spoof'}\n" for i, y in zip(ids, LABELS)))
    (tmp_path / "mine.csv").write_text("path,score\n" + "".join(f"/data/{i}.flac,{s}\n" for i, s in zip(ids, SCORES)))
    assert read_scores(tmp_path / "mine.csv", protocol=tmp_path / "meta.csv").labels.tolist() == LABELS


def test_bad_rows_are_named_by_line_or_dropped_with_a_note(tmp_path):
    rows = ["score,label", "0.1,real", "abc,fake", "0.9,fake", ",real", "nan,fake", "0.3,maybe", "0.7,spoof",
            "0.2,"] + ["x,real"] * 12
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(EvaluationError) as e:
        read_scores(tmp_path / "bad.csv")
    message = str(e.value)
    assert "13 rows with non-numeric score (lines 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, ... (13 in all))" in message
    assert "1 row with missing score (line 5)" in message
    assert "1 row with NaN/Inf score (line 6)" in message
    assert "1 row with unknown label ('maybe') (line 7)" in message
    assert "1 row with missing label (line 9)" in message
    table = read_scores(tmp_path / "bad.csv", drop_bad=True)
    assert table.lines.tolist() == [2, 4, 8] and table.labels.tolist() == [0, 1, 1]
    assert any("left out" in n and "line 5)" in n for n in table.notes)
    # a clip that the protocol lacks is named too
    (tmp_path / "s.txt").write_text("LA_1 0.2\nLA_2 0.8\nLA_3 0.4\n")
    (tmp_path / "p.txt").write_text("S LA_1 - - bonafide\nS LA_2 - A01 spoof\n")
    with pytest.raises(EvaluationError, match=r"1 row with clip not in the protocol \(line 3\)"):
        read_scores(tmp_path / "s.txt", protocol=tmp_path / "p.txt")
    with pytest.raises(EvaluationError, match="no score column.*columns: a, b"):
        (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
        read_scores(tmp_path / "cols.csv")


def test_one_class_is_a_note_and_undefined_metrics_print_as_undefined(tmp_path):
    (tmp_path / "fakes.csv").write_text("score,label\n0.9,fake\n0.2,fake\n0.7,spoof\n")
    table = read_scores(tmp_path / "fakes.csv")
    assert any("every clip is fake" in n for n in table.notes)
    result = CliRunner().invoke(app, ["evaluate", "--scores", str(tmp_path / "fakes.csv")])
    assert result.exit_code == 0, result.output
    assert "every clip is fake" in result.output and "undefined" in result.output
    assert "1 = fake" in result.output and "P(fake)" in result.output
    out = CliRunner().invoke(app, ["evaluate", "--scores", str(tmp_path / "fakes.csv"), "--json"])
    data = json.loads(out.output)
    assert data["metrics"]["eer"] is None and data["metrics"]["at_0.5"]["specificity"] is None
    assert data["metrics"]["at_0.5"]["recall"] == pytest.approx(2 / 3)


def test_parquet_reads_with_pyarrow_or_says_what_is_missing(tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "s.parquet").write_bytes(b"PAR1")
        with pytest.raises(EvaluationError, match="needs pyarrow"):
            read_scores(tmp_path / "s.parquet")
        return
    pq.write_table(pa.table({"score": SCORES, "label": LABELS}), tmp_path / "s.parquet")
    assert evaluate_score_file(read_scores(tmp_path / "s.parquet"), boot=None)["metrics"] == _expected()


def test_cli_errors_exit_2_with_the_message(tmp_path):
    (tmp_path / "bad.csv").write_text("score,label\nabc,real\n0.5,fake\n")
    result = CliRunner().invoke(app, ["evaluate", "--scores", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2 and "line 2" in result.output
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "either RUN" in result.output


# -- a real run on a store -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(mel_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    train_tiny(mel_store, base / "run")
    records = [json.loads(line) for line in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"base": base, "store": mel_store, "run": base / "run", "records": records}


def test_evaluate_run_reproduces_the_trainers_numbers(run):
    for epoch in (1, 2):
        result = evaluate_run(run["run"], f"{run['store']}:test", epoch=epoch)
        recorded = run["records"][epoch - 1]["sets"]["test"]
        assert result["source"]["epoch"] == epoch
        assert result["thresholds"]["val"] == run["records"][epoch - 1]["sets"]["val"]["eer_threshold"]
        for key in ("eer", "auc", "eer_threshold"):
            assert result["metrics"][key] == pytest.approx(recorded[key], abs=1e-6)
        for key in ("at_0.5", "at_val"):
            assert result["metrics"][key]["tp"] == recorded[key]["tp"]
            assert result["metrics"][key]["tn"] == recorded[key]["tn"]


def test_per_generator_breakdown_of_fakes_only_groups(run):
    result = evaluate_run(run["run"], f"{run['store']}:test", epoch="last")
    by_generator = result["breakdowns"]["generator"]
    assert "codec" not in result["breakdowns"]   # one value only: no breakdown
    data = open_set(f"{run['store']}:test", "t")
    rows, scores = predict(load_run(run["run"], "last").model, FeatureLoader(data, ("mel",), 16, False),
                           torch.device("cpu"))
    meta = open_store(run["store"]).meta
    labels, generators = meta["label"][rows], np.asarray([str(g) for g in meta["generator"][rows]])
    for generator, m in by_generator.items():
        mask = generators == generator
        if generator == "":
            assert m["one_label"] == "real" and "precision" in m["undefined"]
            assert m["at_0.5"]["specificity"] == pytest.approx(np.mean(scores[mask] < 0.5))
            assert "recall" not in m["at_0.5"]
            continue
        assert m["one_label"] == "fake" and m["n_fake"] == mask.sum() and m["n_real"] == 0
        assert m["at_0.5"]["recall"] == pytest.approx(np.mean(scores[mask] >= 0.5))
        against_all_reals = mask | (labels == 0)
        assert m["eer"] == eer(labels[against_all_reals], scores[against_all_reals])[0]
        assert m["compared_with"] == f"all {(labels == 0).sum()} real clips of the set"


def test_cli_evaluate_run_prints_three_thresholds_and_breakdowns(run):
    result = CliRunner().invoke(app, ["evaluate", str(run["run"]), "--on", f"{run['store']}:ood", "--epoch", "2"])
    assert result.exit_code == 0, result.output
    for text in ("1 = fake", "at 0.5", "at EER threshold", "at validation", "per generator", "minDCF"):
        assert text in result.output, text
    data = json.loads(CliRunner().invoke(app, ["evaluate", str(run["run"]), "--on", f"{run['store']}:ood",
                                               "--json"]).output)
    assert data["source"]["epoch"] == min(run["records"], key=lambda r: (r["sets"]["val"]["eer"], r["epoch"]))["epoch"]
    assert {"at_0.5", "at_eer", "at_val", "min_dcf"} <= set(data["metrics"])


def test_evaluate_run_refuses_what_it_cannot_score(run, tmp_path):
    lfcc = str(tmp_path / "lfcc.zarr")
    featurize("folder", Path(run["store"]).parent / "corpus", lfcc, features=("lfcc",), workers=0, block_size=16)
    with pytest.raises(EvaluationError, match="mel_cnn reads mel.*--features mel"):
        evaluate_run(run["run"], f"{lfcc}:test")
    broken = tmp_path / "broken"
    shutil.copytree(run["run"], broken)
    for f in (broken / "checkpoints").iterdir():
        f.unlink()
    with pytest.raises(RunError, match="checkpoint"):
        evaluate_run(broken, f"{run['store']}:test")
    result = CliRunner().invoke(app, ["evaluate", str(broken), "--on", f"{run['store']}:test"])
    assert result.exit_code == 2 and "checkpoint" in result.output


def test_evaluate_run_gives_intervals_resampled_by_the_groups_asked(run):
    by_clip = evaluate_run(run["run"], f"{run['store']}:test", epoch=1)
    assert by_clip["intervals"]["groups"] == "clip"   # the demo corpus names no speakers
    m = by_clip["metrics"]
    assert m["eer_ci"][0] <= m["eer"] <= m["eer_ci"][1] and "accuracy_ci" in m["at_val"]
    by_generator = evaluate_run(run["run"], f"{run['store']}:test", epoch=1, ci_groups="generator")
    assert by_generator["intervals"]["groups"] == "generator"
    assert by_generator["intervals"]["units"] < by_clip["intervals"]["units"] == m["n"]
    with pytest.raises(EvaluationError, match="--ci-groups speaker: this set names no speaker"):
        evaluate_run(run["run"], f"{run['store']}:test", epoch=1, ci_groups="speaker")


def test_every_epoch_record_keeps_intervals_of_the_headline_metrics(run):
    for record in run["records"]:
        assert {"val", "test"} < set(record["sets"])
        for name, m in record["sets"].items():
            for metric in ("eer", "min_dcf"):
                assert m[f"{metric}_ci"][0] <= m[metric] <= m[f"{metric}_ci"][1], (name, metric)


def test_compare_two_runs_on_one_store(run):
    out = CliRunner().invoke(app, ["compare", str(run["run"]), str(run["run"]), "--on", f"{run['store']}:test",
                                   "--json", "--bootstrap", "100"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["delta_eer"] == 0 and result["p_value"] == 1.0 and result["clips"] > 0
    best = min(run["records"], key=lambda r: (r["sets"]["val"]["eer"], r["epoch"]))
    assert result["mcnemar"]["threshold_a"] == pytest.approx(best["sets"]["val"]["eer_threshold"])   # its own
    assert "not distinguishable" in result["verdict"]
    out = CliRunner().invoke(app, ["compare", str(run["run"]), str(run["run"])])
    assert out.exit_code == 2 and "--on" in out.output


def test_scores_out_writes_one_row_per_clip_as_score_decides_a_file(run, tmp_path):
    """--scores-out: every clip of the set, its score as the trainer scored it at that epoch, the
    decision at the run's threshold and the label; an existing file is replaced only with --force."""
    import csv

    out = tmp_path / "clips.csv"
    result = evaluate_run(run["run"], f"{run['store']}:test", scores_out=out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == result["source"]["clips"] and {r["status"] for r in rows} == {"ok"}
    best = next(r for r in run["records"] if r["epoch"] == result["source"]["epoch"])
    trainer = {r["clip_id"]: r for r in csv.DictReader((run["run"] / "scores" / "best" / "test.csv").open())}
    assert best["sets"]["test"]["n"] == len(trainer) == len(rows)
    threshold = result["thresholds"]["val"]
    for r in rows:
        assert float(r["score"]) == pytest.approx(float(trainer[r["clip_id"]]["score"]), abs=2e-6)
        assert r["label"] == ("fake" if trainer[r["clip_id"]]["label"] == "1" else "real")
        assert r["decision"] == ("fake" if float(r["score"]) >= threshold else "real") or \
            abs(float(r["score"]) - threshold) < 1e-6   # a score rounded onto the threshold
    assert not list(tmp_path.glob(".clips*"))    # nothing left beside it
    command = ["evaluate", str(run["run"]), "--on", f"{run['store']}:test", "--scores-out", str(out)]
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 2 and "already exists; --force replaces it" in again.output
    forced = CliRunner().invoke(app, [*command, "--force", "--bootstrap", "0"])
    assert forced.exit_code == 0, forced.output
    score_file = CliRunner().invoke(app, ["evaluate", "--scores", str(out), "--scores-out", str(tmp_path / "y.csv")])
    assert score_file.exit_code == 2 and "--scores-out needs RUN" in score_file.output
