"""The featurize pass: every clip decoded once, the frontend and frozen WavLM run over it, the
results written to a versioned Zarr store (see dfdetect/store/schema.py), on dask.

    coordinator: index the dataset -> create/reopen the store version -> submit pending blocks
    worker:      frontend_block(job)  decode, frontend, mel/LFCC/wave -> writes its shard
                 wavlm_block(job, w)  WavLM on the block's waveforms  -> writes its shard
                 (the last task of a block marks it done)

A block is `block_size` consecutive clips and exactly one shard of every array, so parallel writers
never touch the same shard. Runs are resumable: a rerun of the same command skips done blocks and
redoes the rest, which rewrites whole shards with the same values.

WavLM runs in one process per device, never once per worker (WavLM-Large takes 1-4 GB per copy):
WavLM blocks ask for a share of the dask resource "GPU", which a local cluster gives to one
dedicated worker per device (every visible GPU for --device auto/cuda, pinned by
CUDA_VISIBLE_DEVICES, two blocks at a time; one CPU worker with all torch threads for --device cpu)
beside the CPU workers that decode (resource "DECODE", which decode blocks then ask for). On an external
cluster (--scheduler) the GPU workers declare it (`dask worker ... --resources GPU=1`); with none,
--device auto falls back to the CPU with a notice and --device cuda stops with one line saying how
to start them (`wavlm_placement`). The precision WavLM computes at is asked of a process that runs
the blocks, recorded in the version, and every block runs at exactly that precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rich.markup import escape

from dfdetect.datasets import prepare
from dfdetect.devices import device_variable, local_devices
from dfdetect.errors import ConfigError
from dfdetect.featurize.audio import AudioError, decode, warning_text
from dfdetect.featurize.config import FeaturizeConfig, default_out
from dfdetect.featurize.frontend import FRONTEND_FEATURES, Frontend, FrontendConfig
from dfdetect.featurize.recording import clip_statistics
from dfdetect.featurize.variants import Variant, clip_stamp, codec_label, vocoded_index
from dfdetect.featurize.wavlm import compute_info, load_wavlm
from dfdetect.featurize.windows import SILENT_WINDOW, WindowProtocol, WindowTable, plan_windows, window_starts
from dfdetect.store.schema import (
    ERROR,
    FILE_COLUMNS,
    OK,
    RECORDING_COLUMNS,
    VARIANT_CODEC_COLUMN,
    WARNING_COLUMN,
    WINDOW_COLUMNS,
    StoreError,
    arrays_of,
    list_versions,
    version_config,
    wavlm_precision_of,
)
from dfdetect.store.writer import StoreLock, check_writable, create_version, mark_complete, pending_blocks, write_block

DECODE = {"DECODE": 1}   # the dask resource of a worker that decodes (every CPU worker of a local cluster)
# Blocks a GPU's WavLM process runs at once: while one block's forward runs on the device, another's
# host side (receiving its waveforms, copying its features back, writing its ~130 MB shard) goes on.
# A WavLM block asks for that share of the worker's GPU=1 (a local one runs that many threads).
WAVLM_GPU_THREADS = 2
WAVLM_BLOCK = {"GPU": 1 / WAVLM_GPU_THREADS}


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for one block; small and picklable."""
    store: str
    version: str
    block: int
    paths: tuple[str, ...]
    frontend: FrontendConfig
    features: tuple[str, ...]
    wavlm: object | None = None   # WavLMConfig when "wavlm" in features
    device: str = "cpu"           # where the WavLM process runs it ("cuda" = its pinned GPU)
    threads: int = 1
    precision: str = "float32"    # WavLM's, as the version records it
    wavlm_threads: int = 1
    variant: Variant | None = None
    clip_ids: tuple[str, ...] = ()  # seed each clip's corruption
    # a windowed version (featurize/windows.py): each row's (window number, its file's planned length
    # in samples), and the window and hop in samples; None: one centre crop per clip
    windows: tuple[tuple[int, int], ...] | None = None
    window_samples: tuple[int, int] = (0, 0)


@dataclass
class FeaturizeResult:
    store: str
    version: str
    n_clips: int
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    error_examples: dict = field(default_factory=dict)
    decoder_warnings: int = 0   # clips written whose decoder reported damage it decoded past
    warning_example: str = ""
    failed_blocks: dict = field(default_factory=dict)
    blocks_run: int = 0
    files: int | None = None      # a windowed version's files (its n_clips are windows); None: centre crops
    silent_windows: int = 0       # window rows left out as score leaves them out (not errors)
    blocks_in_coordinator: int = 0   # of blocks_run: run by this process (workers=0, or while a cluster started)
    blocks_skipped: int = 0
    seconds: float = 0.0
    complete: bool = False
    wavlm_processes: dict = field(default_factory=dict)   # WavLM device -> pids that ran its blocks
    decode_processes: set = field(default_factory=set)    # pids that ran decode + frontend blocks


# -- worker side --------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _frontend(config: FrontendConfig) -> Frontend:
    return Frontend(config)


def _open_version(job: BlockJob):
    import zarr

    return zarr.open_group(job.store, mode="r+", path=job.version)


def _setup_worker(threads: int) -> None:
    import torch
    import zarr

    torch.set_num_threads(threads)
    zarr.config.set({"async.concurrency": 4})  # one block at a time per worker needs little I/O fan-out


def prepare_waveform(frontend: Frontend, audio, where: str, variant: Variant | None, key: str) -> np.ndarray:
    """The frontend's waveform, with the store's variant (codec, corruption) applied before the
    crop. A long file keeps 0.5 s around its centre crop, so the codec's start and end effects
    fall outside the 3 s the features see; the variant runs on at most clip + 1 s of audio."""
    if variant is None:
        return frontend.waveform(audio, where)
    wave = frontend.to_mono_16k(audio, where)
    window = frontend.config.clip_samples + frontend.config.sample_rate
    if len(wave) > window:
        start = (len(wave) - window) // 2
        wave = wave[start:start + window]
    return frontend.peak_normalise(frontend.crop_or_pad(variant.apply(wave, key)), where)


def clip_failure(path: str, error: Exception) -> tuple[str, str]:
    """(error kind, message) of a clip whose decode or preparation raised something other than
    AudioError: MemoryError is the clip's "out_of_memory"; anything else its "unexpected_error"."""
    if isinstance(error, MemoryError):
        return "out_of_memory", f"{path}: decoding it needed more memory than is free (MemoryError)"
    detail = (str(error).splitlines() or [""])[0][:300]
    return "unexpected_error", f"{path}: cannot be prepared ({type(error).__name__}: {detail})"


def frontend_block(job: BlockJob) -> dict:
    """Decode the block's clips, run the frontend, write mel/LFCC/wave and the outcome columns."""

    _setup_worker(job.threads)
    frontend = _frontend(job.frontend)
    n = len(job.paths)
    waves = np.zeros((n, job.frontend.clip_samples), np.float32)
    outcomes = {k: [] for k in ("status", "error_kind", "error", "duration", "sample_rate", "channels", "container",
                                WARNING_COLUMN, VARIANT_CODEC_COLUMN, *FILE_COLUMNS, *RECORDING_COLUMNS)}
    ok = np.zeros(n, bool)
    (_centre_crops if job.windows is None else _cut_windows)(job, frontend, waves, outcomes, ok)
    features = {}
    kinds = [k for k in FRONTEND_FEATURES if k in job.features]
    if kinds:
        features = frontend.features(waves[ok], kinds=kinds, dtype=np.float16)
        if not ok.all():   # a failed clip's rows stay NaN, as every unwritten row reads
            for k in kinds:
                full = np.full((n, *job.frontend.feature_shape(k)), np.nan, np.float16)
                full[ok] = features[k]
                features[k] = full
    group = _open_version(job)
    last = "wavlm" not in job.features
    write_block(group, job.block, features, outcomes, mark_done=last)
    report = {"block": job.block, "clips": n, "ok": int(ok.sum()), "pid": os.getpid(),
              "errors": [(k, m) for k, m in zip(outcomes["error_kind"], outcomes["error"]) if k]}
    if last:
        return report
    return {**report, "waves": waves[ok], "ok_mask": ok}


def _centre_crops(job: BlockJob, frontend: Frontend, waves: np.ndarray, outcomes: dict, ok: np.ndarray) -> None:
    """A block of the reference study's protocol: each clip decoded and prepared as one centre crop."""
    for i, path in enumerate(job.paths):
        audio = None
        key = job.clip_ids[i] if job.clip_ids else path
        # before reading: a later change shows (a vocoded fake records none: its features are not its file's)
        for name, value in zip(FILE_COLUMNS, clip_stamp(job.variant, path, key)):
            outcomes[name].append(value)
        outcomes[VARIANT_CODEC_COLUMN].append(codec_label(job.variant, key))
        try:
            audio = decode(path)
            waves[i] = prepare_waveform(frontend, audio, path, job.variant, key)
            ok[i] = True
            status, kind, message = OK, "", ""
        except AudioError as e:
            status, kind, message = ERROR, e.kind, str(e)
        except Exception as e:   # a hostile clip (NaN segment, huge allocation) costs its row, never its block
            status, kind, message = ERROR, *clip_failure(path, e)
        _add_outcome(outcomes, (status, kind, message), audio, clip_statistics(
            frontend, audio if ok[i] else None, outcomes["size"][-1]))


def _add_outcome(outcomes: dict, status: tuple[str, str, str], audio, statistics: dict) -> None:
    """One row's outcome columns: (status, error kind, message), what was decoded, its statistics."""
    for name, value in zip(("status", "error_kind", "error"), status):
        outcomes[name].append(value)
    outcomes["duration"].append(audio.duration if audio else 0.0)
    outcomes["sample_rate"].append(audio.sample_rate if audio else 0)
    outcomes["channels"].append(audio.channels if audio else 0)
    outcomes["container"].append(audio.container if audio else "")
    outcomes[WARNING_COLUMN].append(warning_text(audio.warnings) if audio else "")
    for name, value in statistics.items():
        outcomes[name].append(value)


def _cut_windows(job: BlockJob, frontend: Frontend, waves: np.ndarray, outcomes: dict, ok: np.ndarray) -> None:
    """A windowed block: each file of the block decoded once (the rows of a file are consecutive), the
    store's variant applied to the whole file (seeded by its clip id, as for a centre crop), and cut
    exactly as `dfdetect score` cuts it (featurize/windows.py); each row's window prepared as a clip
    is. A silent window is an error row ("silent_window", left out of the file's score as score
    leaves it out); a file that cannot be decoded, or whose length is not the planned one, makes
    all its rows errors."""
    size, hop = job.window_samples
    i = 0
    while i < len(job.paths):
        path, key, planned = job.paths[i], job.clip_ids[i], job.windows[i][1]
        end = i + 1
        while end < len(job.paths) and job.clip_ids[end] == key and job.paths[end] == path:
            end += 1
        stamp, audio, cuts, failure = clip_stamp(job.variant, path, key), None, [], None
        try:
            audio = decode(path)
            wave = frontend.to_mono_16k(audio, path)
            if len(wave) != planned:
                raise AudioError(path, "changed", f"decodes to {len(wave)} samples, {planned} when its windows were "
                                 "planned: the file changed during featurize; featurize into a new --out")
            if job.variant is not None:   # the whole file, then its planned windows (a codec's delay cut)
                wave = _same_length(job.variant.apply(wave, key), planned)
            cuts = window_starts(len(wave), size, hop)
        except AudioError as e:
            failure = (ERROR, e.kind, str(e))
        except Exception as e:   # a hostile file costs its rows, never its block
            failure = (ERROR, *clip_failure(path, e))
        statistics = clip_statistics(frontend, audio if failure is None else None, stamp[0])
        for row in range(i, end):
            status = failure
            if failure is None:
                number = job.windows[row][0]
                start, length = cuts[number]
                try:
                    waves[row] = frontend.peak_normalise(frontend.crop_or_pad(wave[start:start + length]), path)
                    ok[row], status = True, (OK, "", "")
                except AudioError as e:
                    at = start / frontend.config.sample_rate
                    status = (ERROR, SILENT_WINDOW, f"{e} (window {number}, {at:.2f} s)")
            for name, value in zip(FILE_COLUMNS, stamp):
                outcomes[name].append(value)
            outcomes[VARIANT_CODEC_COLUMN].append(codec_label(job.variant, key))
            _add_outcome(outcomes, status, audio, statistics)
        i = end


def _same_length(wave: np.ndarray, n: int) -> np.ndarray:
    """`wave` cut or zero-padded at the end to `n` samples: a variant keeps the file's timeline."""
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def wavlm_block(job: BlockJob, prepared: dict) -> dict:
    """Run frozen WavLM on the block's prepared waveforms; write its shard and mark the block done."""

    _setup_worker(job.wavlm_threads)
    extractor = load_wavlm(job.wavlm, device=job.device, precision=job.precision)
    ok = prepared["ok_mask"]
    n = len(ok)
    group = _open_version(job)
    # array -> the extractor's output it stores (uint8 storage: the codes, then their scale)
    stored = {"wavlm": "layers", "wavlm_stats": "stats"} if job.wavlm.storage == "float16" else \
        {"wavlm": "codes", "wavlm_scale": "scale", "wavlm_stats": "stats"}
    out = extractor(prepared["waves"], keys=stored.values()) if ok.any() else {}
    if ok.all():   # the usual block: the extractor's arrays are the shard's, no copy
        arrays = {name: out[key] for name, key in stored.items()}
    else:          # a failed clip's rows keep the fill value (NaN; codes 0, scale NaN)
        arrays = {}
        for name, key in stored.items():
            arrays[name] = np.full((n, *group[name].shape[1:]), group[name].fill_value, group[name].dtype)
            if out:
                arrays[name][ok] = out[key]
    write_block(group, job.block, arrays, {}, mark_done=True)
    return {**{k: v for k, v in prepared.items() if k not in ("waves", "ok_mask")},
            "wavlm_pid": os.getpid(), "wavlm_device": str(extractor.device), "wavlm_batch": extractor.batch_size}


# -- coordinator --------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, wavlm_devices=(), preload=(__name__,), cluster=None):
    """A client on the given cluster, or on a local cluster (`cluster`, one `start_local_cluster`
    already started, or a new one), which it closes on exit."""
    from distributed import Client

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    cluster = start_local_cluster(workers, wavlm_devices, preload) if cluster is None else cluster
    with cluster, Client(cluster) as client:
        if wavlm_devices:
            client.wait_for_workers(workers + len(wavlm_devices), timeout=120)
        client.run(tune_allocator)
        yield client


def start_local_cluster(workers: int, wavlm_devices=(), preload=(__name__,)):
    """A local cluster of `workers` one-thread processes plus, for each of `wavlm_devices`, one
    worker holding the "GPU" resource that WavLM blocks ask for.

    Local workers are forked from one forkserver that imported `preload` (the modules their tasks
    run) once: spawned workers each imported torch and dfdetect again, on the cores the pass
    needs, and a 900-clip run spent ~3 s starting its cluster (docs/benchmarks.md). The forkserver
    is a fresh process (never a fork of this multi-threaded one) that serves every later local
    cluster of this process too; its preload is fixed by the first one."""
    from distributed import LocalCluster

    with _forkserver(preload):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, resources=DECODE,
                               dashboard_address=None, silence_logs=logging.ERROR)
    try:
        for device in wavlm_devices:
            cluster.worker_spec[f"wavlm-{device}"] = {**cluster.new_spec, "options": {
                **cluster.new_spec["options"], "resources": {"GPU": 1}, "env": _pinned_env(device),
                "nthreads": WAVLM_GPU_THREADS if device.startswith("cuda") else 1}}
        if wavlm_devices:
            with _forkserver(preload):
                cluster.sync(cluster._correct_state)   # start the added specs (what `scale` does)
    except BaseException:
        cluster.close()
        raise
    return cluster


class ClusterStarting:
    """A local cluster starting on a thread while the coordinator runs the first blocks itself.

    A cold start (the forkserver importing torch and dfdetect on one core, then the workers
    connecting) took ~2 s of a ~4 s 900-clip run, with the coordinator idle. Meanwhile the
    coordinator runs blocks one at a time, on a thread of its own, computed exactly as a worker
    computes them (one torch thread); the moment the cluster is up, every block not yet started
    goes to it. A cluster that fails to start costs the run its parallelism, not its result: the
    coordinator says why and runs the remaining blocks itself. Leaving `stack` closes the
    cluster, used or not."""

    def __init__(self, stack: contextlib.ExitStack, workers: int, console=None):
        from concurrent.futures import ThreadPoolExecutor

        self._stack, self._workers, self._console = stack, workers, console
        starter = ThreadPoolExecutor(1, thread_name_prefix="dfdetect-cluster-start")
        self._cluster = starter.submit(self._start, workers)
        starter.shutdown(wait=False)
        stack.callback(self._close)

    def execute(self, jobs: list[BlockJob], resources: dict):
        """`_execute`'s contract: (job, report, error or None) as blocks finish."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        jobs = list(jobs)
        with ThreadPoolExecutor(1, thread_name_prefix="dfdetect-coordinator-block") as here:
            while jobs:
                job = jobs.pop(0)
                block = here.submit(lambda job=job: next(_execute([job], None, resources)))
                wait([block, self._cluster], return_when=FIRST_COMPLETED)
                failed = self._cluster.done() and self._cluster.exception() is not None
                if failed and jobs and self._console is not None:
                    error = self._cluster.exception()
                    self._console.print(
                        f"[yellow]the local cluster did not start ({type(error).__name__}: "
                        f"{escape(str(error).splitlines()[0][:200] if str(error) else 'no detail')}); "
                        f"the remaining {len(jobs)} blocks run in this process, one at a time[/]", soft_wrap=True)
                    self._console = None          # said once
                if self._cluster.done() and not failed and jobs:   # up: the rest go to it, started now
                    client = self._stack.enter_context(
                        dask_client(None, self._workers, cluster=self._cluster.result()))
                    rest, jobs = _submit(jobs, client, resources), []
                    yield block.result()
                    yield from _gather(rest)
                else:
                    yield block.result()

    @staticmethod
    def _start(workers: int):
        start_forkserver()   # before the scheduler, so its imports overlap the scheduler's start
        return start_local_cluster(workers)

    def _close(self) -> None:
        if self._cluster.exception() is None:   # waits for a start still under way
            self._cluster.result().close()       # a no-op when its client closed it


@contextlib.contextmanager
def _forkserver(preload):
    """Workers started inside are forked from the forkserver, which imports distributed and
    `preload` when it starts (so the list has no effect once it runs)."""
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        # get_mp_context sets distributed's own list on first use; ours replaces it
        get_mp_context().set_forkserver_preload(["distributed", *preload])
        yield


def start_forkserver(preload=(__name__,)) -> None:
    """Start the forkserver local workers fork from, without waiting for its imports."""
    from multiprocessing import forkserver

    with _forkserver(preload):
        forkserver.ensure_running()


def tune_allocator() -> bool:
    """Give glibc's malloc back its own thresholds in a worker process this module started.

    dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the
    OS), and setting it pins glibc's mmap threshold at 128 KiB: every buffer of a clip's size (a
    waveform is 192 KB, a chunk's spectra ~10 MB) is then a fresh mmap whose pages fault in on first
    touch, and the frontend ran 3x slower per clip than in a plain process (docs/benchmarks.md).
    These are the values glibc's dynamic rule reaches by itself. Workers of an external cluster are
    left as their owner started them (README, "Featurize on a cluster")."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:   # not glibc: nothing to restore
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))


def _pinned_env(device: str) -> dict:
    """A WavLM worker for cuda:N sees only that GPU (as its cuda:0); a CPU one sees none."""
    if not device.startswith("cuda"):
        return {"CUDA_VISIBLE_DEVICES": ""}
    index = int(device.split(":")[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[index] if visible else str(index)
    return {"CUDA_VISIBLE_DEVICES": physical}


@dataclass(frozen=True)
class WavLMPlacement:
    """Where WavLM blocks run: the device their process loads it on, the resources they ask for,
    and what that process reported about its compute (compute_info: precision, device)."""
    device: str
    resources: dict
    compute: dict
    threads: int = 1


def wavlm_placement(client, scheduler: str | None, device: str, local_devices_: list[str],
                    console) -> WavLMPlacement:
    """Where WavLM runs (see the module docstring), its precision asked of a process that runs it."""
    if client is None:                         # in this process (workers=0)
        return WavLMPlacement(device, {}, compute_info(device))
    gpu = WAVLM_BLOCK
    if device == "auto":   # DFDETECT_DEVICE says what auto stands for, for a cluster's workers too
        device = device_variable() or "auto"
    if not scheduler:                          # the local cluster's dedicated WavLM workers
        cpu = local_devices_ == ["cpu"]
        placement = WavLMPlacement("cpu" if cpu else "cuda", gpu, {},
                                   threads=(os.cpu_count() or 1) if cpu else 1)
    elif device == "cpu":
        placement = WavLMPlacement("cpu", {}, {})
    else:
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            raise ConfigError(f"--scheduler {scheduler}: no worker joined the cluster within 30 s; start "
                              f"workers with `dask worker {scheduler}` (GPU ones with --resources GPU=1)") from None
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        if any(w.get("resources", {}).get("GPU") for w in workers):
            placement = WavLMPlacement(device, gpu, {})
        elif device == "auto":
            console.print(f"notice: no worker of {escape(scheduler)} declares the GPU resource, so WavLM runs on "
                          f"the CPU workers; for GPUs start workers with `dask worker {escape(scheduler)} "
                          "--resources GPU=1`", soft_wrap=True)
            placement = WavLMPlacement("cpu", {}, {})
        else:
            raise ConfigError(f"--device {device}: no worker of the cluster at {scheduler} declares the GPU resource; "
                              f"start one worker per GPU with `dask worker {scheduler} --resources GPU=1` "
                              "(or use --device auto/cpu)")
    compute = client.submit(compute_info, placement.device, resources=placement.resources or None,
                            pure=False).result()
    return dataclasses.replace(placement, compute=compute)


def check_resume_precision(out: str, version: str, wavlm: dict) -> None:
    """A version started at another WavLM precision is never continued at this one. Versions named
    before precision was recorded share their name across precisions (schema.WAVLM_IDENTITY), so
    the recorded description decides."""
    if not Path(out).exists():
        return
    recorded = list_versions(out).get(version, {}).get("config", {}).get("wavlm")
    if recorded and wavlm_precision_of(recorded) != wavlm["precision"]:
        raise StoreError(f"{out}@{version} holds WavLM features computed at {wavlm_precision_of(recorded)} (on "
                         f"{recorded.get('device', '?')}); this run computes {wavlm['precision']} "
                         f"(on {wavlm['device']}): "
                         "resume it with the --device it was started on, or write to a new --out")


def wavlm_spec(config, n_samples: int) -> dict:
    """Load WavLM once here (on CPU) to fail early when the weights are missing, and to learn its
    shapes and provenance before any worker starts."""

    extractor = load_wavlm(config, device="cpu")
    return {"info": extractor.info(), "frames": extractor.frames(n_samples),
            "hidden_size": extractor.hidden_size, "num_hidden_states": extractor.num_hidden_states,
            "layers": config.layers, "storage": config.storage}


def feature_shapes(frontend: FrontendConfig, features, spec: dict | None) -> dict:
    """Per-clip shape of every array the features write."""
    shapes = {k: frontend.feature_shape(k) for k in FRONTEND_FEATURES}
    if spec:
        shapes["wavlm"] = (len(spec["layers"]), spec["frames"], spec["hidden_size"])
        shapes["wavlm_stats"] = (spec["num_hidden_states"], 2, spec["hidden_size"])
        shapes["wavlm_scale"] = (len(spec["layers"]), 2, spec["hidden_size"])
    return {name: shapes[name] for name in arrays_of(features, spec["storage"] if spec else "float16")}


def featurize(dataset: str, root: str | Path, out: str | None = None, features=None, wavlm=None,
              device: str | None = None, scheduler: str | None = None, workers: int | None = None,
              block_size: int | None = None, frontend: FrontendConfig | None = None,
              variant: Variant | None = None, console=None, dataset_options: dict | None = None,
              config: FeaturizeConfig | None = None, windows: WindowProtocol | str | int | None = None
              ) -> FeaturizeResult:
    """Run (or resume) the featurize pass of one dataset into the store at `out` (default
    stores/DATASET.zarr). The options are `FeaturizeConfig`'s fields: each one given overrides
    `config`, whose defaults (FeaturizeConfig()) are the CLI's and the study files'.
    `dataset_options`: the adapter's keyword arguments, `--option KEY=VALUE`. `windows`: a
    WindowProtocol, or what --windows takes ("centre", "all", N)."""
    from rich.console import Console

    console = console or Console()
    config = (config or FeaturizeConfig()).replace(
        features=features, wavlm=wavlm, device=device, scheduler=scheduler, workers=workers,
        block_size=block_size, frontend=frontend, variant=variant,
        windows=windows if windows is None or isinstance(windows, WindowProtocol) else WindowProtocol.parse(windows)
    ).resolved()
    out = out or default_out(dataset)
    features, frontend, variant, block_size = config.features, config.frontend, config.variant, config.block_size
    device, scheduler, workers = config.device, config.scheduler, config.workers
    check_writable(out)
    index = prepare(dataset, root, **(dataset_options or {}))
    if not index.clips:
        raise StoreError(f"{dataset} at {root}: no clips found; "
                         f"check it with `dfdetect datasets show {dataset} --root {root}`")
    _print_problems(index, dataset, root, console)
    index = vocoded_index(index, variant)

    wavlm = config.wavlm if "wavlm" in features else None
    spec = wavlm_spec(wavlm, frontend.clip_samples) if wavlm else None
    shapes = feature_shapes(frontend, features, spec)
    in_process = workers == 0 and not scheduler
    devices = local_devices(device) if spec and not scheduler and not in_process else []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        def connect(n_blocks: int):   # the cluster starts when first needed: WavLM's placement, or blocks to run
            if in_process or (not scheduler and not spec and n_blocks == 1):   # one block runs here: no start
                return None
            if scheduler or spec:
                return stack.enter_context(dask_client(scheduler, workers, devices))
            return ClusterStarting(stack, workers, console)
        client = connect(0) if spec else None
        placement = wavlm_placement(client, scheduler, device, devices, console) if spec else None
        # the version records WavLM as the process that runs the blocks computes it
        info = {**spec["info"], **placement.compute} if spec else None
        described, version = version_config(frontend.to_dict(), frontend.hash(), features, info,
                                            variant.to_dict() if variant else None, shapes, config.windows.to_dict())
        result = FeaturizeResult(store=out, version=version, n_clips=len(index.clips))
        _write_version(out, version, described, index, shapes, block_size, frontend, features, wavlm, placement,
                       variant, client if spec else connect, result, console, config.windows, workers)
    result.seconds = time.perf_counter() - t0
    return result


def _print_problems(index, dataset: str, root, console) -> None:
    for p in index.problems[:5]:
        console.print(f"[yellow]dataset problem:[/] {escape(p.where)}: {escape(p.message)}", soft_wrap=True)
    if len(index.problems) > 5:
        console.print(f"[yellow]... {len(index.problems) - 5} more dataset problems "
                      f"(`dfdetect datasets show {escape(dataset)} --root {escape(str(root))}` lists them)[/]")


def _write_version(out, version, config, index, shapes, block_size, frontend, features, wavlm, placement,
                   variant, client, result: FeaturizeResult, console, windows: WindowProtocol, workers: int) -> None:
    """Create or reopen the version and run its pending blocks (`client`: a dask client, None for
    this process, or a function of the number of blocks to run that connects one)."""
    with StoreLock(out):
        if placement is not None:
            check_resume_precision(out, version, config["wavlm"])
        table = None if windows.centre else window_rows(out, version, index.clips, windows, frontend, workers, console)
        group = create_version(out, version, config, table.clips if table else index.clips,
                               shapes, block_size, dataset=index.dataset, dataset_root=index.root,
                               columns=table.columns if table else None)
        result.n_clips = int(group.attrs["n_clips"])
        result.files = len(index.clips) if table else None
        block_size = int(group.attrs["block_size"])
        pending = pending_blocks(group)
        rows = table.clips if table else index.clips
        n_blocks = -(-len(rows) // block_size)
        result.blocks_skipped = n_blocks - len(pending)
        if result.blocks_skipped:
            console.print(f"resuming {out}@{version}: {result.blocks_skipped} of {n_blocks} blocks already written")
        where = {} if placement is None else {
            "device": placement.device, "precision": placement.compute["precision"],
            "wavlm_threads": placement.threads}
        jobs = [BlockJob(out, version, b, tuple(c.path for c in rows[b * block_size:(b + 1) * block_size]), frontend,
                         features, wavlm, threads=1, variant=variant, **where, **_block_rows(rows, table, b, block_size,
                                                                                             windows, frontend))
                for b in pending]
        if jobs:
            client = client(len(jobs)) if callable(client) else client
            _run_jobs(jobs, client, {} if placement is None else placement.resources, result, console,
                      "windows" if table else "clips")
        result.complete = mark_complete(group)
        _count_outcomes(group, result)


def _block_rows(rows: list, table: WindowTable | None, block: int, size: int, windows: WindowProtocol,
                frontend: FrontendConfig) -> dict:
    """A BlockJob's fields saying which rows it writes: their clip ids, and their windows."""
    part = slice(block * size, (block + 1) * size)
    fields = {"clip_ids": tuple(c.clip_id for c in rows[part])}
    if table is not None:
        columns = table.columns
        fields["windows"] = tuple(zip(columns["window"][part].tolist(), columns["file_samples"][part].tolist()))
        fields["window_samples"] = windows.samples(frontend.sample_rate)
    return fields


def window_rows(out: str, version: str, clips: list, windows: WindowProtocol, frontend: FrontendConfig,
                workers: int, console) -> WindowTable:
    """The rows of a windowed version: those it was created with when it exists (a resumed run
    plans nothing), else planned (every file decoded once to learn its length)."""
    existing = list_versions(out).get(version) if Path(out).exists() else None
    if existing and "clip_table_hash" in existing:
        table = recorded_windows(out, version, clips)
        if table is not None:
            return table
    console.print(f"planning windows ({windows.describe(frontend.clip_seconds)}): decoding {len(clips)} files "
                  "to learn their lengths")
    return plan_windows(clips, windows, _frontend(frontend), threads=max(1, workers))


def recorded_windows(out: str, version: str, clips: list) -> WindowTable | None:
    """An existing version's window table, when its files are `clips` (None: they are not)."""
    import zarr

    meta = zarr.open_group(out, mode="r", path=f"{version}/meta")
    if any(name not in meta for name in WINDOW_COLUMNS):
        return None
    columns = {name: meta[name][:] for name in WINDOW_COLUMNS}
    files = columns["file"]
    if len(files) and (files.max() >= len(clips) or files.min() < 0):
        return None
    ids, paths = meta["clip_id"][:], meta["path"][:]
    if any(ids[r] != clips[f].clip_id or paths[r] != clips[f].path for r, f in enumerate(files.tolist())):
        return None
    return WindowTable([clips[f] for f in files.tolist()], columns)


def _run_jobs(jobs: list[BlockJob], client, resources: dict, result: FeaturizeResult, console,
              unit: str = "clips") -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    total = sum(len(j.paths) for j in jobs)
    columns = [TextColumn("featurize"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{{task.fields[rate]:.1f}} {unit}/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("clips", total=total, rate=0.0)
        done = 0
        for job, report, error in _execute(jobs, client, resources):
            if error is None:
                result.blocks_run += 1
                result.blocks_in_coordinator += report["pid"] == os.getpid()
                result.decode_processes.add(report["pid"])
                if "wavlm_pid" in report:
                    pids = result.wavlm_processes.setdefault(report["wavlm_device"], [])
                    pids += [] if report["wavlm_pid"] in pids else [report["wavlm_pid"]]
            else:  # a block that crashed is retried by the next run, not lost
                result.failed_blocks[job.block] = error
            done += len(job.paths)
            bar.update(task, completed=done, rate=done / max(time.perf_counter() - t0, 1e-9))


def _run_block(job: BlockJob) -> dict:
    report = frontend_block(job)
    return wavlm_block(job, report) if "wavlm" in job.features else report


def _execute(jobs: list[BlockJob], client, resources: dict):
    """Yield (job, report, error message or None) as blocks finish: on dask (WavLM blocks asking
    for `resources`), in this process without a client (workers=0: debugging, small tests), or
    in this process while a local cluster starts and then on it (ClusterStarting)."""
    if isinstance(client, ClusterStarting):
        yield from client.execute(jobs, resources)
        return
    if client is None:
        import torch
        import zarr

        # Blocks set torch's threads and zarr's I/O fan-out as a worker process would; the caller
        # gets its own back (donfig's `set` restores the value it found on exit).
        threads = torch.get_num_threads()
        with zarr.config.set({"async.concurrency": zarr.config.get("async.concurrency")}):
            try:
                for job in jobs:
                    try:
                        report = _run_block(job)
                    except Exception as e:
                        yield job, None, f"{type(e).__name__}: {e}"
                    else:
                        yield job, report, None
            finally:
                torch.set_num_threads(threads)
        return
    yield from _gather(_submit(jobs, client, resources))


def _frontend_resources(client) -> dict | None:
    """What decode blocks ask for: the DECODE resource where some worker declares it (a local
    cluster's CPU workers all do), so none lands on a WavLM process and holds its thread for
    seconds while the GPU waits; otherwise nothing (any worker)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return DECODE if any(DECODE.keys() & (w.get("resources") or {}).keys() for w in workers) else None


def _submit(jobs: list[BlockJob], client, resources: dict) -> dict:
    """Submit the blocks' tasks to dask: {the future of each block's last task: its job}."""
    futures = {}
    decode = _frontend_resources(client)
    for job in jobs:
        f = client.submit(frontend_block, job, key=f"frontend-{job.version}-{job.block}", pure=False,
                          resources=decode)
        if "wavlm" in job.features:
            f = client.submit(wavlm_block, job, f, key=f"wavlm-{job.version}-{job.block}", pure=False,
                              resources=resources or None)
        futures[f] = job
    return futures


def _gather(futures: dict):
    from distributed import as_completed

    for future in as_completed(futures):
        try:
            report = future.result()
        except Exception as e:
            yield futures[future], None, f"{type(e).__name__}: {e}"
        else:
            yield futures[future], report, None


def _count_outcomes(group, result: FeaturizeResult) -> None:
    """Counts over the whole version (earlier runs' blocks included), from the stored outcomes."""
    done = group["block_done"][:].astype(bool)
    size = int(group.attrs["block_size"])
    rows = np.zeros(result.n_clips, bool)
    for b in np.flatnonzero(done):
        rows[b * size:(b + 1) * size] = True
    status = group["meta/status"][:][rows]
    kinds = group["meta/error_kind"][:][rows]
    messages = group["meta/error"][:][rows]
    result.ok = int((status == OK).sum())
    if WARNING_COLUMN in group["meta"]:
        warnings = group[f"meta/{WARNING_COLUMN}"][:][rows][status == OK]
        warned = np.flatnonzero(warnings != "")
        result.decoder_warnings = len(warned)
        if len(warned):
            result.warning_example = f"{group['meta/path'][:][rows][status == OK][warned[0]]}: {warnings[warned[0]]}"
    for kind, message in zip(kinds[status == ERROR], messages[status == ERROR]):
        if kind == SILENT_WINDOW:
            result.silent_windows += 1
            continue
        result.errors[str(kind)] += 1
        result.error_examples.setdefault(str(kind), str(message))
