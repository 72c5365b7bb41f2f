"""The featurize pass: every clip decoded once, the frontend and frozen WavLM run over it, the
results written to a versioned Zarr store (see dfdetect/store/schema.py), on dask.

    coordinator: index the dataset -> create/reopen the store version -> submit pending blocks
    worker:      frontend_block(job)  decode, frontend, mel/LFCC/wave -> writes its shard
                 wavlm_block(job, w)  WavLM on the block's waveforms  -> writes its shard
                 (the last task of a block marks it done)

A block is `block_size` consecutive clips and exactly one shard of every array, so parallel writers
never touch the same shard. Runs are resumable: a rerun of the same command skips done blocks and
redoes the rest, which rewrites whole shards with the same values. WavLM blocks ask for a "GPU"
resource on an external cluster (start GPU workers with `dask worker ... --resources GPU=1`).
"""

from __future__ import annotations

import contextlib
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
from dfdetect.errors import check_range
from dfdetect.featurize.audio import AudioError, decode
from dfdetect.featurize.frontend import FRONTEND_FEATURES, Frontend, FrontendConfig
from dfdetect.featurize.variants import Variant
from dfdetect.featurize.wavlm import WavLMConfig, load_wavlm
from dfdetect.store.schema import ERROR, FEATURE_ARRAYS, OK, StoreError, arrays_of, version_config
from dfdetect.store.writer import StoreLock, create_version, mark_complete, pending_blocks, write_block

FEATURES = tuple(FEATURE_ARRAYS)   # mel, lfcc, wave, wavlm


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
    device: str = "cpu"
    threads: int = 1
    variant: Variant | None = None
    clip_ids: tuple[str, ...] = ()  # seed each clip's corruption


@dataclass
class FeaturizeResult:
    store: str
    version: str
    n_clips: int
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    error_examples: dict = field(default_factory=dict)
    failed_blocks: dict = field(default_factory=dict)
    blocks_run: int = 0
    blocks_skipped: int = 0
    seconds: float = 0.0
    complete: bool = False


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


def frontend_block(job: BlockJob) -> dict:
    """Decode the block's clips, run the frontend, write mel/LFCC/wave and the outcome columns."""

    _setup_worker(job.threads)
    frontend = _frontend(job.frontend)
    n = len(job.paths)
    waves = np.zeros((n, job.frontend.clip_samples), np.float32)
    outcomes = {k: [] for k in ("status", "error_kind", "error", "duration", "sample_rate", "channels", "container")}
    ok = np.zeros(n, bool)
    for i, path in enumerate(job.paths):
        audio = None
        try:
            audio = decode(path)
            waves[i] = prepare_waveform(frontend, audio, path, job.variant, job.clip_ids[i] if job.clip_ids else path)
            ok[i] = True
            status, kind, message = OK, "", ""
        except AudioError as e:
            status, kind, message = ERROR, e.kind, str(e)
        outcomes["status"].append(status)
        outcomes["error_kind"].append(kind)
        outcomes["error"].append(message)
        outcomes["duration"].append(audio.duration if audio else 0.0)
        outcomes["sample_rate"].append(audio.sample_rate if audio else 0)
        outcomes["channels"].append(audio.channels if audio else 0)
        outcomes["container"].append(audio.container if audio else "")

    features = {}
    kinds = [k for k in FRONTEND_FEATURES if k in job.features]
    if kinds:
        computed = frontend.features(waves[ok], kinds=kinds) if ok.any() else {}
        for k in kinds:
            full = np.full((n, *job.frontend.feature_shape(k)), np.nan, np.float16)
            if ok.any():
                full[ok] = computed[k]
            features[k] = full
    group = _open_version(job)
    last = "wavlm" not in job.features
    write_block(group, job.block, features, outcomes, mark_done=last)
    report = {"block": job.block, "clips": n, "ok": int(ok.sum()),
              "errors": [(k, m) for k, m in zip(outcomes["error_kind"], outcomes["error"]) if k]}
    if last:
        return report
    return {**report, "waves": waves[ok], "ok_mask": ok}


def wavlm_block(job: BlockJob, prepared: dict) -> dict:
    """Run frozen WavLM on the block's prepared waveforms; write its shard and mark the block done."""

    _setup_worker(job.threads)
    extractor = load_wavlm(job.wavlm, device=job.device)
    ok = prepared["ok_mask"]
    n = len(ok)
    group = _open_version(job)
    layers = np.full((n, *group["wavlm"].shape[1:]), np.nan, np.float16)
    stats = np.full((n, *group["wavlm_stats"].shape[1:]), np.nan, np.float16)
    if ok.any():
        out = extractor(prepared["waves"])
        layers[ok], stats[ok] = out["layers"], out["stats"]
    write_block(group, job.block, {"wavlm": layers, "wavlm_stats": stats}, {}, mark_done=True)
    return {k: v for k, v in prepared.items() if k not in ("waves", "ok_mask")}


# -- coordinator --------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int):
    """A client on the given cluster, or on a local cluster of `workers` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        with Client(cluster) as client:
            yield client


def wavlm_spec(config, n_samples: int) -> dict:
    """Load WavLM once here (on CPU) to fail early when the weights are missing, and to learn its
    shapes and provenance before any worker starts."""

    extractor = load_wavlm(config, device="cpu")
    return {"info": extractor.info(), "frames": extractor.frames(n_samples),
            "hidden_size": extractor.hidden_size, "num_hidden_states": extractor.num_hidden_states,
            "layers": config.layers}


def feature_shapes(frontend: FrontendConfig, features, spec: dict | None) -> dict:
    """Per-clip shape of every array the features write."""
    shapes = {k: frontend.feature_shape(k) for k in FRONTEND_FEATURES}
    if spec:
        shapes["wavlm"] = (len(spec["layers"]), spec["frames"], spec["hidden_size"])
        shapes["wavlm_stats"] = (spec["num_hidden_states"], 2, spec["hidden_size"])
    return {name: shapes[name] for name in arrays_of(features)}


def featurize(dataset: str, root: str | Path, out: str, features=("mel", "lfcc"),
              wavlm=None, device: str = "auto", scheduler: str | None = None,
              workers: int | None = None, block_size: int = 128,
              frontend: FrontendConfig = FrontendConfig(), variant: Variant | None = None,
              console=None) -> FeaturizeResult:
    """Run (or resume) the featurize pass of one dataset into the store at `out`."""
    from rich.console import Console


    console = console or Console()
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise StoreError(f"unknown feature(s) {', '.join(unknown) or '(none given)'}; "
                         f"--features takes a comma-separated subset of {','.join(FEATURES)}")
    features = tuple(f for f in FEATURES if f in features)
    if block_size <= 0:
        raise StoreError("--block-size must be positive")
    index = prepare(dataset, root)
    if not index.clips:
        raise StoreError(f"{dataset} at {root}: no clips found; check it with `dfdetect datasets show {dataset} --root {root}`")
    for p in index.problems[:5]:
        console.print(f"[yellow]dataset problem:[/] {escape(p.where)}: {escape(p.message)}", soft_wrap=True)
    if len(index.problems) > 5:
        console.print(f"[yellow]... {len(index.problems) - 5} more dataset problems "
                      f"(`dfdetect datasets show {escape(dataset)} --root {escape(str(root))}` lists them)[/]")

    spec = None
    if "wavlm" in features:

        wavlm = wavlm or WavLMConfig()
        spec = wavlm_spec(wavlm, frontend.clip_samples)
    shapes = feature_shapes(frontend, features, spec)
    config, version = version_config(frontend.to_dict(), frontend.hash(), features,
                                     spec["info"] if spec else None,
                                     variant.to_dict() if variant else None, shapes)
    if workers is not None:
        check_range("--workers", workers, 0)
    workers = (os.cpu_count() or 1) if workers is None else workers
    result = FeaturizeResult(store=out, version=version, n_clips=len(index.clips))
    t0 = time.perf_counter()
    with StoreLock(out):
        group = create_version(out, version, config, index.clips,
                               shapes, block_size,
                               dataset=index.dataset, dataset_root=index.root)
        block_size = int(group.attrs["block_size"])
        pending = pending_blocks(group)
        n_blocks = -(-len(index.clips) // block_size)
        result.blocks_skipped = n_blocks - len(pending)
        if result.blocks_skipped:
            console.print(f"resuming {out}@{version}: {result.blocks_skipped} of {n_blocks} blocks already written")
        blocks = {b: index.clips[b * block_size:(b + 1) * block_size] for b in pending}
        jobs = [BlockJob(out, version, b, tuple(c.path for c in clips), frontend, features, wavlm, device,
                         threads=1, variant=variant, clip_ids=tuple(c.clip_id for c in clips))
                for b, clips in blocks.items()]
        if jobs:
            _run_jobs(jobs, scheduler, workers, result, console)
        result.complete = mark_complete(group)
        _count_outcomes(group, result)
    result.seconds = time.perf_counter() - t0
    return result


def _run_jobs(jobs: list[BlockJob], scheduler, workers, result: FeaturizeResult, console) -> None:
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
               TextColumn("{task.fields[rate]:.1f} clips/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("clips", total=total, rate=0.0)
        done = 0
        for job, error in _execute(jobs, scheduler, workers):
            if error is None:
                result.blocks_run += 1
            else:  # a block that crashed is retried by the next run, not lost
                result.failed_blocks[job.block] = error
            done += len(job.paths)
            bar.update(task, completed=done, rate=done / max(time.perf_counter() - t0, 1e-9))


def _run_block(job: BlockJob) -> dict:
    report = frontend_block(job)
    return wavlm_block(job, report) if "wavlm" in job.features else report


def _execute(jobs: list[BlockJob], scheduler, workers):
    """Yield (job, error message or None) as blocks finish: on dask, or in this process when
    workers == 0 and no scheduler is given (debugging, small tests)."""
    if workers == 0 and not scheduler:
        import torch
        import zarr

        # Blocks set torch's threads and zarr's I/O fan-out as a worker process would; the caller
        # gets its own back (donfig's `set` restores the value it found on exit).
        threads = torch.get_num_threads()
        with zarr.config.set({"async.concurrency": zarr.config.get("async.concurrency")}):
            try:
                for job in jobs:
                    try:
                        _run_block(job)
                        yield job, None
                    except Exception as e:
                        yield job, f"{type(e).__name__}: {e}"
            finally:
                torch.set_num_threads(threads)
        return
    from distributed import as_completed

    with dask_client(scheduler, workers) as client:
        gpu = {"resources": {"GPU": 1}} if scheduler and jobs[0].device != "cpu" else {}
        futures = {}
        for job in jobs:
            f = client.submit(frontend_block, job, key=f"frontend-{job.version}-{job.block}", pure=False)
            if "wavlm" in job.features:
                f = client.submit(wavlm_block, job, f, key=f"wavlm-{job.version}-{job.block}", pure=False, **gpu)
            futures[f] = job
        for future in as_completed(futures):
            try:
                future.result()
                yield futures[future], None
            except Exception as e:
                yield futures[future], f"{type(e).__name__}: {e}"


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
    for kind, message in zip(kinds[status == ERROR], messages[status == ERROR]):
        result.errors[str(kind)] += 1
        result.error_examples.setdefault(str(kind), str(message))
