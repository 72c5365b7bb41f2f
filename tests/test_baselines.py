"""The field's reference systems end to end: LFCC-GMM's scores are scikit-learn's on the same
frames; every baseline trains on a generated store into a complete run folder that evaluate,
report and score use like any head; the report reads heads against them; a store without the
waveform says which featurize flag to add."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny
from safetensors import safe_open
from sklearn.mixture import GaussianMixture
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.errors import ConfigError
from dfdetect.evaluate.evaluation import evaluate_run
from dfdetect.evaluate.report import build_report, read_run
from dfdetect.evaluate.score_files import read_scores
from dfdetect.featurize.audio import encode
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.models.lfcc_gmm import LfccGMM, LfccGMMConfig
from dfdetect.models.runs import RunFolder, load_run
from dfdetect.store import open_store
from dfdetect.train.data import open_set, stratified_split
from dfdetect.train.trainer import TrainConfig, TrainError, train

runner = CliRunner()
GMM = {"n_components": 4}


@pytest.fixture(scope="module")
def wave_store(mel_store, tmp_path_factory):
    """The shared generated corpus featurized with the waveform too, as 1 s clips: the raw-waveform
    models cost ~1 s of CPU per 3 s clip to train, and every model pools over time."""
    store = str(tmp_path_factory.mktemp("wave") / "wave.zarr")
    featurize("folder", Path(mel_store).parent / "corpus", store, features=("mel", "lfcc", "wave"), workers=0,
              block_size=16, frontend=FrontendConfig(clip_seconds=1.0))
    return store


def sets(store):
    return dict(train=f"{store}:train", test=f"{store}:test", ood=(f"unseen={store}:ood",))


@pytest.fixture(scope="module")
def gmm_run(wave_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm") / "lfcc_gmm"
    train(TrainConfig(arch="lfcc_gmm", model=GMM, **sets(wave_store)), out)
    return out


def frames_of(store, rows) -> np.ndarray:
    """[clips, T, 60] float64: the stored LFCC frames of `rows`, as the GMM reads them."""
    return open_store(store).read_rows(["lfcc"], rows)["lfcc"].astype(np.float64).transpose(0, 2, 1)


def test_gmm_is_scikit_learns_em_and_scores_are_its_frame_llr(wave_store, gmm_run):
    run = load_run(gmm_run)
    record = run.record
    # the training rows are the train split less the seeded validation share, as the trainer takes them
    train_set = open_set(f"{wave_store}:train", "train")
    rows, _ = stratified_split(train_set.rows, train_set.labels, 0.05, 0)
    rows = np.sort(rows)
    labels = train_set.store.meta["label"][rows]
    frames = frames_of(wave_store, rows)
    reference = {}
    for label, name in ((0, "real"), (1, "fake")):
        data = frames[labels == label].reshape(-1, 60)
        assert record["train"]["fit"][name]["frames"] == len(data)       # every frame (under max_frames)
        reference[name] = GaussianMixture(4, covariance_type="diag", random_state=0, tol=1e-3, reg_covar=1e-6,
                                          init_params="k-means++",
                                          max_iter=100).fit(data)
        mixture = getattr(run.model, name)
        np.testing.assert_allclose(mixture.means.numpy(), reference[name].means_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mixture.variances.numpy(), reference[name].covariances_, rtol=1e-9)
        np.testing.assert_allclose(mixture.weights.numpy(), reference[name].weights_, rtol=1e-9)
    # the test set's P(fake), as the run wrote it, is sigmoid(mean frame LLR / the recorded scale)
    test = open_set(f"{wave_store}:test", "test")
    test_frames = frames_of(wave_store, test.rows)
    llr = np.array([np.mean(reference["fake"].score_samples(f) - reference["real"].score_samples(f))
                    for f in test_frames])
    expected = 1 / (1 + np.exp(-llr / record["train"]["fit"]["llr_scale"]))
    written = read_scores(RunFolder(gmm_run).scores("best") / "test.csv", fmt="csv")
    np.testing.assert_allclose(np.sort(written.scores), np.sort(expected), atol=1e-6)
    with torch.no_grad():   # the model's float64 LLR is scikit-learn's to rounding
        direct = run.model.llr({"lfcc": torch.from_numpy(test_frames.transpose(0, 2, 1))}).numpy()
    np.testing.assert_allclose(direct, llr, rtol=1e-9, atol=1e-9)
    # no pickle: the checkpoint is plain arrays
    with safe_open(str(RunFolder(gmm_run).checkpoint(1)), "pt") as f:
        assert set(f.keys()) == {"real.weights", "real.means", "real.variances", "fake.weights", "fake.means",
                                 "fake.variances", "llr_scale"}


def test_gmm_subsamples_frames_by_seed_and_refuses_too_few():
    rng = np.random.default_rng(0)
    lfcc = torch.from_numpy(rng.normal(size=(6, 60, 101)).astype(np.float32))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    batches = lambda: iter([{"lfcc": lfcc, "label": labels, "row": np.arange(6)}])   # noqa: E731
    model = LfccGMM(LfccGMMConfig(n_components=2, max_frames=60))
    info = model.fit(batches, (3, 3), seed=5)
    assert info["real"]["frames"] == info["fake"]["frames"] == 60       # 20 frames of each of 3 clips
    again = LfccGMM(LfccGMMConfig(n_components=2, max_frames=60))
    again.fit(batches, (3, 3), seed=5)
    assert torch.equal(model.real.means, again.real.means)              # the seed decides the sample
    with pytest.raises(ConfigError, match="cannot fit 512 mixtures; lower n_components"):
        LfccGMM().fit(batches, (3, 3), seed=0)


def test_fitted_model_takes_no_optimizer_options(wave_store, tmp_path):
    for bad in (dict(epochs=3), dict(lr=1e-3)):
        with pytest.raises(ConfigError, match="fitted once"):
            train(TrainConfig(arch="lfcc_gmm", **sets(wave_store), **bad), tmp_path / "x")


def test_a_store_without_the_waveform_names_the_featurize_flag(mel_store, tmp_path):
    with pytest.raises(TrainError, match=r"aasist reads wave, but .* lacks wave.*featurize it with --features "
                                         r"[a-z,]*wave"):
        train(TrainConfig(arch="aasist", train=f"{mel_store}:train", epochs=1), tmp_path / "a")
    result = runner.invoke(app, ["train", "--arch", "aasist_l", "--train", f"{mel_store}:train",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--features" in result.output and "wave" in result.output


def test_models_shows_the_published_counts():
    result = runner.invoke(app, ["models", "--json"])
    counts = {r["arch"]: r["parameters"] for r in json.loads(result.output)}
    assert counts["aasist"] == 297_866 and counts["aasist_l"] == 85_306
    assert {r["arch"]: r["baseline"] for r in json.loads(result.output)}["lfcc_lcnn"] is True
    table = runner.invoke(app, ["models"]).output
    assert "297,866" in table and "85,306" in table


def test_store_info_gives_bytes_per_clip_of_the_wave(wave_store):
    result = runner.invoke(app, ["store", "info", wave_store, "--json"])
    info = json.loads(result.output)
    wave = next(a for a in info["arrays"] if a["name"] == "wave")
    assert wave["shape"][1:] == [16000] and wave["dtype"] == "float16"
    assert wave["stored_per_clip"] == pytest.approx(wave["nbytes_stored"] / info["n_clips"])


@pytest.mark.slow
def test_every_baseline_is_a_run_like_any_head(wave_store, gmm_run, tmp_path):
    """LFCC-LCNN and AASIST-L (AASIST is the same module with other widths) train one epoch; with the
    GMM and a Mel-CNN head they are evaluated, reported against each other and used by score."""
    runs = {"lfcc_gmm": gmm_run}
    for arch in ("lfcc_lcnn", "aasist_l"):
        runs[arch] = tmp_path / arch
        train(TrainConfig(arch=arch, epochs=1, batch_size=16, lr=1e-3, **sets(wave_store)), runs[arch])
    runs["mel_cnn"] = train_tiny(wave_store, tmp_path / "mel_cnn", epochs=1)
    for arch, path in runs.items():
        folder = RunFolder(path)
        assert folder.config_file.is_file() and folder.checkpoint(1).is_file(), arch
        assert {p.name for p in folder.scores("best").iterdir()} >= {"val.csv", "test.csv", "ood_unseen.csv"}
        result = evaluate_run(path, f"{wave_store}:ood")
        assert result["metrics"]["n"] == len(open_set(f"{wave_store}:ood", "ood").rows), arch

    report = build_report(list(runs.values()), tmp_path / "report.html")
    markdown = report.markdown.read_text()
    ranking = markdown.split("| Rank |")[1].split("\n\n")[0].splitlines()[2:]
    kinds = {row.split(" | ")[1]: row.split(" | ")[3] for row in ranking}
    assert kinds == {"lfcc_gmm": "baseline", "lfcc_lcnn": "baseline", "aasist_l": "baseline", "mel_cnn": "head"}
    # the gap of the head to the best baseline on every set, from the runs' own records
    infos = {r.name: r for r in report.runs}
    head = infos["mel_cnn"]
    gaps = markdown.split("## Against the reference systems")[1].split("## Warnings")[0]
    for name in ("test", "ood:unseen"):
        base = min((infos[b] for b in ("lfcc_gmm", "lfcc_lcnn", "aasist_l")),
                   key=lambda r: r.metric(r.best_epoch, name, "eer"))
        base_eer, head_eer = base.metric(base.best_epoch, name, "eer"), head.metric(head.best_epoch, name, "eer")
        assert f"{name}: {base.title} ({base.name}) {base_eer:.2%}" in gaps
        row = next(line for line in gaps.splitlines() if line.startswith("| mel_cnn |"))
        assert f"{(head_eer - base_eer) * 100:+.2f} pts" in row
        low, high = head.record(head.best_epoch).sets[name]["eer_ci"]
        assert f"{head_eer:.2%} \\[{low:.2%}, {high:.2%}\\]" in row   # with its interval (Markdown-escaped)
        if name == "ood:unseen":
            warned = [w for w in report.warnings if w.signature == "below_baseline"]
            assert [w.run for w in warned] == (["mel_cnn"] if head_eer >= base_eer else [])
    # a report of heads alone says that nothing reads them against a baseline
    alone = build_report([runs["mel_cnn"]], tmp_path / "alone.html").markdown.read_text()
    assert "No reference system among these runs" in alone
    assert read_run(runs["aasist_l"]).baseline and not read_run(runs["mel_cnn"]).baseline

    # score: the raw-waveform model runs the same windows as the mel heads, on the run's frontend
    # (1 s windows, 0.5 s hop here): a 0.8 s file is one window, a 2.6 s one ceil(1.6 / 0.5) + 1
    rng = np.random.default_rng(3)
    files = {}
    for name, seconds in (("short.wav", 0.8), ("long.wav", 2.6)):
        files[name] = tmp_path / name
        files[name].write_bytes(encode(synthesize("real", rng, seconds), 16000, "wav"))
    for arch in ("aasist_l", "lfcc_gmm"):
        out = tmp_path / f"{arch}.csv"
        result = runner.invoke(app, ["score", "--model", str(runs[arch]), *map(str, files.values()), "--out",
                                     str(out), "--workers", "0"])
        assert result.exit_code == 0, result.output
        rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
        assert [rows[n]["status"] for n in files] == ["ok", "ok"]
        assert (rows["short.wav"]["windows"], rows["long.wav"]["windows"]) == ("1", "5")
        run = load_run(runs[arch])
        frontend = Frontend(run.frontend_config)
        features = frontend.features(frontend.load(files["short.wav"])[None], run.inputs)
        with torch.inference_mode():
            expected = torch.sigmoid(run.model({k: torch.from_numpy(v.astype(np.float16))
                                                for k, v in features.items()})).item()
        assert abs(float(rows["short.wav"]["score"]) - expected) < 1e-5, arch
