"""One featurize config (FeaturizeConfig): the CLI, the API and study files give the same store for
the same inputs without options; `featurize --json`; exit codes by README's convention."""

import json
import shutil

import huggingface_hub
import pytest
from typer.testing import CliRunner

from dfdetect import api
from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize import pipeline
from dfdetect.featurize.config import DEFAULT_FEATURES, WAVLM_LAYERS, WAVLM_MODEL, FeaturizeConfig
from dfdetect.featurize.wavlm import WavLMUnavailableError, clear_wavlm_cache
from dfdetect.store.schema import list_versions

runner = CliRunner()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusSpec(real=2, per_generator=1, min_seconds=1.0, max_seconds=1.5))
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache (offline) whose microsoft/wavlm-large is a tiny random WavLM with
    Large's 24 layers, so the default layers (6, 12, 24) exist: the defaults run, nothing downloads."""
    from transformers import WavLMConfig as HFWavLMConfig
    from transformers import WavLMModel

    tiny = save_random_wavlm(tmp_path / "tiny", size="tiny")
    config = HFWavLMConfig.from_pretrained(tiny)
    config.num_hidden_layers = max(WAVLM_LAYERS)
    snapshot = tmp_path / "hub" / f"models--{WAVLM_MODEL.replace('/', '--')}" / "snapshots" / COMMIT
    WavLMModel(config).save_pretrained(snapshot)
    shutil.copy(tiny / "preprocessor_config.json", snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_wavlm_cache()
    yield tmp_path / "hub"
    clear_wavlm_cache()   # no later test may get this model for microsoft/wavlm-large


STUDY = """
[datasets.d]
dataset = "folder"
root = {root}

[stores.s]
data = "d"
"""


def test_cli_api_and_study_write_the_same_version_without_options(corpus, hub_cache, tmp_path):
    # --workers 0 (in this process) is how each runs, not what it writes: no option below names a store's content
    cli = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out",
                              str(tmp_path / "cli.zarr"), "--workers", "0", "--json"])
    assert cli.exit_code == 0, cli.output
    from_cli = json.loads(cli.stdout)["version"]

    from_api = api.featurize("folder", corpus, str(tmp_path / "api.zarr"), workers=0).version

    study = tmp_path / "study" / "study.toml"
    study.parent.mkdir()
    study.write_text(STUDY.format(root=json.dumps(str(corpus))))
    ran = runner.invoke(app, ["experiment", "run", str(study), "--workers", "0"])
    assert ran.exit_code == 0, ran.output
    from_study = list(list_versions(str(study.parent / "stores" / "s.zarr")))

    assert from_study == [from_cli] and from_api == from_cli
    config = list_versions(str(tmp_path / "api.zarr"))[from_api]["config"]
    assert sorted(config["features"]) == sorted(DEFAULT_FEATURES) == ["lfcc", "mel", "wavlm"]
    assert config["wavlm"]["model"] == WAVLM_MODEL and tuple(config["wavlm"]["layers"]) == WAVLM_LAYERS


def test_default_wavlm_without_weights_is_a_clear_error_not_a_download(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_wavlm_cache()
    with pytest.raises(WavLMUnavailableError, match="microsoft/wavlm-large"):
        api.featurize("folder", corpus, str(tmp_path / "api.zarr"), workers=0)
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out",
                                 str(tmp_path / "cli.zarr"), "--workers", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "--features mel,lfcc" in " ".join(result.output.split())
    assert not (tmp_path / "api.zarr").exists() and not (tmp_path / "cli.zarr").exists()


def test_config_defaults_live_in_one_place():
    resolved = FeaturizeConfig().resolved()
    assert resolved.features == DEFAULT_FEATURES and resolved.workers >= 1
    assert FeaturizeConfig.from_options().resolved() == resolved   # the CLI and study files without options
    flat = FeaturizeConfig.from_options(features="lfcc,mel", wavlm_layers=[1], codec="mp3:32k", workers=0)
    assert flat.resolved().features == ("mel", "lfcc") and flat.wavlm.layers == (1,)
    assert flat.variant.codec == "mp3" and flat.variant.bitrate == 32000 and flat.resolved().workers == 0


def _bad_corpus(corpus, tmp_path):
    root = shutil.copytree(corpus, tmp_path / "corpus")
    (root / "train" / "real" / "empty.wav").write_bytes(b"")
    return root


def test_json_summary_is_all_stdout_holds(corpus, tmp_path):
    root = _bad_corpus(corpus, tmp_path)
    out = str(tmp_path / "s.zarr")
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(root), "--out", out,
                                 "--features", "mel", "--workers", "0", "--block-size", "4", "--json"])
    assert result.exit_code == 1, result.output    # 1: done, with a bad clip it lists
    summary = json.loads(result.stdout)
    n = sum(1 for p in root.rglob("*") if p.is_file())
    assert summary["store"] == out and summary["version"] == list(list_versions(out))[0]
    assert summary["clips"] == n and summary["written"] == n - 1 and summary["errors"] == 1
    assert summary["errors_by_kind"] == {"empty": 1} and "empty.wav" in summary["error_examples"]["empty"]
    assert summary["complete"] is True and summary["failed_blocks"] == {} and summary["seconds"] > 0
    assert "featurize" in result.stderr   # the progress bar went to stderr


def test_a_failed_block_exits_1_with_the_block_listed(corpus, tmp_path, monkeypatch):
    """A block that could not be written is a problem the run lists (rerunning retries it), not a
    usage error: exit 1, as README's convention says, and --json says the store is incomplete."""
    real_write = pipeline.write_block

    def write_block(group, block, *args, **kwargs):
        if block == 1:
            raise OSError(28, "No space left on device")
        return real_write(group, block, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_block", write_block)
    out = str(tmp_path / "s.zarr")
    args = ["featurize", "--dataset", "folder", "--root", str(corpus), "--out", out, "--features", "mel",
            "--workers", "0", "--block-size", "2"]
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["complete"] is False and list(summary["failed_blocks"]) == ["1"]
    assert "No space left" in summary["failed_blocks"]["1"]
    monkeypatch.setattr(pipeline, "write_block", real_write)
    again = runner.invoke(app, args)   # the rerun retries the block and finishes
    assert again.exit_code == 0, again.output
    assert "1 blocks run" in again.stdout
