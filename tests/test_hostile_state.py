"""Hostile state and operator mistakes: a kill at any point of training or store creation leaves
something the rerun continues, not a trap; bad inputs to train, store, evaluate and report are
one line naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_line
from safetensors.torch import load_file
from typer.testing import CliRunner

import dfdetect.models.runs as runs
import dfdetect.train.trainer as trainer
from dfdetect.cli import app
from dfdetect.models.runs import RunFolder, load_run
from dfdetect.train.trainer import TrainConfig, train

runner = CliRunner()


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException: no `except Exception` catches it)."""


def _config(store, epochs):
    return TrainConfig(arch="mel_cnn", train=f"{store}:train", test=f"{store}:test", epochs=epochs,
                       batch_size=16, lr=1e-3, seed=3)


def _same_run(a, b, epochs):
    ra, rb = RunFolder(a).records(), RunFolder(b).records()
    assert [r["epoch"] for r in rb] == list(range(1, epochs + 1))
    for x, y in zip(ra, rb, strict=True):
        x.pop("seconds"), y.pop("seconds")
        assert x == y
    for epoch in range(1, epochs + 1):
        wa, wb = (load_file(str(RunFolder(p).checkpoint(epoch))) for p in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert RunFolder(a).best_checkpoint.read_bytes() == RunFolder(b).best_checkpoint.read_bytes()
    assert RunFolder(a).read_state()["epoch"] == RunFolder(b).read_state()["epoch"] == epochs


@pytest.fixture(scope="module")
def straight(mel_store, tmp_path_factory):
    """An uninterrupted 3-epoch run, what every interrupted one must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(_config(mel_store, 3), out)
    return out


def test_resume_after_a_cut_off_metrics_line_equals_an_uninterrupted_run(mel_store, straight, tmp_path):
    out = tmp_path / "run"
    train(_config(mel_store, 2), out)
    folder = RunFolder(out)
    with open(folder.metrics_file, "a") as f:     # a kill (or a full disk) in the middle of epoch 3's append
        f.write('{"epoch": 3, "train": {"loss": 0.6')
    assert [r["epoch"] for r in folder.records()] == [1, 2]    # readers: the cut-off epoch never finished
    assert load_run(out, "last").epoch == 2
    train(_config(mel_store, 3), out, resume=True)
    assert folder.metrics_file.read_text().count("\n") == 3
    _same_run(straight, out, 3)


@pytest.mark.parametrize("kill_at", ["before the state save", "between the state's two files"])
def test_a_kill_between_the_epoch_record_and_its_state_is_undone_on_resume(mel_store, straight, tmp_path,
                                                                           monkeypatch, kill_at):
    out = tmp_path / "run"
    if kill_at == "before the state save":      # epoch 2's record and checkpoint written, its state not
        real = trainer.save_state

        def save_state(folder, epoch, *args):
            if epoch == 2:
                raise Killed
            real(folder, epoch, *args)
        monkeypatch.setattr(trainer, "save_state", save_state)
    else:                                       # epoch 2's state tensors committed, state.json not
        real = runs._replace

        def replace(file, write):
            if file.name == "state.json" and RunFolder(out).read_state()["epoch"] == 2:
                raise Killed
            real(file, write)
        monkeypatch.setattr(runs, "_replace", replace)
    with pytest.raises(Killed):
        train(_config(mel_store, 3), out)
    monkeypatch.undo()
    folder = RunFolder(out)
    assert [r["epoch"] for r in folder.records()] == [1, 2]
    train(_config(mel_store, 3), out, resume=True)
    epochs = [json.loads(line)["epoch"] for line in folder.metrics_file.read_text().splitlines()]
    assert epochs == [1, 2, 3]                  # no duplicate record
    _same_run(straight, out, 3)


# -- store versions: creation is recoverable, the lock is the real path's ----------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from test_hostile import small_corpus

    root = tmp_path_factory.mktemp("corpus")
    small_corpus(root)
    return root


def _files(store):
    return {p.relative_to(store): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_a_version_cut_off_while_created_is_created_again_others_untouched(corpus, tmp_path, monkeypatch):
    import dfdetect.store.writer as writer
    from dfdetect.featurize.pipeline import featurize
    from dfdetect.store import open_store
    from dfdetect.store.schema import StoreError, list_versions

    store = tmp_path / "s.zarr"
    mel = featurize("folder", corpus, str(store), features=("mel",), workers=0, block_size=2)
    before = {k: v for k, v in _files(store).items() if k.parts[0] == mel.version}
    real, calls = writer._meta_array, []

    def full_disk(*args, **kwargs):        # the disk fills up halfway through the metadata columns
        calls.append(args[1])
        if len(calls) == 5:
            raise OSError(28, "No space left on device", str(store))
        return real(*args, **kwargs)
    monkeypatch.setattr(writer, "_meta_array", full_disk)
    with pytest.raises(StoreError, match="cannot create .*No space left on device; .* rerun the same command"):
        featurize("folder", corpus, str(store), features=("lfcc",), workers=0, block_size=2)
    monkeypatch.undo()
    cut = [v for v in list_versions(str(store)) if v != mel.version]
    assert len(cut) == 1 and (store / cut[0] / "lfcc").exists()     # the half-made version is there
    result = featurize("folder", corpus, str(store), features=("lfcc",), workers=0, block_size=2)
    assert result.complete and result.ok == 4 and result.version == cut[0]
    assert open_store(f"{store}@{result.version}").read_rows(["lfcc"], [0, 3])["lfcc"].shape[0] == 2
    assert {k: v for k, v in _files(store).items() if k.parts[0] == mel.version} == before
    assert open_store(f"{store}@{mel.version}").complete


def test_the_store_lock_is_the_real_path_not_the_name(corpus, tmp_path):
    from dfdetect.featurize.pipeline import featurize
    from dfdetect.store import StoreError
    from dfdetect.store.writer import StoreLock

    real = tmp_path / "real.zarr"
    real.mkdir()
    (tmp_path / "link.zarr").symlink_to(real)
    with StoreLock(str(real)):
        for other in (tmp_path / "link.zarr", tmp_path / "x" / ".." / "real.zarr/"):
            with pytest.raises(StoreError, match="another featurize is writing"):
                featurize("folder", corpus, str(other), features=("mel",), workers=0, block_size=2)
    with StoreLock(str(tmp_path / "link.zarr")):      # released on exit; the link takes it too
        pass


# -- a damaged chunk ---------------------------------------------------------------------------------
@pytest.fixture
def damaged_store(mel_store, tmp_path):
    """A copy of mel_store with one byte of its first mel chunk (rows 0-15) flipped."""
    import shutil

    from dfdetect.store import open_store

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(mel_store, copy)
    version = open_store(str(copy)).version
    shard = copy / version / "mel" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    return f"{copy}@{version}"


@pytest.mark.parametrize("command", ["train", "train streaming", "evaluate"])
def test_a_damaged_chunk_names_store_array_rows_and_verify(damaged_store, straight, tmp_path, command):
    if command == "evaluate":
        args = ["evaluate", str(straight), "--on", damaged_store]
    else:
        args = ["train", "--arch", "mel_cnn", "--train", damaged_store, "--out", str(tmp_path / "run"),
                "--epochs", "1", "--batch-size", "16"]
        if command == "train streaming":   # chunks read by the loader's threads, not at open
            (tmp_path / "c.json").write_text('{"memory_budget_gb": 0}')
            args += ["--config", str(tmp_path / "c.json")]
    one_line(runner.invoke(app, args), damaged_store, "array 'mel'", "rows 0-15", "checksum",
             f"dfdetect store verify {damaged_store}")
    if command == "train":    # read when the sets are opened: before the run folder is touched
        assert not (tmp_path / "run").exists()
    verify = runner.invoke(app, ["store", "verify", damaged_store])
    assert verify.exit_code == 1 and "mel" in verify.output


# -- one clip, one row in a score file ---------------------------------------------------------------
def _evaluate(*args):
    return runner.invoke(app, ["evaluate", "--json", "--scores", *map(str, args)])


def test_a_repeated_clip_counts_once_and_a_conflicting_one_is_named(tmp_path):
    rows = [("a", 0.1, "real"), ("b", 0.4, "real"), ("c", 0.8, "fake"), ("d", 0.3, "fake")]
    plain = tmp_path / "plain.csv"
    plain.write_text("clip_id,score,label\n" + "".join(f"{c},{s},{y}\n" for c, s, y in rows))
    expected = json.loads(_evaluate(plain).output)["metrics"]
    # the same row twice (a concatenation mistake) counts once, with a note naming the line
    repeated = tmp_path / "repeated.csv"
    repeated.write_text(plain.read_text() + "c,0.8,spoof\n")
    result = _evaluate(repeated)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["metrics"] == expected and out["source"]["clips"] == 4
    assert any("1 repeated row" in n and "line 6" in n for n in out["notes"]), out["notes"]
    # the same clip with another score, or another label: which clip, which lines
    other_score = tmp_path / "other_score.csv"
    other_score.write_text(plain.read_text() + "c,0.2,fake\n")
    one_line(_evaluate(other_score), str(other_score), "clip 'c' has two scores, '0.8' (line 4) and '0.2' (line 6)")
    other_label = tmp_path / "other_label.jsonl"
    other_label.write_text("".join(json.dumps({"file": c, "score": s, "label": y}) + "\n" for c, s, y in rows)
                           + json.dumps({"file": "a", "score": 0.1, "label": "spoof"}) + "\n")
    one_line(_evaluate(other_label), str(other_label), "clip 'a' has two labels, 'real' (line 1) and 'spoof' (line 5)",
             "--drop-bad")
    dropped = json.loads(_evaluate(other_label, "--drop-bad").output)
    assert dropped["source"]["clips"] == 3 and any("clip 'a' has two labels" in n for n in dropped["notes"])
    # ASVspoof text: the clip is the file field, not the speaker shared by every line
    cm = tmp_path / "cm5.txt"
    cm.write_text("".join(f"E_01 {c} {s} {'bonafide' if y == 'real' else 'spoof'}\n" for c, s, y in rows)
                  + "E_01 b 0.9 bonafide\n")
    one_line(_evaluate(cm), "clip 'b' has two scores, '0.4' (line 2) and '0.9' (line 5)")


def test_a_protocol_that_gives_a_clip_two_labels_is_named(tmp_path):
    scores = tmp_path / "cm2021.txt"
    scores.write_text("LA_1 0.2\nLA_2 0.8\nLA_3 0.4\n")
    protocol = tmp_path / "keys.txt"
    protocol.write_text("S LA_1 - bonafide\nS LA_2 A01 spoof\nS LA_3 A02 spoof\nS LA_1 A01 spoof\n")
    one_line(_evaluate(scores, "--labels", protocol), str(protocol),
             "clip 'LA_1' has two labels, 'bonafide' (line 1) and 'spoof' (line 4)")
    protocol.write_text("S LA_1 - bonafide\nS LA_2 A01 spoof\nS LA_3 A02 spoof\nS LA_1 - bona-fide\n")
    assert _evaluate(scores, "--labels", protocol).exit_code == 0      # one meaning, two spellings


# -- operator mistakes: one line naming the file or option ---------------------------------------------
def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _folder(path):
    path.mkdir()
    return str(path)


def _read_only(path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder: the case cannot be made (the path-under-a-file case stands)")
    path.mkdir()
    path.chmod(0o555)
    return path


def _truncated_metadata(store, tmp_path):
    import shutil

    copy = tmp_path / "cut.zarr"
    shutil.copytree(store, copy)
    meta = next(copy.glob("v-*")) / "mel" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:100])
    return str(copy), str(meta)


BINARY = bytes(range(256)) * 8
CASES = {
    "export to a folder": lambda t, s, r: (["store", "export", s, "--out", str(t)], ["--out", "is a folder"]),
    "export under a file": lambda t, s, r: (["store", "export", s, "--out", _write(t / "f", "x") + "/x.h5"],
                                            ["--out", "f is a file"]),
    "export read-only": lambda t, s, r: (["store", "export", s, "--out", str(_read_only(t / "ro") / "x.h5")],
                                         ["--out", "not writable"]),
    "train config missing": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", str(t / "r"),
                                              "--config", str(t / "no.json")], ["no.json", "No such file"]),
    "train config invalid": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", str(t / "r"),
                                              "--config", _write(t / "c.json", '{"epochs": 2')],
                                             ["c.json", "not a JSON"]),
    "train config list": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", str(t / "r"),
                                           "--config", _write(t / "c.json", "[1, 2]")], ["c.json", "found list"]),
    "train config wrong type": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", str(t / "r"),
                                                 "--config", _write(t / "c.json", '{"ood": 5}')],
                                                ["c.json", "field 'ood' is 5", "a list of strings"]),
    "train config wrong type 2": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", str(t / "r"),
                                                   "--config", _write(t / "c.json", '{"model": "big"}')],
                                                  ["c.json", "field 'model'", "an object"]),
    "train out a file": lambda t, s, r: (["train", "--arch", "mel_cnn", "--train", s, "--out", _write(t / "f", "x"),
                                          "--epochs", "1"], ["--out", "is a file, not a folder"]),
    "csv field over 128 KiB": lambda t, s, r: (
        ["evaluate", "--scores", _write(t / "s.csv", "score,label\n0.1,real\n" + "9" * 140_000 + ",fake\n")],
        ["s.csv line 3", "field larger than field limit"]),
    "400-digit number": lambda t, s, r: (
        ["evaluate", "--scores", _write(t / "s.jsonl", '{"score": %s, "label": 1}\n{"score": 0.1, "label": 0}\n'
                                        % ("1" * 400))], ["s.jsonl", "NaN/Inf score (line 1)"]),
    "5000-digit number": lambda t, s, r: (
        ["evaluate", "--scores", _write(t / "s.jsonl", '{"score": %s, "label": 1}\n' % ("1" * 5000))],
        ["s.jsonl line 1 is not JSON", "digits"]),
    "deeply nested JSON": lambda t, s, r: (
        ["evaluate", "--scores", _write(t / "s.jsonl", '{"score": ' + "[" * 100_000 + "]" * 100_000 + "}\n")],
        ["s.jsonl line 1", "nested too deeply"]),
    "truncated JSON": lambda t, s, r: (
        ["evaluate", "--scores", _write(t / "s.jsonl", '{"score": 0.1, "label": 0}\n{"score": 0.9, "lab')],
        ["s.jsonl line 2 is not JSON"]),
    "binary csv": lambda t, s, r: (["evaluate", "--scores", _write(t / "s.csv", BINARY)], ["s.csv: not a text file"]),
    "binary text": lambda t, s, r: (["evaluate", "--scores", _write(t / "s.txt", BINARY)], ["s.txt: not a text file"]),
    "binary protocol": lambda t, s, r: (["evaluate", "--scores", _write(t / "s.txt", "LA_1 0.3\n"), "--labels",
                                         _write(t / "keys.txt", BINARY)], ["keys.txt: not a text file"]),
    "binary parquet": lambda t, s, r: (["evaluate", "--scores", _write(t / "s.parquet", BINARY)], ["s.parquet"]),
    "wavlm layers": lambda t, s, r: (["featurize", "--dataset", "folder", "--root", str(t), "--wavlm-layers", "a,b"],
                                     ["--wavlm-layers 'a,b'", "integers"]),
    "report out a folder": lambda t, s, r: (["report", str(r), "--out", _folder(t / "r.html")],
                                            ["--out", "r.html is a folder"]),
    "report out under a file": lambda t, s, r: (["report", str(r), "--out", _write(t / "f", "x") + "/r.html"],
                                                ["--out", "f is a file"]),
    "report out read-only": lambda t, s, r: (["report", str(r), "--out", str(_read_only(t / "ro") / "r.html")],
                                             ["--out", "not writable"]),
    "store metadata cut off": lambda t, s, r: (lambda cut: (["evaluate", str(r), "--on", cut[0]],
                                                            [cut[1], "not valid JSON"]))(_truncated_metadata(s, t)),
}


@pytest.mark.parametrize("case", CASES)
def test_operator_mistakes_are_one_line_naming_the_file_or_option(mel_store, straight, tmp_path, case):
    args, fragments = CASES[case](tmp_path, mel_store, straight)
    one_line(runner.invoke(app, args), *fragments)
    assert not (tmp_path / "r").exists()      # refused before any output was made


def test_report_refuses_to_overwrite_what_it_did_not_write(straight, tmp_path):
    notes = tmp_path / "paper.md"
    notes.write_text("# My paper\n\nweeks of work\n")
    page = tmp_path / "paper.html"
    one_line(runner.invoke(app, ["report", str(straight), "--out", str(page)]), "paper.md exists and is not a dfdetect "
             "report", "--force")
    assert notes.read_text() == "# My paper\n\nweeks of work\n" and not page.exists()
    (tmp_path / "other.html").write_text("<!DOCTYPE html><html><head><title>my site</title>")
    one_line(runner.invoke(app, ["report", str(straight), "--out", str(tmp_path / "other.html")]), "other.html exists")
    # once the notes are moved away, a rerun of the same report overwrites its own files; --force anything
    notes.rename(tmp_path / "mine.md")
    for args in ([], [], ["--force"]):
        if args:
            notes.write_text("# My paper\n")
        result = runner.invoke(app, ["report", str(straight), "--out", str(page), *args])
        assert result.exit_code == 0, result.output
        assert notes.read_text().startswith("# dfdetect report") and page.read_text().startswith("<!DOCTYPE html>")
