"""The featurize pass: values, bad clips, versions, locking, kill -9 and resume, real dask clusters."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.featurize.frontend import Frontend, FrontendConfig, MelConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import StoreError, open_store
from dfdetect.store.writer import StoreLock


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusSpec(real=8, per_generator=4, min_seconds=1.0, max_seconds=4.0))
    (root / "train" / "real" / "empty.wav").write_bytes(b"")
    (root / "test" / "fake" / "vocoder" / "not audio.mp3").write_text("<html>403</html>")
    return root


def _arrays(path, version=None):
    store = open_store(str(path), version=version)
    return {k: store.array(k)[:] for k in store.feature_names}, store


def test_values_equal_the_frontend_and_bad_clips_are_recorded(corpus, tmp_path):
    result = featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mel", "lfcc"),
                       workers=0, block_size=16)
    assert result.complete and result.n_clips == 26 and result.ok == 24
    assert result.errors == {"empty": 1, "unknown_container": 1}
    arrays, store = _arrays(tmp_path / "s.zarr")
    meta = store.meta
    frontend = Frontend()
    for i in range(store.n_clips):
        if meta["status"][i] == "ok":
            expected = frontend.features(frontend.load(meta["path"][i]))
            np.testing.assert_allclose(arrays["mel"][i], expected["mel"][0], atol=0.02, rtol=2e-3)
            np.testing.assert_allclose(arrays["lfcc"][i], expected["lfcc"][0], atol=0.02, rtol=2e-3)
            assert meta["error"][i] == "" and meta["duration"][i] > 0.9
        else:
            assert np.isnan(arrays["mel"][i]).all() and str(meta["path"][i]) in meta["error"][i]
    bad = {meta["error_kind"][i] for i in np.flatnonzero(meta["status"] == "error")}
    assert bad == {"empty", "unknown_container"}
    assert set(meta["generator"][meta["label"] == 1]) == {"vocoder", "bandlimited", "griffinlim", "codec"}


def test_a_different_frontend_writes_a_new_version_beside_the_old(corpus, tmp_path):
    out = str(tmp_path / "s.zarr")
    a = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16)
    b = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16,
                  frontend=FrontendConfig(mel=MelConfig(n_mels=64)))
    assert a.version != b.version
    assert open_store(out, version=a.version).array("mel").shape[2] == 128
    assert open_store(out, version=b.version).array("mel").shape[2] == 64
    again = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16)
    assert again.version == a.version and again.blocks_run == 0 and again.blocks_skipped == 2


def test_a_second_run_on_the_same_store_is_refused(corpus, tmp_path):
    out = str(tmp_path / "s.zarr")
    with StoreLock(out):
        with pytest.raises(StoreError, match="another featurize is writing"):
            featurize("folder", corpus, out, features=("mel",), workers=0)


def test_resume_refuses_a_changed_dataset(corpus, tmp_path):
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    out = str(tmp_path / "s.zarr")
    featurize("folder", copy, out, features=("mel",), workers=0, block_size=16)
    shutil.copy(next((copy / "train" / "real").glob("real_*")), copy / "train" / "real" / "added later.flac")
    with pytest.raises(StoreError, match="dataset changed"):
        featurize("folder", copy, out, features=("mel",), workers=0, block_size=16)


def test_unknown_feature_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(StoreError, match="unknown feature"):
        featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mfcc",), workers=0)


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(corpus, tmp_path):
    clean = str(tmp_path / "clean.zarr")
    featurize("folder", corpus, clean, features=("mel", "lfcc"), workers=0, block_size=2)
    killed = str(tmp_path / "killed.zarr")
    cmd = [sys.executable, "-m", "dfdetect.cli", "featurize", "--dataset", "folder", "--root", str(corpus),
           "--out", killed, "--features", "mel,lfcc", "--workers", "0", "--block-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            group = zarr.open_group(killed, mode="r")
            version = next(iter(group.group_keys()))
            done = int(group[version]["block_done"][:].sum())
        except Exception:
            done = 0
        if done >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    with pytest.raises(StoreError, match="no complete version"):
        open_store(killed)
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # 1: the two bad clips
    assert "resuming" in resumed.stdout
    a, store_a = _arrays(clean)
    b, store_b = _arrays(killed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for column in ("status", "error_kind", "duration", "clip_id"):
        np.testing.assert_array_equal(store_a.meta[column], store_b.meta[column])


@pytest.mark.slow
def test_runs_on_an_existing_distributed_cluster(corpus, tmp_path):
    from distributed import LocalCluster
    from typer.testing import CliRunner

    from dfdetect.cli import app

    out = str(tmp_path / "dask.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out", out,
                                          "--features", "mel,lfcc", "--block-size", "4",
                                          "--scheduler", cluster.scheduler_address])
        n_workers = len(cluster.workers)
    assert result.exit_code == 1, result.output  # 1: the two bad clips, recorded
    assert "24 of 26 clips written" in result.output and "7 blocks run" in result.output
    assert n_workers == 2
    local = str(tmp_path / "local.zarr")
    featurize("folder", corpus, local, features=("mel", "lfcc"), workers=0, block_size=4)
    a, _ = _arrays(out)
    b, _ = _arrays(local)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_wavlm_features_equal_the_model_on_the_same_clip(corpus, tmp_path):
    """A tiny random WavLM saved to disk, loaded through the same --wavlm PATH as the real one."""
    from dfdetect.demo.random_wavlm import save_random_wavlm
    from dfdetect.featurize.wavlm import WavLMConfig, load_wavlm

    model_dir = save_random_wavlm(tmp_path / "tiny-wavlm", size="tiny")
    config = WavLMConfig(model=str(model_dir), layers=(0, 2), batch_size=4)
    result = featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mel", "wavlm"),
                       wavlm=config, workers=0, block_size=16)
    assert result.complete and result.ok == 24
    store = open_store(str(tmp_path / "s.zarr"))
    assert store.feature_names == ["mel", "wavlm", "wavlm_stats"]
    assert store.config["wavlm"]["layers"] == [0, 2] and store.config["wavlm"]["revision"].startswith("sha256:")
    layers, stats = store.array("wavlm")[:], store.array("wavlm_stats")[:]
    assert layers.shape == (26, 2, 149, store.config["wavlm"]["hidden_size"])
    assert stats.shape == (26, 3, 2, store.config["wavlm"]["hidden_size"])
    extractor, frontend = load_wavlm(config, device="cpu"), Frontend()
    for i in np.flatnonzero(store.meta["status"] == "ok")[:5]:
        direct = extractor(frontend.load(store.meta["path"][i]))
        # equal up to float16 rounding of float32 sums that differ with the batch's composition
        np.testing.assert_allclose(layers[i], direct["layers"][0], atol=1e-3, rtol=1e-2)
        np.testing.assert_allclose(stats[i], direct["stats"][0], atol=1e-3, rtol=1e-2)
    assert np.isnan(layers[store.meta["status"] == "error"]).all()
    # `store verify` knows the WavLM arrays' shapes from the recorded model config
    from dfdetect.store.inspect import verify_store

    report = verify_store(str(tmp_path / "s.zarr"))
    assert report["ok"], report["problems"]
    # a different WavLM layer choice is a different version, never mixed into this one
    other = featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mel", "wavlm"),
                      wavlm=WavLMConfig(model=str(model_dir), layers=(1,)), workers=0, block_size=16)
    assert other.version != result.version


def test_codec_and_corruption_variants_are_their_own_versions(corpus, tmp_path):
    from dfdetect.featurize.variants import Variant

    out = str(tmp_path / "s.zarr")
    clean = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16)
    mp3 = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16,
                    variant=Variant.parse("mp3:32k"))
    corrupt = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=16,
                        variant=Variant.parse(None, "default", seed=1))
    assert len({clean.version, mp3.version, corrupt.version}) == 3
    stores = {v: open_store(out, version=v) for v in (clean.version, mp3.version, corrupt.version)}
    assert stores[mp3.version].config["variant"] == {"codec": "mp3", "bitrate": 32000, "corruptions": [], "seed": 0}
    mels = {v: s.array("mel")[:].astype(np.float32) for v, s in stores.items()}
    ok = stores[clean.version].rows()
    top = slice(126, 128)  # mel bins centred above 7.2 kHz, where MP3 at 16 kHz low-passes
    # the codec empties the top mel bands (relative to each clip's own level) ...
    assert mels[mp3.version][ok, 0, top].mean() < mels[clean.version][ok, 0, top].mean() - 0.5
    # ... and leaves the rest close to the original
    assert np.abs(mels[mp3.version][ok, 0, :100] - mels[clean.version][ok, 0, :100]).mean() < 0.5
    assert not np.allclose(mels[corrupt.version][ok], mels[clean.version][ok])
    featurize("folder", corpus, str(tmp_path / "again.zarr"), features=("mel",), workers=0,
                      block_size=16, variant=Variant.parse(None, "default", seed=1))
    again = open_store(str(tmp_path / "again.zarr")).array("mel")[:]
    np.testing.assert_array_equal(again, mels[corrupt.version].astype(np.float16))


def test_local_workers_keep_clip_buffers_off_mmap():
    """dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which pins the mmap threshold at
    128 KiB (every clip-sized buffer a fresh mmap, 3x slower frontend); featurize's own workers get
    glibc's thresholds back, a plain LocalCluster's keep dask's."""
    import ctypes
    import ctypes.util

    from distributed import Client, LocalCluster

    from dfdetect.featurize.pipeline import dask_client

    if not ctypes.util.find_library("c") or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")

    def _mmapped_by_a_clip_buffer() -> int:
        """Bytes glibc serves by mmap for a 1 MiB buffer (a chunk's spectra are ~10 MB) while it lives."""
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        before = libc.mallinfo2().hblkhd
        buffer = np.ones(16 << 20, np.uint8)   # far above 128 KiB, under our 32 MiB: no free hole serves it
        during = libc.mallinfo2().hblkhd
        del buffer
        return during - before

    with dask_client(None, 1) as client:
        assert list(client.run(_mmapped_by_a_clip_buffer).values()) == [0]
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        assert list(client.run(_mmapped_by_a_clip_buffer).values())[0] >= 16 << 20


def test_the_coordinator_runs_blocks_while_its_cluster_starts_then_hands_the_rest_over(corpus, tmp_path, monkeypatch):
    """A local run starts its cluster on a thread and runs blocks itself meanwhile; the moment the
    cluster is up the blocks not yet started go to its workers. The store equals a one-process run.
    The test holds the start until the coordinator has finished two blocks (its third is then
    already submitted) and holds that third block until the start has completed, so exactly three
    blocks run here whatever the machine's speed or load."""
    import threading
    import time

    from dfdetect.featurize import pipeline

    two_blocks_run, starting = threading.Event(), []
    start, init, run_block, calls = (pipeline.ClusterStarting._start, pipeline.ClusterStarting.__init__,
                                     pipeline._run_block, [])

    def held_start(workers):
        assert two_blocks_run.wait(60)
        return start(workers)

    def recorded_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        starting.append(self)

    def counted_block(job):   # only the coordinator's calls come here: workers import pipeline afresh
        calls.append(job.block)
        if len(calls) == 3:   # until the start's future is done, not only its function returned
            deadline = time.monotonic() + 60
            while not starting[0]._cluster.done():
                assert time.monotonic() < deadline
                time.sleep(0.01)
        report = run_block(job)
        if len(calls) == 2:
            two_blocks_run.set()
        return report

    monkeypatch.setattr(pipeline.ClusterStarting, "_start", staticmethod(held_start))
    monkeypatch.setattr(pipeline.ClusterStarting, "__init__", recorded_init)
    monkeypatch.setattr(pipeline, "_run_block", counted_block)
    result = featurize("folder", corpus, str(tmp_path / "overlap.zarr"), features=("mel", "lfcc"), workers=2,
                       block_size=2)
    assert result.blocks_run == 13 and result.blocks_in_coordinator == 3 == len(calls)
    featurize("folder", corpus, str(tmp_path / "one.zarr"), features=("mel", "lfcc"), workers=0, block_size=2)
    a, store_a = _arrays(tmp_path / "overlap.zarr")
    b, store_b = _arrays(tmp_path / "one.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for column in ("status", "error_kind", "error", "duration", "clip_id"):
        np.testing.assert_array_equal(store_a.meta[column], store_b.meta[column])


def test_a_cluster_that_fails_to_start_leaves_the_blocks_to_the_coordinator(corpus, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from dfdetect.featurize import pipeline

    def failed_start(workers):
        raise OSError("[Errno 28] No space left on device: '/dev/shm/sem.mp-x'")

    monkeypatch.setattr(pipeline.ClusterStarting, "_start", staticmethod(failed_start))
    out = io.StringIO()
    result = featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mel",), workers=2, block_size=2,
                       console=Console(file=out, width=400))
    assert result.complete and result.blocks_run == 13 == result.blocks_in_coordinator
    text = out.getvalue()
    assert text.count("the local cluster did not start (OSError: [Errno 28] No space left on device") == 1, text
    assert "blocks run in this process, one at a time" in text
    featurize("folder", corpus, str(tmp_path / "one.zarr"), features=("mel",), workers=0, block_size=2)
    np.testing.assert_array_equal(_arrays(tmp_path / "s.zarr")[0]["mel"], _arrays(tmp_path / "one.zarr")[0]["mel"])


def test_a_single_pending_block_starts_no_cluster(corpus, tmp_path, monkeypatch):
    from dfdetect.featurize import pipeline

    def no_cluster(*args, **kwargs):
        raise AssertionError("a one-block run started a local cluster")

    monkeypatch.setattr(pipeline, "start_local_cluster", no_cluster)
    result = featurize("folder", corpus, str(tmp_path / "s.zarr"), features=("mel",), workers=2, block_size=64)
    assert result.blocks_run == 1 == result.blocks_in_coordinator and result.complete


@pytest.mark.parametrize("error, kind", [(MemoryError(), "out_of_memory"),
                                         (ValueError("cannot convert float NaN to integer"), "unexpected_error")])
def test_a_clip_whose_decode_raises_is_its_row_and_the_block_is_written(corpus, tmp_path, monkeypatch, error, kind):
    """Issue 36: a clip whose decode raises anything (a lhotse segment at NaN, a forged size that
    asks for gigabytes) is that clip's error row; the other clips of its block are written."""
    from dfdetect.featurize import pipeline

    real_decode = pipeline.decode
    victim = sorted(str(p) for p in (corpus / "train" / "real").glob("*.wav") if p.stat().st_size)[0]

    def decode(path, *args, **kwargs):
        if str(path) == victim:
            raise error
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode", decode)
    out = str(tmp_path / "s.zarr")
    result = featurize("folder", corpus, out, features=("mel",), workers=0, block_size=32)   # one block
    assert result.complete and not result.failed_blocks
    assert result.errors == {"empty": 1, "unknown_container": 1, kind: 1} and result.ok == 23
    arrays, store = _arrays(out)
    row = list(store.meta["path"]).index(victim)
    assert store.meta["status"][row] == "error" and store.meta["error_kind"][row] == kind
    assert victim in store.meta["error"][row] and np.isnan(arrays["mel"][row]).all()
    ok = store.meta["status"] == "ok"
    assert np.isfinite(arrays["mel"][ok]).all()
