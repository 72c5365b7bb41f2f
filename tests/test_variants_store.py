"""Variants through the featurize pass: RawBoost, random codecs and vocoded fakes, as stores."""

import numpy as np
import pytest
from conftest import one_line
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.variants import Variant, codec_label
from dfdetect.store import open_store


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusSpec(real=4, per_generator=1, min_seconds=1.0, max_seconds=2.5))
    return root


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clean") / "s.zarr")
    featurize("folder", corpus, out, features=("mel", "wave"), workers=0, block_size=8)
    return open_store(out)


def _twice(corpus, tmp_path, variant):
    """The store `variant` makes, featurized twice into two stores."""
    stores = []
    for name in ("a", "b"):
        result = featurize("folder", corpus, str(tmp_path / f"{name}.zarr"), features=("mel", "wave"), workers=0,
                           block_size=8, variant=variant)
        assert result.complete and not result.errors
        stores.append(open_store(result.store))
    return stores


def _assert_same_and_not_clean(a, b, clean):
    assert a.version == b.version != clean.version
    rows = clean.rows()
    for name in ("mel", "wave"):
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])
        assert not np.allclose(a.array(name)[:][rows].astype(np.float32), clean.array(name)[:][rows].astype(np.float32),
                               atol=1e-3), name


def test_rawboost_stores_are_the_same_on_every_run_and_differ_from_clean(corpus, clean, tmp_path):
    a, b = _twice(corpus, tmp_path, Variant.parse(None, "rawboost:1+2+3", seed=2))
    _assert_same_and_not_clean(a, b, clean)
    assert a.config["variant"]["corruptions"] == ["rawboost:1+2+3"] and "rawboost" in a.config["variant"]


@pytest.mark.parametrize("args,fragments", [
    (["--corrupt", "rawboost:4"], ["--corrupt rawboost:4", "unknown RawBoost algorithm '4'"]),
    (["--vocode", "hifigan"], ["--vocode hifigan: unknown vocoder", "world, griffinlim"]),
    (["--vocode-keep-real"], ["--vocode-keep-real", "needs --vocode"]),
])
def test_bad_variant_options_are_one_line_errors(corpus, tmp_path, args, fragments):
    result = CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out",
                                      str(tmp_path / "s.zarr"), "--features", "mel", "--workers", "0", *args])
    one_line(result, *fragments)
    assert not (tmp_path / "s.zarr").exists()


def test_random_codec_stores_are_the_same_on_every_run_and_record_each_clips_codec(corpus, clean, tmp_path):
    variant = Variant.parse("random", seed=3)
    a, b = _twice(corpus, tmp_path, variant)
    _assert_same_and_not_clean(a, b, clean)
    recorded = a.meta["variant_codec"]
    expected = [codec_label(variant, clip_id) for clip_id in a.meta["clip_id"]]
    assert list(recorded) == expected and len(set(recorded)) > 1
    assert {r.split(":")[0] for r in recorded} <= {"mp3", "aac", "opus", "vorbis"}
    assert set(clean.meta["variant_codec"]) == {""}


@pytest.fixture(scope="module")
def manifest(corpus):
    """The corpus as a manifest with a speaker per clip (the folder adapter has none)."""
    lines = ["path,label,split,speaker,generator"]
    for i, path in enumerate(sorted(corpus.rglob("*.wav"))):
        label = "real" if path.parent.name == "real" else "fake"
        lines.append(f"{path},{label},{path.relative_to(corpus).parts[0]},spk{i % 3},"
                     f"{'' if label == 'real' else path.parent.name}")
    (corpus / "manifest.csv").write_text("\n".join(lines) + "\n")
    return corpus / "manifest.csv"


@pytest.mark.parametrize("keep_real", [False, True])
def test_a_vocoded_store_holds_a_fake_for_every_real_clip(manifest, tmp_path, keep_real):
    from dfdetect.datasets import prepare

    source = prepare("manifest", manifest)
    reals = [c for c in source.clips if c.label == 0]
    clean = featurize("manifest", manifest, str(tmp_path / "clean.zarr"), features=("mel",), workers=0, block_size=8)
    clean = open_store(clean.store)
    result = featurize("manifest", manifest, str(tmp_path / "v.zarr"), features=("mel",), workers=0, block_size=8,
                       variant=Variant.parse(vocode="world", keep_real=keep_real))
    assert result.complete and not result.errors
    store = open_store(result.store)
    meta = store.meta
    fakes = np.flatnonzero(meta["generator"] == "vocoded:world")
    assert len(fakes) == len(reals) and len(meta["clip_id"]) == len(reals) * (2 if keep_real else 1)
    assert len(set(meta["clip_id"])) == len(meta["clip_id"])
    for real, row in zip(reals, fakes):
        assert meta["clip_id"][row] == f"{real.clip_id}~vocoded:world"        # traceable to its source
        assert (meta["label"][row], meta["speaker"][row], meta["split"][row], meta["path"][row]) == \
            (1, real.speaker, real.split, real.path)
        assert meta["size"][row] == 0 and meta["mtime_ns"][row] == 0        # not its file's features
    clean_rows = {c: r for r, c in enumerate(clean.meta["clip_id"])}
    mel, clean_mel = store.array("mel")[:], clean.array("mel")[:]
    for row in fakes:   # a vocoded clip is not its source
        source_row = clean_rows[meta["clip_id"][row].split("~")[0]]
        assert not np.allclose(mel[row].astype(np.float32), clean_mel[source_row].astype(np.float32), atol=0.05)
    kept = np.flatnonzero(meta["label"] == 0)
    assert len(kept) == (len(reals) if keep_real else 0)
    for row in kept:    # kept reals are featurized exactly as in the clean store
        np.testing.assert_array_equal(mel[row], clean_mel[clean_rows[meta["clip_id"][row]]])
    assert store.config["variant"]["vocoder"]["name"] == "world"
    again = featurize("manifest", manifest, str(tmp_path / "again.zarr"), features=("mel",), workers=0, block_size=8,
                      variant=Variant.parse(vocode="world", keep_real=keep_real))
    np.testing.assert_array_equal(open_store(again.store).array("mel")[:], mel)
