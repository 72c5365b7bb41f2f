"""The whole-file protocol end to end: a head trained on a windowed store (featurize --windows all),
validation split by file, files evaluated as `dfdetect score` scores them (the scores equal within
1e-4), duration bands, the protocol named in results and reports."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.evaluate.evaluation import evaluate_run
from dfdetect.evaluate.report import build_report
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.windows import file_scores
from dfdetect.models.runs import load_run
from dfdetect.store import open_store
from dfdetect.train.data import open_set
from dfdetect.train.trainer import TrainConfig, split_validation, train

runner = CliRunner()


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    """Generated 8-24 s files in the folder layout, featurized as centre crops and as all windows."""
    base = tmp_path_factory.mktemp("whole")
    root = base / "corpus"
    write_corpus(root, CorpusSpec(real=8, per_generator=3, min_seconds=8, max_seconds=24, seed=3))
    centre = featurize("folder", root, str(base / "s.zarr"), features=("mel",), workers=0, block_size=32)
    windowed = featurize("folder", root, str(base / "s.zarr"), workers=0, block_size=32,
                         config=FeaturizeConfig.from_options(features="mel", windows="all"))
    return {"base": base, "root": root, "store": str(base / "s.zarr"), "centre": centre.version,
            "windows": windowed.version}


@pytest.fixture(scope="module")
def windowed_run(long_files):
    store = f"{long_files['store']}@{long_files['windows']}"
    out = long_files["base"] / "runs" / "w"
    train(TrainConfig(arch="mel_cnn", train=f"{store}:train", test=f"{store}:test", ood=(f"{store}:ood",),
                      epochs=2, batch_size=16, val_fraction=0.25, max_windows_per_file=4, audit=False), out)
    return out


def _table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_file_scores_aggregate_each_files_windows_by_hand():
    files = np.array([2, 0, 2, 1, 0, 2])
    scores = np.array([0.9, 0.1, 0.3, 0.5, 0.3, 0.6])
    first, mean = file_scores(files, scores, "mean")
    assert first.tolist() == [1, 3, 0]                     # each file's first row, files in order
    np.testing.assert_allclose(mean, [0.2, 0.5, 0.6])
    np.testing.assert_allclose(file_scores(files, scores, "max")[1], [0.3, 0.5, 0.9])
    np.testing.assert_allclose(file_scores(files, scores, "topk", top_k=2)[1], [0.2, 0.5, 0.75])


def test_a_head_trains_on_windows_split_by_file(long_files, windowed_run):
    config = json.loads((windowed_run / "config.json").read_text())
    sets = config["sets"]
    store = open_store(long_files["store"], version=long_files["windows"])
    meta = store.meta
    assert config["config"]["aggregate"] == "mean" and config["config"]["max_windows_per_file"] == 4
    assert sets["train"]["windows"] == {"keep": "all", "window": 3.0, "hop": 1.5}
    assert sets["train"]["files"] + sets["val"]["files"] == len(set(meta["clip_id"][store.rows("train")]))
    # the split the run made: whole files on each side, and at most 4 windows of each training file
    spec = f"{long_files['store']}@{long_files['windows']}:train"
    split = split_validation(open_set(spec, "train"), TrainConfig(arch="mel_cnn", train=spec, val_fraction=0.25,
                                                                   max_windows_per_file=4))
    train_files, val_files = (meta["file"][split[name].rows] for name in ("train", "val"))
    assert not set(train_files) & set(val_files)
    assert np.bincount(train_files).max() == 4 and len(split["train"].rows) == sets["train"]["rows"]
    kept = split["train"].rows[train_files == train_files[0]]
    every = store.rows()[meta["file"][store.rows()] == train_files[0]]
    assert kept.tolist() == every[[0, round((len(every) - 1) / 3), round(2 * (len(every) - 1) / 3), -1]].tolist()
    assert set(meta["file"][split["val"].rows]) == set(meta["file"][store.rows("train")]) - set(train_files)
    # one score per validation and test file, not per window
    assert len(_table(windowed_run / "scores" / "last" / "val.csv")) == sets["val"]["files"]
    record = json.loads((windowed_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["sets"]["test"]["n"] == len(set(meta["clip_id"][store.rows("test")]))


def test_evaluate_scores_each_file_as_score_does(long_files, windowed_run, tmp_path):
    """evaluate --scores-out on the windowed store and `dfdetect score` on the same files give the
    same score (within 1e-4), the same windows and the same decision."""
    spec = f"{long_files['store']}@{long_files['windows']}"
    out = tmp_path / "eval.csv"
    result = evaluate_run(windowed_run, spec, boot=None, scores_out=out)
    assert result["source"]["protocol"] == "all 3 s windows, hop 1.5 s, mean"
    evaluated = {r["path"]: r for r in _table(out)}
    scored = tmp_path / "score.csv"
    done = runner.invoke(app, ["score", "--model", str(windowed_run), str(long_files["root"]), "--out", str(scored),
                               "--workers", "0"])
    assert done.exit_code == 0, done.output
    live = {os.path.abspath(r["path"]): r for r in _table(scored)}
    assert set(evaluated) == set(live) and len(live) >= 12
    for path, row in evaluated.items():
        assert abs(float(row["score"]) - float(live[path]["score"])) <= 1e-4, path
        assert row["windows"] == live[path]["windows"] and row["decision"] == live[path]["decision"]
    # the centre store of the same files is scored on one crop each: a different number for long files
    centre = evaluate_run(windowed_run, f"{long_files['store']}@{long_files['centre']}:test", boot=None)
    assert centre["source"]["protocol"] == "centre 3 s crop" and "windows" not in centre["source"]


def test_breakdowns_by_duration_band(long_files, windowed_run):
    spec = f"{long_files['store']}@{long_files['windows']}"
    result = evaluate_run(windowed_run, spec, boot=None)
    bands = result["breakdowns"]["duration"]
    durations = [sf.info(str(p)).duration for p in long_files["root"].rglob("*") if p.is_file()]
    expected = {"4-10 s": sum(d < 10 for d in durations), "10-30 s": sum(d >= 10 for d in durations)}
    assert {band: groups["n"] for band, groups in bands.items()} == {k: v for k, v in expected.items() if v}


def test_aggregate_is_checked_and_changes_the_file_scores(long_files, windowed_run):
    spec = f"{long_files['store']}@{long_files['windows']}:test"
    bad = runner.invoke(app, ["evaluate", str(windowed_run), "--on", spec, "--aggregate", "median"])
    assert bad.exit_code == 2 and "--aggregate 'median'" in bad.output
    mean = evaluate_run(windowed_run, spec, boot=None)
    most = evaluate_run(windowed_run, spec, boot=None, aggregate="max")
    assert most["source"]["protocol"].endswith(", max")
    assert most["metrics"]["at_0.5"]["tp"] + most["metrics"]["at_0.5"]["fp"] >= \
        mean["metrics"]["at_0.5"]["tp"] + mean["metrics"]["at_0.5"]["fp"]


def test_the_report_names_the_protocol_and_warns_when_runs_differ(long_files, windowed_run, tmp_path):
    store = long_files["store"]
    centre_run = long_files["base"] / "runs" / "c"
    centre = f"{store}@{long_files['centre']}"
    train(TrainConfig(arch="mel_cnn", train=f"{centre}:train", test=f"{centre}:test", ood=(f"{centre}:ood",),
                      epochs=1, batch_size=16, val_fraction=0.25, audit=False), centre_run)
    assert load_run(centre_run).config.protocol("test") == "centre 3 s crop"
    alone = build_report([windowed_run], tmp_path / "one.html")
    text = alone.markdown.read_text()
    assert "Protocol (how each file is scored): test: all 3 s windows, hop 1.5 s, mean" in text
    assert "different protocols" not in text
    described = load_run(windowed_run).config.train_set
    assert f"({described['files']} files, {described['rows']} windows)" in text
    both = build_report([windowed_run, centre_run], tmp_path / "two.html").markdown.read_text()
    assert "the runs were scored under different protocols on test" in both
    assert "centre 3 s crop (c)" in both and "all 3 s windows, hop 1.5 s, mean (w)" in both


def test_wavlm_windows_go_through_the_same_path(tmp_path):
    """WavLM features of a windowed store are those of each window prepared as score prepares it."""
    from dfdetect.demo.random_wavlm import save_random_wavlm
    from dfdetect.featurize.audio import decode
    from dfdetect.featurize.frontend import Frontend
    from dfdetect.featurize.wavlm import WavLMConfig, load_wavlm
    from dfdetect.featurize.windows import sliding_windows

    root = tmp_path / "corpus"
    write_corpus(root, CorpusSpec(real=1, per_generator=0, min_seconds=7, max_seconds=8, seed=5))
    model = save_random_wavlm(tmp_path / "tiny", size="tiny", seed=0)
    wavlm = WavLMConfig(model=str(model), layers=(0, 2))
    result = featurize("folder", root, str(tmp_path / "w.zarr"), workers=0, block_size=4, wavlm=wavlm,
                       config=FeaturizeConfig.from_options(features="wavlm", windows="all"))
    store = open_store(str(tmp_path / "w.zarr"), version=result.version)
    rows = store.rows()
    path = str(store.meta["path"][rows[0]])
    frontend = Frontend()
    wave = frontend.to_mono_16k(decode(path))
    windows = [frontend.peak_normalise(frontend.crop_or_pad(w)) for _, w in sliding_windows([wave], 48000, 24000)]
    assert len(rows) == len(windows) == store.meta["file_windows"][rows[0]] >= 5
    expected = load_wavlm(wavlm, device="cpu")(np.stack(windows), keys=("layers",))["layers"]
    np.testing.assert_allclose(store.array("wavlm")[:].astype(np.float32), expected.astype(np.float32), atol=2e-3)


def test_validation_needs_two_files_of_each_label_however_many_windows(long_files):
    """One fake file of 10+ windows is one file: too few to put fakes on both sides of the split."""
    from dfdetect.train.data import DataSet
    from dfdetect.train.trainer import TrainError

    spec = f"{long_files['store']}@{long_files['windows']}:train"
    train_set = open_set(spec, "train")
    meta = train_set.store.meta
    fakes = train_set.rows[meta["label"][train_set.rows] == 1]
    one_fake = fakes[meta["file"][fakes] == meta["file"][fakes[0]]]
    rows = np.sort(np.r_[train_set.rows[meta["label"][train_set.rows] == 0], one_fake])
    assert len(one_fake) >= 5
    with pytest.raises(TrainError, match="needs at least 2 files of each label"):
        split_validation(DataSet("train", spec, train_set.store, rows), TrainConfig(arch="mel_cnn", train=spec))


def test_variants_of_a_windowed_store_keep_its_rows_and_feed_augment(long_files, tmp_path):
    """A variant (here RawBoost and a codec) is applied to the whole file, then its planned windows are
    cut: the same rows as the clean windowed version (so `train --augment` can draw between them),
    other values, the same on every run."""
    root, out = long_files["root"], str(tmp_path / "v.zarr")

    def variant(**options):
        return featurize("folder", root, out, workers=0, block_size=32,
                         config=FeaturizeConfig.from_options(features="mel", windows="all", **options))

    clean = variant()
    boosted = variant(corrupt="rawboost")
    coded = variant(codec="mp3:32k")
    stores = [open_store(out, version=r.version) for r in (clean, boosted, coded)]
    assert len({r.version for r in (clean, boosted, coded)}) == 3 and clean.version == long_files["windows"]
    # the API's keyword names the same version as the config (and resumes it: nothing to plan or run)
    api = featurize("folder", root, out, features=("mel",), windows="all", workers=0, block_size=32)
    assert api.version == clean.version and api.blocks_run == 0
    for store in stores[1:]:
        for column in ("clip_id", "file", "window", "window_start", "status"):
            np.testing.assert_array_equal(store.meta[column], stores[0].meta[column])
        assert store.attrs["clip_table_hash"] == stores[0].attrs["clip_table_hash"]
        assert not np.array_equal(store.array("mel")[:8], stores[0].array("mel")[:8])
    assert set(stores[2].meta["variant_codec"]) == {"mp3:32k"}
    again = featurize("folder", root, str(tmp_path / "again.zarr"), workers=0, block_size=32,
                      config=FeaturizeConfig.from_options(features="mel", windows="all", corrupt="rawboost"))
    np.testing.assert_array_equal(open_store(again.store, version=again.version).array("mel")[:],
                                  stores[1].array("mel")[:])
    spec = f"{out}@{clean.version}"
    train(TrainConfig(arch="mel_cnn", train=f"{spec}:train", augment=(f"{out}@{boosted.version}",), epochs=1,
                      batch_size=16, val_fraction=0.25, max_windows_per_file=3, audit=False), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert sum(record["train"]["draws"].values()) == json.loads((tmp_path / "run" / "config.json").read_text())[
        "sets"]["train"]["rows"] and len(record["train"]["draws"]) == 2
