"""Ready for the first GPU, proven on the CPU: WavLM in one process per device, an external cluster
without GPU workers, precision recorded and never mixed, the run's precision wherever its threshold
is used, CUDA out-of-memory backed off, deterministic and process-local settings.

The tests marked `gpu` compare GPU results with CPU references at the GPU precision's
tolerances. They are skipped (with the reason) unless a CUDA GPU is visible and DFDETECT_TEST_GPU=1
(tests/conftest.py hides the GPU otherwise):

    DFDETECT_TEST_GPU=1 python -m pytest -q -m gpu tests/
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line, train_tiny

from dfdetect import devices
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.errors import ConfigError
from dfdetect.featurize import pipeline, wavlm
from dfdetect.featurize.frontend import Frontend
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig, clear_wavlm_cache, load_wavlm
from dfdetect.models.runs import RunConfig
from dfdetect.store import StoreError, open_store
from dfdetect.store.schema import version_config, version_name, wavlm_differences
from dfdetect.train.data import FeatureLoader, open_set
from dfdetect.train.trainer import TrainConfig, predict, torch_settings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-corpus")
    write_corpus(root, CorpusSpec(real=4, per_generator=2, min_seconds=1.0, max_seconds=2.0))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_random_wavlm(tmp_path_factory.mktemp("gpu-wavlm") / "tiny", size="tiny", seed=0)


def _config(tiny, **kw) -> WavLMConfig:
    return WavLMConfig(model=str(tiny), layers=kw.pop("layers", (0, 2)), batch_size=kw.pop("batch_size", 4), **kw)


def _waves(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((n, 48000)) * 0.1).astype(np.float32)


class _Timeout:
    """Fail (not hang) when the block takes longer than `seconds`."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def fail(*_):
            raise TimeoutError(f"no answer within {self.seconds} s")
        self.previous = signal.signal(signal.SIGALRM, fail)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


# -- item 2: WavLM in one process per device ---------------------------------------------------------
@pytest.mark.slow
def test_a_local_featurize_runs_wavlm_in_one_process_per_device(corpus, tiny, tmp_path):
    config = _config(tiny)
    result = featurize("folder", corpus, str(tmp_path / "dask.zarr"), features=("mel", "wavlm"), wavlm=config,
                       workers=2, block_size=2, device="cpu")
    assert result.complete and result.blocks_run == 6 and not result.failed_blocks
    # every WavLM block ran in one process for the one device, not on the two decoding workers
    assert list(result.wavlm_processes) == ["cpu"] and len(result.wavlm_processes["cpu"]) == 1
    assert result.wavlm_processes["cpu"][0] != os.getpid()
    # and the WavLM process never decoded: its thread is the device's
    assert result.wavlm_processes["cpu"][0] not in result.decode_processes
    direct = featurize("folder", corpus, str(tmp_path / "here.zarr"), features=("mel", "wavlm"), wavlm=config,
                       workers=0, block_size=4, device="cpu")
    assert direct.version == result.version          # float32 CPU stores keep their version name
    a, b = open_store(str(tmp_path / "dask.zarr")), open_store(str(tmp_path / "here.zarr"))
    np.testing.assert_array_equal(a.array("mel")[:], b.array("mel")[:])
    for name in ("wavlm", "wavlm_stats"):   # WavLM's process has all torch threads: float16 rounding apart
        np.testing.assert_allclose(a.array(name)[:].astype(np.float32), b.array(name)[:].astype(np.float32),
                                   atol=2e-3, rtol=1e-2)
    assert a.config["wavlm"]["precision"] == "float32" and a.config["wavlm"]["device"] == "cpu"
    # the dtype a version records is the computing process's, as its precision is
    assert a.config["wavlm"]["dtype"] == "float32"
    assert wavlm.compute_info("cpu", "bfloat16")["dtype"] == "autocast bfloat16"


def test_auto_is_what_dfdetect_device_says_and_a_bad_value_is_one_line(mel_store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dfdetect.cli import app

    args = ["train", "--arch", "mel_cnn", "--train", f"{mel_store}:train", "--out", str(tmp_path / "run")]
    one_line(CliRunner().invoke(app, args, env={"DFDETECT_DEVICE": "gpu"}), "DFDETECT_DEVICE='gpu'", "cuda:N")
    assert not (tmp_path / "run").exists()
    monkeypatch.delenv("DFDETECT_DEVICE")                      # tests/conftest.py sets it to cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.auto_device() == "cuda" and devices.resolve_device("auto") == torch.device("cuda", 0)
    for value in ("cpu", " cpu "):
        monkeypatch.setenv("DFDETECT_DEVICE", value)
        assert devices.resolve_device("auto") == torch.device("cpu")
        assert devices.local_devices("auto") == ["cpu"]
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)      # a named device is kept
    monkeypatch.setenv("DFDETECT_DEVICE", "cuda:1")
    assert devices.resolve_device("auto") == torch.device("cuda", 1) and devices.local_devices("auto") == ["cuda:1"]
    monkeypatch.setenv("DFDETECT_DEVICE", "auto")
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.local_devices("auto") == ["cuda:0", "cuda:1"]
    for bad in ("gpu", "mps", "cuda:x"):
        monkeypatch.setenv("DFDETECT_DEVICE", bad)
        with pytest.raises(ConfigError) as refused:
            devices.resolve_device("auto")
        message = str(refused.value)
        assert "\n" not in message and f"DFDETECT_DEVICE={bad!r}" in message and "cpu, cuda or cuda:N" in message
    assert devices.resolve_device("cpu") == torch.device("cpu")          # only auto reads it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DFDETECT_DEVICE", "cuda")
    with pytest.raises(ConfigError, match=r"^--device auto \(DFDETECT_DEVICE=cuda\): CUDA is not available"):
        devices.resolve_device("auto")


def test_dfdetect_device_also_says_what_auto_is_on_an_external_cluster(monkeypatch):
    class Cluster:   # a cluster with a GPU worker: auto alone would put WavLM there
        def scheduler_info(self, n_workers):
            return {"workers": {"tcp://gpu": {"resources": {"GPU": 1}}}}

        def wait_for_workers(self, n, timeout):
            pass

        def submit(self, fn, *args, resources=None, pure=None):
            self.asked = resources
            return type("Done", (), {"result": lambda _: fn(*args)})()

    monkeypatch.delenv("DFDETECT_DEVICE")
    assert pipeline.wavlm_placement(Cluster(), "tcp://x", "auto", [], None).resources == pipeline.WAVLM_BLOCK
    monkeypatch.setenv("DFDETECT_DEVICE", "cpu")
    cluster = Cluster()
    placement = pipeline.wavlm_placement(cluster, "tcp://x", "auto", [], None)
    assert placement.device == "cpu" and placement.resources == {} and cluster.asked is None
    assert placement.compute["device"] == "cpu"


def test_local_devices_spread_over_every_visible_gpu(monkeypatch):
    assert devices.local_devices("auto") == ["cpu"] and devices.local_devices("cpu") == ["cpu"]
    monkeypatch.delenv("DFDETECT_DEVICE")                      # auto as it is without the variable
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert devices.local_devices("auto") == devices.local_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert devices.local_devices("cuda:2") == ["cuda:2"]
    with pytest.raises(ConfigError, match="3 visible GPU"):
        devices.resolve_device("cuda:5")
    # a worker for cuda:N sees only that GPU; N counts in the caller's own CUDA_VISIBLE_DEVICES
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert pipeline._pinned_env("cuda:1") == {"CUDA_VISIBLE_DEVICES": "6"}
    assert pipeline._pinned_env("cpu") == {"CUDA_VISIBLE_DEVICES": ""}


# -- item 3: an external cluster without GPU workers -----------------------------------------------
@pytest.mark.slow
def test_an_external_cluster_without_gpu_workers_falls_back_or_says_how(corpus, tiny, tmp_path, monkeypatch):
    from distributed import LocalCluster
    from rich.console import Console

    monkeypatch.delenv("DFDETECT_DEVICE")   # auto as it is without the variable (conftest sets cpu)

    console = Console(record=True, width=300)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        with _Timeout(240):
            with pytest.raises(ConfigError) as refused:
                featurize("folder", corpus, str(tmp_path / "cuda.zarr"), features=("wavlm",), wavlm=_config(tiny),
                          device="cuda", scheduler=address, block_size=8, console=console)
            result = featurize("folder", corpus, str(tmp_path / "auto.zarr"), features=("wavlm",),
                               wavlm=_config(tiny), device="auto", scheduler=address, block_size=8, console=console)
    message = str(refused.value)
    assert "\n" not in message and f"dask worker {address} --resources GPU=1" in message
    assert not (tmp_path / "cuda.zarr").exists()            # refused before the store is touched
    assert result.complete and result.ok == 12
    printed = console.export_text()
    assert f"no worker of {address} declares the GPU resource, so WavLM runs on the CPU" in printed
    assert open_store(str(tmp_path / "auto.zarr")).config["wavlm"]["device"] == "cpu"


# -- item 4: precision in the store's identity, never mixed ------------------------------------------
def test_a_version_records_its_precision_and_a_resume_at_another_is_refused(corpus, tiny, tmp_path):
    import zarr

    out = str(tmp_path / "s.zarr")
    result = featurize("folder", corpus, out, features=("wavlm",), wavlm=_config(tiny), workers=0, block_size=4,
                       device="cpu")
    store = open_store(out)
    info = store.config["wavlm"]
    assert (info["precision"], info["dtype"], info["device"]) == ("float32", "float32", "cpu")
    # float32 names are the names of before (identity without precision); bf16 is another version
    legacy = {**store.config, "wavlm": {k: info[k] for k in ("model", "revision", "layers", "normalize")}}
    legacy.pop("shapes")
    assert result.version == version_name(legacy)
    bf16 = {**info, "precision": "bfloat16", "dtype": "autocast bfloat16", "device": "cuda:0"}
    shapes = {k: tuple(v) for k, v in store.config["shapes"].items()}
    assert version_config(store.config["frontend"], store.config["frontend_hash"], ["wavlm"], bf16, None,
                          shapes)[1] != result.version
    assert wavlm_differences(bf16, info) == ["precision: 'float32' instead of 'bfloat16'"]
    # a store whose version name predates precision but was made in bf16 (as a GPU run wrote it):
    # resuming it on the CPU would mix fp32 blocks into it, so it is refused in one line
    group = zarr.open_group(out, mode="r+", path=result.version)
    config = dict(group.attrs["config"])
    config["wavlm"] = {k: v for k, v in bf16.items() if k != "precision"}
    group.attrs["config"] = config
    group["block_done"][1] = 0
    with pytest.raises(StoreError) as refused:
        featurize("folder", corpus, out, features=("wavlm",), wavlm=_config(tiny), workers=0, block_size=4,
                  device="cpu")
    message = str(refused.value)
    assert "\n" not in message and "computed at bfloat16" in message and "this run computes float32" in message
    assert group["block_done"][1] == 0                     # nothing was written


def test_wavlm_precision_is_bf16_only_where_native_never_fp16(monkeypatch):
    cpu = torch.device("cpu")
    assert wavlm.wavlm_precision(cpu) == "float32" and not devices.bf16_native(cpu)
    monkeypatch.setattr(wavlm, "bf16_native", lambda device: True)
    assert wavlm.wavlm_precision(cpu) == "bfloat16"
    monkeypatch.setattr(wavlm, "bf16_native", lambda device: False)   # emulated bf16 / pre-Ampere
    assert wavlm.wavlm_precision(cpu) == "float32"
    assert wavlm.wavlm_precision(cpu, "bfloat16") == "bfloat16"       # a recorded precision is kept
    with pytest.raises(ConfigError, match="float16 overflows"):
        wavlm.wavlm_precision(cpu, "half")


# -- item 9: nothing process-wide changes in a WavLM forward -------------------------------------------
def test_wavlm_changes_no_process_wide_setting_at_any_precision(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: calls.append(p))
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    waves = _waves(2)
    fp32 = load_wavlm(_config(tiny), "cpu", "float32")(waves)
    ex = load_wavlm(_config(tiny), "cpu", "bfloat16")
    bf16 = ex(waves)
    assert calls == [] and before == (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                                      torch.backends.cudnn.allow_tf32)
    assert ex.info()["precision"] == "bfloat16" and ex.info()["dtype"] == "autocast bfloat16"
    # bf16 really ran (the features differ), and stays near fp32
    assert not np.array_equal(fp32["layers"], bf16["layers"])
    np.testing.assert_allclose(bf16["layers"].astype(np.float32), fp32["layers"].astype(np.float32), atol=0.1, rtol=0.1)


# -- item 6: CUDA out of memory ----------------------------------------------------------------------
def test_wavlm_halves_its_batch_on_cuda_out_of_memory(tiny, monkeypatch):
    clear_wavlm_cache()
    waves = _waves(8)
    reference = load_wavlm(_config(tiny, batch_size=1), "cpu")(waves)
    ex = load_wavlm(_config(tiny, batch_size=8), "cpu")
    forward, sizes = ex._forward, []

    def small_only(x, *keys):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x, *keys)

    monkeypatch.setattr(ex, "_forward", small_only)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = ex(waves)
    assert sizes == [8, 4, 2, 2, 2, 2] and ex.batch_size == 2         # halved until it fits, and kept
    for k in ("layers", "stats"):
        np.testing.assert_allclose(out[k].astype(np.float32), reference[k].astype(np.float32), atol=2e-3)
    sizes.clear()
    ex(waves[:4])
    assert sizes == [2, 2]                                        # the next call starts at the smaller batch
    monkeypatch.setattr(ex, "_forward", lambda x, *keys: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(torch.cuda.OutOfMemoryError):              # one clip that does not fit: raised
        ex(waves[:1])
    clear_wavlm_cache()


@pytest.fixture(scope="module")
def bf16_run(mel_store, tmp_path_factory):
    """A tiny Mel-CNN run that scores at bfloat16 (on the CPU: CPU autocast)."""
    from dfdetect.train.trainer import train

    out = tmp_path_factory.mktemp("bf16") / "run"
    train(TrainConfig(arch="mel_cnn", train=f"{mel_store}:train", test=f"{mel_store}:test", epochs=1,
                      batch_size=16, lr=1e-3, score_precision="bfloat16"), out)
    return out


def test_cublas_and_cudnn_allocation_failures_back_off_like_out_of_memory(tiny, bf16_run, mel_store, monkeypatch):
    """cuBLAS and cuDNN report a failed workspace allocation as a plain RuntimeError: the batch is
    halved for it as for torch's OutOfMemoryError; any other RuntimeError is raised as it is."""
    from dfdetect.models.runs import load_run
    from dfdetect.score.scoring import Scorer

    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    cudnn = RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
    assert devices.out_of_memory(torch.cuda.OutOfMemoryError("oom")) and devices.out_of_memory(cublas)
    assert devices.out_of_memory(cudnn) and devices.out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not devices.out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not devices.out_of_memory(ValueError("CUBLAS_STATUS_ALLOC_FAILED"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    clear_wavlm_cache()
    waves = _waves(4)
    ex = load_wavlm(_config(tiny, batch_size=4), "cpu")
    forward, sizes = ex._forward, []

    def small_only(x, *keys):
        sizes.append(len(x))
        if len(x) > 1:
            raise cublas
        return forward(x, *keys)

    monkeypatch.setattr(ex, "_forward", small_only)
    assert ex(waves)["layers"].shape[0] == 4 and sizes == [4, 2, 1, 1, 1, 1]
    monkeypatch.setattr(ex, "_forward", lambda x, *keys: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):     # not memory: never retried
        ex(waves)
    clear_wavlm_cache()

    scorer = Scorer(load_run(bf16_run), "cpu")
    store = open_store(mel_store)
    mel = store.read_rows(["mel"], store.rows()[:4])["mel"]
    reference, model, sizes = scorer({"mel": mel}), scorer.model, []

    class SmallOnly(torch.nn.Module):
        def forward(self, batch):
            sizes.append(len(batch["mel"]))
            if len(batch["mel"]) > 2:
                raise cudnn
            return model(batch)

    scorer.model = SmallOnly()
    np.testing.assert_allclose(scorer({"mel": mel}), reference, atol=1e-6)
    assert sizes == [4, 2, 2]


def test_scorer_halves_the_head_batch_and_one_oom_costs_only_those_rows(bf16_run, mel_store, tmp_path, monkeypatch):
    from dfdetect.models.runs import load_run
    from dfdetect.score.options import ScoreOptions
    from dfdetect.score.scoring import Scorer, score

    scorer = Scorer(load_run(bf16_run), "cpu")
    store = open_store(mel_store)
    mel = store.read_rows(["mel"], store.rows()[:9])
    reference = scorer({"mel": mel["mel"]})
    model, sizes = scorer.model, []

    class SmallOnly(torch.nn.Module):
        def forward(self, batch):
            sizes.append(len(batch["mel"]))
            if len(batch["mel"]) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return model(batch)

    scorer.model = SmallOnly()
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(scorer({"mel": mel["mel"]}), reference, atol=1e-6)
    assert sizes == [9, 4, 2, 2, 5, 2, 3]                        # halves until each part fits
    # a window that never fits: its files are error rows, the others are scored, the run goes on
    paths = sorted(str(p) for p in Path(store.meta["path"][0]).parent.glob("*.*"))[:3]
    original = Scorer._head

    calls = []

    def fails_on_second(self, inputs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, inputs)

    monkeypatch.setattr(Scorer, "_head", fails_on_second)
    summary = score(bf16_run, paths, tmp_path / "s.jsonl", ScoreOptions(workers=0, device="cpu", batch_size=1))
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and summary.exit_code == 1
    failed = [r for r in rows if r["status"] == "error"]
    assert len(failed) == 1 and failed[0]["error_kind"] == "out_of_memory" and "out of GPU memory" in failed[0]["error"]
    assert sum(r["status"] == "ok" for r in rows) == 2


# -- item 5: one precision wherever the run's threshold is used ------------------------------------
def test_predict_evaluate_and_score_run_at_the_runs_precision(bf16_run, mel_store, monkeypatch):
    from dfdetect.evaluate.evaluation import evaluate_run
    from dfdetect.models.runs import load_run
    from dfdetect.score.scoring import Scorer

    saved = json.loads((bf16_run / "config.json").read_text())
    assert saved["config"]["score_precision"] == "bfloat16"
    run = load_run(bf16_run)
    seen = []
    forward = run.model.forward

    def spy(batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(batch)

    monkeypatch.setattr(run.model, "forward", spy)
    loader = FeatureLoader(open_set(f"{mel_store}:test", "test"), run.inputs, 16, shuffle=False)
    predict(run.model, loader, torch.device("cpu"), "bfloat16")
    assert seen and set(seen) == {(True, torch.bfloat16)}
    seen.clear()
    predict(run.model, loader, torch.device("cpu"))
    assert set(seen) == {(False, torch.get_autocast_dtype("cpu"))}    # float32: no autocast
    # evaluate reproduces the trainer's bf16 numbers (it predicts at the recorded precision)
    result = evaluate_run(bf16_run, f"{mel_store}:test")
    recorded = run.record["sets"]["test"]
    assert result["metrics"]["eer"] == pytest.approx(recorded["eer"], abs=1e-9)
    assert result["metrics"]["auc"] == pytest.approx(recorded["auc"], abs=1e-9)
    assert Scorer(run, "cpu").precision == "bfloat16"
    with pytest.raises(ConfigError, match="score_precision"):
        TrainConfig(arch="mel_cnn", train="x", score_precision="half").resolved()


def test_runs_without_a_recorded_precision_score_at_float32():
    assert RunConfig({"config": {"arch": "mel_cnn"}}).score_precision == "float32"
    assert RunConfig({"config": {"score_precision": "bfloat16"}}).score_precision == "bfloat16"


# -- item 8: deterministic cuDNN while training, given back after -----------------------------------
def test_training_sets_deterministic_cudnn_and_gives_the_flags_back():
    config = TrainConfig(arch="mel_cnn", train="x").resolved()
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    try:
        with torch_settings(torch.device("cpu"), config):
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("on", [True, False])
def test_tf32_is_the_runs_in_training_evaluate_and_score_and_given_back_after(run_dir, mel_store, tmp_path,
                                                                              monkeypatch, on):
    """Matmul and cuDNN TF32 both as config.tf32 says while training (cuDNN's default is on), and as
    the run recorded it wherever its threshold is used; the caller's flags are given back after."""
    import shutil

    from dfdetect.evaluate.evaluation import evaluate_run
    from dfdetect.models.runs import load_run
    from dfdetect.score.scoring import Scorer
    from dfdetect.train import trainer

    assert json.loads((run_dir / "config.json").read_text())["config"]["tf32"] is True   # recorded
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["tf32"] = on
    (run / "config.json").write_text(json.dumps(saved))
    seen, predict_ = [], trainer.predict
    monkeypatch.setattr(trainer, "predict", lambda *a, **kw: (seen.append(_tf32_flags()), predict_(*a, **kw))[1])
    store = open_store(mel_store)
    mel = store.read_rows(["mel"], store.rows()[:4])["mel"]
    old = _tf32_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = not on, on   # one flag differs
    try:
        with torch_settings(torch.device("cpu"), TrainConfig(arch="mel_cnn", train="x", tf32=on).resolved()):
            assert _tf32_flags() == (on, on)
        assert _tf32_flags() == (not on, on)
        evaluate_run(run, f"{mel_store}:test")
        scorer = Scorer(load_run(run), "cpu")
        model = scorer.model
        scorer.model = lambda batch: (seen.append(_tf32_flags()), model(batch))[1]
        scorer({"mel": mel})
        assert seen == [(on, on), (on, on)] and _tf32_flags() == (not on, on)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# -- item 1: GPU variants of the tight CPU-reference tests -------------------------------------------
def test_gpu_tests_are_skipped_with_a_reason_without_a_gpu(tmp_path):
    """Without DFDETECT_TEST_GPU=1 (or a GPU) a gpu test reports a skip, never a pass."""
    test = tmp_path / "test_probe.py"
    test.write_text("import pytest\n\n@pytest.mark.gpu\ndef test_needs_gpu():\n    assert False\n")
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "DFDETECT_TEST_GPU"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert "1 skipped" in done.stdout and "DFDETECT_TEST_GPU=1" in done.stdout, done.stdout + done.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("storage", ["float16", "uint8"])
def test_gpu_wavlm_bf16_features_match_the_cpu_float32_reference(corpus, tiny, tmp_path, storage):
    """test_featurize's WavLM check on the GPU: bf16 autocast (where native) against fp32 on the CPU
    (uint8 storage: quantized on the GPU, read back dequantized, against the CPU's float16 layers)."""
    config = _config(tiny, storage=storage)
    result = featurize("folder", corpus, str(tmp_path / "g.zarr"), features=("wavlm",), wavlm=config, workers=1,
                       block_size=4, device="cuda")
    store = open_store(str(tmp_path / "g.zarr"))
    assert result.complete and list(result.wavlm_processes) == ["cuda:0"]   # the pinned worker's own GPU
    assert store.config["wavlm"]["device"].startswith("cuda")
    precision = store.config["wavlm"]["precision"]
    extractor, frontend = load_wavlm(_config(tiny), device="cpu", precision="float32"), Frontend()
    # bf16 keeps 8 bits of mantissa (relative step 2^-8): a few steps through the layers; uint8's
    # round trip adds ~0.5% (RMS, docs/benchmarks.md)
    tolerance = (0.05 if precision == "bfloat16" else 2e-3) + (0.01 if storage == "uint8" else 0)
    for i in store.rows()[:5]:
        direct = extractor(frontend.load(store.meta["path"][i]))
        for name, key in (("wavlm", "layers"), ("wavlm_stats", "stats")):
            got, want = store.read_rows([name], [i])[name][0].astype(np.float32), direct[key][0].astype(np.float32)
            assert np.linalg.norm(got - want) <= tolerance * np.linalg.norm(want), (name, i)


@pytest.mark.gpu
def test_gpu_checkpoint_scores_reproduce_on_gpu_and_cpu(mel_store, tmp_path):
    """test_train's checkpoint check: a GPU-trained run's saved scores from predict on the GPU, and
    close on the CPU (float32 on both, under the run's TF32 setting; the kernels differ)."""
    from dfdetect.models.runs import load_run

    run_dir = train_tiny(mel_store, tmp_path / "run", epochs=1, device="cuda")
    run = load_run(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["device"].startswith("cuda")
    test = open_set(f"{mel_store}:test", "test")
    saved = np.genfromtxt(run_dir / "scores" / "best" / "test.csv", delimiter=",", names=True, dtype=None,
                          encoding="utf-8")
    for device, atol in (("cuda", 1e-5), ("cpu", 2e-3)):
        model = run.model.to(device)
        with devices.tf32(run.tf32):          # as validation ran (evaluate and score do)
            rows, scores = predict(model, FeatureLoader(test, run.inputs, 16, shuffle=False), torch.device(device))
        np.testing.assert_array_equal(rows, saved["store_row"])
        np.testing.assert_allclose(scores, saved["score"], atol=atol)


@pytest.mark.gpu
def test_gpu_evaluate_reproduces_the_trainers_numbers(mel_store, tmp_path):
    """test_evaluate's check with training and evaluation on the GPU."""
    from dfdetect.evaluate.evaluation import evaluate_run

    run_dir = train_tiny(mel_store, tmp_path / "run", epochs=1, device="cuda")
    recorded = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][0]
    result = evaluate_run(run_dir, f"{mel_store}:test", device="cuda")
    for key in ("eer", "auc"):
        assert result["metrics"][key] == pytest.approx(recorded["sets"]["test"][key], abs=1e-4)


@pytest.mark.gpu
def test_gpu_score_matches_the_cpu_score(mel_store, tmp_path):
    """test_score's checks: scores on the GPU against the same run scored on the CPU."""
    from dfdetect.score.options import ScoreOptions
    from dfdetect.score.scoring import score

    run_dir = train_tiny(mel_store, tmp_path / "run", epochs=1, device="cuda")
    store = open_store(mel_store)
    paths = [str(p) for p in store.meta["path"][store.rows()[:6]]]
    for device in ("cuda", "cpu"):
        score(run_dir, paths, tmp_path / f"{device}.jsonl", ScoreOptions(workers=0, device=device))
    rows = {d: [json.loads(line) for line in (tmp_path / f"{d}.jsonl").read_text().splitlines()]
            for d in ("cuda", "cpu")}
    gpu = {r["path"]: r["score"] for r in rows["cuda"]}
    cpu = {r["path"]: r["score"] for r in rows["cpu"]}
    assert gpu.keys() == cpu.keys() and all(abs(gpu[p] - cpu[p]) < 1e-3 for p in gpu)
