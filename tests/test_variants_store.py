"""Variants through the featurize pass: RawBoost, random codecs and vocoded fakes, as stores."""

import numpy as np
import pytest
from conftest import one_line
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.variants import Variant
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
])
def test_bad_variant_options_are_one_line_errors(corpus, tmp_path, args, fragments):
    result = CliRunner().invoke(app, ["featurize", "--dataset", "folder", "--root", str(corpus), "--out",
                                      str(tmp_path / "s.zarr"), "--features", "mel", "--workers", "0", *args])
    one_line(result, *fragments)
    assert not (tmp_path / "s.zarr").exists()
