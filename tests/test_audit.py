"""The shortcut audit: recording statistics kept by featurize, planted cues found by name and EER,
a dataset without one left silent, the --trim-silence mitigation, and train's warning."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import zarr
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import synthesize
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import open_store
from dfdetect.store.schema import RECORDING_COLUMNS

runner = CliRunner()
N = 24        # clips of each class
RATE = 16000


def write_dataset(root: Path, plant: str, seed: int = 0) -> Path:
    """A folder dataset whose reals and fakes come from one process (the demo's speech-like audio,
    1.5-2.5 s at 16 kHz), the fakes then changed by `plant` only: "silence" (their first 0.4-0.9 s
    zeroed: leading digital silence, same duration), "rate" (at 22.05 kHz), "level" (12 dB
    quieter), "none" (nothing: the labels carry no information)."""
    rng = np.random.default_rng(seed)
    for i in range(2 * N):
        label = ("real", "fake")[i % 2]
        x = synthesize("real", rng, rng.uniform(1.5, 2.5))
        rate = RATE
        if label == "fake" and plant == "silence":
            x[:int(rng.uniform(0.4, 0.9) * RATE)] = 0
        elif label == "fake" and plant == "rate":
            x, rate = soxr.resample(x, RATE, 22050), 22050
        elif label == "fake" and plant == "level":
            x = x * 10 ** (-12 / 20)
        folder = root / label / ("gen" if label == "fake" else "")
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{i:03d}.wav", x, rate)
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """plant -> a mel store of its dataset (and "silence-trimmed": the silence one, --trim-silence)."""
    from dfdetect.featurize.frontend import FrontendConfig

    base = tmp_path_factory.mktemp("audit")
    out = {}
    for plant in ("silence", "rate", "level", "none"):
        corpus = write_dataset(base / plant, plant)
        out[plant] = str(base / f"{plant}.zarr")
        featurize("folder", corpus, out[plant], features=("mel",), workers=0, block_size=16)
    out["silence-trimmed"] = str(base / "trimmed.zarr")
    featurize("folder", base / "silence", out["silence-trimmed"], features=("mel",), workers=0, block_size=16,
              frontend=FrontendConfig(trim_silence=True))
    return out


def audit_json(spec: str, *options) -> tuple[int, dict]:
    result = runner.invoke(app, ["audit", spec, "--json", *options])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def overall(report: dict, cue: str) -> dict:
    return next(c for c in report["cues"] if c["cue"] == cue and c["generator"] is None)


def test_featurize_keeps_each_clips_recording_statistics_and_store_info_lists_them(stores):
    store = open_store(stores["silence"])
    meta, fake = store.meta, store.meta["label"] == 1
    assert store.attrs["recording_statistics"] == 1
    assert set(RECORDING_COLUMNS) <= set(meta)
    lead = meta["leading_silence"]
    assert (lead[~fake] < 0.05).all() and ((lead[fake] > 0.38) & (lead[fake] < 0.92)).all()
    assert np.allclose(meta["bitrate_kbps"], 256, atol=1)          # 16-bit mono WAV at 16 kHz
    assert (meta["peak_dbfs"] < 0).all() and (meta["bandwidth_hz"] > 1000).all()
    info = runner.invoke(app, ["store", "info", stores["silence"]])
    assert info.exit_code == 0, info.output
    assert "recording statistics" in info.output and "leading_silence" in info.output


@pytest.mark.parametrize("plant, cue, words", [
    ("silence", "leading_silence", "leading silence alone separates real from fake"),
    ("rate", "sample_rate", "native sample rate alone separates real from fake"),
    ("level", "rms_dbfs", "RMS level alone separates real from fake"),
])
def test_a_planted_cue_is_found_with_its_name_and_eer(stores, plant, cue, words):
    result = runner.invoke(app, ["audit", stores[plant]])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"warning: {words}: EER 0.00" in text
    _, report = audit_json(stores[plant])
    assert overall(report, cue)["eer"] <= 0.02 and overall(report, cue)["warning"]
    assert overall(report, "duration")["warning"] is None        # the plants leave the durations alike


def test_a_dataset_whose_classes_come_from_one_process_gives_no_warning(stores):
    result = runner.invoke(app, ["audit", stores["none"]])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    _, report = audit_json(stores["none"])
    assert report["combined_eer"] > 0.25 and all(c["warning"] is None for c in report["cues"])


def test_against_lists_the_statistics_that_shift_most(stores):
    _, report = audit_json(stores["none"], "--against", stores["level"])
    assert report["shifts"][0]["statistic"] in ("rms_dbfs", "peak_dbfs", "noise_floor_dbfs")
    assert report["shifts"][0]["distance"] >= 0.4


def test_a_store_without_statistics_is_audited_on_what_it_has_and_says_how_to_get_the_rest(stores, tmp_path):
    import shutil

    old = str(tmp_path / "old.zarr")
    shutil.copytree(stores["rate"], old)
    store = open_store(old)
    meta = zarr.open_group(old, mode="r+", path=f"{store.version}/meta")
    for name in RECORDING_COLUMNS:     # as a store written before they were kept
        del meta[name]
    result = runner.invoke(app, ["audit", old])
    text = " ".join(result.output.split())
    assert "has no recording statistics" in text and f"dfdetect audit {old} --add-statistics" in text
    assert result.exit_code == 1 and "native sample rate alone separates" in text   # still a clip-table column
    assert "RMS level" not in text
    added = runner.invoke(app, ["audit", old, "--add-statistics", "--json"])
    assert added.exit_code == 1, added.output
    assert "recording statistics added: 48 clips decoded again" in " ".join(added.stderr.split())
    after = json.loads(added.stdout)
    assert after["missing"] == [] and after["missing_note"] == ""
    assert np.array_equal(open_store(old).meta["rms_dbfs"], open_store(stores["rate"]).meta["rms_dbfs"])
    version = zarr.open_group(old, mode="r+", path=store.version)   # as if killed before its commit point
    version.attrs.put({k: v for k, v in version.attrs.asdict().items() if k != "recording_statistics"})
    cut = runner.invoke(app, ["audit", old])
    assert "has no recording statistics" in " ".join(cut.output.split()) and "RMS level" not in cut.output


def test_trim_silence_is_its_own_frontend_and_removes_the_silence_cue(stores):
    from dfdetect.featurize.frontend import FrontendConfig

    default, trimmed = open_store(stores["silence"]), open_store(stores["silence-trimmed"])
    # default stores keep their version names byte for byte; trimming names a new frontend
    assert FrontendConfig().hash() == "ba58abe8942a" and default.version == "v-32ea4978fb00"
    assert trimmed.config["frontend_hash"] == FrontendConfig(trim_silence=True).hash() != "ba58abe8942a"
    assert trimmed.config["frontend"]["trim_silence"] is True
    _, before = audit_json(stores["silence"])
    _, after = audit_json(stores["silence-trimmed"])
    assert overall(before, "leading_silence")["eer"] <= 0.02
    assert overall(after, "leading_silence")["eer"] >= 0.35 and overall(after, "leading_silence")["warning"] is None
    assert (trimmed.meta["leading_silence"] < 0.05).all()


def test_featurize_trim_silence_option_writes_the_trimming_frontend(tmp_path):
    corpus = write_dataset(tmp_path / "c", "silence")
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out",
                                 str(tmp_path / "t.zarr"), "--features", "mel", "--workers", "0", "--trim-silence"])
    assert result.exit_code == 0, result.output
    from dfdetect.featurize.frontend import FrontendConfig

    assert open_store(str(tmp_path / "t.zarr")).config["frontend_hash"] == FrontendConfig(trim_silence=True).hash()


def test_train_warns_about_a_shortcut_before_the_first_epoch_and_the_report_shows_it(stores, tmp_path):
    spec = stores["silence"]
    result = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", spec, "--out", str(tmp_path / "run"),
                                 "--epochs", "1", "--batch-size", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    warned = text.index("warning: leading silence alone separates real from fake")
    assert warned < text.index("epoch 1/1")                     # before the first epoch
    quiet = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", spec, "--out", str(tmp_path / "quiet"),
                                "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-audit"])
    assert quiet.exit_code == 0 and "leading silence" not in quiet.output, quiet.output
    report = runner.invoke(app, ["report", str(tmp_path / "run"), str(tmp_path / "quiet"),
                                 "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "r.md").read_text()
    section = markdown[markdown.index("## Audit"):markdown.index("## Model size")]
    assert "**warning:**" in section and "leading silence alone separates real from fake: EER 0.00" in section


def test_datasets_show_decode_runs_the_cues_on_a_sample_before_featurizing(tmp_path):
    corpus = write_dataset(tmp_path / "c", "rate")
    result = runner.invoke(app, ["datasets", "show", "folder", "--root", str(corpus), "--decode", "40"])
    text = " ".join(result.output.split())
    assert "warning: native sample rate alone separates real from fake: EER 0.00" in text, result.output
    clean = runner.invoke(app, ["datasets", "show", "folder", "--root", str(write_dataset(tmp_path / "n", "none")),
                                "--decode", "40", "--json"])
    assert clean.exit_code == 0, clean.output
    assert all(c["warning"] is None for c in json.loads(clean.stdout)["audit"]["cues"])


def test_a_cue_of_one_generator_is_named_with_it_and_small_sets_are_not_audited():
    from dfdetect.featurize.shortcuts import audit_set

    rng = np.random.default_rng(3)
    n = 30
    labels = np.r_[np.zeros(n), np.ones(2 * n)].astype(int)
    generators = np.array([""] * n + ["tts_a"] * n + ["tts_b"] * n)
    lead = np.r_[rng.uniform(0, 0.1, 2 * n), rng.uniform(0.5, 0.9, n)]    # only tts_b's fakes start silent
    columns = {"leading_silence": lead, "rms_dbfs": rng.normal(-20, 3, 3 * n)}
    lines = audit_set(columns, labels, generators).warnings()
    assert any(line.startswith("leading silence alone separates real from fake of generator tts_b: EER 0.00")
               for line in lines), lines
    assert not any("tts_a" in line for line in lines), lines
    few = audit_set({"leading_silence": np.r_[np.zeros(8), np.ones(8)]}, np.r_[np.zeros(8), np.ones(8)].astype(int))
    assert few.warnings() == [] and "at least 10 of each" in few.note


def test_labels_that_carry_no_information_give_no_warning_over_many_draws():
    """The test against chance: 40 clips a class, ten statistics of one distribution, 30 draws,
    not one warning, though chance alone brings some statistic's EER well below 0.5."""
    from dfdetect.featurize.shortcuts import audit_set

    labels = np.r_[np.zeros(40), np.ones(40)].astype(int)
    chance_eers, warned = [], 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        columns = {name: rng.normal(size=80) for name in RECORDING_COLUMNS}
        result = audit_set(columns, labels)
        warned += bool(result.warnings())
        chance_eers.append(min(c.eer for c in result.cues))
    assert warned == 0
    assert min(chance_eers) < 0.35     # what chance alone reaches: the EER bound by itself is not enough


def test_audit_usage_errors_are_one_line(stores):
    from conftest import one_line

    one_line(runner.invoke(app, ["audit", f"{stores['none']}:test"]), "no decoded clips in split 'test'", "all")
    one_line(runner.invoke(app, ["audit", stores["none"], "--max-cue-eer", "0.7"]), "--max-cue-eer 0.7")


def test_an_exported_frontend_reads_trim_silence_when_on_and_without_it_when_off():
    from dfdetect.errors import ConfigError
    from dfdetect.featurize.frontend import FrontendConfig
    from dfdetect.models.pretrained import check_frontend

    assert check_frontend(FrontendConfig().to_dict()) == FrontendConfig()
    assert "trim_silence" not in FrontendConfig().to_dict()
    trimmed = FrontendConfig(trim_silence=True)
    assert check_frontend(trimmed.to_dict()) == trimmed
    with pytest.raises(ConfigError, match="frontend.trim_silence must be true or false"):
        check_frontend({**trimmed.to_dict(), "trim_silence": "yes"})


def test_a_value_shared_by_both_classes_counts_as_a_coin_flip():
    from dfdetect.featurize.shortcuts import tie_fair_eer

    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    rate = np.r_[np.full(20, 16000.0), np.full(10, 16000.0), np.full(10, 22050.0)]   # half the fakes at 22.05 kHz
    # the ROC from (FPR 0, TPR 0.5) to (1, 1) across the tie crosses FPR = FNR at 1/3
    assert tie_fair_eer(labels, rate) == pytest.approx(1 / 3)
    assert tie_fair_eer(labels, np.r_[np.zeros(20), np.ones(20)]) == 0.0   # no shared value: metrics.eer
