"""Training from the cache with augmentation per epoch (--augment), several corpora (--train A
--train B) and weighted sampling (--balance): exact resume, seeded draws, recorded shares."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dfdetect.cli import app
from dfdetect.demo.corpus import CorpusSpec, write_corpus
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.variants import Variant
from dfdetect.store import FeatureStore, open_store
from dfdetect.train.data import DataSet, FeatureLoader, open_set
from dfdetect.train.mixing import Augmentation, Balance, CorpusStack, balance_weights
from dfdetect.train.mixing import Variant as AugmentVariant
from dfdetect.train.trainer import TrainConfig, TrainError, train


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A corpus featurized clean and as two variants (two versions beside the clean one), and a
    second, smaller corpus in its own store."""
    base = tmp_path_factory.mktemp("augment")
    write_corpus(base / "a", CorpusSpec(real=16, per_generator=5, min_seconds=1, max_seconds=2))
    write_corpus(base / "b", CorpusSpec(real=8, per_generator=3, min_seconds=1, max_seconds=2, seed=1))
    a, b = str(base / "a.zarr"), str(base / "b.zarr")
    clean = featurize("folder", base / "a", a, features=("mel",), workers=0, block_size=16).version
    noise = featurize("folder", base / "a", a, features=("mel",), workers=0, block_size=16,
                      variant=Variant.parse(corrupt="noise")).version
    clip = featurize("folder", base / "a", a, features=("mel",), workers=0, block_size=16,
                     variant=Variant.parse(corrupt="clip,bandlimit")).version
    featurize("folder", base / "b", b, features=("mel",), workers=0, block_size=16)
    return {"a": a, "b": b, "clean": f"{a}@{clean}", "noise": f"{a}@{noise}", "clip": f"{a}@{clip}"}


def _config(stores, **kw):
    fields = dict(arch="mel_cnn", train=f"{stores['clean']}:train", test=f"{stores['clean']}:test",
                  batch_size=8, lr=1e-3, epochs=2, augment=(stores["noise"], stores["clip"]))
    return TrainConfig(**{**fields, **kw})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_timings(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize("budget_gb,unit", [(4.0, "clip"), (0.0, "clip"), (0.0, "chunk")],
                         ids=["in-memory", "streaming", "streaming-per-chunk"])
def test_augmented_resume_equals_an_uninterrupted_run(stores, tmp_path, budget_gb, unit):
    """1 + 1 epochs with --augment, resumed, equal 2 epochs: loss, metrics and draws per epoch."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_config(stores, memory_budget_gb=budget_gb, augment_unit=unit), straight)
    train(_config(stores, epochs=1, memory_budget_gb=budget_gb, augment_unit=unit), resumed)
    train(_config(stores, memory_budget_gb=budget_gb, augment_unit=unit), resumed, resume=True)
    a, b = _without_timings(_records(straight)), _without_timings(_records(resumed))
    assert a == b
    draws = [r["train"]["draws"] for r in a]
    for d, r in zip(draws, a):
        assert set(d) == {"clean", stores["noise"], stores["clip"]} and sum(d.values()) == r["train"]["clips"]
        assert d["clean"] < r["train"]["clips"] and min(d.values()) > 0
    assert draws[0] != draws[1] or a[0]["train"]["loss"] != a[1]["train"]["loss"]
    mixing = json.loads((straight / "config.json").read_text())["mixing"]
    assert [v["spec"] for v in mixing["augment"]] == [stores["noise"], stores["clip"]] and mixing["augment_p"] == 0.5
    info = json.loads((straight / "run.json").read_text())
    assert info["loaders"]["train"] == ("in memory" if budget_gb else "streaming")


def test_draws_are_per_clip_seeded_and_differ_between_epochs(stores):
    data = open_set(f"{stores['clean']}:train", "train")
    variants = [AugmentVariant(stores["noise"], None, 0, np.ones(data.store.n_clips, bool))]
    aug = Augmentation(variants, 0.5, seed=3)
    e1, e2 = aug.sources(1, data.rows), aug.sources(2, data.rows)
    assert not np.array_equal(e1, e2)                        # a new draw each epoch
    np.testing.assert_array_equal(e1, aug.sources(1, data.rows))
    # a clip's draw depends on (seed, epoch, clip) only: not on the other rows asked with it
    np.testing.assert_array_equal(aug.sources(1, data.rows[::-1])[::-1], e1)
    np.testing.assert_array_equal(aug.sources(1, data.rows[:3]), e1[:3])
    wide = [AugmentVariant("v", None, 0, np.ones(20000, bool))]
    many = Augmentation(wide, 0.3, seed=0).sources(1, np.arange(20000))
    assert abs(many.mean() - 0.3) < 0.02                     # the probability asked for


@pytest.mark.parametrize("block", [1, 16], ids=["per-clip", "per-chunk"])
@pytest.mark.parametrize("budget_gb", [4.0, 0.0], ids=["in-memory", "streaming"])
def test_loader_reads_each_row_from_the_version_drawn(stores, budget_gb, block, monkeypatch):
    data = open_set(f"{stores['clean']}:train", "train")
    noisy = open_set(f"{stores['noise']}:train", "noise")
    aug = Augmentation([AugmentVariant(stores["noise"], noisy.store, 0, noisy.store.meta["status"] == "ok")], 0.5, 5,
                       block)
    loader = FeatureLoader(data, ("mel",), 8, shuffle=True, seed=1, memory_budget=int(budget_gb * (1 << 30)),
                           buffer_units=1, augmentation=aug)
    clean_mel, noisy_mel = data.store.read_rows(["mel"], np.arange(data.store.n_clips))["mel"], \
        noisy.store.read_rows(["mel"], np.arange(data.store.n_clips))["mel"]
    assert not np.array_equal(clean_mel[data.rows], noisy_mel[data.rows])
    reads = []
    read_chunk = FeatureStore._read_chunk

    def recorded(self, name, start, out):
        reads.append((self.version, start))
        return read_chunk(self, name, start, out)
    monkeypatch.setattr(FeatureStore, "_read_chunk", recorded)
    rows = []
    for batch in loader.epoch(4):
        src = aug.sources(4, batch["row"])
        expected = np.where(src[:, None, None, None] == 1, noisy_mel[batch["row"]], clean_mel[batch["row"]])
        np.testing.assert_array_equal(batch["mel"].numpy(), expected)
        rows.append(batch["row"])
    assert sorted(np.concatenate(rows)) == sorted(data.rows)
    assert loader.counts["draws"]["clean"] + loader.counts["draws"][stores["noise"]] == len(data.rows)
    if block > 1:    # the clips of a chunk share their draw
        drawn = aug.sources(4, data.rows)
        assert all(len(set(drawn[data.rows // 16 == c])) == 1 for c in np.unique(data.rows // 16))
    if budget_gb == 0:   # streaming: each chunk read once from each version it has drawn rows of
        chunks = {start for _, start in reads}
        assert len(reads) == len(set(reads))
        assert (len(reads) == len(chunks)) == (block > 1)   # per chunk: one version each; per clip: both


def test_p_zero_equals_clean_training(stores, tmp_path):
    train(_config(stores, augment=(), epochs=2), tmp_path / "clean")
    train(_config(stores, augment_p=0.0, epochs=2), tmp_path / "p0")
    clean, p0 = _without_timings(_records(tmp_path / "clean")), _without_timings(_records(tmp_path / "p0"))
    for r in p0:
        draws = r["train"].pop("draws")
        assert draws["clean"] == r["train"]["clips"] and draws[stores["noise"]] == draws[stores["clip"]] == 0
    assert clean == p0


def test_an_augmentation_must_be_a_variant_of_the_train_store(stores, tmp_path):
    with pytest.raises(TrainError, match="clip table is not the train store's"):
        train(_config(stores, augment=(stores["b"],)), tmp_path / "run")
    with pytest.raises(TrainError, match="train store's own version"):
        train(_config(stores, augment=(stores["clean"],)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_two_training_corpora_balanced_by_generator_record_their_shares(stores, tmp_path):
    run = tmp_path / "two"
    config = _config(stores, train=(f"{stores['clean']}:train", f"{stores['b']}:train"), augment=(stores["noise"],),
                     balance="generator")
    train(config, run)
    saved = json.loads((run / "config.json").read_text())
    mixing = saved["mixing"]
    assert [c["spec"] for c in mixing["corpora"]] == list(config.train) and mixing["balance"] == "generator"
    # the shares are what the weights say: recomputed here from the run's training rows (every
    # train-split row of both stores, in the stack's numbering, but validation's)
    stack = CorpusStack([open_store(stores["clean"]), open_store(stores["b"])])
    with open(run / "scores" / "last" / "val.csv", newline="") as f:
        val = {int(row["store_row"]) for row in csv.DictReader(f)}
    assert len(val) == saved["sets"]["val"]["rows"]
    assert len(set(stack.corpus_of(sorted(val)))) == 2        # validation split per corpus
    rows = np.array([r for r in stack.rows("train") if r not in val])
    assert [c["rows"] for c in mixing["corpora"]] == np.bincount(stack.corpus_of(rows)).tolist()
    corpus = stack.corpus_of(rows)
    weights = balance_weights("generator", stack.meta["label"][rows], stack.meta["generator"][rows], corpus)
    want = [float(weights[corpus == i].sum()) for i in (0, 1)]
    np.testing.assert_allclose([c["share"] for c in mixing["corpora"]], want, rtol=1e-9)
    assert want[1] != pytest.approx(mixing["corpora"][1]["rows"] / len(rows))   # not the rows' share
    for r in _records(run):
        drawn = r["train"]["corpora"]
        assert sum(drawn) == r["train"]["clips"] and all(n > 0 for n in drawn)
        assert sum(r["train"]["draws"].values()) == r["train"]["clips"]
        assert r["train"]["draws"][stores["noise"]] <= drawn[0]   # the variant holds only corpus A's clips


def test_balance_draws_follow_the_weights(stores):
    data = open_set(f"{stores['clean']}:train", "train")
    labels = data.labels
    weights = balance_weights("label", labels, data.store.meta["generator"][data.rows], np.zeros(len(labels)))
    assert weights[labels == 1].sum() == pytest.approx(0.5) and weights[labels == 0].sum() == pytest.approx(0.5)
    balance = Balance(data.rows, weights, seed=0)
    drawn = np.concatenate([balance.epoch_rows(e) for e in range(1, 201)])
    fake = data.store.meta["label"][drawn] == 1
    assert abs(fake.mean() - 0.5) < 0.02 and (labels == 1).mean() > 0.53   # balanced, from an unbalanced set
    np.testing.assert_array_equal(balance.epoch_rows(3), Balance(data.rows, weights, seed=0).epoch_rows(3))
    loader = FeatureLoader(data, ("mel",), 8, shuffle=True, seed=0, memory_budget=0, buffer_units=1, balance=balance)
    memory = FeatureLoader(data, ("mel",), 8, shuffle=True, seed=0, balance=balance)
    for each in (loader, memory):
        rows = np.concatenate([b["row"] for b in each.epoch(3)])
        np.testing.assert_array_equal(np.sort(rows), balance.epoch_rows(3))


def test_train_command_takes_several_train_sets_augment_and_balance(stores, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "--arch", "mel_cnn", "--train", f"{stores['clean']}:train",
                                      "--train", f"{stores['b']}:train", "--augment", stores["noise"],
                                      "--augment-p", "0.25", "--balance", "corpus", "--epochs", "1",
                                      "--batch-size", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["train"] == [f"{stores['clean']}:train", f"{stores['b']}:train"]
    assert saved["mixing"]["augment_p"] == 0.25
    assert [c["share"] for c in saved["mixing"]["corpora"]] == pytest.approx([0.5, 0.5])
    bad = CliRunner().invoke(app, ["train", "--arch", "mel_cnn", "--train", stores["clean"], "--balance", "speaker",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--balance 'speaker'" in bad.output


@pytest.mark.parametrize("budget", [4 << 30, 0], ids=["in-memory", "streaming"])
def test_a_stack_of_corpora_reads_each_row_from_its_store_and_the_variant_of_its_corpus(stores, budget):
    """Two corpora as one numbering, corpus A's noise variant read in it, balanced draws: every row
    delivered holds the values of its own store (or of the variant drawn for it)."""
    clean, other, noisy = open_store(stores["clean"]), open_store(stores["b"]), open_store(stores["noise"])
    stack = CorpusStack([clean, other])
    assert stack.offsets[1] % 16 == 0 and stack.offsets[1] >= clean.n_clips
    rows = stack.rows("train")
    data = DataSet("train", "a + b", stack, rows)
    offset = int(stack.offsets[1])
    aug = Augmentation([AugmentVariant("noise", noisy, 0, noisy.meta["status"] == "ok")], 0.5, 2)
    weights = balance_weights("corpus", data.labels, stack.meta["generator"][rows], stack.corpus_of(rows))
    loader = FeatureLoader(data, ("mel",), 8, shuffle=True, seed=0, memory_budget=budget, buffer_units=1,
                           augmentation=aug, balance=Balance(rows, weights, 0))
    mels = [s.read_rows(["mel"], np.arange(s.n_clips))["mel"] for s in (clean, other, noisy)]
    seen = []
    for batch in loader.epoch(1):
        src = aug.sources(1, batch["row"])
        for row, value, s in zip(batch["row"], batch["mel"].numpy(), src):
            want = mels[1][row - offset] if row >= offset else mels[2 if s else 0][row]
            np.testing.assert_array_equal(value, want)
            assert s == 0 or row < offset        # the variant holds corpus A's clips only
        seen.append(batch["row"])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), loader.balance.epoch_rows(1))
    assert loader.counts["corpora"] == np.bincount(stack.corpus_of(np.concatenate(seen))).tolist()
