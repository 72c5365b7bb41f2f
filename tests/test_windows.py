"""The whole-file protocol (issue 33): `featurize --windows centre|all|N` keeps exactly the windows
`dfdetect score` cuts (the same starts, lengths, silent-window rule and features), plans each
file's windows from its length alone, resumes without planning again, and leaves centre stores
byte for byte what they were; `score --features-from` a windowed store scores a file from its
windows only when they are all of score's windows."""

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soxr
import zarr
from conftest import one_line
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, synthesize, write_corpus
from dfdetect.featurize.audio import decode, encode
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.windows import WindowProtocol, resampled_length, sliding_windows, window_starts
from dfdetect.score.options import ScoreOptions
from dfdetect.score.scoring import window_config
from dfdetect.score.sources import Item
from dfdetect.score.windows import lane_pieces
from dfdetect.store import open_store
from dfdetect.store.schema import RECORDING_COLUMNS, content_hash

runner = CliRunner()
RATES = (8000, 11025, 22050, 24000, 32000, 44100, 48000)


def speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    x = synthesize("real", np.random.default_rng(seed), seconds)
    return soxr.resample(x, 16000, rate).astype(np.float32) if rate != 16000 else x


def windowed(windows, window=None, hop=None) -> FeaturizeConfig:
    return FeaturizeConfig.from_options(windows=windows, window=window, hop=hop)


# -- 1. the window plan from a length alone ------------------------------------------------------------
def test_window_starts_are_the_windows_sliding_windows_cuts_from_any_block_split():
    rng = np.random.default_rng(0)
    pairs = [(48000, 24000), (48000, 48000), (48000, 16000), (32000, 8000), (1000, 300), (7, 3), (5, 5), (4, 7)]
    for size, hop in pairs:
        totals = {1, 2, size - 1, size, size + 1, hop, size + hop - 1, size + hop, size + hop + 1,
                  2 * size, 3 * size + 1, size + 5 * hop, size + 5 * hop - 1, size + 5 * hop + 1}
        totals |= set(rng.integers(1, 6 * size, 6).tolist())
        for total in sorted(t for t in totals if t > 0):
            stream = np.arange(total, dtype=np.float32)
            want = window_starts(total, size, hop)
            for _ in range(3):   # blocks of random sizes, some empty, some longer than a window
                cuts = np.sort(rng.integers(0, total + 1, rng.integers(0, 8)))
                blocks = np.split(stream, cuts)
                got = [(start, len(w)) for start, w in sliding_windows(blocks, size, hop)]
                assert got == want, (size, hop, total, cuts)
                for start, w in sliding_windows(np.split(stream, cuts), size, hop):
                    assert np.array_equal(w, stream[start:start + len(w)])
    assert window_starts(0, 48000, 24000) == [] == list(sliding_windows([np.zeros(0, np.float32)], 48000, 24000))


def test_resampled_length_is_soxr_s_one_shot_length_and_the_frontend_s():
    quality = FrontendConfig().resample_quality
    rng = np.random.default_rng(1)
    lengths = {1, 2, 3, 7, 99, 100, 101, 441, 1000, 4409, 44100, 44101, 160_001, *rng.integers(1, 300_000, 25).tolist()}
    for rate in RATES:
        for frames in sorted(lengths):
            x = np.zeros(frames, np.float32)
            assert resampled_length(frames, rate, 16000) == len(soxr.resample(x, rate, 16000, quality)), (rate, frames)
    assert resampled_length(12345, 16000, 16000) == 12345


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_resampled_length_is_the_decoded_files_length_at_16k(fmt, tmp_path):
    frontend = Frontend()
    for i, rate in enumerate(RATES):
        for seconds in (0.37, 2.0, 3.0 + i / 7):
            channels = 1 + (i % 2)
            x = np.stack([speech(seconds, rate, seed=i + c) for c in range(channels)])
            path = tmp_path / f"x{rate}_{seconds}.{fmt}"
            path.write_bytes(encode(x, rate, fmt))
            audio = decode(path)
            assert resampled_length(audio.frames, audio.sample_rate, 16000) == len(frontend.to_mono_16k(audio)), path


# -- 2. a windowed store holds exactly the windows score cuts --------------------------------------------
SILENT_STRETCH = "test/real/gap.wav"   # 3 s of speech, 5 s of digital silence, 4 s of speech


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Generated 8-24 s files in mixed formats and rates, plus a 44.1 kHz stereo file, an MP3, a file
    with a silent stretch, one shorter than a window and one that cannot be decoded."""
    root = tmp_path_factory.mktemp("long") / "corpus"
    write_corpus(root, CorpusSpec(real=3, per_generator=1, min_seconds=8, max_seconds=24))
    files = {
        "test/real/stereo44k.wav": encode(np.stack([speech(9.3, 44100, 1), 0.5 * speech(9.3, 44100, 2)]), 44100,
                                          "wav"),
        "test/real/spoken.mp3": encode(speech(10.1, 24000, 3), 24000, "mp3"),
        SILENT_STRETCH: encode(np.concatenate([speech(3, seed=4), np.zeros(5 * 16000, np.float32),
                                               speech(4, seed=5)]), 16000, "wav"),
        "test/real/short.flac": encode(speech(1.7, 22050, 6), 22050, "flac"),
        "test/real/broken.wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def windowed_store(long_corpus, tmp_path_factory) -> str:
    store = str(tmp_path_factory.mktemp("windowed") / "all.zarr")
    featurize("folder", long_corpus, store, features=("mel", "lfcc"), workers=0, block_size=8, config=windowed("all"))
    return store


def score_windows(path: str, window: float | None = None, hop: float | None = None) -> tuple:
    """What `dfdetect score`'s worker makes of one file, with a WindowConfig built as score builds it:
    (its FileResult, window numbers, starts, ends, silent flags, features of the non-silent windows)."""
    run = SimpleNamespace(frontend_config=FrontendConfig(), inputs=("mel", "lfcc"))
    config = window_config(run, ScoreOptions(window=window, hop=hop, batch_size=7))
    pieces = list(lane_pieces([(0, Item(path))], config))
    joined = [np.concatenate([getattr(p, k) for p in pieces]) for k in ("window", "start", "end", "silent")]
    features = {k: np.concatenate([p.inputs[k] for p in pieces if k in p.inputs]) for k in ("mel", "lfcc")
                if any(k in p.inputs for p in pieces)}
    return (pieces[-1].finished[0], *joined, features)


def assert_same_features(got: np.ndarray, want: np.ndarray, where) -> None:
    """float16 features of the same windows computed in other batches: equal, but for float32
    rounding in torch's batched kernels that may move a few values by one float16 step."""
    assert got.dtype == want.dtype == np.float16 and got.shape == want.shape, where
    a, b = got.astype(np.float32), want.astype(np.float32)
    step = np.spacing(np.maximum(np.abs(got), np.abs(want))).astype(np.float32)
    assert (np.abs(a - b) <= step).all() and (got == want).mean() > 0.999, where


def assert_rows_are_score_s_windows(store, clip_ids=None, every=True):
    """Each file's rows of `store` are score's windows of that file (all of them when `every`),
    with score's features, numbers, starts and ends; a silent window is a silent_window row."""
    meta = store.meta
    files = meta["file"]
    checked = 0
    for f in np.unique(files):
        rows = np.flatnonzero(files == f)
        path = str(meta["path"][rows[0]])
        if clip_ids is not None and str(meta["clip_id"][rows[0]]) not in clip_ids:
            continue
        result, number, start, end, silent, features = score_windows(path, store.windows["window"],
                                                                     store.windows["hop"])
        status, kinds = meta["status"][rows], meta["error_kind"][rows]
        if result.status != "ok":
            assert len(rows) == 1 and status[0] == "error" and kinds[0] == result.error_kind, (path, kinds)
            continue
        assert (meta["file_windows"][rows] == len(number)).all(), path
        assert np.array_equal(meta["window"][rows], number if every else meta["window"][rows]), path
        kept = meta["window"][rows]
        assert np.allclose(meta["window_start"][rows], start[kept], atol=1e-9), path
        assert np.allclose(meta["window_end"][rows], end[kept], atol=1e-9), path
        assert np.array_equal(kinds == "silent_window", silent[kept]), path
        assert set(status[silent[kept]]) <= {"error"} and set(status[~silent[kept]]) == {"ok"}, path
        live_row = np.cumsum(~silent) - 1       # window number -> its row among score's non-silent windows
        ok = kept[~silent[kept]]
        stored = store.read_rows(("mel", "lfcc"), rows[~silent[kept]])
        for k in ("mel", "lfcc"):
            assert stored[k].dtype == np.float16
            want = features[k][live_row[ok]]
            if not path.endswith(".mp3"):
                assert_same_features(stored[k], want, (path, k))
            elif not result.warning:
                # libsndfile decodes an MP3 read in blocks (score's stream) to within one float32 ulp of
                # the whole read (featurize): a float16 feature may round the other way
                assert np.allclose(stored[k].astype(np.float32), want.astype(np.float32), atol=4e-3), (path, k)
            # else score's block reads broke libmpg123's decode: test_score_decodes_an_mp3_as_featurize_does
        checked += 1
    return checked


def test_windowed_store_holds_exactly_score_s_windows_of_every_file(windowed_store, long_corpus):
    store = open_store(windowed_store)
    assert store.windows == {"keep": "all", "window": 3.0, "hop": 1.5}
    meta = store.meta
    n_files = len({p for p in long_corpus.rglob("*") if p.is_file()})
    assert len(np.unique(meta["file"])) == n_files and store.n_clips == len(meta["file"]) > 4 * n_files
    assert assert_rows_are_score_s_windows(store) == n_files - 1
    by_id = {}
    for r, clip_id in enumerate(meta["clip_id"].tolist()):
        by_id.setdefault(clip_id, []).append(r)
    gap = by_id[SILENT_STRETCH]
    # 12 s: windows at 0, 1.5, ... 9 s; those at 3 and 4.5 s lie in the silence
    assert meta["window_start"][gap].tolist() == [1.5 * i for i in range(7)]
    assert meta["error_kind"][gap].tolist() == ["", "", "silent_window", "silent_window", "", "", ""]
    short = by_id["test/real/short.flac"]
    assert len(short) == 1 and meta["window_end"][short[0]] == pytest.approx(1.7, abs=1e-3)
    assert meta["status"][short[0]] == "ok"
    broken = by_id["test/real/broken.wav"]
    assert len(broken) == 1 and meta["status"][broken[0]] == "error" and meta["error_kind"][broken[0]] != ""
    stereo = by_id["test/real/stereo44k.wav"]
    assert (meta["channels"][stereo] == 2).all() and (meta["sample_rate"][stereo] == 44100).all()
    # silent windows and the broken file are NaN rows, as every unwritten row reads
    nan_rows = store.read_rows(("mel",), np.array([gap[2], broken[0]]))["mel"]
    assert np.isnan(nan_rows.astype(np.float32)).all()


def test_windowed_store_on_dask_workers_is_the_in_process_store(windowed_store, long_corpus, tmp_path):
    store = str(tmp_path / "dask.zarr")
    featurize("folder", long_corpus, store, features=("mel", "lfcc"), workers=2, block_size=8,
              config=windowed("all"))
    a, b = open_store(windowed_store), open_store(store)
    assert a.version == b.version
    for name in ("file", "window", "window_start", "window_end", "file_windows", "file_samples", "status",
                 "error_kind", "clip_id"):
        assert np.array_equal(a.meta[name], b.meta[name]), name
    for k in ("mel", "lfcc"):
        assert np.array_equal(a.array(k)[:], b.array(k)[:], equal_nan=True), k


# -- 3. --windows N, --window/--hop, the version's identity, bad values ----------------------------------
def rows_by_file(store) -> dict[str, np.ndarray]:
    ids = store.meta["clip_id"]
    return {str(c): np.flatnonzero(ids == c) for c in np.unique(ids)}


def test_windows_n_keeps_up_to_n_evenly_spaced_windows_with_the_first_and_last(windowed_store, long_corpus,
                                                                                 tmp_path):
    store = str(tmp_path / "n.zarr")
    featurize("folder", long_corpus, store, features=("mel", "lfcc"), workers=0, block_size=8, config=windowed("4"))
    some, every = open_store(store), open_store(windowed_store)
    assert some.windows == {"keep": 4, "window": 3.0, "hop": 1.5} and some.version != every.version
    all_rows, n_rows = rows_by_file(every), rows_by_file(some)
    assert n_rows.keys() == all_rows.keys()
    thinned = 0
    for clip_id, rows in n_rows.items():
        numbers, n = some.meta["window"][rows], int(some.meta["file_windows"][rows[0]])
        assert len(rows) == min(4, max(n, 1)), clip_id
        if n > 4:
            thinned += 1
            gaps = np.diff(numbers)
            assert numbers[0] == 0 and numbers[-1] == n - 1 and gaps.max() - gaps.min() <= 1, (clip_id, numbers)
        # each kept window is the `all` store's window of that number: its place and its features
        same = all_rows[clip_id][numbers] if n else all_rows[clip_id]
        for name in ("window", "window_start", "window_end", "status", "error_kind", "file_samples"):
            assert np.array_equal(some.meta[name][rows], every.meta[name][same]), (clip_id, name)
        for k in ("mel", "lfcc"):
            assert np.array_equal(some.read_rows((k,), rows)[k], every.read_rows((k,), same)[k], equal_nan=True)
    assert thinned >= 5


def test_window_and_hop_change_the_cuts_and_the_version(long_corpus, windowed_store, tmp_path):
    store = str(tmp_path / "w2.zarr")
    featurize("folder", long_corpus, store, features=("mel", "lfcc"), workers=0, block_size=8,
              config=windowed("all", window=2, hop=0.5))
    cut = open_store(store)
    assert cut.windows == {"keep": "all", "window": 2.0, "hop": 0.5}
    assert cut.version != open_store(windowed_store).version
    starts = cut.meta["window_start"][cut.meta["clip_id"] == SILENT_STRETCH]
    assert np.allclose(starts, np.arange(21) * 0.5)      # 12 s: 2 s windows every 0.5 s
    assert assert_rows_are_score_s_windows(cut, {SILENT_STRETCH, "test/real/stereo44k.wav",
                                                 "test/real/short.flac"}) == 3


def test_the_protocol_names_the_version_and_centre_keeps_its_name(tmp_path):
    root = tmp_path / "c"
    (root / "train" / "real").mkdir(parents=True)
    (root / "train" / "real" / "a.wav").write_bytes(encode(speech(7.2), 16000, "wav"))
    versions = {}
    for keep in ("centre", "all", "2"):
        result = featurize("folder", root, str(tmp_path / "s.zarr"), features=("mel",), workers=0,
                           config=windowed(keep))
        versions[keep] = result.version
        config = open_store(f"{tmp_path / 's.zarr'}@{result.version}").config
        assert config.get("windows") == WindowProtocol.parse(keep).resolved(3.0).to_dict()
        assert result.n_clips == {"centre": 1, "all": 4, "2": 2}[keep]
    assert len(set(versions.values())) == 3
    plain = featurize("folder", root, str(tmp_path / "plain.zarr"), features=("mel",), workers=0)
    assert plain.version == versions["centre"] and "windows" not in open_store(str(tmp_path / "plain.zarr")).config


@pytest.mark.parametrize("args, fragments", [
    (["--windows", "0"], ["--windows '0'", "centre", "all"]),
    (["--windows", "abc"], ["--windows 'abc'", "whole number"]),
    (["--windows", "all", "--hop", "-1"], ["--hop -1", "seconds"]),
    (["--windows", "all", "--window", "0"], ["--window 0", "seconds"]),
    (["--windows", "centre", "--hop", "1"], ["--windows centre", "--hop"]),
    (["--window", "2"], ["--windows centre", "--window"]),
])
def test_bad_window_options_are_one_line_errors(args, fragments, tmp_path):
    root = tmp_path / "c"
    (root / "train" / "real").mkdir(parents=True)
    (root / "train" / "real" / "a.wav").write_bytes(encode(speech(1.0), 16000, "wav"))
    out = tmp_path / "s.zarr"
    result = runner.invoke(app, ["featurize", "--dataset", "folder", "--root", str(root), "--out", str(out),
                                 "--features", "mel", "--workers", "0", *args])
    one_line(result, *fragments)
    assert not out.exists()


# -- 4. resume: nothing planned again; a file that changed after planning --------------------------------
def test_resuming_a_windowed_version_plans_nothing_and_writes_the_same_arrays(windowed_store, long_corpus,
                                                                             tmp_path, monkeypatch):
    import dfdetect.featurize.pipeline as pipeline

    store = shutil.copytree(windowed_store, tmp_path / "resumed.zarr")
    version = open_store(str(store)).version
    done = zarr.open_array(str(store / version / "block_done"), mode="r+")
    n_blocks = done.shape[0]
    assert done[:].all() and n_blocks >= 6
    lost = [1, 3, n_blocks - 1]
    for b in lost:   # as if the run had been stopped before these blocks: no mark, no shards
        done[b] = 0
        for k in ("mel", "lfcc"):
            shutil.rmtree(store / version / k / "c" / str(b))

    def planned(*args, **kwargs):
        raise AssertionError("a resumed run planned its windows again")

    monkeypatch.setattr(pipeline, "plan_windows", planned)
    result = featurize("folder", long_corpus, str(store), features=("mel", "lfcc"), workers=0, block_size=8,
                       config=windowed("all"))
    assert result.version == version and result.blocks_run == len(lost) and result.complete
    a, b = open_store(windowed_store), open_store(str(store))
    for name in a.meta:
        assert np.array_equal(a.meta[name], b.meta[name], equal_nan=a.meta[name].dtype.kind == "f"), name
    for k in ("mel", "lfcc"):
        assert np.array_equal(a.array(k)[:], b.array(k)[:], equal_nan=True), k


def test_a_file_whose_length_changed_after_planning_becomes_changed_error_rows(long_corpus, windowed_store,
                                                                              tmp_path, monkeypatch):
    import dfdetect.featurize.pipeline as pipeline
    from dfdetect.featurize.windows import window_table

    changed = "train/real/real_0001.wav"
    real_plan = pipeline.plan_windows

    def plan_then_change(clips, protocol, frontend, threads=1):
        table = real_plan(clips, protocol, frontend, threads)
        # as if the file were rewritten 0.2 s longer between planning and its block: its planned
        # length is now not what its block decodes
        lengths = [int(table.columns["file_samples"][table.columns["file"] == i][0]) for i in range(len(clips))]
        target = next(i for i, c in enumerate(clips) if c.clip_id == changed)
        lengths[target] += 3200
        return window_table(clips, lengths, protocol, frontend.config.sample_rate)

    monkeypatch.setattr(pipeline, "plan_windows", plan_then_change)
    store = str(tmp_path / "changed.zarr")
    result = featurize("folder", long_corpus, store, features=("mel", "lfcc"), workers=0, block_size=8,
                       config=windowed("all"))
    assert result.complete and result.errors["changed"] > 0
    got, want = open_store(store), open_store(windowed_store)
    meta = got.meta
    bad = meta["clip_id"] == changed
    assert (meta["status"][bad] == "error").all() and (meta["error_kind"][bad] == "changed").all()
    assert "featurize into a new --out" in str(meta["error"][bad][0])
    assert np.isnan(got.read_rows(("mel",), np.flatnonzero(bad))["mel"].astype(np.float32)).all()
    # every other file's rows are the undisturbed store's
    other, same = np.flatnonzero(~bad), np.flatnonzero(want.meta["clip_id"] != changed)
    for name in ("window", "window_start", "status", "error_kind"):
        assert np.array_equal(meta[name][other], want.meta[name][same]), name
    for k in ("mel", "lfcc"):
        assert np.array_equal(got.read_rows((k,), other)[k], want.read_rows((k,), same)[k], equal_nan=True), k


# -- 5. centre stores are byte for byte what they were ---------------------------------------------------
MTIME_NS = 1_700_000_000 * 10**9
CENTRE_CORPUS = (  # path, family, rate, encoding, seconds: WAV only, so every file's bytes (and size) are fixed
    ("train/real/a.wav", "real", 16000, "wav", 2.5), ("train/real/b.wav", "real", 44100, "wav_f32", 3.6),
    ("train/fake/vocoder/c.wav", "vocoder", 22050, "wav", 4.2),
    ("train/fake/vocoder/d.wav", "vocoder", 16000, "wav", 1.2), ("test/real/e.wav", "real", 48000, "wav", 3.0),
    ("test/fake/griffinlim/f.wav", "griffinlim", 16000, "wav_f32", 5.0))
# Golden values from dfdetect at commit 46a62b8 (before `--windows`), obtained with
#     git -C /work/main worktree add /work/wt/old 46a62b8
#     PYTHONPATH=/work/wt/old python golden.py DIR   (fixed_centre_corpus(DIR/corpus), then
#     featurize("folder", DIR/corpus, DIR/s.zarr, features=("mel", "lfcc"), workers=0, block_size=4)
#     and centre_digest of the version: the functions below, copied verbatim)
# and identical in two runs there. sha256 of every file of the version folder but the chunks of
# COMPUTED (below: float results that may differ on another CPU, so only their metadata); the version's
# zarr.json without `created`/`dfdetect_version` and with its clip_table_hash checked against the
# rows (it hashes absolute paths), the path column as paths relative to the corpus.
CENTRE_VERSION = "v-09103883485e"
CENTRE_DIGEST = {
    "meta/path (relative)": "c3957d49b910",
    "block_done/c/0": "f66e698601775c35d701efe28e5a6e2125f861f4257d3728f93ffec9121843c1",
    "block_done/c/1": "f66e698601775c35d701efe28e5a6e2125f861f4257d3728f93ffec9121843c1",
    "block_done/zarr.json": "e0e514275ebe21d158b89ef7367b63d9d335d76890da7e7599c54ddc42106fd0",
    "lfcc/zarr.json": "5b5cc5738faf2747cdce26eb2e040be1c272e3942574d12fcf18d91f6e616bc6",
    "mel/zarr.json": "0297c0c4e69b9b4c50e0fde6efdaee4abb772fe367deb05c11dd66bc38483da9",
    "meta/active_fraction/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/bandwidth_hz/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/bitrate_kbps/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/channels/c/0": "5666ab8c58c8f93d0e071a7dfca7dc4bb12819bc9060fbf0e53d4fcebb0d32af",
    "meta/channels/c/1": "59e9dbe46994d1e763ecd92df7940a01b8e1799cbc53eb2f23c91cb0a9bfb322",
    "meta/channels/zarr.json": "50db0bc96ae2cc22bca4d06042f7fce62b3cdec77b41c7f68bd0a02e55ebcebe",
    "meta/clip_id/c/0": "6e8f4fed9c3fceca8ae8714c79a32d48a85627b8394c5bbf28f2061df909f0dc",
    "meta/clip_id/c/1": "b3598f8dc504d840388e5fc0a49461c34f9c6c440e686a1027b6e0fd1dfe92aa",
    "meta/clip_id/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/clipping_fraction/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/codec/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/container/c/0": "5343a2702c14cbd825d9d0b25bba8fbfd991d04e7f80d37e8a4f84ee5577173b",
    "meta/container/c/1": "2f34da17bbf5bebe4e6da68d3bed9df5eb35aa23703fd3dadb7419d54e174e71",
    "meta/container/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/date/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/dc_offset/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/duration/c/0": "6ae002fd4fed53fbdfc7e9d9f4be911d768d2f3c0c4aa2c165113d33b626d29f",
    "meta/duration/c/1": "b75c8aa6d455d70527719764f48766f41dc8d42444c8d7cfaf9cc557b6f7a255",
    "meta/duration/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/error/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/error_kind/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/generator/c/0": "b139fafbfed87f1d3c1d5ec9d3600b7b7329a117f8e47e2327cf468c3b820081",
    "meta/generator/c/1": "dfdce276f26b6b11a140d46cc8159630f51ad61435bfcacfa5b646e9e8d65748",
    "meta/generator/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/label/c/0": "77c75f85df333e143872dfbe89d380c06fa33b79bdedd3f3fcf8758d2bab990d",
    "meta/label/c/1": "00ddfb119c067e9dd4c2e2608f8ea5592a7e6cd2c29d0650d8336ac65b6b868b",
    "meta/label/zarr.json": "dffb1036369e70e56c6734aba5a6dc44c369c11c050904ecc77150748ff8faf4",
    "meta/language/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/leading_silence/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/mtime_ns/c/0": "64e934809cf9816b3592e062e133e0801b6f03cd6337ba3b4cb3f730b437c90c",
    "meta/mtime_ns/c/1": "4114a36a0b24025be406bad2ff69b9ebc140c87aa85fcf137ee1a1a39d105478",
    "meta/mtime_ns/zarr.json": "972a506f51998ab3e2efe02d5dcaad8995875fb257f2de3d4336dcecf8196010",
    "meta/noise_floor_dbfs/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/path/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/peak_dbfs/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/rms_dbfs/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/sample_rate/c/0": "2b1a96c8ddf876d7c5fd4ce1cef6b74711d8aa0c6d3f10bde67d8c92c030107f",
    "meta/sample_rate/c/1": "e45349e9c49e32455d4b437b90a9f9bdbb716f96393630e8791c6b7d50068714",
    "meta/sample_rate/zarr.json": "8c69c78f33d26742a3a0ce6f69a2546eb328e4392f36958dd3570a848a1c2c33",
    "meta/size/c/0": "02eaf29f21478b0445749d922ef67af98befc100002495d88b3cc5c01597b8a1",
    "meta/size/c/1": "aac21810b3722fb923d3fafb6d5247f62cdde4ea437e29fa23025325dc59793a",
    "meta/size/zarr.json": "972a506f51998ab3e2efe02d5dcaad8995875fb257f2de3d4336dcecf8196010",
    "meta/source/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/speaker/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/split/c/0": "ea558a7b75d8b45d52e51218afd8e0920e5fe33f61b796ca8d74b6bb444d10ad",
    "meta/split/c/1": "7a20d4d1a7c7db67b175d8c8f686c57d9514cf804f3c5dedadf9a0a936d5fd9c",
    "meta/split/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/status/c/0": "d796b063a74c48e60534117e26faf3d62ce2989bf1f34595f441eaddc893d142",
    "meta/status/c/1": "3d9acc7d7992057f9ce7a1ae3ffe58baaf32011fea89a46b5bb86d343a306fcb",
    "meta/status/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/trailing_silence/zarr.json": "32e537a921bdba0eca37599cf7df554fb47048fc8c98c990bdc4cf1a25ee8326",
    "meta/variant_codec/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/warning/zarr.json": "f9c59dc286efab37787c7d079d6a791f8b52d299ec0b2d3b6033c487f2336022",
    "meta/zarr.json": "36615682d5be9646729635067a75185212eb0c48d708ef06ad34c1f58dd587d2",
    "zarr.json": "e6429305ee6a71be9a61cf9154c3026cbf5c27a9fa4c9e2880f07178c28bcea1",
}


def fixed_centre_corpus(root: Path) -> None:
    for i, (rel, family, rate, fmt, seconds) in enumerate(CENTRE_CORPUS):
        x = synthesize(family, np.random.default_rng(i), seconds)
        if rate != 16000:
            x = soxr.resample(x, 16000, rate).astype(np.float32)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(x, rate, fmt))
        os.utime(path, ns=(MTIME_NS, MTIME_NS))


# Chunks whose bytes come from float arithmetic on the audio (features, recording statistics): their
# last bits may differ on another CPU (SIMD dispatch in torch, numpy, soxr), so the golden digest keeps
# their metadata (zarr.json: shape, chunking, codecs) and not their bytes; test_featurize checks their
# values against the frontend on the machine that runs it.
COMPUTED = ("mel/c/", "lfcc/c/", *(f"meta/{name}/c/" for name in RECORDING_COLUMNS))


def centre_digest(store: str, version: str, root: Path) -> dict[str, str]:
    folder = Path(store) / version
    meta = zarr.open_group(str(folder), mode="r")["meta"]
    paths, ids = meta["path"][:].tolist(), meta["clip_id"][:].tolist()
    labels, splits = meta["label"][:].tolist(), meta["split"][:].tolist()
    digest = {"meta/path (relative)": content_hash([os.path.relpath(p, root) for p in paths])}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.startswith("meta/path/c/") or rel.startswith(COMPUTED):
            continue
        data = p.read_bytes()
        if rel == "zarr.json":
            doc = json.loads(data)
            attrs = doc["attributes"]
            del attrs["created"], attrs["dfdetect_version"]
            # the clip table's hash holds absolute paths: checked against the recorded rows here
            assert attrs.pop("clip_table_hash") == content_hash([list(r) for r in zip(ids, paths, labels, splits)])
            data = json.dumps(doc, sort_keys=True).encode()
        digest[rel] = hashlib.sha256(data).hexdigest()
    return digest


def test_a_centre_store_is_byte_for_byte_what_it_was_before_windows(tmp_path):
    fixed_centre_corpus(tmp_path / "corpus")
    result = featurize("folder", tmp_path / "corpus", str(tmp_path / "s.zarr"), features=("mel", "lfcc"), workers=0,
                       block_size=4)
    assert result.version == CENTRE_VERSION
    got = centre_digest(str(tmp_path / "s.zarr"), result.version, tmp_path / "corpus")
    assert got.keys() == CENTRE_DIGEST.keys()
    assert [k for k in got if got[k] != CENTRE_DIGEST[k]] == []


# -- 6. score --features-from a windowed store ------------------------------------------------------------
def score_table(run_dir, inputs, out: Path, *extra) -> tuple[dict[str, dict], dict[str, list], str]:
    """`dfdetect score` on the inputs: (file rows by path, window rows by path, its output)."""
    windows = out.with_suffix(".windows.csv")
    result = runner.invoke(app, ["score", "--model", str(run_dir), *map(str, inputs), "--out", str(out),
                                 "--windows", str(windows), "--workers", "0", *map(str, extra)])
    assert result.exit_code in (0, 1), result.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    by_file: dict[str, list] = {}
    with open(windows, newline="", encoding="utf-8") as f:
        for w in csv.DictReader(f):
            by_file.setdefault(w["path"], []).append(w)
    return rows, by_file, " ".join(result.output.split())


@pytest.fixture(scope="module")
def live_scores(run_dir, long_corpus, tmp_path_factory):
    return score_table(run_dir, sorted(long_corpus.rglob("*.*")), tmp_path_factory.mktemp("live") / "live.csv")


def test_score_from_a_store_of_all_windows_is_live_scoring(run_dir, long_corpus, windowed_store, live_scores,
                                                           tmp_path):
    live, live_windows, _ = live_scores
    got, got_windows, output = score_table(run_dir, sorted(long_corpus.rglob("*.*")), tmp_path / "s.csv",
                                           "--features-from", windowed_store)
    assert got.keys() == live.keys() and "notice" not in output
    misread = str(long_corpus / "train/real/real_0000.mp3")   # test_score_decodes_an_mp3_as_featurize_does
    from_store = 0
    for path, r in got.items():
        want = live[path]
        assert (r["status"], r["error_kind"]) == (want["status"], want["error_kind"]), path
        if r["status"] != "ok":       # the broken file: no usable row, scored live (and failing) as before
            assert path.endswith("broken.wav")
            continue
        from_store += r["features"] == "store"
        assert r["features"] == "store" and want["features"] == "live", path
        for column in ("windows", "silent_windows", "sample_rate", "channels", "duration"):
            assert r[column] == want[column], (path, column)
        if path != misread:
            assert abs(float(r["score"]) - float(want["score"])) < 1e-4, (path, r["score"], want["score"])
            assert r["decision"] == want["decision"] or abs(float(r["score"]) - float(r["threshold"])) < 1e-4
            for a, b in zip(got_windows[path], live_windows[path], strict=True):
                assert (a["window"], a["start"], a["end"], a["silent"]) == (b["window"], b["start"], b["end"],
                                                                            b["silent"]), path
                assert a["score"] == b["score"] == "" or abs(float(a["score"]) - float(b["score"])) < 1e-4, path
    assert from_store == len(got) - 1
    gap = got[str(long_corpus / SILENT_STRETCH)]
    assert (gap["windows"], gap["silent_windows"]) == ("7", "2")
    assert got[str(long_corpus / "test/real/short.flac")]["windows"] == "1"


@pytest.mark.parametrize("keep, window, hop, said", [("4", None, None, "up to 4 3 s windows"),
                                                     ("all", 2, 0.5, "all 2 s windows, hop 0.5 s")])
def test_score_from_a_store_of_other_windows_scores_every_file_live_and_says_so(
        keep, window, hop, said, run_dir, long_corpus, live_scores, tmp_path):
    store = str(tmp_path / "other.zarr")
    featurize("folder", long_corpus, store, features=("mel",), workers=0, block_size=8,
              config=windowed(keep, window, hop))
    live, live_windows, _ = live_scores
    got, got_windows, output = score_table(run_dir, sorted(long_corpus.rglob("*.*")), tmp_path / "s.csv",
                                           "--features-from", store)
    assert output.count("notice:") == 1 and said in output and "scored live" in output, output
    assert got.keys() == live.keys()
    for path, r in got.items():
        assert r["features"] in ("live", "") and r["score"] == live[path]["score"], path
        assert r["windows"] == live[path]["windows"], path
    assert got_windows == live_windows


def test_a_windowed_file_with_a_damaged_row_is_scored_live_whole(run_dir, long_corpus, windowed_store,
                                                                 live_scores, tmp_path):
    """A window whose stored features are not finite: the file is decoded and scored live, all of
    it (never from its other stored windows, never both)."""
    store = shutil.copytree(windowed_store, tmp_path / "damaged.zarr")
    opened = open_store(str(store))
    rows = np.flatnonzero(opened.meta["clip_id"] == SILENT_STRETCH)
    mel = zarr.open_array(str(store / opened.version / "mel"), mode="r+")
    mel[int(rows[-1])] = np.nan      # the file's last window: its others come first
    gap, other = long_corpus / SILENT_STRETCH, long_corpus / "test/real/stereo44k.wav"
    got, got_windows, output = score_table(run_dir, [gap, other], tmp_path / "s.csv", "--features-from", store)
    live, live_windows, _ = live_scores
    assert "mel not finite" in output and output.count("warning:") == 1, output
    assert got[str(gap)]["features"] == "live" and got[str(other)]["features"] == "store"
    assert got[str(gap)]["score"] == live[str(gap)]["score"] and got_windows[str(gap)] == live_windows[str(gap)]


def test_score_decodes_an_mp3_as_featurize_does(long_corpus):
    from dfdetect.score.stream import AudioStream

    path = long_corpus / "train/real/real_0000.mp3"       # decode() reads it without a warning
    assert not decode(path).warnings
    with open(path, "rb") as f:
        stream = AudioStream(f, str(path), FrontendConfig())
        streamed = np.concatenate(list(stream.blocks()))
    assert np.abs(streamed - Frontend().to_mono_16k(decode(path))).max() < 1e-6
