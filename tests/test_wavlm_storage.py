"""WavLM layers stored as uint8 codes with a per-channel scale (--wavlm-storage uint8): what is
stored, what every reader gets back, and that a head only ever sees the form it was trained on."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.featurize.frontend import Frontend
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig, load_wavlm
from dfdetect.models.runs import load_run
from dfdetect.store import StoreError, open_store
from dfdetect.store.inspect import export_hdf5, store_info, verify_store
from dfdetect.store.quantize import LEVELS, dequantize, quantize
from dfdetect.store.shards import ShardFiles
from dfdetect.train.data import FeatureLoader, open_set, row_bytes
from dfdetect.train.trainer import TrainConfig, TrainError, train
from tests.conftest import one_line


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One corpus (a broken file among the clips) featurized with the same tiny WavLM both ways."""
    root = tmp_path_factory.mktemp("storage")
    write_corpus(root / "corpus", CorpusSpec(real=12, per_generator=4, min_seconds=1, max_seconds=2))
    (root / "corpus" / "train" / "real" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    model = save_random_wavlm(root / "wavlm", "tiny")
    out = {"root": root, "model": model}
    for storage in ("float16", "uint8"):
        out[storage] = str(root / f"{storage}.zarr")
        featurize("folder", root / "corpus", out[storage], features=("mel", "wavlm"), workers=0, block_size=32,
                  wavlm=WavLMConfig(model=str(model), layers=(1, 2), storage=storage))
    return out


def test_quantize_round_trip_is_within_half_a_step():
    x = torch.randn(2, 3, 149, 64) * torch.linspace(0.01, 30, 64) + torch.linspace(-5, 50, 64)
    x[0, 1, :, 7] = 4.25                          # a constant channel comes back exactly
    codes, scale = quantize(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and scale.shape == (2, 3, 2, 64)
    top = codes.amax(dim=-2)                      # each channel's range is all 256 codes
    assert codes.amin(dim=-2).eq(0).all() and top[0, 1, 7] == 0 and top.eq(LEVELS).sum() == top.numel() - 1
    back = dequantize(codes, scale)
    assert back.dtype == torch.float16
    error = (back.float() - x).abs()
    step = scale[..., 1:2, :]
    assert (error <= step / 2 + x.abs() * 2 ** -11 + 1e-6).all()   # half a step, plus float16's rounding
    assert back[0, 1, :, 7].float().eq(4.25).all()
    scale[1, 0, 0, 3] = float("nan")              # a failed clip's scale: its values read as NaN
    assert torch.isnan(dequantize(codes, scale)[1, 0, :, 3]).all()


def test_uint8_codes_shards_are_zarrs_bytes(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 3, 5), dtype=np.uint8)
    x[16:32] = 0                                   # an all-fill chunk (failed clips): left out, as zarr does
    arrays = [zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="w").create_array(
        "x", shape=x.shape, dtype="uint8", fill_value=0, chunks=(16, 3, 5), shards=(32, 3, 5),
        compressors=[zarr.codecs.Crc32cCodec()]) for n in ("zarr", "direct")]
    for start in (0, 32):
        arrays[0][start:start + 32] = x[start:start + 32]
        assert ShardFiles.of(arrays[1]).write_shard(start, x[start:start + 32])

    def files(name):
        folder = tmp_path / f"{name}.zarr" / "x" / "c"
        return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(folder) for f in names}
    assert files("zarr") == files("direct")
    np.testing.assert_array_equal(arrays[1][:], x)


def test_a_uint8_store_holds_codes_and_reads_back_what_live_wavlm_gives(stores):
    half, codes = open_store(stores["float16"]), open_store(stores["uint8"])
    assert half.version != codes.version                     # storage names the version
    assert codes.config["wavlm"]["storage"] == "uint8" and half.config["wavlm"]["storage"] == "float16"
    assert codes.array("wavlm").dtype == np.uint8 and codes.array("wavlm_scale").dtype == np.float32
    assert codes.array("wavlm_scale").shape[1:] == (2, 2, 32)
    assert codes.feature_names == half.feature_names == ["mel", "wavlm", "wavlm_stats"]
    assert codes.array_names == [*half.array_names, "wavlm_scale"]
    assert codes.row_format("wavlm") == ((2, 149, 32), np.float16)
    assert codes.row_nbytes("wavlm") == half.row_nbytes("wavlm") == 2 * 149 * 32 * 2
    stored = {name: codes.array(name).nbytes for name in ("wavlm", "wavlm_scale")}
    assert stored["wavlm"] == half.array("wavlm").nbytes // 2   # half the bytes, plus the scales
    assert verify_store(stores["uint8"])["ok"] and verify_store(stores["float16"])["ok"]
    shown = CliRunner().invoke(app, ["store", "info", stores["uint8"]])
    assert shown.exit_code == 0 and "uint8 (codes + per-channel scale, read as float16)" in shown.output, shown.output
    assert store_info(stores["float16"])["wavlm_storage"] == "float16"

    rows = np.arange(codes.n_clips)
    names = ["wavlm", "mel", "wavlm_stats"]
    got, ref = codes.read_rows(names, rows), half.read_rows(names, rows)
    ok = codes.meta["status"] == "ok"
    assert (~ok).sum() == 1 and np.isnan(got["wavlm"][~ok]).all()           # the broken file: NaN, as float16
    for name in ("mel", "wavlm_stats"):                                      # nothing else changes
        np.testing.assert_array_equal(got[name], ref[name])
    a, b = ref["wavlm"][ok].astype(np.float32), got["wavlm"][ok].astype(np.float32)
    span = a.max(axis=2, keepdims=True) - a.min(axis=2, keepdims=True)
    assert 0 < np.abs(a - b).max() and (np.abs(a - b) <= span / (2 * LEVELS) * 1.02 + np.abs(a) * 2 ** -10).all()

    # What is read is the stored codes dequantized with their stored scale ...
    stored = torch.from_numpy(codes.array("wavlm")[:]), torch.from_numpy(codes.array("wavlm_scale")[:])
    np.testing.assert_array_equal(dequantize(*stored).numpy(), got["wavlm"])
    # ... and the stored codes are the live extractor's for the same prepared clip (up to the
    # float32 differences WavLM's batching makes: a code off by one, rarely).
    first = int(np.flatnonzero(ok)[0])
    live = load_wavlm(WavLMConfig(model=str(stores["model"]), layers=(1, 2), storage="uint8"), "cpu")(
        Frontend().load(str(codes.meta["path"][first]))[None])
    off = np.abs(live["codes"][0].astype(int) - stored[0][first].numpy())
    assert off.max() <= 1 and (off > 0).mean() < 0.02
    np.testing.assert_allclose(live["scale"][0], stored[1][first].numpy(), rtol=1e-3, atol=1e-4)
    codes_0, scale_0 = (torch.from_numpy(live[k][0]) for k in ("codes", "scale"))
    np.testing.assert_array_equal(live["layers"][0], dequantize(codes_0, scale_0))
    # featurize asks for only what it stores: the same values, and no dequantized layers made
    extractor = load_wavlm(WavLMConfig(model=str(stores["model"]), layers=(1, 2), storage="uint8"), "cpu")
    asked = extractor(Frontend().load(str(codes.meta["path"][first]))[None], keys=("codes", "scale", "stats"))
    assert sorted(asked) == ["codes", "scale", "stats"]
    for key in asked:
        np.testing.assert_array_equal(asked[key], live[key])
    with pytest.raises(ValueError, match="no WavLM output"):
        extractor(Frontend().load(str(codes.meta["path"][first]))[None], keys=("layers", "wavlm_scale"))

    # zarr's own decoding (no direct shard reader) gives the same rows
    codes._readers.update({"wavlm": None, "wavlm_scale": None})
    np.testing.assert_array_equal(codes.read_rows(["wavlm"], rows[::-1])["wavlm"], got["wavlm"][::-1])


def test_damaged_codes_or_scales_are_caught(stores, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(stores["uint8"], copy)
    store = open_store(str(copy))
    version = copy / store.version
    scale_shard = next((version / "wavlm_scale" / "c").rglob("*"))
    while scale_shard.is_dir():
        scale_shard = next(scale_shard.iterdir())
    raw = bytearray(scale_shard.read_bytes())
    raw[100] ^= 0xFF                                   # a flipped bit in a scale chunk
    scale_shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="array 'wavlm_scale', rows 0-15, cannot be read"):
        open_store(str(copy)).read_rows(["wavlm"], [0])
    codes_shards = sorted(p for p in (version / "wavlm" / "c").rglob("*") if p.is_file())
    codes_shards[0].unlink()                           # a lost shard of codes: their scales alone are finite
    problems = " ".join(verify_store(str(copy))["problems"])
    assert "missing shard wavlm/c/0/0/0/0" in problems and "wavlm_scale" in problems, problems


def test_the_loader_and_export_deliver_dequantized_float16(stores, tmp_path):
    data = open_set(stores["uint8"], "all")
    expected = data.store.read_rows(["wavlm"], data.rows)["wavlm"]
    assert row_bytes(data.store, ("wavlm",)) == 2 * 149 * 32 * 2
    for budget in (1 << 30, 1):                                   # in memory, and streaming
        loader = FeatureLoader(data, ("wavlm",), 8, shuffle=True, seed=3, memory_budget=budget, buffer_units=1)
        assert loader.in_memory == (budget > 1)
        seen = {}
        for batch in loader.epoch(0):
            assert batch["wavlm"].dtype == torch.float16
            seen.update(zip(batch["row"].tolist(), batch["wavlm"].numpy()))
        assert sorted(seen) == data.rows.tolist()
        for i, row in enumerate(data.rows):
            np.testing.assert_array_equal(seen[int(row)], expected[i])
    out = export_hdf5(stores["uint8"], tmp_path / "x.h5")
    assert out["arrays"] == ["mel", "wavlm", "wavlm_stats"]
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["wavlm"].dtype == np.float16
        np.testing.assert_array_equal(f["wavlm"][:], expected)


def test_a_head_only_meets_the_storage_it_was_trained_on(stores, tmp_path):
    half, codes = stores["float16"], stores["uint8"]
    with pytest.raises(TrainError, match="storage: .uint8. instead of .float16.*--wavlm-storage"):
        train(TrainConfig(arch="wavlm_cnn", train=f"{half}:train", test=f"{codes}:test", epochs=1, batch_size=8),
              tmp_path / "refused")
    train(TrainConfig(arch="wavlm_cnn", train=f"{codes}:train", test=f"{codes}:test", epochs=1, batch_size=8),
          tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.wavlm_info["storage"] == "uint8" and run.wavlm_config.storage == "uint8"
    # Live scoring applies the same round trip: a clip scores as its stored row does.
    store = open_store(codes)
    row = int(store.rows("test")[0])
    path = str(store.meta["path"][row])
    result = CliRunner().invoke(app, ["score", "--model", str(tmp_path / "run"), path, "--out",
                                      str(tmp_path / "s.csv"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s.csv", newline="") as f:
        [scored] = list(csv.DictReader(f))
    wave = Frontend(run.frontend_config).load(path)[None]
    live = load_wavlm(run.wavlm_config, "cpu")(wave)["layers"]
    as_float16 = load_wavlm(WavLMConfig(model=str(stores["model"]), layers=(1, 2)), "cpu")(wave)["layers"]
    assert not np.array_equal(live, as_float16)
    with torch.inference_mode():
        def p(x):
            return torch.sigmoid(run.model({"wavlm": torch.from_numpy(x)})).item()
        assert abs(float(scored["score"]) - p(live)) < 1e-5
        assert abs(float(scored["score"]) - p(store.read_rows(["wavlm"], [row])["wavlm"])) < 1e-3


def test_an_unknown_storage_is_one_line(stores, tmp_path):
    result = CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(stores["root"] / "corpus"),
                                      "--out", str(tmp_path / "x.zarr"), "--features", "wavlm", "--wavlm",
                                      str(stores["model"]), "--wavlm-storage", "int4"])
    one_line(result, "WavLM storage 'int4' (--wavlm-storage): choose float16 or uint8")
    assert not (tmp_path / "x.zarr").exists()


def test_a_study_store_takes_wavlm_storage(stores, tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(f"""
[experiment]
stores_dir = "stores"
runs_dir = "runs"

[datasets.demo]
dataset = "folder"
root = "{stores['root'] / 'corpus'}"

[stores.demo]
data = "demo"
features = ["wavlm"]
wavlm = "{stores['model']}"
wavlm_layers = [1, 2]
wavlm_storage = "uint8"
block_size = 32

[runs.codes]
arch = "wavlm_cnn"
train = "demo:train"
epochs = 1
batch_size = 8
""")
    result = CliRunner().invoke(app, ["experiment", "run", str(study), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert open_store(str(tmp_path / "stores" / "demo.zarr")).array("wavlm").dtype == np.uint8
    assert load_run(tmp_path / "runs" / "codes").wavlm_info["storage"] == "uint8"


@pytest.mark.slow
def test_the_storage_bench_runs_at_tiny_size(tmp_path):
    """bench/wavlm_storage.py end to end on a few clips, so it never rots: both storages, every table row."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "wavlm_storage.py"
    done = subprocess.run([sys.executable, str(bench), "--real", "12", "--per-generator", "4", "--seeds", "2",
                           "--epochs", "1", "--arch", "wavlm_cnn", "--batch", "8"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"uint8 [\d.]+ KB on disk \(1\.[89]\dx smaller\)", out) and "largest error" in out, out
    rows = [line for line in out.splitlines() if line.startswith("| wavlm_cnn |")]
    assert [r.split("|")[2].strip() for r in rows] == ["float16", "uint8"], out
    assert out.count("uint8 - float16 = ") == 2, out
