"""The `dfdetect` command line: thin, it only parses and calls.

Labels everywhere: 1 = fake (spoof), 0 = real (bona fide). Scores: probability of fake, higher =
more likely fake.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Audio deepfake detection for honest generalization experiments. "
    "Labels: 1 = fake (spoof), 0 = real (bona fide); scores are P(fake), higher = more likely fake.",
    no_args_is_help=True,
    add_completion=False,
)
datasets_app = typer.Typer(help="Dataset adapters: list them, validate a download.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("dfdetect-demo"), help="Folder for the generated corpus and outputs."),
):
    """Run every stage on a generated corpus: offline, deterministic, under 2 minutes on 2 cores."""
    from dfdetect.demo.run import run_demo

    run_demo(out, console=console)


@app.command()
def featurize(
    dataset: str = typer.Option(..., "--dataset", help="Adapter name (see `dfdetect datasets list`)."),
    root: Path = typer.Option(..., "--root", help="The dataset's folder (a CSV file for `manifest`)."),
    out: str = typer.Option(None, "--out", help="Store path (default: stores/DATASET.zarr)."),
    features: str = typer.Option("mel,lfcc,wavlm", help="Comma-separated subset of mel,lfcc,wavlm."),
    wavlm: str = typer.Option("microsoft/wavlm-large", "--wavlm", help="WavLM hub id or local directory."),
    wavlm_layers: str = typer.Option("6,12,24", help="Hidden states to store (0 = CNN output, 24 = last of Large)."),
    device: str = typer.Option("auto", help="auto|cpu|cuda for WavLM."),
    scheduler: str = typer.Option(None, help="tcp://HOST:PORT of an existing dask.distributed scheduler."),
    workers: int = typer.Option(None, help="Local worker processes (default: one per core; 0: in this process, no dask)."),
    block_size: int = typer.Option(128, help="Clips per block = rows per shard (the unit of writing)."),
):
    """Decode every clip once and write mel, LFCC and frozen WavLM features to a versioned Zarr store.

    Rerun the same command to resume an interrupted run. Exit code 0 when every clip was written,
    1 when some clips are errors (recorded in the store), 2 when the run could not finish."""
    from dfdetect.featurize.datasets import DatasetLayoutError
    from dfdetect.featurize.pipeline import featurize as run
    from dfdetect.store import StoreError

    wavlm_config = None
    if "wavlm" in features.split(","):
        from dfdetect.featurize.wavlm import WavLMConfig, WavLMUnavailableError

        wavlm_config = WavLMConfig(model=wavlm, layers=tuple(int(x) for x in wavlm_layers.split(",")))
    out = out or f"stores/{dataset}.zarr"
    try:
        result = run(dataset, root, out, features=tuple(f.strip() for f in features.split(",")),
                     wavlm=wavlm_config, device=device, scheduler=scheduler, workers=workers,
                     block_size=block_size, console=console)
    except (DatasetLayoutError, StoreError, ValueError) as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2)
    except Exception as e:
        if wavlm_config is not None and isinstance(e, WavLMUnavailableError):
            console.print(f"[red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(2)
        raise
    _print_featurize_summary(result)
    if result.failed_blocks or not result.complete:
        raise typer.Exit(2)
    raise typer.Exit(1 if result.errors else 0)


def _print_featurize_summary(result) -> None:
    console.print(
        f"{result.store}@{result.version}: {result.ok} of {result.n_clips} clips written, "
        f"{sum(result.errors.values())} errors; {result.blocks_run} blocks run, "
        f"{result.blocks_skipped} already done; {result.seconds:.1f} s"
        + ("" if result.complete else " [yellow](incomplete: rerun to finish)[/]"))
    if result.errors:
        table = Table("error kind", "clips", "example")
        for kind, n in result.errors.most_common():
            table.add_row(kind, str(n), result.error_examples[kind])
        console.print(table)
    for block, message in sorted(result.failed_blocks.items()):
        console.print(f"[red]block {block} failed:[/] {message}", soft_wrap=True)


@datasets_app.command("list")
def datasets_list():
    """Name the dataset adapters and what each expects."""
    from dfdetect.featurize.datasets import ADAPTERS

    table = Table("name", "what it reads")
    for name, module in ADAPTERS.items():
        table.add_row(name, module.DESCRIPTION)
    console.print(table)


@datasets_app.command("show")
def datasets_show(
    name: str = typer.Argument(..., help="Adapter name (see `dfdetect datasets list`)."),
    root: Path = typer.Option(..., "--root", help="The dataset's folder (a CSV file for `manifest`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    decode: int = typer.Option(0, "--decode", help="Also decode N random clips (-1: all) to find broken audio early."),
    max_problems: int = typer.Option(20, help="How many problems to list (all are counted)."),
):
    """Validate a download: counts per split, label and generator, and every problem found.

    Exit code 0 when clean, 1 when problems were found, 2 when the root has the wrong layout."""
    from dfdetect.featurize.audio import AudioError
    from dfdetect.featurize.datasets import DatasetLayoutError, Problem, get_adapter
    from dfdetect.featurize.frontend import Frontend

    try:
        index = get_adapter(name).prepare(root)
    except (DatasetLayoutError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2)
    if decode:
        clips = index.clips if decode < 0 else random.Random(0).sample(index.clips, min(decode, len(index.clips)))
        frontend = Frontend()
        for clip in clips:
            try:
                frontend.load(clip.path)
            except AudioError as e:
                index.problems.append(Problem(e.where, f"[{e.kind}] {e.reason}"))
    report = index.to_dict()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_index(report, max_problems)
    raise typer.Exit(1 if index.problems else 0)


def _print_index(report: dict, max_problems: int) -> None:
    counts = report["counts"]
    console.print(f"[bold]{report['dataset']}[/] at {report['root']}: {counts['clips']} clips")
    table = Table("split", "real (0)", "fake (1)", "total")
    for split, c in counts["by_split"].items():
        table.add_row(split, str(c.get("real", 0)), str(c.get("fake", 0)), str(sum(c.values())))
    console.print(table)
    if counts["fake_by_generator"]:
        gen = Table("generator / attack", "fake clips")
        for g, n in counts["fake_by_generator"].items():
            gen.add_row(g, str(n))
        console.print(gen)
    problems = report["problems"]
    if problems:
        console.print(f"[yellow]{len(problems)} problem(s):[/]")
        for p in problems[:max_problems]:
            console.print(f"  {p['where']}: {p['message']}", markup=False, highlight=False, soft_wrap=True)
        if len(problems) > max_problems:
            console.print(f"  ... and {len(problems) - max_problems} more (--json lists all)")
    else:
        console.print("[green]no problems found[/]")


if __name__ == "__main__":
    app()
