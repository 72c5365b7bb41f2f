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
