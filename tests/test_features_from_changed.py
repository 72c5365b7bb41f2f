"""score --features-from: a file changed since featurize is scored live, never from the features of
the file it used to be (issue 36); a store written before featurize kept file sizes and mtimes
scores every file live."""

import csv
import os
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.featurize.pipeline import featurize
from dfdetect.store import open_store

runner = CliRunner()


def _score(run_dir, inputs, out: Path, *extra) -> dict[str, dict]:
    result = runner.invoke(app, ["score", "--model", str(run_dir), *map(str, inputs), "--out", str(out),
                                 "--workers", "0", *extra])
    assert result.exit_code in (0, 1), result.output
    with open(out, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_a_changed_file_is_scored_live_not_from_its_old_features(mel_store, run_dir, tmp_path):
    corpus = shutil.copytree(Path(mel_store).parent / "corpus" / "test", tmp_path / "corpus")
    store = str(tmp_path / "s.zarr")
    featurize("folder", corpus, store, features=("mel",), workers=0, block_size=16)
    files = sorted(str(p) for p in corpus.rglob("*") if p.is_file())
    as_text, replaced, touched, kept = files[:4]

    Path(as_text).write_text("this file is text now")
    os.replace(shutil.copy(files[-1], tmp_path / "other"), replaced)      # another clip's audio, same name
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))    # same bytes, written again

    got = _score(run_dir, corpus.rglob("*.*"), tmp_path / "from_store.csv", "--features-from", store)
    live = _score(run_dir, [replaced, touched, kept], tmp_path / "live.csv")
    assert got[as_text]["status"] == "error" and got[as_text]["features"] != "store", got[as_text]
    for path in (replaced, touched):
        assert got[path]["features"] == "live" and got[path]["score"] == live[path]["score"], got[path]
    assert got[kept]["features"] == "store"
    assert sum(r["features"] == "store" for r in got.values()) == len(files) - 3


def test_a_store_without_file_stamps_scores_every_file_live(mel_store, run_dir, tmp_path):
    """Stores written before featurize kept sizes and mtimes cannot tell a changed file."""
    corpus = shutil.copytree(Path(mel_store).parent / "corpus" / "test", tmp_path / "corpus")
    store = str(tmp_path / "s.zarr")
    featurize("folder", corpus, store, features=("mel",), workers=0, block_size=16)
    version = open_store(store).version
    for column in ("size", "mtime_ns"):   # as an older dfdetect wrote it
        shutil.rmtree(Path(store) / version / "meta" / column)
    got = _score(run_dir, corpus.rglob("*.*"), tmp_path / "s.csv", "--features-from", store)
    assert got and all(r["features"] == "live" for r in got.values() if r["status"] == "ok")
