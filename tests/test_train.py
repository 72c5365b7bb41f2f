"""Training from cached features: every set every epoch, exact resume, checkpoints that score the
same, the loader's whole-chunk reads, and every bad input refused before training starts."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.frontend import FrontendConfig, MelConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig
from dfdetect.models.registry import build_model
from dfdetect.store import FeatureStore, StoreError, open_store
from dfdetect.train.data import FeatureLoader, open_set
from dfdetect.train.trainer import TrainConfig, TrainError, open_sets, predict, train


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    corpus = base / "corpus"
    write_corpus(corpus, CorpusSpec(real=20, per_generator=6, min_seconds=1.0, max_seconds=3.5))
    fakes_only = corpus / "fakesonly" / "fake" / "vocoder"
    fakes_only.mkdir(parents=True)
    for path in sorted((corpus / "train" / "fake" / "vocoder").iterdir())[:3]:
        shutil.copy(path, fakes_only / path.name)
    model_dir = save_random_wavlm(base / "wavlm", size="tiny")
    full = str(base / "full.zarr")
    featurize("folder", corpus, full, features=("mel", "lfcc", "wavlm"),
              wavlm=WavLMConfig(model=str(model_dir), layers=(1, 2)), workers=0, block_size=16)
    mel_only = str(base / "mel.zarr")
    featurize("folder", corpus, mel_only, features=("mel",), workers=0, block_size=16)
    other_frontend = str(base / "mel64.zarr")
    featurize("folder", corpus, other_frontend, features=("mel",), workers=0, block_size=16,
              frontend=FrontendConfig(mel=MelConfig(f_max=7000.0)))
    return {"base": base, "full": full, "mel": mel_only, "other": other_frontend}


def _config(stores, arch="mel_cnn", **kw):
    s = stores["full"]
    fields = dict(train=f"{s}:train", test=f"{s}:test", ood=(f"unseen={s}:ood",), batch_size=16, lr=1e-3, epochs=2)
    return TrainConfig(arch=arch, **{**fields, **kw})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_set_every_epoch_and_the_run_folder(stores, tmp_path):
    run = tmp_path / "run"
    train(_config(stores), run)
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r["sets"]) == {"val", "test", "ood:unseen"}
        assert r["train"]["loss"] > 0 and 0 <= r["train"]["accuracy"] <= 1
        for name, m in r["sets"].items():
            for key in ("eer", "auc", "at_0.5", "at_eer"):
                assert key in m, (name, key)
            for key in ("accuracy", "precision", "recall", "f1", "mcc", "sensitivity", "specificity"):
                assert key in m["at_0.5"]
            if name != "val":
                assert "at_val" in m  # the threshold chosen on validation, applied here
    config = json.loads((run / "config.json").read_text())
    assert config["sets"]["train"]["rows"] + config["sets"]["val"]["rows"] == 24  # 12 real + 3 x 4 seen fakes
    assert config["sets"]["val"]["fake"] >= 1 and config["sets"]["val"]["real"] >= 1
    assert config["sets"]["ood:unseen"]["version"] == config["sets"]["train"]["version"]
    assert ({p.name for p in (run / "checkpoints").iterdir()}
            == {"epoch_001.safetensors", "epoch_002.safetensors", "best.safetensors"})
    for which in ("best", "last"):
        assert {p.name for p in (run / "scores" / which).iterdir()} == {"val.csv", "test.csv", "ood_unseen.csv"}
    assert json.loads((run / "run.json").read_text())["loaders"]["train"] == "in memory"


def assert_resume_is_exact(config, tmp_path):
    """Training `config(epochs=2)` straight through equals epoch 1 then --resume to 2: the records
    (the loader's timings apart) and the epoch-2 weights, exactly."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config(epochs=2), straight)
    train(config(epochs=1), resumed)
    train(config(epochs=2), resumed, resume=True)
    a, b = _records(straight), _records(resumed)
    for ra, rb in zip(a, b, strict=True):
        seconds = ra.pop("seconds")
        rb.pop("seconds")
        assert 0 < seconds["loader"] < seconds["train"]      # the loader's share of the epoch, recorded
        assert ra == rb
    wa = load_file(str(straight / "checkpoints" / "epoch_002.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "epoch_002.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    return straight


def test_resume_after_epoch_1_equals_an_uninterrupted_run(stores, tmp_path):
    assert_resume_is_exact(lambda epochs: _config(stores, arch="mel_aasist", epochs=epochs), tmp_path)


@pytest.mark.gpu
def test_gpu_resume_after_epoch_1_equals_an_uninterrupted_run(mel_store, tmp_path):
    """The same on CUDA (AMP's grad scaler, the GPU's RNG, deterministic cuDNN), on the suite's
    shared mel store."""
    def config(epochs):
        return TrainConfig(arch="mel_aasist", train=f"{mel_store}:train", test=f"{mel_store}:test",
                           ood=(f"unseen={mel_store}:ood",), batch_size=16, lr=1e-3, epochs=epochs, device="cuda")
    run = assert_resume_is_exact(config, tmp_path)
    assert json.loads((run / "run.json").read_text())["device"].startswith("cuda")
    assert "rng.cuda" in load_file(str(run / "state.safetensors"))


def test_a_cpu_run_leaves_the_cuda_rng_alone_and_resumes_a_state_that_holds_one(stores, tmp_path, monkeypatch):
    """The CUDA RNG saved and restored is the training device's, and only for a CUDA run: a CPU run
    on a GPU machine opens no CUDA context for it. States saved before, which hold the current GPU's
    RNG whenever CUDA was there, still resume on the CPU."""
    from dfdetect.models.runs import RunFolder
    from dfdetect.train import trainer

    run = tmp_path / "run"
    train(_config(stores, epochs=1), run)
    folder = RunFolder(run)
    tensors = load_file(str(folder.state_tensors))
    assert "rng.cuda" not in tensors
    folder.save_state({**tensors, "rng.cuda": torch.zeros(16, dtype=torch.uint8)}, folder.read_state())
    model = build_model("mel_cnn", **json.loads((run / "config.json").read_text())["model"])
    with monkeypatch.context() as m:                       # a GPU machine, as far as the RNG code can tell
        m.setattr(torch.cuda, "is_available", lambda: True)
        for name in ("get_rng_state", "set_rng_state"):
            m.setattr(torch.cuda, name, lambda *a, name=name: pytest.fail(f"torch.cuda.{name} in a CPU run"))
        trainer.load_state(folder, model, None, None, torch.device("cpu"))
        (tmp_path / "copy").mkdir()
        trainer.save_state(RunFolder(tmp_path / "copy"), 1, model, None, None, {}, torch.device("cpu"))
    assert "rng.cuda" not in load_file(str(tmp_path / "copy" / "state.safetensors"))
    train(_config(stores, epochs=2), run, resume=True)
    assert [r["epoch"] for r in _records(run)] == [1, 2]


def test_checkpoints_load_with_safetensors_and_score_identically(stores, tmp_path):
    run = tmp_path / "run"
    train(_config(stores, arch="wavlm_aasist", epochs=1), run)
    model = build_model("wavlm_aasist", **json.loads((run / "config.json").read_text())["model"])
    model.load_state_dict(load_file(str(run / "checkpoints" / "best.safetensors")))
    test = open_set(f"{stores['full']}:test", "test")
    rows, scores = predict(model, FeatureLoader(test, model.inputs, 8, shuffle=False), torch.device("cpu"))
    saved = np.genfromtxt(run / "scores" / "best" / "test.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    np.testing.assert_array_equal(rows, saved["store_row"])
    np.testing.assert_allclose(scores, saved["score"], atol=1e-6)


@pytest.mark.parametrize("arch", ["mel_cnn", "wavlm_cnn"])
def test_other_heads_train_from_the_store(stores, tmp_path, arch):
    record = train(_config(stores, arch=arch, epochs=1), tmp_path / arch)
    assert np.isfinite(record["train"]["loss"]) and record["sets"]["ood:unseen"]["n"] > 0


def test_init_from_another_run(stores, tmp_path):
    train(_config(stores, epochs=1), tmp_path / "a")
    train(_config(stores, epochs=1, init_from=str(tmp_path / "a")), tmp_path / "b")
    with pytest.raises(TrainError, match="do not fit"):
        train(_config(stores, arch="mel_aasist", epochs=1, init_from=str(tmp_path / "a")), tmp_path / "c")


@pytest.mark.parametrize("change,message", [
    (dict(arch="wavlm_aasist", train="{mel}:train"), "has only mel: featurize it with --features"),
    (dict(test="{other}:test"), "different frontends"),
    (dict(test="{full}:nosuchsplit"), "no split 'nosuchsplit'"),
    (dict(val="{full}:fakesonly"), "has only fake clips"),
    (dict(ood=("a={full}:ood", "a={full}:test")), "two OOD sets are named ood:a"),
])
def test_bad_inputs_fail_before_training(stores, tmp_path, change, message):
    change = {k: (v.format(**stores) if isinstance(v, str) else tuple(x.format(**stores) for x in v))
              for k, v in change.items()}
    if "train" in change:  # a mel-only store: no other set from the full store either
        change.update(test=None, ood=())
    config = _config(stores, **change)
    with pytest.raises((TrainError, StoreError), match=message):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_an_existing_run_is_not_overwritten(stores, tmp_path):
    run = tmp_path / "run"
    train(_config(stores, epochs=1), run)
    with pytest.raises(TrainError, match="--resume .* or --force"):
        train(_config(stores, epochs=1), run)
    train(_config(stores, epochs=1), run, force=True)
    assert len(_records(run)) == 1


def test_nan_features_are_refused(stores, tmp_path):
    store = tmp_path / "nan.zarr"
    shutil.copytree(stores["mel"], store)
    group = zarr.open_group(str(store), mode="r+")
    version = next(iter(group.group_keys()))
    mel = group[version]["mel"]
    ok_row = int(np.flatnonzero(group[version]["meta/status"][:] == "ok")[0])
    block = mel[0:16]
    block[ok_row] = np.nan
    mel[0:16] = block
    with pytest.raises(StoreError, match=f"NaN/Inf in 1 ok rows .*{ok_row}"):
        train(TrainConfig(arch="mel_cnn", train=str(store), epochs=1), tmp_path / "run")


def test_loader_modes_agree_and_read_only_whole_chunks(stores, monkeypatch):
    data = open_set(f"{stores['full']}:train", "train")
    features = ("mel", "lfcc", "wavlm")
    memory = FeatureLoader(data, features, 8, shuffle=True, seed=3)
    streaming = FeatureLoader(data, features, 8, shuffle=True, seed=3, memory_budget=0, buffer_units=1)
    assert memory.in_memory and not streaming.in_memory
    # the values a plain zarr read gives, row by row: what every loader must deliver
    group = zarr.open_group(str(stores["full"]), mode="r", path=data.store.version)
    expected = {f: group[f][:] for f in features}
    reads = []
    read_chunk = FeatureStore._read_chunk    # every read goes through FeatureStore.read_rows -> _read_chunk

    def recorded(self, name, start, out):
        reads.append((self.array(name).chunks[0], self.array(name).shape[0], start, len(out)))
        return read_chunk(self, name, start, out)
    monkeypatch.setattr(FeatureStore, "_read_chunk", recorded)
    for loader in (memory, streaming):
        epoch1 = [b["row"] for b in loader.epoch(1)]
        rows = np.concatenate(epoch1)
        assert sorted(rows) == sorted(data.rows)                      # every row once
        again = np.concatenate([b["row"] for b in loader.epoch(1)])
        np.testing.assert_array_equal(rows, again)                    # seeded
        assert not np.array_equal(rows, np.concatenate([b["row"] for b in loader.epoch(2)]))
        for batch in loader.epoch(1):
            assert batch["mel"].dtype == torch.float16 and batch["wavlm"].shape[1:] == (2, 149, 32)
            np.testing.assert_array_equal(batch["label"].numpy(), data.store.meta["label"][batch["row"]])
            for f in features:
                np.testing.assert_array_equal(batch[f].numpy(), expected[f][batch["row"]])
    assert reads and all(start % rows == 0 and length == min(rows, n - start)
                         for rows, n, start, length in reads)  # whole chunks, never single rows


def test_direct_shard_reads_equal_zarr_and_catch_damage(stores, tmp_path):
    """Raw chunks are read from the shard files by shards.py; the same rows read by zarr are the
    same arrays, and a flipped byte in a chunk or a cut-off shard is the store's one-line error."""
    store = tmp_path / "copy.zarr"
    shutil.copytree(stores["full"], store)
    direct = open_store(str(store))
    via_zarr = open_store(str(store))
    names = ("mel", "lfcc", "wavlm", "wavlm_stats")
    assert all(direct._direct(n) is not None for n in names)
    via_zarr._readers.update({n: None for n in names})
    rows = np.array([0, 3, 4, 5, direct.n_clips - 1, 7, 1])
    a, b = direct.read_rows(names, rows), via_zarr.read_rows(names, rows)
    for n in names:
        np.testing.assert_array_equal(a[n], b[n])
    # a store written with the codec before (Blosc) is read by zarr: no direct reader for it
    from zarr.codecs import BloscCodec, Crc32cCodec

    from dfdetect.store.shards import ShardFiles
    blosc = zarr.create_array(str(tmp_path / "blosc.zarr"), shape=(8, 4), dtype="float16", chunks=(4, 4),
                              shards=(8, 4), compressors=[BloscCodec(cname="zstd"), Crc32cCodec()])
    assert ShardFiles.of(blosc) is None
    shard = store / direct.version / "wavlm" / "c" / "0" / "0" / "0" / "0"   # rows 0.. of every layer
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(raw)
    for reader in (open_store(str(store)), via_zarr):
        with pytest.raises(StoreError, match="array 'wavlm', rows 0-.*cannot be read.*store verify"):
            reader.read_rows(["wavlm"], [0])
    shard.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError, match="array 'wavlm'.*cannot be read"):
        open_store(str(store)).read_rows(["wavlm"], [0])


def test_train_command(stores, tmp_path):
    runner = CliRunner()
    s = stores["full"]
    result = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{s}:train", "--ood", f"{s}:ood",
                                 "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "epoch   1/1" in result.output and "ood:full:ood" in result.output
    again = runner.invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{s}:train", "--out", str(tmp_path / "run")])
    assert again.exit_code == 2 and "--resume" in again.output


def test_leave_one_generator_out(stores, tmp_path):
    s = stores["full"]
    config = TrainConfig(arch="mel_cnn", train=f"{s}:train", holdout_generators=("vocoder",), epochs=1,
                         batch_size=16, lr=1e-3)
    record = train(config, tmp_path / "run")
    described = json.loads((tmp_path / "run" / "config.json").read_text())["sets"]
    store = open_set(f"{s}:train", "x").store
    gens = store.meta["generator"]
    holdout = np.genfromtxt(tmp_path / "run" / "scores" / "last" / "ood_holdout.csv", delimiter=",",
                            names=True, dtype=None, encoding="utf-8")
    held_rows = holdout["store_row"]
    assert set(gens[held_rows][store.meta["label"][held_rows] == 1]) == {"vocoder"}
    assert described["ood:holdout"]["real"] >= 1 and described["ood:holdout"]["fake"] == 4
    train_rows = described["train"]["rows"] + described["val"]["rows"]
    assert train_rows + described["ood:holdout"]["rows"] == 24
    assert "ood:holdout" in record["sets"]
    with pytest.raises(TrainError, match="not among the fakes"):
        train(TrainConfig(arch="mel_cnn", train=f"{s}:train", holdout_generators=("codec",), epochs=1), tmp_path / "x")


@pytest.mark.parametrize("arch", ["mel_cnn", "mel_aasist", "wavlm_cnn", "wavlm_aasist"])
def test_a_last_batch_of_one_never_reaches_batchnorm(stores, tmp_path, arch):
    """k * batch + 1 training rows: the epoch's last row joins the batch before it (BatchNorm cannot
    train on one row), in memory and streamed, and the run trains."""
    config = _config(stores, arch=arch, epochs=1, test=None, ood=())
    n = len(open_sets(config.resolved())["train"].rows)
    config = dataclasses.replace(config, batch_size=(n - 1) // 2)      # n = 2 * batch + 1 (n is odd here)
    if n % 2 == 0:
        config = dataclasses.replace(config, batch_size=n - 1)          # n = 1 * batch + 1
    data = open_sets(config.resolved())["train"]
    for budget in (4 << 30, 0):
        loader = FeatureLoader(data, ("mel",), config.batch_size, shuffle=True, seed=0, memory_budget=budget)
        sizes = [len(b["row"]) for b in loader.epoch(1)]
        assert sum(sizes) == n and min(sizes) > 1 and len(sizes) == len(loader), sizes
    record = train(config, tmp_path / arch)
    assert record["train"]["clips"] == n
