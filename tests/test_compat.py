"""The one compatibility rule (store.fit_problems / wavlm_differences) and the run folder's one
owner (models.runs.RunFolder), which train, evaluate, score, report, the study and the demo share."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_tiny

from dfdetect.models.runs import RunFolder, is_better, load_run
from dfdetect.store import open_store
from dfdetect.store.schema import WAVLM_IDENTITY, wavlm_differences
from dfdetect.train.trainer import TrainConfig, train


def test_fit_problems_names_each_mismatch(mel_store):
    store = open_store(mel_store)
    frontend = store.config["frontend_hash"]
    assert store.fit_problems(("mel",), frontend, None, "mel_cnn") == []
    [missing] = store.fit_problems(("wavlm", "mel", "lfcc"), frontend, None, "wavlm_aasist")
    assert "wavlm_aasist reads wavlm, mel, lfcc" in missing and "lacks wavlm, lfcc" in missing
    assert "it has only mel: featurize it with --features wavlm,mel,lfcc" in missing
    [other] = store.fit_problems(("mel",), "0123456789ab", None, "mel_cnn")
    assert "different frontends" in other and frontend in other and "0123456789ab" in other
    assert len(store.fit_problems(("mel", "lfcc"), "0123456789ab", None, "x")) == 2


@pytest.mark.parametrize("key", WAVLM_IDENTITY)
def test_wavlm_differences_each_identity_key(key):
    trained = {"model": "microsoft/wavlm-large", "revision": "abc", "layers": [6, 12, 24], "normalize": True,
               "device": "cuda:0", "dtype": "autocast bfloat16"}
    same = {**trained, "layers": (6, 12, 24), "device": "cpu"}   # provenance only (precision is identity)
    assert wavlm_differences(trained, same) == []
    changed = {**same, key: {"model": "other", "revision": "def", "layers": [6], "normalize": False,
                             "precision": "float32", "storage": "uint8"}[key]}
    [difference] = wavlm_differences(trained, changed)
    assert difference.startswith(f"{key}: ")
    old_run = {k: v for k, v in trained.items() if k != key and (key != "precision" or k != "dtype")}
    if key == "storage":   # runs from before storage was recorded trained on float16 layers
        assert wavlm_differences(old_run, changed) == ["storage: 'uint8' instead of 'float16'"]
        assert wavlm_differences(old_run, {**changed, "storage": "float16"}) == []
    else:                  # keys a run does not record are not compared
        assert wavlm_differences(old_run, changed) == []


def test_best_epoch_rule():
    def rec(epoch, eer):
        return {"epoch": epoch, "sets": {"val": {"eer": eer}}}
    assert RunFolder.best_epoch([rec(1, 0.3), rec(2, 0.1), rec(3, 0.1), rec(4, 0.2)]) == 2   # earliest tie
    assert RunFolder.best_epoch([rec(1, None), rec(2, float("nan")), rec(3, 0.4)]) == 3
    assert RunFolder.best_epoch([rec(1, None), rec(2, None)]) == 2          # none: the last epoch
    assert RunFolder.best_epoch([]) is None
    assert is_better(0.1, None) and not is_better(None, 0.5) and not is_better(0.5, 0.5)


def test_the_trainer_writes_what_run_folder_reads(mel_store, tmp_path):
    out = train_tiny(mel_store, tmp_path / "run", epochs=3)
    folder = RunFolder(out)
    records = folder.records()
    assert [r["epoch"] for r in records] == [1, 2, 3] and folder.is_run and folder.can_resume
    best = folder.best_epoch(records)
    assert load_run(out).epoch == best and load_run(out, "last").epoch == 3
    assert folder.best_checkpoint.read_bytes() == folder.checkpoint(best).read_bytes()
    assert {p.name for p in folder.scores("best").iterdir()} == {"val.csv", "test.csv", "ood_unseen.csv"}
    assert json.loads(folder.state_file.read_text())["epoch"] == 3
    assert folder.read_config()["config"]["arch"] == "mel_cnn"


def test_resume_twice_continues_where_it_stopped(mel_store, tmp_path):
    """state.json carries the epoch it was written at, also after a resume (so a second resume
    neither repeats nor skips epochs)."""
    config = TrainConfig(arch="mel_cnn", train=f"{mel_store}:train", epochs=1, batch_size=16, lr=1e-3)
    train(config, tmp_path / "run")
    train(TrainConfig(**{**config.__dict__, "epochs": 2}), tmp_path / "run", resume=True)
    train(TrainConfig(**{**config.__dict__, "epochs": 3}), tmp_path / "run", resume=True)
    assert [r["epoch"] for r in RunFolder(tmp_path / "run").records()] == [1, 2, 3]


def test_training_leaves_process_wide_torch_settings_as_it_found_them(mel_store, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    train(TrainConfig(arch="mel_cnn", train=f"{mel_store}:train", epochs=1, batch_size=16, seed=7), tmp_path / "r")
    assert torch.equal(torch.rand(3), expected)        # the caller's RNG stream goes on untouched
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32


def test_in_process_featurize_gives_back_zarr_and_torch_settings(tmp_path):
    import zarr

    from dfdetect.demo.corpus import CorpusSpec, write_corpus
    from dfdetect.featurize.pipeline import featurize

    write_corpus(tmp_path / "c", CorpusSpec(real=2, per_generator=1, min_seconds=1, max_seconds=1.5))
    before = (zarr.config.get("async.concurrency"), torch.get_num_threads())
    featurize("folder", tmp_path / "c", str(tmp_path / "s.zarr"), features=("mel",), workers=0, block_size=8)
    assert (zarr.config.get("async.concurrency"), torch.get_num_threads()) == before
