"""The end-to-end demo. Each stage of dfdetect adds its step here, so that `dfdetect demo` always
shows the whole system on a corpus generated in code (no downloads, deterministic)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dfdetect.demo.corpus import GENERATORS, HELD_OUT_GENERATOR, CorpusSpec, write_corpus
from dfdetect.featurize.audio import AudioError
from dfdetect.featurize.datasets import prepare
from dfdetect.featurize.frontend import Frontend


def run_demo(out: Path, spec: CorpusSpec = CorpusSpec(), console: Console | None = None) -> dict:
    """Run every stage on the demo corpus under `out`; returns a summary (used by the tests)."""
    console = console or Console()
    out = Path(out)
    corpus = out / "corpus"
    summary: dict = {}

    console.rule("[bold]1. a generated corpus")
    t0 = time.perf_counter()
    files = write_corpus(corpus, spec)
    # Two broken files, as every real download has: they must be reported, and cost nothing else.
    (corpus / "real" / "truncated_download.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (corpus / "fake" / GENERATORS[0] / "empty.flac").write_bytes(b"")
    console.print(
        f"wrote {len(files)} clips ({spec.real} real, {spec.per_generator} for each fake family "
        f"{', '.join(GENERATORS)}) + 2 broken files to {corpus} in {time.perf_counter() - t0:.1f} s; "
        f"'{HELD_OUT_GENERATOR}' is the family later stages hold out as unseen"
    )

    console.rule("[bold]2. index it like a download (dfdetect datasets show folder)")
    index = prepare("folder", corpus)
    counts = index.counts()
    console.print(f"{counts['clips']} clips, by split {counts['by_split']}, "
                  f"fakes by generator {counts['fake_by_generator']}")
    summary["index"] = counts

    console.rule("[bold]3. decode + the seed's frontend (16 kHz mono, 3 s, peak norm, mel, LFCC)")
    frontend = Frontend()
    t0 = time.perf_counter()
    waves, families, errors = [], [], []
    formats: Counter = Counter()
    for clip in index.clips:
        try:
            waves.append(frontend.load(clip.path))
            families.append(clip.generator or "real")
            formats[Path(clip.path).suffix.lower()] += 1
        except AudioError as e:
            errors.append(e)
    features = frontend.features(np.stack(waves))
    seconds = time.perf_counter() - t0
    console.print(
        f"{len(waves)} clips in {seconds:.1f} s ({len(waves) / seconds:.0f} clips/s) from "
        f"{dict(formats)}: mel {features['mel'].shape[1:]}, lfcc {features['lfcc'].shape[1:]} per clip"
    )
    for e in errors:
        console.print(f"  [yellow]skipped[/] {escape(f'{e.where}: [{e.kind}] {e.reason}')}", soft_wrap=True)
    summary["frontend"] = {"clips": len(waves), "errors": {e.where: e.kind for e in errors},
                           "mel_shape": list(features["mel"].shape[1:]),
                           "lfcc_shape": list(features["lfcc"].shape[1:])}

    # What the families look like to the frontend: the artifacts are there to be learned.
    bands = {"<1 kHz": slice(0, 30), "1-4 kHz": slice(30, 80), ">4 kHz": slice(80, 128)}
    table = Table(title="mean normalised log-mel per band (what a detector gets to see)")
    table.add_column("family")
    for name in (*bands, "delta std"):
        table.add_column(name, justify="right")
    mel = features["mel"]
    by_family = defaultdict(list)
    for i, fam in enumerate(families):
        by_family[fam].append(i)
    for fam, idx in sorted(by_family.items()):
        m = mel[idx]
        table.add_row(fam, *[f"{m[:, 0, b].mean():+.2f}" for b in bands.values()],
                      f"{m[:, 1].std():.3f}")
    console.print(table)
    console.print("[dim]Later stages (featurize to Zarr, train, evaluate, score) extend this demo "
                  "as they land.[/]")
    return summary
