"""The end-to-end demo. Each stage of dfdetect adds its step here, so that `dfdetect demo` always
shows the whole system on a corpus generated in code (no downloads, deterministic)."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dfdetect.datasets import prepare
from dfdetect.demo.corpus import GENERATORS, HELD_OUT_GENERATOR, CorpusSpec, write_corpus
from dfdetect.demo.random_wavlm import save_random_wavlm
from dfdetect.evaluate.evaluation import evaluate_run, print_evaluation
from dfdetect.featurize.pipeline import featurize
from dfdetect.featurize.wavlm import WavLMConfig
from dfdetect.models.runs import EpochRecord, RunFolder
from dfdetect.score.scoring import ScoreOptions, score
from dfdetect.store import open_store
from dfdetect.studies.experiment import load_experiment, run_experiment

# The demo's corpus: the default clips plus a validation split of their own (24 real, 8 per seen
# generator). With 5% of train (9 clips) the best epoch and the threshold were noise.
DEMO_CORPUS = CorpusSpec(val_real=24, val_per_generator=8)
EPOCHS, BATCH_SIZE, LR = 6, 16, 1e-3
RUNS = (("mel_aasist", "mel_aasist", "demo"), ("mel_cnn", "mel_cnn", "demo"),
        ("mel_aasist_corrupt", "mel_aasist", "demo_corrupt"), ("mel_cnn_corrupt", "mel_cnn", "demo_corrupt"))
# What .ci/run reads from the demo's output (.ci/check-demo parses it with the same pattern).
BEST_LINE = ("best head: {run} test EER {test_eer:.1%}, accuracy {test_accuracy:.1%} at its threshold; "
             "unseen family EER {ood_eer:.1%} (epoch {epoch} of {epochs}, chosen on validation; threshold "
             "{threshold:.4f})")

# The demo's study (experiments/ holds the reference study's): the featurized demo store is reused as is (same
# config, same version), the corrupted variant is featurized once, four runs share them.
STUDY = """
[experiment]
name = "demo-matrix"
stores_dir = "stores"
runs_dir = "runs"

[report]
out = "../report.html"
ood = "unseen"

[datasets.demo]
dataset = "folder"
root = {corpus}

[stores.demo]
data = "demo"
features = ["mel", "lfcc", "wavlm"]
wavlm = {wavlm}
wavlm_layers = [1, 2]
block_size = 32

[stores.demo_corrupt]
data = "demo"
features = ["mel"]
corrupt = "default"
block_size = 32
""" + "".join(f"""
[runs.{name}]
arch = "{arch}"
train = "{store}:train"
val = "{store}:val"
test = "{store}:test"
ood = ["unseen=demo:ood"]
epochs = {EPOCHS}
batch_size = {BATCH_SIZE}
lr = {LR}
""" for name, arch, store in RUNS)


def run_demo(out: Path, spec: CorpusSpec = DEMO_CORPUS, console: Console | None = None,
             workers: int = 2) -> dict:
    """Run every stage on the demo corpus under `out`; returns a summary (used by the tests)."""
    if not (spec.val_real and spec.val_per_generator):
        raise ValueError("the demo's runs validate on the corpus' own val split: give the spec val_real and "
                         "val_per_generator")
    console = console or Console()
    out = Path(out).absolute()   # the study file names the corpus; it reads paths from its own folder
    corpus = out / "corpus"
    summary: dict = {}
    generate(corpus, spec, console)
    summary["index"] = index(corpus, console)
    store_path, model_dir, summary["featurize"] = featurize_corpus(out, corpus, workers, console)
    show_families(open_store(store_path), console)
    run_dir, report, summary["study"], summary["best"] = study(out, corpus, model_dir, workers, console)
    summary["report"] = evaluate_and_report(run_dir, store_path, report, console)
    summary["score"] = score_archive(out, corpus, run_dir, workers, console)
    return summary


def generate(corpus: Path, spec: CorpusSpec, console: Console) -> None:
    console.rule("[bold]1. a generated corpus")
    t0 = time.perf_counter()
    files = write_corpus(corpus, spec)
    # Two broken files, as every real download has: they must be reported, and cost nothing else.
    (corpus / "train" / "real" / "truncated_download.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (corpus / "train" / "fake" / GENERATORS[0] / "empty.flac").write_bytes(b"")
    console.print(
        f"wrote {len(files)} clips ({spec.real} real, {spec.per_generator} for each fake family "
        f"{', '.join(GENERATORS)}; a val split of {spec.val_real} real and {spec.val_per_generator} for each "
        f"seen family) + 2 broken files to {corpus} in {time.perf_counter() - t0:.1f} s; "
        f"'{HELD_OUT_GENERATOR}' is the family later stages hold out as unseen"
    )


def index(corpus: Path, console: Console) -> dict:
    console.rule("[bold]2. index it like a download (dfdetect datasets show folder)")
    counts = prepare("folder", corpus).counts()
    console.print(f"{counts['clips']} clips ({counts['real']} real, {counts['fake']} fake), by split "
                  f"{counts['by_split']}, fakes by generator {counts['fake_by_generator']}")
    return counts


def featurize_corpus(out: Path, corpus: Path, workers: int, console: Console) -> tuple[str, Path, dict]:
    console.rule("[bold]3. featurize: decode once, the reference study's frontend + frozen WavLM, into Zarr (dask)")
    model_dir = save_random_wavlm(out / "tiny-random-wavlm", size="tiny")
    console.print("[dim]WavLM here is a tiny randomly initialised model (no downloads in the demo): it "
                  "shows the pipeline, not WavLM-Large's features. Use --wavlm microsoft/wavlm-large "
                  "on real data.[/]")
    store_path = str(out / "stores" / "demo.zarr")
    result = featurize("folder", corpus, store_path, features=("mel", "lfcc", "wavlm"),
                       wavlm=WavLMConfig(model=str(model_dir), layers=(1, 2)), workers=workers,
                       block_size=32, console=console)
    store = open_store(store_path)
    meta = store.meta
    console.print(f"{store_path}@{result.version}: {result.ok} of {result.n_clips} clips written in "
                  f"{result.seconds:.1f} s; arrays " + ", ".join(
                      f"{k} {list(store.array(k).shape[1:])}" for k in store.feature_names))
    for i in np.flatnonzero(meta["status"] == "error"):
        line = f"[{meta['error_kind'][i]}] {meta['error'][i]}"
        console.print(f"  [yellow]recorded as error[/] {escape(line)}", soft_wrap=True)
    return store_path, model_dir, {
        "clips": result.n_clips, "ok": result.ok, "errors": dict(result.errors),
        "arrays": {k: list(store.array(k).shape[1:]) for k in store.feature_names}, "complete": result.complete}


def show_families(store, console: Console) -> None:
    """What the families look like to the frontend: the artifacts are there to be learned."""
    bands = {"<1 kHz": slice(0, 30), "1-4 kHz": slice(30, 80), ">4 kHz": slice(80, 128)}
    table = Table(title="mean normalised log-mel per band (what a detector gets to see)")
    table.add_column("family")
    for name in (*bands, "delta std"):
        table.add_column(name, justify="right")
    meta, ok = store.meta, store.rows()
    mel = store.read_rows(["mel"], ok)["mel"].astype(np.float32)
    families = np.where(meta["label"][ok] == 1, meta["generator"][ok], "real")
    for fam in sorted(set(families)):
        m = mel[families == fam]
        table.add_row(fam, *[f"{m[:, 0, b].mean():+.2f}" for b in bands.values()],
                      f"{m[:, 1].std():.3f}")
    console.print(table)


def study(out: Path, corpus: Path, model_dir: Path, workers: int, console: Console):
    """The 2x2 study from one file; returns the best head's run folder, the report, each run's state
    and the best head's numbers in and out of distribution (`best_head`)."""
    console.rule("[bold]4. a small study from one file: Mel-CNN / Mel-AASIST x clean / corrupted training audio")
    console.print(f"[dim]Every run is measured every epoch on val, test and the unseen family. Demo settings for a "
                  f"corpus this small: batch {BATCH_SIZE}, lr {LR:g}, {EPOCHS} epochs (the reference study's "
                  "defaults, batch 128 / lr 5e-5 / 50 epochs, are for real corpora). Validation is the corpus' own "
                  "val split, not 5% of train (9 clips here): it chooses each run's best epoch and its decision "
                  "threshold (its EER threshold), so it must be big enough to mean something.[/]")
    path = out / "study.toml"
    path.write_text(STUDY.format(corpus=json.dumps(str(corpus)), wavlm=json.dumps(str(model_dir))))
    experiment = load_experiment(path)
    states, report = run_experiment(experiment, console, workers=workers)
    console.print(f"[dim]the study: {path}; rerun `dfdetect experiment run {path}` and it skips "
                  "everything that is done[/]")
    best = best_head({name: experiment.run_dirs[name] for name, _, _ in RUNS})
    run_dir = experiment.run_dirs[best["run"]]
    show_best_head(RunFolder(run_dir).records(), best, run_dir, console)
    return run_dir, report, {name: state["state"] for name, state in states.items()}, best


def best_head(run_dirs: dict[str, Path]) -> dict:
    """The run whose best epoch has the lowest validation EER (the study's order breaks ties: test
    and the unseen family play no part in the choice), with its numbers at that epoch."""
    heads = []
    for name, run_dir in run_dirs.items():
        records = RunFolder(run_dir).records()
        record = next(r for r in records if r.epoch == RunFolder.best_epoch(records))
        heads.append(head_numbers(name, record, len(records)))
    return min(heads, key=lambda head: head["val_eer"])   # min keeps the first of equals


def head_numbers(name: str, record: EpochRecord, epochs: int) -> dict:
    """One head at one epoch: test and the unseen family at the run's decision threshold."""
    return {"run": name, "epoch": record.epoch, "epochs": epochs, "val_eer": record.val_eer,
            "threshold": record.val_threshold, "test_eer": record.metric("test", "eer"),
            "test_accuracy": record.at_val("test")["accuracy"], "ood_eer": record.metric("ood:unseen", "eer"),
            "ood_accuracy": record.at_val("ood:unseen")["accuracy"]}


def show_best_head(records: list[EpochRecord], best: dict, run_dir: Path, console: Console) -> None:
    """Its best and last epochs in and out of distribution, then the line .ci/run checks."""
    last = records[-1]
    chosen = next(r for r in records if r.epoch == best["epoch"])
    table = Table(title=f"in distribution vs the unseen '{HELD_OUT_GENERATOR}' family ({run_dir})")
    for column in ("epoch", "set", "acc@0.5", "acc@threshold", "EER", "AUC", "recall", "specificity"):
        table.add_column(column, justify="right")
    for label, record in (("best val", chosen), ("last", last)):
        for name in ("test", "ood:unseen"):
            at_05, at_val = record.at_05(name), record.at_val(name)
            table.add_row(f"{record.epoch} ({label})", name, f"{at_05['accuracy']:.1%}", f"{at_val['accuracy']:.1%}",
                          f"{record.metric(name, 'eer'):.3f}", f"{record.metric(name, 'auc'):.3f}",
                          f"{at_val['recall']:.1%}", f"{at_val['specificity']:.1%}")
    console.print(table)
    console.print("[dim]recall and specificity at the threshold; the head is the run with the lowest validation "
                  "EER at its best epoch[/]")
    console.print(escape(BEST_LINE.format(**best)), soft_wrap=True, highlight=False)


def evaluate_and_report(run_dir: Path, store_path: str, report, console: Console) -> dict:
    console.rule("[bold]5. evaluate and report: the unseen family, ranking, curves, failure warnings")
    print_evaluation(evaluate_run(run_dir, f"{store_path}:ood"), console)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w.message)}", soft_wrap=True)
    console.print(f"report: open {report.html} (tables also in {report.markdown})")
    return {"html": str(report.html), "markdown": str(report.markdown),
            "warnings": [w.signature for w in report.warnings]}


def score_archive(out: Path, corpus: Path, run_dir: Path, workers: int, console: Console) -> dict:
    console.rule("[bold]6. bulk scoring: the corpus as a .tar.gz, read in place, every file accounted for")
    archive = out / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(corpus, arcname="corpus")          # the two broken files included
    for name in ("scores.csv", "windows.csv"):      # a rerun of the demo starts the table afresh
        (out / name).unlink(missing_ok=True)
    scored = score(run_dir, [str(archive)], out / "scores.csv", ScoreOptions(workers=workers),
                   windows_out=out / "windows.csv", console=console)
    for line in scored.lines():
        console.print(escape(line), soft_wrap=True, highlight=False)
    return {"rows": scored.rows, "scored": scored.scored, "failed": scored.failed,
            "skipped": scored.skipped, "errors": dict(scored.errors), "table": str(scored.out)}
