"""`dfdetect store ls | info | verify | export` on a small real store (featurized from the demo corpus
with two splits, broken files and a unicode file name), and on copies of it that are damaged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile
import zarr
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.featurize.config import FeaturizeConfig
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import open_store
from dfdetect.store.inspect import export_hdf5, find_stores, store_info, verify_store
from dfdetect.store.schema import CLIP_COLUMNS, OPTIONAL_COLUMNS, OUTCOME_COLUMNS

runner = CliRunner()
UNICODE_NAME = "größe_語音 clip.wav"
BLOCK = 8


def _invoke(*args):
    result = runner.invoke(app, ["store", *map(str, args)], env={"COLUMNS": "250"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One store: train (13 clips + 1 empty .wav + 1 unicode copy) and test (10 clips + 1 text
    file named .mp3), mel + lfcc, blocks of 8 rows."""
    base = tmp_path_factory.mktemp("store")
    corpus = base / "corpus"
    spec = dict(min_seconds=0.4, max_seconds=0.8)
    for split, real, seed in (("train", 5, 1), ("test", 2, 2)):
        # every clip of the demo corpus (whatever its own split) into this store's one split
        for path in write_corpus(base / f"gen-{split}", CorpusSpec(real=real, per_generator=2, seed=seed, **spec)):
            inner = path.relative_to(base / f"gen-{split}").parts[1:]  # drop the corpus's split level
            target = corpus.joinpath(split, *inner)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
    (corpus / "train" / "real" / "empty.wav").write_bytes(b"")
    (corpus / "test" / "fake" / "vocoder" / "notes.mp3").write_text("not audio at all")
    first_real = sorted((corpus / "train" / "real").glob("real_*"))[0]
    shutil.copy(first_real, corpus / "train" / "real" / (UNICODE_NAME[:-4] + first_real.suffix))
    out = base / "stores" / "s.zarr"
    result = featurize("folder", corpus, str(out), features=("mel", "lfcc"), workers=0, block_size=BLOCK)
    assert result.complete and result.n_clips == 13 + 1 + 1 + 10 + 1
    return {"base": base, "corpus": corpus, "store": out, "version": result.version,
            "unicode_id": "train/real/" + UNICODE_NAME[:-4] + first_real.suffix}


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the store, free to damage."""
    dst = tmp_path / "c.zarr"
    shutil.copytree(built["store"], dst)
    return dst


def _shard(store: Path, version: str, array: str, block: int) -> Path:
    folder = store / version / array / "c" / str(block)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


# -- ls -----------------------------------------------------------------------------------------
def test_ls_finds_every_store_and_version(built, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(built["store"], root / "s.zarr")
    featurize("folder", built["corpus"], str(root / "deeper" / "t.zarr"), features=("lfcc",),
              workers=0, block_size=BLOCK)
    zarr.open_group(str(root / "deeper" / "plain.zarr"), mode="w").attrs["something"] = 1  # not ours
    shutil.copytree(built["store"], root / ".hidden" / "skipped.zarr")
    rows = find_stores(root)
    assert [(Path(r["store"]).name, r["features"]) for r in rows] == [("t.zarr", ["lfcc"]),
                                                                      ("s.zarr", ["mel", "lfcc"])]

    result = _invoke("ls", root, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {Path(r["store"]).name: r for r in rows}
    assert set(by_name) == {"s.zarr", "t.zarr"}
    s = by_name["s.zarr"]
    assert s["store"] == str(root / "s.zarr")
    assert s["version"] == built["version"] and s["dataset"] == "folder"
    assert (s["clips"], s["ok"], s["errors"]) == (26, 24, 2)
    assert s["complete"] is True and (s["blocks_done"], s["blocks"]) == (4, 4)
    on_disk = sum(p.stat().st_size for p in (root / "s.zarr" / built["version"]).rglob("*") if p.is_file())
    assert s["size_bytes"] == on_disk > 100_000
    assert s["created"] and by_name["t.zarr"]["version"] != s["version"]

    table = runner.invoke(app, ["store", "ls", str(root)], env={"COLUMNS": "1000"})   # long temp paths stay whole
    assert table.exit_code == 0 and "t.zarr" in table.output and "mel,lfcc" in table.output
    missing = _invoke("ls", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_ls_lists_each_version_and_an_incomplete_one(built, copy):
    featurize("folder", built["corpus"], str(copy), features=("lfcc",), workers=0, block_size=BLOCK)
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    g["block_done"][2] = 0
    g.attrs["complete"] = False
    rows = {r["version"]: r for r in find_stores(copy.parent)}
    assert len(rows) == 2
    old = rows[built["version"]]
    assert old["complete"] is False and (old["blocks_done"], old["blocks"]) == (3, 4)
    assert [r["complete"] for v, r in rows.items() if v != built["version"]] == [True]


# -- info ---------------------------------------------------------------------------------------
def test_info_counts_match_the_corpus(built):
    info = store_info(str(built["store"]))
    assert info["version"] == built["version"] and info["n_clips"] == 26 and info["complete"]
    counts = info["counts"]
    # train: real 5 + empty.wav + unicode copy, fake 4 x 2; test: real 2, fake 4 x 2 + notes.mp3
    assert counts["by_split"] == {"test": {"real": 2, "fake": 9, "total": 11},
                                  "train": {"real": 7, "fake": 8, "total": 15}}
    assert counts["by_status"] == {"error": 2, "ok": 24}
    assert counts["by_split_status"] == {"test": {"error": 1, "ok": 10}, "train": {"error": 1, "ok": 14}}
    assert counts["error_kinds"] == {"empty": 1, "unknown_container": 1}
    assert counts["fake_by_generator"] == {"bandlimited": 4, "codec": 4, "griffinlim": 4, "vocoder": 5}
    arrays = {a["name"]: a for a in info["arrays"]}
    assert arrays["mel"]["shape"] == [26, 2, 128, 301] and arrays["mel"]["shards"] == [BLOCK, 2, 128, 301]
    assert arrays["lfcc"]["shape"] == [26, 60, 301] and arrays["lfcc"]["dtype"] == "float16"
    assert any(c.startswith("crc32c") for c in arrays["mel"]["codecs"])
    assert not any("blosc" in c or "zstd" in c for c in arrays["mel"]["codecs"])   # raw + CRC32C: fast to read
    for name in ("mel", "lfcc"):
        a = arrays[name]
        assert a["nbytes"] == 26 * np.prod(a["shape"][1:]) * 2
        # raw chunks: never smaller than the rows (the last chunk is stored padded to its full size)
        assert a["ratio"] == pytest.approx(a["nbytes"] / a["nbytes_stored"]) and 0 < a["ratio"] <= 1.001
    assert {"meta/clip_id", "meta/status", "meta/error", "block_done"} <= set(arrays)
    assert arrays["block_done"]["shape"] == [4]
    assert 0 < info["ratio"] <= 1.001
    assert info["frontend_hash"] == info["config"]["frontend_hash"] and info["features"] == ["lfcc", "mel"]
    assert info["wavlm"] is None and [v["shown"] for v in info["versions"]] == [True]


def test_info_cli_on_an_incomplete_store_with_two_versions(built, copy):
    featurize("folder", built["corpus"], str(copy), features=("lfcc",), workers=0, block_size=BLOCK)
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    g["block_done"][1] = 0
    g.attrs["complete"] = False
    result = _invoke("info", f"{copy}@{built['version']}")
    assert result.exit_code == 0, result.output
    assert "incomplete: 3/4 blocks done" in result.output
    assert "unknown_container" in result.output and "vocoder" in result.output
    info = json.loads(_invoke("info", f"{copy}@{built['version']}", "--json").output)
    assert info["complete"] is False and (info["blocks_done"], info["blocks"]) == (3, 4)
    assert len(info["versions"]) == 2
    assert [v["version"] for v in info["versions"] if v["shown"]] == [built["version"]]
    newest = json.loads(_invoke("info", copy, "--json").output)  # no @: the newest version
    assert newest["version"] != built["version"] and newest["features"] == ["lfcc"]


def test_bad_store_specs_exit_2(built, tmp_path):
    (tmp_path / "folder").mkdir()
    empty = tmp_path / "empty.zarr"
    zarr.open_group(str(empty), mode="w").attrs["dfdetect_store"] = 1
    cases = [(tmp_path / "folder", "no feature store"),
             (f"{built['store']}@v-000000000000", "has no version 'v-000000000000'"),
             (empty, "without any version"),
             (built["store"] / built["version"] / "mel", "not a dfdetect feature store")]
    for spec, message in cases:
        for command in ("info", "verify"):
            result = _invoke(command, spec)
            assert result.exit_code == 2, (command, spec, result.output)
            assert message in " ".join(result.output.split()), result.output


# -- info on the whole-file protocol (featurize --windows) --------------------------------------
RATE, WINDOW, HOP = 16000, 48000, 24000     # 3 s windows every 1.5 s, at 16 kHz


def _frames(path: Path) -> tuple[int, int]:
    """(frames, sample rate) of a file, read by libsndfile or, for what it cannot open, FFmpeg."""
    try:
        info = soundfile.info(str(path))
        return info.frames, info.samplerate
    except soundfile.LibsndfileError:
        import av

        with av.open(str(path)) as f:
            stream = f.streams.audio[0]
            return sum(frame.samples for frame in f.decode(stream)), stream.rate


def _n_windows(total: int) -> int:
    """`dfdetect score`'s window rule: every WINDOW every HOP, plus one ending at the last sample
    when the regular ones leave a tail."""
    starts = list(range(0, total - WINDOW + 1, HOP))
    if not starts or starts[-1] + WINDOW < total:
        starts.append(max(0, total - WINDOW))
    return len(starts)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """Seven 8-14 s demo files, one of 4 s of tone then 5 s of digital silence (its windows at 4.5 s
    and 6 s are silent) and one that is not audio (one error row, no window), featurized with
    --windows all and again with centre crops."""
    base = tmp_path_factory.mktemp("windowed")
    corpus = base / "corpus"
    paths = write_corpus(corpus, CorpusSpec(real=3, per_generator=1, min_seconds=8, max_seconds=14))
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(4 * RATE) / RATE)
    silent_tail = corpus / "train" / "real" / "silent_tail.wav"
    soundfile.write(silent_tail, np.concatenate([tone, np.zeros(5 * RATE)]).astype(np.float32), RATE)
    (corpus / "train" / "real" / "broken.wav").write_text("not audio")
    out = base / "w.zarr"
    options = dict(features="mel,lfcc")
    versions = {keep: featurize("folder", corpus, str(out), workers=0,
                                config=FeaturizeConfig.from_options(**options, windows=keep)).version
                for keep in ("all", "centre")}
    lengths = []
    for path in [*paths, silent_tail]:
        frames, rate = _frames(path)
        lengths.append(frames if rate == RATE else (2 * frames * RATE + rate) // (2 * rate))  # soxr's length
    return {"store": out, "versions": versions, "lengths": lengths, "seconds": [n / RATE for n in lengths]}


def test_info_reports_the_files_windows_and_disk_per_audio_hour_of_a_windowed_version(windowed):
    spec = f"{windowed['store']}@{windowed['versions']['all']}"
    result = _invoke("info", spec, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    windows = [_n_windows(n) for n in windowed["lengths"]]
    assert len(windows) == 8 and min(windows) >= 5 and max(windows) >= 8   # 8-14 s files: several windows each
    per_file, rows = [0, *windows], sum(windows) + 1        # broken.wav: one error row, no window
    hours = sum(windowed["seconds"]) / 3600
    c = info["coverage"]
    assert info["protocol"] == c["protocol"] == "all 3 s windows, hop 1.5 s"
    assert (c["files"], c["rows"], info["n_clips"]) == (9, rows, rows)
    assert (c["silent_windows"], c["ok_windows"], c["other_error_rows"]) == (2, rows - 3, 1)
    assert c["windows_per_file"] == {"min": 0, "median": float(np.median(per_file)), "max": max(windows)}
    assert c["files_by_split"] == {"ood": 1, "train": 8}
    assert c["audio_hours"] == pytest.approx(hours, rel=1e-9)
    assert c["bytes_per_audio_hour"] == pytest.approx(info["nbytes_stored"] / hours, rel=1e-9)
    assert "in proportion to its length" in c["note"]

    text = " ".join(_invoke("info", spec).output.split())
    assert (f"protocol: all 3 s windows, hop 1.5 s: 9 files, {rows} rows ({rows - 3} ok windows, 2 silent, "
            f"1 other error row); windows per file min 0, median {np.median(per_file):g}, max {max(windows)}") in text
    assert f"audio: {hours:.4g} hours in 9 files; " in text and "stored per audio-hour" in text
    assert "in proportion to its length" in text and f"{rows} rows, blocks of" in text


def test_info_on_a_centre_version_gives_bytes_per_stored_clip_not_per_audio_hour(windowed):
    spec = f"{windowed['store']}@{windowed['versions']['centre']}"
    info = json.loads(_invoke("info", spec, "--json").output)
    c = info["coverage"]
    assert info["protocol"] == "centre 3 s crop" and (c["files"], c["rows"], c["ok"]) == (9, 9, 8)
    assert c["bytes_per_clip"] == pytest.approx(info["nbytes_stored"] / 9)
    assert c["audio_hours"] is None and c["bytes_per_audio_hour"] is None and "bytes per stored clip" in c["note"]
    assert {v["version"]: v["protocol"] for v in info["versions"]} == {
        windowed["versions"]["all"]: "all 3 s windows, hop 1.5 s", windowed["versions"]["centre"]: "centre 3 s crop"}
    text = " ".join(_invoke("info", spec).output.split())
    assert "protocol: centre 3 s crop: 9 files, one row each;" in text and "per stored clip" in text
    assert "per audio-hour" in text and "stored per audio-hour" not in text   # named only to say it does not apply


def test_ls_shows_each_versions_protocol(windowed):
    rows = json.loads(_invoke("ls", windowed["store"].parent, "--json").output)
    assert {r["version"]: (r["protocol"], r["clips"]) for r in rows} == {
        windowed["versions"]["all"]: ("all 3 s windows, hop 1.5 s", sum(map(_n_windows, windowed["lengths"])) + 1),
        windowed["versions"]["centre"]: ("centre 3 s crop", 9)}
    table = runner.invoke(app, ["store", "ls", str(windowed["store"].parent)], env={"COLUMNS": "1000"}).output
    assert "protocol" in table and "all 3 s windows, hop 1.5 s" in table and "centre 3 s crop" in table


def test_verify_passes_a_windowed_version_whose_windows_share_their_files_clip_id(windowed, tmp_path):
    spec = f"{windowed['store']}@{windowed['versions']['all']}"
    report = verify_store(spec)
    assert report["ok"], report["problems"]
    assert _invoke("verify", spec).exit_code == 0
    copy = tmp_path / "w.zarr"
    shutil.copytree(windowed["store"], copy)
    meta = zarr.open_group(str(copy), mode="r+", path=f"{windowed['versions']['all']}/meta")
    files, ids = meta["file"][:], meta["clip_id"][:]
    first, second = np.flatnonzero(files == 0), np.flatnonzero(files == 1)
    meta["clip_id"][second[0]:second[-1] + 1] = np.full(len(second), ids[first[0]], dtype=object)
    meta["clip_id"][int(first[2])] = "someone else"
    problems = verify_store(f"{copy}@{windowed['versions']['all']}")["problems"]
    assert sorted(problems) == sorted([
        f"meta/clip_id: row {first[2]}: not the clip_id of the file's other windows",
        f"meta/clip_id: 1 id(s) occur more than once across files: {ids[first[0]]!r} (rows {first[0]}, {second[0]})"])
    # a windowed version without its file index cannot be read per file: verify says which column
    gone = tmp_path / "gone.zarr"
    shutil.copytree(windowed["store"], gone)
    shutil.rmtree(gone / windowed["versions"]["all"] / "meta" / "file")
    assert "meta/file: column missing" in verify_store(f"{gone}@{windowed['versions']['all']}")["problems"]


# -- verify -------------------------------------------------------------------------------------
def test_verify_passes_on_the_good_store(built):
    result = _invoke("verify", built["store"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"OK: {built['store']}@{built['version']}: 26 clips") and "\n" not in line
    report = verify_store(str(built["store"]))
    assert report["ok"] and report["n_problems"] == 0
    # mel + lfcc: 4 shards of one chunk each; the meta columns (schema's) of 4 chunks; block_done 4 chunks
    columns = len(CLIP_COLUMNS) + len(OUTCOME_COLUMNS) + len(OPTIONAL_COLUMNS)
    assert report["arrays"] == 2 + columns + 1
    assert report["chunks_read"] == 4 + 4 + columns * 4 + 4
    assert report["bytes_read"] >= 26 * (2 * 128 * 301 + 60 * 301) * 2


def test_verify_reports_a_corrupted_mel_shard(built, copy):
    shard = _shard(copy, built["version"], "mel", 1)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(range(256)) * 4)
    result = _invoke("verify", copy)
    assert result.exit_code == 1, result.output
    assert "1 problem(s)" in result.output
    assert "mel: cannot read chunk (1, 0, 0, 0) (rows 8-15, in shard mel/c/1/0/0/0): ValueError" in result.output
    assert "checksum" in result.output


def test_verify_reports_a_deleted_lfcc_shard(built, copy):
    _shard(copy, built["version"], "lfcc", 2).unlink()
    report = verify_store(str(copy))
    assert not report["ok"]
    ok_rows = int((open_store(str(copy)).meta["status"][16:24] == "ok").sum())
    assert report["problems"] == [f"missing shard lfcc/c/2/0/0 (rows 16-23, {ok_rows} ok rows)"]
    result = _invoke("verify", copy)
    assert result.exit_code == 1 and "missing shard lfcc/c/2/0/0" in result.output


def test_verify_reports_blocks_not_done(built, copy):
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    g["block_done"][1] = 0
    g["block_done"][2] = 0
    g.attrs["complete"] = False
    result = _invoke("verify", copy)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "block_done: blocks 1-2 not done (rows 8-23)" in out
    assert "complete is False" in out
    assert verify_store(str(copy))["n_problems"] == 2


def test_verify_reports_inconsistent_metadata(built, copy):
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    status = g["meta/status"][:]
    ok_row = int(np.flatnonzero(status == "ok")[3])
    err_row = int(np.flatnonzero(status == "error")[0])
    g["meta/error"][ok_row] = "boom"
    g["meta/label"][5] = 7
    ids = g["meta/clip_id"][:]
    g["meta/clip_id"][9] = ids[10]
    g["meta/status"][err_row] = "ok"  # an error row claiming ok: its features are NaN
    problems = verify_store(str(copy))["problems"]
    assert f"meta: row {ok_row}: status ok but meta/error is not empty" in problems
    assert "meta: row 5: label not 0 or 1 (found [7])" in problems
    assert any(p.startswith("meta/clip_id: 1 id(s) occur more than once") and "(rows 9, 10)" in p
               for p in problems)
    assert f"meta: row {err_row}: status ok but meta/error is not empty" in problems
    assert f"mel: row {err_row} has status ok but non-finite values (missing chunk or NaN/Inf data)" in problems
    assert f"lfcc: row {err_row} has status ok but non-finite values (missing chunk or NaN/Inf data)" in problems
    result = _invoke("verify", copy, "--max-problems", "2")
    assert result.exit_code == 1
    assert f"{len(problems)} problem(s)" in result.output and f"... and {len(problems) - 2} more" in result.output


def test_verify_reports_data_in_an_error_row(built, copy):
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    err_row = int(np.flatnonzero(g["meta/status"][:] == "error")[0])
    block = err_row // BLOCK
    rows = g["lfcc"][block * BLOCK:(block + 1) * BLOCK]
    rows[err_row - block * BLOCK] = 0.5
    g["lfcc"][block * BLOCK:(block + 1) * BLOCK] = rows  # the whole shard, as featurize writes it
    assert verify_store(str(copy))["problems"] == [f"lfcc: row {err_row} has status error but is not all NaN"]


# -- export -------------------------------------------------------------------------------------
def test_export_ok_rows_of_a_split(built, tmp_path):
    out = tmp_path / "train.h5"
    result = _invoke("export", built["store"], "--out", out, "--split", "train")
    assert result.exit_code == 0, result.output
    assert "wrote 14 rows" in result.output
    store = open_store(str(built["store"]))
    rows = store.rows(split="train", status="ok")
    assert len(rows) == 14
    with h5py.File(out, "r") as f:
        assert set(f) == {"mel", "lfcc", "meta", "store_row"}
        np.testing.assert_array_equal(f["store_row"][:], rows)
        for name in ("mel", "lfcc"):
            assert f[name].dtype == np.float16 and f[name].compression == "gzip" and f[name].chunks
            np.testing.assert_array_equal(f[name][:], store.array(name)[:][rows])
            assert np.isfinite(f[name][:]).all()
        assert set(f["meta"]) == set(store.meta)
        ids = [s.decode() for s in f["meta/clip_id"][:]]
        assert ids == [str(x) for x in store.meta["clip_id"][rows]]
        assert built["unicode_id"] in ids
        assert set(f["meta/split"].asstr()[:]) == {"train"} and set(f["meta/status"].asstr()[:]) == {"ok"}
        np.testing.assert_array_equal(f["meta/label"][:], store.meta["label"][rows])
        np.testing.assert_array_equal(f["meta/duration"][:], store.meta["duration"][rows])
        assert json.loads(f.attrs["config"]) == store.config
        assert f.attrs["version"] == built["version"] and f.attrs["split"] == "train"
        assert f.attrs["store"] == os.path.abspath(built["store"])
        assert f.attrs["dfdetect_version"]


def test_export_all_rows_one_array_and_overwrite(built, tmp_path):
    out = tmp_path / "all.h5"
    info = export_hdf5(str(built["store"]), out, arrays=["lfcc"], status="all")
    store = open_store(str(built["store"]))
    assert info["rows"] == 26 and info["bytes_written"] == out.stat().st_size
    with h5py.File(out, "r") as f:
        assert "mel" not in f
        data = f["lfcc"][:]
        np.testing.assert_array_equal(data, store.array("lfcc")[:])  # NaN rows compare equal
        errors = f["meta/status"].asstr()[:] == "error"
        assert errors.sum() == 2 and np.isnan(data[errors]).all()
        assert set(f["meta/error_kind"].asstr()[errors]) == {"empty", "unknown_container"}

    result = _invoke("export", built["store"], "--out", out, "--status", "error")
    assert result.exit_code == 2 and "exists; pass --force" in result.output
    with h5py.File(out, "r") as f:
        assert f["lfcc"].shape[0] == 26  # untouched
    result = _invoke("export", built["store"], "--out", out, "--status", "error", "--force")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert f["mel"].shape == (2, 2, 128, 301) and np.isnan(f["mel"][:]).all()
        assert sorted(f["meta/error_kind"].asstr()[:]) == ["empty", "unknown_container"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_export_killed_mid_write_leaves_no_file_behind_after_the_next(built, tmp_path):
    """kill -9 mid-write leaves the hidden temporary file; the next export to that file removes it
    (and only files of export's own naming for that file), and one export at a time writes it."""
    out = tmp_path / "x.h5"
    killed = tmp_path / ".x.h5.4242.tmp"              # what a killed export (pid 4242) left
    killed.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    kept = [tmp_path / ".x.h5.notes.tmp", tmp_path / ".y.h5.4242.tmp", tmp_path / "x.h5.4242.tmp"]
    for file in kept:
        file.write_text("not export's")
    result = _invoke("export", built["store"], "--hdf5", out, "--arrays", "lfcc")
    assert result.exit_code == 0, result.output
    assert not killed.exists() and all(file.read_text() == "not export's" for file in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.h5", *(f.name for f in kept)])

    from dfdetect.locks import ExclusiveLock
    with ExclusiveLock(str(out), lambda holder: AssertionError(holder)):   # an export writing x.h5
        result = _invoke("export", built["store"], "--hdf5", out, "--arrays", "lfcc", "--force")
    assert result.exit_code == 2 and "is being written by another store export" in result.output, result.output


def test_export_refuses_bad_selections(built, tmp_path):
    for args, message in [(["--arrays", "wavlm"], "no feature array 'wavlm'"),
                          (["--split", "dev"], "no split 'dev'"),
                          (["--status", "maybe"], "--status must be ok, error or all")]:
        result = _invoke("export", built["store"], "--out", tmp_path / "x.h5", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "x.h5").exists()


def test_verify_checks_the_shapes_the_version_recorded(built, copy):
    """A version records each array's per-clip shape (store/schema.version_config); verify reads it
    back instead of re-deriving it, so an array that does not match is named."""
    g = zarr.open_group(str(copy), mode="r+", path=built["version"])
    config = dict(g.attrs["config"])
    assert config["shapes"] == {"mel": [2, 128, 301], "lfcc": [60, 301]}
    config["shapes"] = {**config["shapes"], "lfcc": [60, 300]}
    g.attrs["config"] = config
    problems = verify_store(str(copy))["problems"]
    assert problems == ["lfcc: per-clip shape [60, 301], expected [60, 300] from the version config"]


def test_recorded_shapes_do_not_name_the_version():
    from dfdetect.store.schema import version_config

    args = ({"n_mels": 128}, "abc", ["mel"], None, None)
    a = version_config(*args, shapes={"mel": (2, 128, 301)})
    b = version_config(*args, shapes={"mel": (2, 128, 300)})
    assert a[1] == b[1] and a[0]["shapes"] != b[0]["shapes"]
    assert version_config({"n_mels": 64}, "abd", ["mel"], None, None, shapes={})[1] != a[1]


def test_read_rows_reads_whole_chunks_in_any_order(built):
    store = open_store(str(built["store"]))
    mel = store.array("mel")[:]
    for rows in ([0, 1, 2, 3, 4, 5, 6, 7], [3, 9, 10, 25], [25, 3, 3, 0, 17], list(range(26))):
        got = store.read_rows(["mel", "lfcc"], rows)
        np.testing.assert_array_equal(got["mel"], mel[rows])
        np.testing.assert_array_equal(got["lfcc"], store.array("lfcc")[:][rows])
