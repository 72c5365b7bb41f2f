"""Dataset adapters on small corpora built in each dataset's real layout (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dfdetect import datasets
from dfdetect.datasets import DatasetLayoutError
from dfdetect.datasets.base import parse_label, path_inside

SR = 16000


def tone(path: Path, seconds: float = 0.05, freq: float = 440.0) -> Path:
    """A short sine clip in the format the suffix asks for (.wav / .flac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def by_id(index):
    return {c.clip_id: c for c in index.clips}


def messages(index):
    return [f"{p.where} | {p.message}" for p in index.problems]


# --------------------------------------------------------------------------- registry

def test_registry_order_and_interface():
    assert list(datasets.ADAPTERS) == ["deepfake_eval_2024", "asvspoof5", "asvspoof2019_la",
                                       "in_the_wild", "folder", "manifest", "hf", "lhotse"]
    for name, mod in datasets.ADAPTERS.items():
        assert mod.NAME == name == mod.__name__.rsplit(".", 1)[1]
        assert mod.DESCRIPTION and "\n" not in mod.DESCRIPTION
        assert "\n" in mod.LAYOUT and callable(mod.prepare) and mod.__doc__
    assert datasets.get_adapter(" ASVspoof2019-LA") is datasets.ADAPTERS["asvspoof2019_la"]
    with pytest.raises(ValueError, match="deepfake_eval_2024.*manifest"):
        datasets.get_adapter("librispeech")


def test_parse_label_spellings():
    assert [parse_label(s) for s in ("bona-fide", "bonafide", "Real", "REAL", " spoof ", "Fake")] \
        == [0, 0, 0, 0, 1, 1]
    assert parse_label("Unknown") is None


def test_path_inside_is_lexical(tmp_path):
    root = str(tmp_path / "r")
    assert path_inside(root, "a/../b.wav") == os.path.join(root, "b.wav")
    assert path_inside(root, "../r/x.wav") == os.path.join(root, "x.wav")
    assert path_inside(root, "../rr/x.wav") is None       # a sibling sharing the prefix
    assert path_inside(root, "/etc/passwd") is None
    assert path_inside(root, os.path.join(root, "sub", "x.wav")) == os.path.join(root, "sub", "x.wav")


# --------------------------------------------------------------------------- Deepfake-Eval-2024

DFE_CSV = (
    "\ufeff Filename , Date ,Ground Truth, Public Comments ,Finetuning Set\r\n"
    'a1.mp3,2024-03-01,Fake,"Voice clone, posted on X; ""obviously"" fake\nsecond line, with comma",Train\r\n'
    "b2.wav,2024-04-02,Real,plain comment,Test\r\n"
    'c3.dat,2024-05-03,Fake,"multi\nline\ncomment",Test\r\n'
    "d4.mp3,2024-06-04,Unknown,no idea,Train\r\n"
    "e5.m4a,2024-07-05,Real,,\r\n"
    "f6.mp3,2024-08-06,Fake,missing on disk,Test\r\n"
    "g7.mp3,2024-08-07,Fake,too,many,Test\r\n"
    "../../escape.mp3,2024-08-08,Fake,escape,Test\r\n"
)


def make_dfeval(root: Path) -> Path:
    audio = root / "audio-data"
    audio.mkdir(parents=True)
    (audio / "a1.mp3").write_bytes(b"ID3 not decoded by the adapter")
    tone(audio / "b2.wav")
    (audio / "c3.dat").write_bytes(b"\x00\x00\x00\x18ftypmp42 any bytes")
    (audio / "d4.mp3").write_bytes(b"x")
    (audio / "e5.m4a").write_bytes(b"x")
    (root / "audio-metadata-publish.csv").write_bytes(DFE_CSV.encode("utf-8"))
    return root


def test_deepfake_eval_2024(tmp_path):
    root = make_dfeval(tmp_path / "dfe")
    index = datasets.prepare("deepfake_eval_2024", root)
    clips = by_id(index)
    assert set(clips) == {"a1.mp3", "b2.wav", "c3.dat", "e5.m4a", "f6.mp3"}
    a1 = clips["a1.mp3"]
    assert (a1.label, a1.split, a1.date, a1.source, a1.generator) == (1, "train", "2024-03-01", "", "")
    assert a1.path == str((root / "audio-data" / "a1.mp3").absolute())
    assert (clips["b2.wav"].label, clips["b2.wav"].split) == (0, "test")
    assert (clips["c3.dat"].label, clips["c3.dat"].split) == (1, "test")
    assert clips["e5.m4a"].split == "all"
    msgs = messages(index)
    meta = str(root / "audio-metadata-publish.csv")
    # d4 starts on line 8: header line 1, a1 lines 2-3, b2 line 4, c3 lines 5-7.
    assert any(m.startswith(f"{meta}:8 |") and "'Unknown'" in m for m in msgs)
    assert any("f6.mp3 listed in audio-metadata-publish.csv line 10 but missing" in m for m in msgs)
    assert any(m.startswith(f"{meta}:11 |") and "6 columns, expected 5" in m for m in msgs)  # g7
    assert any(m.startswith(f"{meta}:12 |") and "outside" in m for m in msgs)       # ../../escape
    assert len(index.problems) == 4
    assert index.counts() == {
        "clips": 5, "real": 2, "fake": 3, "by_split": {"all": {"real": 1}, "test": {"real": 1, "fake": 2},
                                 "train": {"fake": 1}},
        "fake_by_generator": {"(unknown)": 3}, "problems": 4}


def test_deepfake_eval_2024_wrong_roots(tmp_path):
    with pytest.raises(DatasetLayoutError, match="audio-metadata-publish.csv"):
        datasets.prepare("deepfake_eval_2024", tmp_path)
    (tmp_path / "audio-metadata-publish.csv").write_text("Filename,Date,Ground Truth\n")
    with pytest.raises(DatasetLayoutError, match="audio-data"):
        datasets.prepare("deepfake_eval_2024", tmp_path)
    (tmp_path / "audio-data").mkdir()
    (tmp_path / "audio-metadata-publish.csv").write_text("File,Date,Label\nx.mp3,1,Fake\n")
    with pytest.raises(DatasetLayoutError, match="'Filename'.*columns found"):
        datasets.prepare("deepfake_eval_2024", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        datasets.prepare("deepfake_eval_2024", tmp_path / "nope")


# --------------------------------------------------------------------------- ASVspoof5

def make_asvspoof5(root: Path, protocols_subdir: str = "") -> Path:
    proto_dir = root / protocols_subdir if protocols_subdir else root
    proto_dir.mkdir(parents=True, exist_ok=True)
    (proto_dir / "ASVspoof5.train.tsv").write_text(
        "T_4850 T_0000000000 F - - - AC3 A05 spoof -\n"
        "T_3734 T_0000000011 F - - - - bonafide bonafide -\n"
        "T_3734 T_0000000022 M - - - AC1 A01 spoof -\n"
        "\n"
        "T_3734 T_0000000033 M - - - AC1 A01 spoof\n")                 # 9 columns
    (proto_dir / "ASVspoof5.dev.track_1.tsv").write_text(
        "D_4461\tD_0000000169\tF\t-\t-\t-\tAC1\tA14\tspoof\t-\n"        # tab-separated
        "D_0461 D_0000000190 M - - - - bonafide bonafide -\n"
        "D_0461 D_0000000190 M - - - - bonafide bonafide -\n")          # duplicate id
    (proto_dir / "ASVspoof5.eval.track_1.tsv").write_text(
        "E_0001 E_0000000001 F mp3 8 1 AC2 A20 spoof -\n"
        "E_0002 E_0000000002 M opus 4 2 - bonafide bonafide -\n"
        "E_0003 E_0000000003 M - - - - bonafide maybe -\n")             # unknown KEY
    for split_dir, names in (("flac_T", ["T_0000000000", "T_0000000011"]),  # T_..22 missing
                             ("flac_D", ["D_0000000169", "D_0000000190"]),
                             ("flac_E_eval", ["E_0000000001", "E_0000000002", "E_0000000003"])):
        for n in names:
            tone(root / split_dir / f"{n}.flac")
    return root


def test_asvspoof5(tmp_path):
    root = make_asvspoof5(tmp_path / "a5")
    index = datasets.prepare("asvspoof5", root)
    clips = by_id(index)
    assert len(clips) == 7
    t0 = clips["T_0000000000"]
    assert (t0.label, t0.split, t0.generator, t0.speaker, t0.codec) == (1, "train", "A05", "T_4850", "")
    assert t0.path == str((root / "flac_T" / "T_0000000000.flac").absolute())
    assert (clips["T_0000000011"].label, clips["T_0000000011"].generator) == (0, "")
    assert clips["D_0000000169"].generator == "A14" and clips["D_0000000169"].split == "dev"
    assert (clips["E_0000000001"].codec, clips["E_0000000002"].codec) == ("mp3", "opus")
    # the missing flac is kept (later recorded as an error) and reported
    assert clips["T_0000000022"].path.endswith("flac_T/T_0000000022.flac")
    msgs = messages(index)
    assert any("T_0000000022.flac listed in ASVspoof5.train.tsv line 3 but missing" in m for m in msgs)
    assert any(":5 |" in m and "9 columns" in m for m in msgs)
    assert any("duplicate clip id 'D_0000000190'" in m for m in msgs)
    assert any("ASVspoof5.eval.track_1.tsv:3 |" in m and "'maybe'" in m for m in msgs)
    assert len(msgs) == 4
    assert index.counts()["by_split"] == {"dev": {"fake": 1, "real": 1},
                                          "eval": {"fake": 1, "real": 1},
                                          "train": {"fake": 2, "real": 1}}
    assert index.counts()["fake_by_generator"] == {"A01": 1, "A05": 1, "A14": 1, "A20": 1}


def test_asvspoof5_protocol_subfolder_and_partial_download(tmp_path):
    root = make_asvspoof5(tmp_path / "a5", protocols_subdir="ASVspoof5_protocols")
    for n in ("E_0000000001", "E_0000000002", "E_0000000003"):
        (root / "flac_E_eval" / f"{n}.flac").unlink()
    (root / "flac_E_eval").rmdir()
    index = datasets.prepare("asvspoof5", root)
    assert set(index.counts()["by_split"]) == {"train", "dev"}
    assert any("flac_E_eval/ is missing: split 'eval' (3 rows) skipped" in m for m in messages(index))


def test_asvspoof5_absent_protocol_means_absent_split(tmp_path):
    root = make_asvspoof5(tmp_path / "a5")
    (root / "ASVspoof5.dev.track_1.tsv").unlink()
    (root / "ASVspoof5.eval.track_1.tsv").unlink()
    index = datasets.prepare("asvspoof5", root)
    assert set(index.counts()["by_split"]) == {"train"}


def test_asvspoof5_wrong_roots(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"(?s)ASVspoof5\.train\.tsv.*Expected layout"):
        datasets.prepare("asvspoof5", tmp_path)
    (tmp_path / "ASVspoof5.train.tsv").write_text("T_1 T_2 F - - - - bonafide bonafide -\n")
    with pytest.raises(DatasetLayoutError, match="flac_T"):
        datasets.prepare("asvspoof5", tmp_path)


# --------------------------------------------------------------------------- ASVspoof 2019 LA

def make_la(la: Path) -> Path:
    protos = la / "ASVspoof2019_LA_cm_protocols"
    protos.mkdir(parents=True)
    (protos / "ASVspoof2019.LA.cm.train.trn.txt").write_text(
        "LA_0079 LA_T_1138215 - - bonafide\n"
        "LA_0079 LA_T_1271820 - A01 spoof\n"
        "LA_0080 LA_T_1272637 - A06 spoof\n")
    (protos / "ASVspoof2019.LA.cm.dev.trl.txt").write_text(
        "LA_0069 LA_D_1047731 - - bonafide\n"
        "LA_0069 LA_D_1105538 - A02 spoof extra\n")                   # 6 columns
    (protos / "ASVspoof2019.LA.cm.eval.trl.txt").write_text(
        "LA_0039 LA_E_2834763 - A11 spoof\n"
        "LA_0014 LA_E_8877452 - - bonafide\n"
        "LA_0014 ../../../etc/passwd - A11 spoof\n")                 # escapes the root
    for split, names in (("train", ["LA_T_1138215", "LA_T_1271820", "LA_T_1272637"]),
                         ("dev", ["LA_D_1047731", "LA_D_1105538"]),
                         ("eval", ["LA_E_2834763"])):                 # LA_E_8877452 missing
        for n in names:
            tone(la / f"ASVspoof2019_LA_{split}" / "flac" / f"{n}.flac")
    return la


@pytest.mark.parametrize("parent", [False, True], ids=["LA-root", "parent-of-LA"])
def test_asvspoof2019_la(tmp_path, parent):
    la = make_la(tmp_path / "LA")
    index = datasets.prepare("asvspoof2019_la", tmp_path if parent else la)
    assert index.root == str(la.absolute())
    clips = by_id(index)
    assert set(clips) == {"LA_T_1138215", "LA_T_1271820", "LA_T_1272637", "LA_D_1047731",
                          "LA_E_2834763", "LA_E_8877452"}
    assert (clips["LA_T_1138215"].label, clips["LA_T_1138215"].generator) == (0, "")
    assert (clips["LA_T_1271820"].label, clips["LA_T_1271820"].generator,
            clips["LA_T_1271820"].speaker) == (1, "A01", "LA_0079")
    assert clips["LA_E_2834763"].path == str(la.absolute() / "ASVspoof2019_LA_eval/flac/LA_E_2834763.flac")
    msgs = messages(index)
    assert any("LA_E_8877452.flac listed in ASVspoof2019_LA_cm_protocols/"
               "ASVspoof2019.LA.cm.eval.trl.txt line 2 but missing" in m for m in msgs)
    assert any("dev.trl.txt:2 |" in m and "6 columns" in m for m in msgs)
    assert any("eval.trl.txt:3 |" in m and "outside" in m for m in msgs)
    assert len(msgs) == 3
    c = index.counts()
    assert c["by_split"] == {"dev": {"real": 1}, "eval": {"fake": 1, "real": 1},
                             "train": {"fake": 2, "real": 1}}
    assert c["fake_by_generator"] == {"A01": 1, "A06": 1, "A11": 1}


def test_asvspoof2019_la_wrong_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="ASVspoof2019_LA_cm_protocols"):
        datasets.prepare("asvspoof2019_la", tmp_path)
    (tmp_path / "ASVspoof2019_LA_cm_protocols").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"ASVspoof2019\.LA\.cm\.train\.trn\.txt"):
        datasets.prepare("asvspoof2019_la", tmp_path)


# --------------------------------------------------------------------------- In-the-Wild

META = ("file,speaker,label\n"
        "0.wav,Alec Guinness,spoof\n"
        "1.wav,Alec Guinness,bona-fide\n"
        "2.wav,Barack Obama,bona-fide\n"
        "3.wav,Barack Obama,unsure\n"
        "4.wav,Ayn Rand,spoof\n")


@pytest.mark.parametrize("meta_inside", [True, False], ids=["meta-inside", "meta-in-root"])
def test_in_the_wild(tmp_path, meta_inside):
    audio = tmp_path / "release_in_the_wild"
    for n in range(4):
        tone(audio / f"{n}.wav")
    meta = (audio if meta_inside else tmp_path) / "meta.csv"
    meta.write_text(META)
    index = datasets.prepare("in_the_wild", tmp_path)
    clips = by_id(index)
    assert set(clips) == {"0.wav", "1.wav", "2.wav", "4.wav"}
    assert (clips["1.wav"].label, clips["1.wav"].speaker, clips["1.wav"].split) == (0, "Alec Guinness", "all")
    assert clips["0.wav"].label == 1
    msgs = messages(index)
    assert any(m.startswith(f"{meta}:5 |") and "'unsure'" in m for m in msgs)
    assert any("4.wav listed in" in m and "line 6 but missing" in m for m in msgs)
    assert len(msgs) == 2
    assert index.counts()["by_split"] == {"all": {"fake": 2, "real": 2}}


def test_in_the_wild_root_is_release_folder_and_wrong_root(tmp_path):
    audio = tmp_path / "release_in_the_wild"
    tone(audio / "0.wav")
    with pytest.raises(DatasetLayoutError, match="meta.csv"):
        datasets.prepare("in_the_wild", tmp_path)
    (audio / "meta.csv").write_text("file,speaker,label\n0.wav,X,spoof\n")
    index = datasets.prepare("in_the_wild", audio)
    assert [c.clip_id for c in index.clips] == ["0.wav"] and not index.problems
    with pytest.raises(DatasetLayoutError, match="release_in_the_wild"):
        datasets.prepare("in_the_wild", tmp_path / "empty")


# --------------------------------------------------------------------------- folder

def test_folder_generators_unicode_and_ignored(tmp_path):
    root = tmp_path / "my corpus"
    tone(root / "real" / "spk 1" / "Grüße aus Köln.wav")
    tone(root / "real" / "b.FLAC")
    tone(root / "fake" / "direct.wav")
    tone(root / "fake" / "eleven labs" / "v2" / "日本語 clip.flac")
    tone(root / "fake" / "xtts" / "c.wav")
    (root / "fake" / "xtts" / "notes.txt").write_text("not audio")
    (root / "real" / "readme.md").write_text("not audio")
    (root / "real" / ".DS_Store").write_bytes(b"hidden")
    tone(root / "real" / ".hidden" / "h.wav")
    (root / "README.txt").write_text("outside real/ and fake/: not counted")
    index = datasets.prepare("folder", root)
    clips = by_id(index)
    assert set(clips) == {"real/spk 1/Grüße aus Köln.wav", "real/b.FLAC", "fake/direct.wav",
                          "fake/eleven labs/v2/日本語 clip.flac", "fake/xtts/c.wav"}
    assert clips["fake/eleven labs/v2/日本語 clip.flac"].generator == "eleven labs"
    assert clips["fake/direct.wav"].generator == ""
    assert clips["real/spk 1/Grüße aus Köln.wav"].label == 0
    assert clips["real/b.FLAC"].path == str(root.absolute() / "real" / "b.FLAC")
    assert all(c.split == "all" for c in index.clips)
    assert [p.message for p in index.problems] == [
        "ignored 2 files with non-audio extensions: real/readme.md, fake/xtts/notes.txt"]
    assert index.counts()["fake_by_generator"] == {"(unknown)": 1, "eleven labs": 1, "xtts": 1}


def test_folder_splits_and_empty(tmp_path):
    root = tmp_path / "corpus"
    tone(root / "train" / "real" / "r1.wav")
    tone(root / "train" / "fake" / "gen" / "f1.wav")
    tone(root / "train" / "fake" / "gen" / "f2.wav")
    tone(root / "test" / "real" / "r2.wav")
    (root / "test" / "fake").mkdir(parents=True)                        # empty
    tone(root / "val" / "Real" / "r3.wav")                             # case-insensitive, no fake/
    (root / "docs").mkdir()
    index = datasets.prepare("folder", root)
    assert index.counts()["by_split"] == {"test": {"real": 1}, "train": {"fake": 2, "real": 1},
                                          "val": {"real": 1}}
    assert by_id(index)["val/Real/r3.wav"].split == "val"
    msgs = messages(index)
    assert any("fake/ holds no audio files: split 'test'" in m for m in msgs)
    assert any("no fake/ folder" in m and "'val'" in m for m in msgs)
    assert len(msgs) == 2


def test_folder_follows_symlinked_files_and_generator_folders(tmp_path):
    """A dataset assembled from links reads as if copied: the generator is the link's name."""
    outside = tmp_path / "outside"
    tone(outside / "gen_x" / "o1.wav")
    tone(outside / "gen_x" / "deeper" / "o2.wav")
    tone(outside / "single.wav")
    tone(outside / "reals" / "r2.wav")
    root = tmp_path / "corpus"
    tone(root / "real" / "r.wav")
    (root / "real" / "more").symlink_to(outside / "reals", target_is_directory=True)
    (root / "fake").mkdir()
    (root / "fake" / "linked.wav").symlink_to(outside / "single.wav")
    (root / "fake" / "gen_x").symlink_to(outside / "gen_x", target_is_directory=True)
    index = datasets.prepare("folder", root)
    clips = by_id(index)
    assert set(clips) == {"real/r.wav", "real/more/r2.wav", "fake/linked.wav", "fake/gen_x/o1.wav",
                          "fake/gen_x/deeper/o2.wav"}
    assert clips["fake/gen_x/deeper/o2.wav"].generator == "gen_x"
    assert clips["fake/gen_x/o1.wav"].path == str(root / "fake" / "gen_x" / "o1.wav")
    counts = index.counts()
    assert (counts["real"], counts["fake"]) == (2, 3)
    assert counts["fake_by_generator"] == {"(unknown)": 1, "gen_x": 2}
    assert index.problems == []


def test_folder_symlinked_top_level_class_folder(tmp_path):
    tone(tmp_path / "elsewhere" / "a.wav")
    root = tmp_path / "corpus"
    tone(root / "fake" / "g" / "f.wav")
    (root / "real").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    index = datasets.prepare("folder", root)
    assert set(by_id(index)) == {"real/a.wav", "fake/g/f.wav"} and index.problems == []


def test_folder_symlink_loop_and_same_folder_twice_end(tmp_path):
    """A link back to a folder above it is a loop: reported, not followed, and the walk ends.
    A second link to a folder already indexed indexes nothing twice."""
    root = tmp_path / "corpus"
    tone(root / "real" / "r.wav")
    tone(root / "fake" / "g" / "sub" / "f.wav")
    (root / "fake" / "g" / "sub" / "back").symlink_to(root / "fake" / "g", target_is_directory=True)
    (root / "fake" / "z_again").symlink_to(root / "fake" / "g" / "sub", target_is_directory=True)
    index = datasets.prepare("folder", root)
    assert set(by_id(index)) == {"real/r.wav", "fake/g/sub/f.wav"}
    msgs = messages(index)
    assert any("symlink loop: fake/g/sub/back leads back to" in m for m in msgs), msgs
    assert any("fake/z_again is the same folder as fake/g/sub" in m for m in msgs), msgs
    assert len(msgs) == 2


def test_folder_loop_to_the_root_itself(tmp_path):
    root = tmp_path / "corpus"
    tone(root / "real" / "r.wav")
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    (root / "fake").mkdir()
    (root / "fake" / "self").symlink_to(root / "fake", target_is_directory=True)
    index = datasets.prepare("folder", root)
    # real/loop -> the root: entered once; inside it real/ is a loop and fake/ is the other class's
    # folder (never relabelled); fake/self is a loop. The walk ends, nothing is indexed twice.
    assert [c.clip_id for c in index.clips] == ["real/r.wav"]
    msgs = messages(index)
    assert any("symlink loop: real/loop/real leads back" in m for m in msgs), msgs
    assert any("real/loop/fake leads to the class folder fake" in m for m in msgs), msgs
    assert any("symlink loop: fake/self" in m for m in msgs), msgs
    assert any("fake/ holds no audio files" in m for m in msgs), msgs
    assert len(msgs) == 4, msgs


# --------------------------------------------------------------------------- manifest

def test_manifest_aliases_relative_absolute_and_parent_paths(tmp_path):
    """A manifest is the user's own: absolute paths as written, relative ones (`..` included)
    from the manifest's folder."""
    base = tmp_path / "data"
    tone(base / "clips" / "a.wav")
    tone(base / "clips" / "b.flac")
    tone(base / "c.wav")
    tone(tmp_path / "secret.wav")
    (base / "manifest.csv").write_text(
        "\ufeffPath;LABEL;Split;Attack;Speaker;Language\n"
        "clips/a.wav;bonafide;train;;spk1;en\n"
        "./clips/b.flac;spoof;train;A07;spk1;en\n"
        "../secret.wav;spoof;test;A08;spk2;de\n"
        f"{base / 'c.wav'};1;;tts-x;spk3;fr\n"
        "clips/nothere.wav;0;test;;spk4;en\n"
        "clips/a.wav;maybe;test;;spk5;en\n"
        "clips/a.wav;0;test;;spk5\n")
    index = datasets.prepare("manifest", base)
    clips = by_id(index)
    secret = str(tmp_path.absolute() / "secret.wav")
    assert set(clips) == {"clips/a.wav", "clips/b.flac", secret, "c.wav", "clips/nothere.wav"}
    assert (clips[secret].path, clips[secret].generator, clips[secret].split) == (secret, "A08", "test")
    b = clips["clips/b.flac"]
    assert (b.label, b.split, b.generator, b.speaker, b.language) == (1, "train", "A07", "spk1", "en")
    assert b.path == str(base.absolute() / "clips" / "b.flac")
    assert (clips["c.wav"].split, clips["c.wav"].generator) == ("all", "tts-x")
    msgs = messages(index)
    assert any("nothere.wav listed in manifest.csv line 6 but missing" in m for m in msgs)
    assert any(":7 |" in m and "'maybe'" in m for m in msgs)
    assert any(":8 |" in m and "5 columns, expected 6" in m for m in msgs)
    assert len(msgs) == 3
    assert index.counts()["by_split"] == {"all": {"fake": 1}, "test": {"fake": 1, "real": 1},
                                          "train": {"fake": 1, "real": 1}}


def test_manifest_csv_file_tabs_clip_id_and_duplicates(tmp_path):
    tone(tmp_path / "x.wav")
    tone(tmp_path / "y.wav")
    csv_file = tmp_path / "list.tsv"
    csv_file.write_text("clip_id\tpath\tlabel\tsystem\n"
                        "one\tx.wav\tfake\tvits\n"
                        "one\ty.wav\treal\t\n")
    index = datasets.prepare("manifest", csv_file)
    assert [(c.clip_id, c.generator, c.label) for c in index.clips] == [("one", "vits", 1)]
    assert index.root == str(csv_file.absolute())
    assert "duplicate clip id 'one'" in index.problems[0].message


def test_manifest_absolute_paths_elsewhere_as_kaldi_and_lhotse_write_them(tmp_path):
    audio = tmp_path / "corpora" / "audio"
    tone(audio / "a.wav")
    tone(audio / "b.wav")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "manifest.csv").write_text(f"path,label\n{audio / 'a.wav'},real\n../corpora/audio/b.wav,fake\n"
                                        f"{audio / 'gone.wav'},fake\n,real\n")
    index = datasets.prepare("manifest", lists)
    assert [c.path for c in index.clips] == [str(audio / "a.wav"), str(audio / "b.wav"), str(audio / "gone.wav")]
    assert [c.clip_id for c in index.clips] == [str(audio / "a.wav"), str(audio / "b.wav"), str(audio / "gone.wav")]
    msgs = messages(index)
    assert any("gone.wav listed in manifest.csv line 4 but missing" in m for m in msgs)
    assert any(":5 |" in m and "empty path" in m for m in msgs)
    assert len(msgs) == 2


def test_manifest_wrong_roots(tmp_path):
    with pytest.raises(DatasetLayoutError, match="manifest.csv"):
        datasets.prepare("manifest", tmp_path)
    (tmp_path / "manifest.csv").write_text("path,kind\na.wav,real\n")
    with pytest.raises(DatasetLayoutError, match=r"'label'.*columns found: \['path', 'kind'\]"):
        datasets.prepare("manifest", tmp_path)
