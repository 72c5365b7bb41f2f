"""The `dfdetect` command line: thin, it only parses and calls.

Labels everywhere: 1 = fake (spoof), 0 = real (bona fide). Scores: probability of fake, higher =
more likely fake.
"""

from __future__ import annotations

import inspect
import json
import random
import traceback
from pathlib import Path

import typer
from rich.console import Console, ConsoleDimensions
from rich.errors import MarkupError
from rich.markup import escape
from rich.rule import Rule
from rich.segment import Segment
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.featurize.config import BLOCK_SIZE, DEFAULT_FEATURES, WAVLM_LAYERS, WAVLM_MODEL, WAVLM_STORAGE
from dfdetect.names import terminal_text


class _Console(Console):
    """rich's Console, showing control characters in printed text as escapes (names.terminal_text),
    so a file or member name cannot move the cursor, recolour or erase what the terminal shows
    (CWE-150). rich's own styles and cursor control (progress bars) are untouched."""

    def render_str(self, text: str, **kwargs):
        """Markup where dfdetect wrote it; a name that reads as a stray tag ("[/x]") is shown as
        written instead of stopping the command."""
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})

    def _render_buffer(self, buffer) -> str:
        return super()._render_buffer(
            Segment(text if control else terminal_text(text), style, control) for text, style, control in buffer)

    # Without a terminal (a pipe, a file) rich would fit everything to 80 columns, or to $COLUMNS, or
    # to the terminal on stdin, and elide table cells ("mel_aa…", "2,103,…") that a script then reads.
    # There nothing is cut: tables print at their natural width, a line of text is one line. Only a
    # rule, which fills whatever width it is given, keeps the width rich would have used.
    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self._on_terminal() else ConsoleDimensions(UNBOUNDED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

    def rule(self, title: str = "", *, characters: str = "─", style: str = "rule.line", align="center") -> None:
        self.print(Rule(title, characters=characters, style=style, align=align), width=super().size.width)

    def _on_terminal(self) -> bool:
        """Whether the output really is a terminal (FORCE_COLOR may colour a pipe; it is still a pipe)."""
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:   # a closed file
            return False


UNBOUNDED_WIDTH = 100_000   # wider than any row dfdetect prints; rich needs a number


console = _Console(emoji=False)
errors = _Console(emoji=False, stderr=True)

# Exit codes every command shares: 0 done, 1 done with problems (listed), 2 a usage error dfdetect
# explains in one line, 3 a bug in dfdetect (traceback shown).
USAGE_ERROR, INTERNAL_ERROR = 2, 3
REPORT_BUG = ("This is a bug in dfdetect, not in your input: please report it with the command you ran "
              "and the traceback above.")


def _print_error(message: str) -> None:
    """One error as text: messages hold [brackets] and file names that are not markup."""
    errors.print("[red]error:[/] " + escape(message), soft_wrap=True, highlight=False)


class _Commands(TyperGroup):
    """Runs every command (sub-commands included) inside the CLI's one error handler: a
    DfdetectError is something the user can fix and prints as its message, exit 2; an OSError
    names the file the system refused; anything else is a bug and keeps its traceback, exit 3."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: usage errors, exit codes
            raise
        except DfdetectError as e:
            _print_error(str(e))
        except Exception as e:
            if not (isinstance(e, OSError) and e.filename is not None):
                errors.print(traceback.format_exc(), markup=False, highlight=False, soft_wrap=True)
                errors.print(REPORT_BUG, style="red", highlight=False, soft_wrap=True)
                raise typer.Exit(INTERNAL_ERROR) from None
            _print_error(f"{e.filename}: {e.strerror or e}")   # a file the system refused
        raise typer.Exit(USAGE_ERROR)


app = typer.Typer(
    cls=_Commands,
    help="Audio deepfake detection for honest generalization experiments. "
    "Labels: 1 = fake (spoof), 0 = real (bona fide); scores are P(fake), higher = more likely fake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # errors are handled once, in _Commands
    rich_markup_mode=None,  # help texts name STORE[@VERSION][:SPLIT]: brackets are text, not markup
)
datasets_app = typer.Typer(help="Dataset adapters: list them, validate a download.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


DEVICE_HELP = "auto (a GPU when present; $DFDETECT_DEVICE overrides) | cpu | cuda | cuda:N."


def _renamed_options(renamed: dict[str, str]) -> type[TyperCommand]:
    """A command class that reads each old spelling of an option in `renamed` (old -> new) as the
    new one, with a warning on stderr; only the new one is in --help."""

    class Command(TyperCommand):
        def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
            return super().parse_args(ctx, _respelled(args, renamed))

    return Command


def _respelled(args: list[str], renamed: dict[str, str]) -> list[str]:
    if "--" in args:   # after it every token is an argument, whatever it reads
        end = args.index("--")
        return _respelled(args[:end], renamed) + args[end:]
    out = []
    for arg in args:
        name, equals, value = arg.partition("=")
        if name in renamed:
            errors.print(f"[yellow]warning:[/] {name} is deprecated; use {renamed[name]}", highlight=False)
            arg = renamed[name] + equals + value
        out.append(arg)
    return out


def _int_list(text: str, option: str) -> tuple[int, ...]:
    """'6,12,24' -> (6, 12, 24); anything else is a ConfigError naming the option."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. 6,12,24") from None


@app.command()
def demo(
    out: Path = typer.Option(Path("dfdetect-demo"), help="Folder for the generated corpus and outputs."),
):
    """Run every stage on a generated corpus: offline, deterministic, under 2 minutes on 2 cores."""
    from dfdetect.demo.run import run_demo

    run_demo(out, console=console)


OPTION_HELP = ("An adapter option KEY=VALUE, repeatable (hf: label_column, fake_values, ...; lhotse: "
               "label_field, ...; `dfdetect datasets list` shows each adapter's).")


@app.command()
def featurize(
    dataset: str = typer.Option(..., "--dataset", help="Adapter name (see `dfdetect datasets list`)."),
    root: Path = typer.Option(..., "--root", help="The dataset's folder (a CSV file for `manifest`)."),
    out: str = typer.Option(None, "--out", help="Store path (default: stores/DATASET.zarr)."),
    features: str = typer.Option(None, help="Comma-separated subset of mel,lfcc,wave,wavlm (wave: the prepared "
                                 "16 kHz clip, which aasist and aasist_l read). "
                                 f"Default: {','.join(DEFAULT_FEATURES)}."),
    wavlm: str = typer.Option(None, "--wavlm", help=f"WavLM hub id or local directory. Default: {WAVLM_MODEL}."),
    wavlm_layers: str = typer.Option(None, help="Hidden states to store (0 = CNN output, 24 = last of Large). "
                                     f"Default: {','.join(map(str, WAVLM_LAYERS))}."),
    wavlm_storage: str = typer.Option(None, help="How WavLM's layers are stored: float16, or uint8 (half the bytes, "
                                      "a per-channel scale; docs/benchmarks.md measures what it costs). "
                                      f"Default: {WAVLM_STORAGE}."),
    device: str = typer.Option("auto", help="Where WavLM runs: " + DEVICE_HELP),
    scheduler: str = typer.Option(None, help="tcp://HOST:PORT of an existing dask.distributed scheduler."),
    workers: int = typer.Option(
        None, help="Local worker processes (default: one per core; 0: in this process, no dask)."),
    block_size: int = typer.Option(
        None, help=f"Clips per block = rows per shard (the unit of writing). Default: {BLOCK_SIZE}."),
    codec: str = typer.Option(None, help="Variant: round-trip every clip through flac | mp3[:BITRATE] | "
                              "opus[:BITRATE] | aac[:BITRATE] | vorbis[:BITRATE], or random (one codec and bitrate "
                              "drawn per clip, recorded in the clip table's variant_codec)."),
    corrupt: str = typer.Option(None, help="Variant: seeded corruptions, comma-separated from noise,reverb,clip,"
                                "bandlimit,resample,packetloss, rawboost[:1|2|3|1+2|...] (RawBoost's algorithms, "
                                "in series; default 1+2), or 'default' for the first six."),
    variant_seed: int = typer.Option(None, help="Seed of the corruptions and random codecs (each clip's draw also "
                                     "depends on its id). Default: 0."),
    vocode: str = typer.Option(None, help="Variant: from every real clip a fake (generator vocoded:NAME) through "
                               "the vocoder world | griffinlim; the dataset's own fakes are left out."),
    vocode_keep_real: bool = typer.Option(False, "--vocode-keep-real", help="With --vocode: keep the real clips "
                                          "too (default: only the vocoded fakes, to train beside the clean store)."),
    option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (progress and notices "
                                 "go to stderr)."),
    trim_silence: bool = typer.Option(False, "--trim-silence", help="Cut each clip's leading and trailing silence "
                                      "before the centre crop (a frontend of its own: a new store version), to test "
                                      "whether a model survives without the silence shortcut (`dfdetect audit`)."),
    windows: str = typer.Option(None, "--windows", help="Which windows of each file become rows: centre (default: "
                                "one centre crop, the reference study's protocol), all (every window, cut exactly as "
                                "`dfdetect score` cuts them: evaluation then scores each file as score does), or N "
                                "(up to N evenly spaced). Disk grows with the audio: docs/whole-file.md."),
    window: float = typer.Option(None, "--window", help="With --windows all|N: window length in seconds (default: "
                                 "the clip length, 3)."),
    hop: float = typer.Option(None, "--hop", help="With --windows all|N: hop in seconds (default: half the window)."),
):
    """Decode every clip once and write mel, LFCC and frozen WavLM features to a versioned Zarr store.

    Rerun the same command to resume an interrupted run. Exit code 0 when every clip was written,
    1 when the run ended with problems it lists: clips that are errors (recorded in the store), or
    blocks that failed (rerun the same command to retry them)."""
    from dfdetect.datasets import parse_options
    from dfdetect.featurize.config import FeaturizeConfig
    from dfdetect.featurize.pipeline import featurize as run  # what dfdetect.api.featurize is (it imports every stage)
    from dfdetect.featurize.wavlm import WavLMUnavailableError

    config = FeaturizeConfig.from_options(
        features=features, wavlm=wavlm, wavlm_storage=wavlm_storage, codec=codec, corrupt=corrupt,
        variant_seed=variant_seed, device=device, scheduler=scheduler, workers=workers, block_size=block_size,
        vocode=vocode, vocode_keep_real=vocode_keep_real, windows=windows, window=window, hop=hop,
        wavlm_layers=_int_list(wavlm_layers, "--wavlm-layers") if wavlm_layers is not None else None,
        trim_silence=trim_silence)
    # under --json, stdout holds the JSON alone: the progress bar and notices go to stderr
    said = Console(stderr=True) if as_json else console
    try:
        result = run(dataset, root, out, config=config, console=said, dataset_options=parse_options(option))
    except WavLMUnavailableError as e:
        raise WavLMUnavailableError(f"{e} To featurize without WavLM: --features mel,lfcc.") from e
    if as_json:
        print(json.dumps(featurize_summary(result), indent=2))
    else:
        _print_featurize_summary(result)
    # a failed block is a problem the summary lists, like a bad clip: rerunning retries it
    raise typer.Exit(1 if result.errors or result.failed_blocks or not result.complete else 0)


def featurize_summary(result) -> dict:
    """What `featurize --json` prints."""
    return {"store": result.store, "version": result.version, "clips": result.n_clips, "files": result.files,
            "written": result.ok, "errors": sum(result.errors.values()),
            "errors_by_kind": dict(result.errors.most_common()), "error_examples": result.error_examples,
            "failed_blocks": {str(b): m for b, m in sorted(result.failed_blocks.items())},
            "blocks_run": result.blocks_run, "blocks_skipped": result.blocks_skipped,
            "decoder_warnings": result.decoder_warnings, "warning_example": result.warning_example,
            "silent_windows": result.silent_windows,
            "complete": result.complete, "seconds": round(result.seconds, 3)}


def _print_featurize_summary(result) -> None:
    console.print(
        f"{escape(result.store)}@{result.version}: {result.ok} of {result.n_clips} "
        + (f"windows of {result.files} files" if result.files is not None else "clips") + " written, "
        f"{sum(result.errors.values())} errors; {result.blocks_run} blocks run, "
        f"{result.blocks_skipped} already done; {result.seconds:.1f} s"
        + ("" if result.complete else " [yellow](incomplete: rerun to finish)[/]"))
    if result.silent_windows:
        console.print(f"{result.silent_windows} silent windows kept as rows of status error, kind silent_window: left "
                      "out of their files' scores, as `dfdetect score` leaves them out")
    if result.errors:
        table = Table("error kind", "clips", "example")
        for kind, n in result.errors.most_common():
            table.add_row(kind, str(n), escape(result.error_examples[kind]))
        console.print(table)
    if result.decoder_warnings:
        console.print(f"[yellow]{result.decoder_warnings} clips written past damage their decoder reported[/] "
                      f"(meta/warning of the store), e.g. {escape(result.warning_example)}", soft_wrap=True)
    for block, message in sorted(result.failed_blocks.items()):
        console.print(f"[red]block {block} failed:[/] {escape(message)}", soft_wrap=True)


@datasets_app.command("list")
def datasets_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Name the dataset adapters and what each expects."""
    from dfdetect.datasets import ADAPTERS

    rows = [{"name": name, "reads": module.DESCRIPTION,
             "options": [p for p in inspect.signature(module.prepare).parameters if p != "root"]}
            for name, module in ADAPTERS.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "what it reads", "--option KEY=VALUE")
    for r in rows:
        table.add_row(r["name"], r["reads"], " ".join(r["options"]) or "-")
    console.print(table)


@datasets_app.command("show")
def datasets_show(
    name: str = typer.Argument(..., help="Adapter name (see `dfdetect datasets list`)."),
    root: Path = typer.Option(..., "--root", help="The dataset's folder (a CSV file for `manifest`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    decode: int = typer.Option(0, "--decode", help="Also decode N random clips (-1: all) to find broken audio early, "
                               "and run the shortcut audit (`dfdetect audit`) on them."),
    max_problems: int = typer.Option(20, help="How many problems to list (all are counted)."),
    option: list[str] = typer.Option(None, "--option", "-o", help=OPTION_HELP),
):
    """Validate a download: counts per split, label and generator, and every problem found.

    Exit code 0 when clean, 1 when problems were found, 2 when the root has the wrong layout."""
    from dfdetect.datasets import parse_options, prepare
    from dfdetect.evaluate.audit import audit_clips

    index = prepare(name, root, **parse_options(option))
    shortcuts = None
    if decode:
        clips = index.clips if decode < 0 else random.Random(0).sample(index.clips, min(decode, len(index.clips)))
        shortcuts, problems = audit_clips(clips)
        index.problems.extend(problems)
    report = index.to_dict()
    if as_json:
        print(json.dumps({**report, **({"audit": shortcuts.to_dict()} if shortcuts else {})}, indent=2,
                         default=_json_number))
    else:
        _print_index(report, max_problems)
        for line in shortcuts.warnings() if shortcuts else []:
            console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(1 if index.problems else 0)


def _print_index(report: dict, max_problems: int) -> None:
    from dfdetect.names import one_line, printable

    counts = report["counts"]
    console.print(f"[bold]{escape(report['dataset'])}[/] at {escape(printable(report['root']))}: "
                  f"{counts['clips']} clips ({counts['real']} real, {counts['fake']} fake)", soft_wrap=True)
    table = Table("split", "real (0)", "fake (1)", "total")
    for split, c in counts["by_split"].items():   # names from the dataset: one line each (a newline forges a row)
        table.add_row(escape(printable(split)), str(c.get("real", 0)), str(c.get("fake", 0)), str(sum(c.values())))
    table.add_row("all splits", str(counts["real"]), str(counts["fake"]), str(counts["clips"]), style="bold")
    console.print(table)
    if counts["fake_by_generator"]:
        gen = Table("generator / attack", "fake clips")
        for g, n in counts["fake_by_generator"].items():
            gen.add_row(escape(printable(g)), str(n))
        console.print(gen)
    problems = report["problems"]
    if problems:
        console.print(f"[yellow]{len(problems)} problem(s):[/]")
        for p in problems[:max_problems]:
            console.print(f"  {printable(p['where'])}: {one_line(p['message'])}", markup=False, highlight=False,
                          soft_wrap=True)
        if len(problems) > max_problems:
            console.print(f"  ... and {len(problems) - max_problems} more (--json lists all)")
    else:
        console.print("[green]no problems found[/]")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Each architecture with its parameter count and checkpoint size (the reference study's model-size table)."""
    from dfdetect.models.registry import ARCHITECTURES, model_summary

    rows = [model_summary(name) for name in ARCHITECTURES]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("arch", "reads", "params", "checkpoint", "with WavLM-Large", "batch", "epochs", "from")
    for r in rows:
        deployed = (f"{r['deployed_parameters'] / 1e6:.1f}M, {r['deployed_bytes'] / 1e9:.2f} GB"
                    if "deployed_bytes" in r else "-")
        table.add_row(r["arch"], ",".join(r["inputs"]), f"{r['parameters']:,}", f"{r['checkpoint_bytes'] / 1e6:.2f} MB",
                      deployed, str(r["batch_size"]), str(r["epochs"]), r["source"])
    console.print(table)
    console.print("WavLM heads train on cached WavLM features, so their checkpoints hold the head only; "
                  "scoring raw audio also needs the frozen WavLM-Large. lfcc_gmm's parameters are its two "
                  "512-mixture GMMs (fitted by EM, not trained); aasist and aasist_l read the stored waveform "
                  "(featurize --features ...,wave).")


@app.command("train")
def train_command(
    arch: str = typer.Option(..., help="mel_cnn | mel_aasist | wavlm_cnn | wavlm_aasist, or a reference system: "
                             "lfcc_gmm | lfcc_lcnn | aasist | aasist_l (`dfdetect models` lists them)."),
    train_set: list[str] = typer.Option(..., "--train", help="STORE[@VERSION][:SPLIT] to train on; repeat to train "
                                        "on several corpora at once (validation split from each)."),
    out: Path = typer.Option(..., "--out", help="Run folder, e.g. runs/mel_aasist."),
    val: str = typer.Option(None, help="Validation set (default: a seeded, stratified 5% of --train)."),
    test: str = typer.Option(None, help="In-distribution test set."),
    ood: list[str] = typer.Option([], help="Out-of-distribution set [NAME=]STORE[:SPLIT]; repeat for several."),
    epochs: int = typer.Option(None, help="Default: the architecture's (`dfdetect models`): the reference study's "
                               "50 for mel heads, 15 for WavLM heads; 1 for lfcc_gmm, which is fitted once."),
    batch_size: int = typer.Option(None, help="Default: the architecture's (`dfdetect models`): 128 for mel heads, "
                                   "64 for WavLM heads."),
    lr: float = typer.Option(None, help="Default: the architecture's: 5e-5 for the reference study's heads, the "
                             "published recipe's for the reference systems."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (the reference study's 0.01)."),
    seed: int = typer.Option(0, help="Seeds the initial weights, the batch order, the default validation split "
                             "and --holdout-generator's share of reals."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    early_stopping: int = typer.Option(
        None, help="Stop after N epochs without a better validation EER (default: never)."),
    init_from: Path = typer.Option(None, help="Start from another run's best weights (fine-tuning)."),
    holdout_generator: list[str] = typer.Option(
        [], help="Leave-one-generator-out: hold these generators' fakes (and 20% of the reals) out of --train "
                 "as the OOD set ood:holdout; repeat for several."),
    augment: list[str] = typer.Option([], help="A variant version of the train store (same clips, featurized with "
                                      "--codec or --corrupt), STORE@VERSION; each epoch each clip is read from the "
                                      "clean version or one variant; repeat for several."),
    augment_p: float = typer.Option(None, help="Probability that a clip is read from a variant in an epoch "
                                    "(seeded by seed, epoch, clip). Default: 0.5."),
    augment_unit: str = typer.Option(None, help="clip: each clip drawn on its own (default); chunk: the clips of "
                                     "one read unit (16-64 neighbouring rows) share a draw, so a streaming loader "
                                     "reads each chunk from one version only (full speed)."),
    balance: str = typer.Option(None, help="none | corpus | generator | label: draw each epoch's clips with "
                                "replacement so each corpus / generator / label gets an equal share. Default: none."),
    config_file: Path = typer.Option(
        None, "--config", help="JSON file of TrainConfig fields; flags given here override it."),
    seeds: str = typer.Option(None, "--seeds", help="Train once per seed, e.g. 0,1,2: one run folder each, "
                              "OUT/seed-0 ... (the report gives their mean +- sd); replaces --seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out where it stopped."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run in --out."),
    no_audit: bool = typer.Option(False, "--no-audit", help="Skip the shortcut audit of --train before the first "
                                  "epoch (`dfdetect audit`: it warns, never stops)."),
    max_windows_per_file: int = typer.Option(None, "--max-windows-per-file", help="A store featurized with "
                                             "--windows all|N: train on at most this many windows of each file "
                                             "(evenly spaced), so long files do not dominate an epoch. Default: all."),
    aggregate: str = typer.Option(None, "--aggregate", help="How val/test/OOD files of a windowed store are scored "
                                  "from their windows, as `dfdetect score --aggregate`: mean (default) | max | topk."),
):
    """Train a head from cached features; every epoch is evaluated on validation, test and OOD sets.

    Labels: 1 = fake, 0 = real. Scores written are P(fake), higher = more likely fake."""
    from dfdetect.api import TrainConfig, train

    fields = _read_config_file(config_file, TrainConfig) if config_file else {}
    given = {"arch": arch, "train": tuple(train_set), "val": val, "test": test, "ood": tuple(ood) or None,
             "epochs": epochs, "batch_size": batch_size, "seed": seed, "device": device,
             "early_stopping": early_stopping, "init_from": str(init_from) if init_from else None,
             "lr": lr, "weight_decay": weight_decay, "holdout_generators": tuple(holdout_generator) or None,
             "augment": tuple(augment) or None, "augment_p": augment_p, "augment_unit": augment_unit,
             "balance": balance, "audit": False if no_audit else None,
             "max_windows_per_file": max_windows_per_file, "aggregate": aggregate}
    fields.update({k: v for k, v in given.items() if v is not None})
    if seeds is None:
        train(TrainConfig(**fields), out, resume=resume, force=force, console=console)
        return
    from dfdetect.models.runs import seed_folder

    chosen = _int_list(seeds, "--seeds")
    if not chosen or len(set(chosen)) < len(chosen) or min(chosen) < 0:
        raise ConfigError(f"--seeds {seeds!r}: give distinct seeds >= 0, e.g. 0,1,2")
    for one in chosen:
        console.rule(f"seed {one}: {seed_folder(out, one)}")
        train(TrainConfig(**{**fields, "seed": one}), seed_folder(out, one), resume=resume, force=force,
              console=console)


def _read_config_file(path: Path, config_class) -> dict:
    """The fields of a JSON config file, each checked by `config_class.field_problem`."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON file ({e}); write an object of {config_class.__name__} "
                          "fields, e.g. {\"epochs\": 20}") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}: expected a JSON object of {config_class.__name__} fields, "
                          f"found {type(fields).__name__}")
    for name, value in fields.items():
        problem = config_class.field_problem(name, value)
        if problem:
            raise ConfigError(f"{path}: {problem}")
    return fields


# -- dfdetect experiment ---------------------------------------------------------------------------
experiment_app = typer.Typer(help="A whole study from one TOML file: stores, runs, report.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
_SET_HELP = "Override a value of the file: KEY.PATH=VALUE (e.g. runs.mel_aasist.epochs=2); repeat."


@experiment_app.command("run")
def experiment_run(
    file: Path = typer.Argument(..., help="The experiment file (see experiments/)."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    workers: int = typer.Option(None, help="Featurize worker processes (default: one per core; 0: in this process)."),
):
    """Check the file, featurize the stores that are not complete, train the runs that have not
    finished (resuming interrupted ones), and write the report."""
    from dfdetect.studies.experiment import load_experiment, run_experiment

    experiment = load_experiment(file, set_)
    states, _ = run_experiment(experiment, console, workers=workers)
    console.print(f"{experiment.name}: " + ", ".join(f"{n} {s['state']}" for n, s in states.items()))


@experiment_app.command("status")
def experiment_status(
    file: Path = typer.Argument(..., help="The experiment file."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """What is done: each store (complete / incomplete / missing) and run (epochs done / planned)."""
    from dfdetect.studies.experiment import load_experiment, status_rows

    rows = status_rows(load_experiment(file, set_))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kind", "name", "state", "last epoch (acc@0.5 / EER per set)", "path")
    for r in rows:
        last = "; ".join(f"{k} {v['acc']:.1%} / {v['eer']:.3f}" for k, v in r.get("last", {}).items()
                         if v["acc"] is not None and v["eer"] is not None)
        table.add_row(r["kind"], r["name"], r["state"], last, r["path"])
    console.print(table)


# -- dfdetect evaluate / report --------------------------------------------------------------------
@app.command("audit")
def audit_command(
    store: str = typer.Argument(..., help="STORE[@VERSION][:SPLIT] to audit (the clips decoded without error)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (every cue, its EER and quantiles) instead."),
    max_cue_eer: float = typer.Option(0.25, help="Warn about a statistic whose EER alone is at or below this."),
    against: str = typer.Option(None, help="A second STORE[@VERSION][:SPLIT] (e.g. an OOD set): also list the "
                                "statistics whose distributions shift most between the two."),
    add_statistics: bool = typer.Option(False, "--add-statistics", help="First add the recording statistics to a "
                                        "store featurized before they were kept (each clip decoded again)."),
):
    """Shortcut audit: does a recording statistic (silence, sample rate, level, ...) alone separate
    real from fake? Exit code 0 when none does, 1 with one warning line per cue at or below
    --max-cue-eer (docs/reliability.md defines the statistics and the test against chance)."""
    from dfdetect.errors import check_range
    from dfdetect.evaluate.audit import audit

    check_range("--max-cue-eer", max_cue_eer, 0.0, 0.5)
    if add_statistics:
        from dfdetect.featurize.backfill import add_statistics as add
        from dfdetect.store import parse_store_spec

        path, version, _ = parse_store_spec(store)
        added = add(f"{path}@{version}" if version else path)
        (errors if as_json else console).print(
            f"recording statistics added: {added['clips']} clips decoded again"
            + (f", {added['skipped']} skipped (gone, changed since featurize, or no longer decoding: NaN)"
               if added["skipped"] else ""), soft_wrap=True)
    report = audit(store, against)
    if as_json:
        print(json.dumps(report.to_dict(max_cue_eer), indent=2, default=_json_number))
    else:
        _print_audit(report, max_cue_eer)
    raise typer.Exit(1 if report.audit.warnings(max_cue_eer) else 0)


def _json_number(value):
    return value.item() if hasattr(value, "item") else str(value)


def _print_audit(report, max_cue_eer: float) -> None:
    from dfdetect.names import printable

    result = report.audit
    combined = next((c for c in result.cues if c.cue == "metadata" and c.generator is None), None)
    console.print(f"audit of {escape(printable(report.spec))}: {result.n_real} real, {result.n_fake} fake clips"
                  + (f"; all statistics together: EER {combined.eer:.2f}" if combined else ""), soft_wrap=True)
    table = Table("statistic", "EER alone", "real 10% / 50% / 90%", "fake 10% / 50% / 90%")
    for cue in result.cues:
        if cue.generator is None and cue.cue != "metadata":
            table.add_row(cue.name, f"{cue.eer:.3f}", _quantiles(cue.quantiles.get("real")),
                          _quantiles(cue.quantiles.get("fake")))
    if table.row_count:
        console.print(table)
    for note in (result.note, report.missing_note):
        if note:
            console.print(f"[yellow]notice:[/] {escape(note)}", soft_wrap=True)
    if report.against is not None:
        shifts = Table("statistic", "shift (KS)", "median here", f"median in {escape(printable(report.against))}")
        for shift in report.shifts[:5]:
            shifts.add_row(shift.name, f"{shift.distance:.2f}", _value(shift.median), _value(shift.median_against))
        console.print(shifts)
    for line in result.warnings(max_cue_eer):
        console.print(f"[yellow]warning:[/] {escape(printable(line))}", soft_wrap=True)


def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else escape(str(v))


def _quantiles(q) -> str:
    return " / ".join(_value(v) for v in q) if q else "-"


@app.command("evaluate", cls=_renamed_options({"--format": "--scores-format"}))
def evaluate_command(
    run: Path = typer.Argument(None, help="Run folder (runs/NAME) whose checkpoint scores --on."),
    on: str = typer.Option(None, "--on", help="STORE[@VERSION][:SPLIT] to score with the run."),
    epoch: str = typer.Option("best", help="best (by validation EER) | last | N"),
    scores: Path = typer.Option(None, "--scores", help="Evaluate a score file instead of a run."),
    fmt: str = typer.Option(None, "--scores-format", help="Format of --scores: csv | tsv | jsonl | parquet | "
                            "asvspoof (default: from the extension)."),
    score_col: str = typer.Option(None, help="Score column (default: score, cm-score, ...)."),
    label_col: str = typer.Option(None, help="Label column (default: label, key, cm-label, ...); any spelling."),
    id_col: str = typer.Option(None, help="Clip id column, to join --labels (default: clip_id, filename, file, ...)."),
    higher_is: str = typer.Option("fake", help="fake: scores are P(fake); real: higher = more bona fide (flipped)."),
    labels: Path = typer.Option(
        None, "--labels", help="Protocol/key file giving the labels by clip id (ASVspoof protocol, meta.csv)."),
    drop_bad: bool = typer.Option(False, "--drop-bad", help="Leave out bad rows (named in a note) instead of failing."),
    batch_size: int = typer.Option(None, help="Default: the architecture's."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    score_type: str = typer.Option("score", "--score-type", help="What --scores are: llr (natural-log LLRs, "
                                   "in --higher-is's direction) | probability (P of --higher-is's class) | score "
                                   "(anything else: actDCF and Cllr undefined)."),
    train_prior: float = typer.Option(0.5, "--train-prior", help="--score-type probability: the share of fakes "
                                      "the system was trained at (its probabilities' prior)."),
    calibration: str = typer.Option(None, "--calibration", help="The run's calibration whose LLRs give actDCF, "
                                    "Cllr and the Bayes decisions: NAME (dfdetect calibrate --name) | none "
                                    "(default: the newest fitted on the epoch)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (undefined metrics are null)."),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Confidence level of the bootstrap intervals."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples per interval (0: no intervals)."),
    ci_groups: str = typer.Option(None, "--ci-groups", help="Resample whole groups: speaker | generator | source | "
                                  "clip (default: speaker when the set names speakers, else clip)."),
    scores_out: Path = typer.Option(None, "--scores-out", help="With RUN: also write one row per clip (.csv | "
                                    ".jsonl | .parquet): clip_id, label, score, decision, llr, as `score` writes "
                                    "a file's."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --scores-out."),
    aggregate: str = typer.Option(None, "--aggregate", help="A store featurized with --windows all|N is measured "
                                  "per file, as `dfdetect score` scores one: mean | max | topk of its windows' "
                                  "scores (default: the run's, mean)."),
):
    """Every metric at threshold 0.5, at the EER threshold and at the run's validation threshold, with
    breakdowns per generator/attack, codec, language, source and duration band, and a bootstrap interval for each
    (`0.176 [0.159, 0.194]`; --json: `<metric>_ci`). The intervals cover drawing the clips again from
    the same population, not another corpus.

    Labels: 1 = fake (spoof), 0 = real (bona fide). Scores: P(fake), higher = more likely fake; use
    --higher-is real for systems that score bona fide high (ASVspoof's convention). EER: the ASVspoof
    convention. Formats and the ASVspoof column rule: see dfdetect/evaluate/score_files.py."""
    from dfdetect.api import evaluate as evaluate_run
    from dfdetect.evaluate.evaluation import EvaluationError, check_bootstrap, evaluate_score_file, print_evaluation
    from dfdetect.evaluate.score_files import read_scores
    from dfdetect.metrics import json_safe

    boot = check_bootstrap(ci_level, bootstrap, ci_groups)
    if (run is None) == (scores is None):
        raise EvaluationError("give either RUN --on STORE[:SPLIT] or --scores FILE")
    if run is not None:
        if on is None:
            raise EvaluationError("RUN needs --on STORE[@VERSION][:SPLIT], the set to score")
        result = evaluate_run(run, on, epoch=epoch, batch_size=batch_size, device=device, boot=boot,
                              ci_groups=ci_groups, calibration=calibration, scores_out=scores_out, force=force,
                              aggregate=aggregate)
    else:
        if scores_out is not None:
            raise EvaluationError("--scores-out needs RUN --on STORE: a score file already is one row per clip")
        result = evaluate_score_file(read_scores(scores, fmt, score_col, label_col, id_col, higher_is,
                                                 labels, drop_bad), boot, ci_groups, score_type, train_prior)
    if as_json:
        print(json.dumps(json_safe(result), indent=2))
    else:
        print_evaluation(result, console)


@app.command("calibrate")
def calibrate_command(
    run: Path = typer.Argument(..., help="Run folder (runs/NAME) to calibrate."),
    on: str = typer.Option(..., "--on", help="STORE[@VERSION][:SPLIT] of labelled clips to fit on (at least 20 of "
                           "each class; a few hundred of your own domain is the cheapest fix for new data)."),
    epoch: str = typer.Option("best", help="best (by validation EER) | last | N"),
    method: str = typer.Option("logistic", help="logistic (affine, prior-weighted: robust) | pav (monotone steps: "
                               "needs more clips)."),
    name: str = typer.Option(None, "--name", help="Name to store it under (default: the store's stem and split); "
                             "evaluate/score/export take it as --calibration NAME."),
    held_out: str = typer.Option(None, "--held-out", help="STORE[@VERSION][:SPLIT] of other labelled clips: "
                                 "before/after measured honestly there."),
    batch_size: int = typer.Option(None, help="Default: the architecture's."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (undefined metrics are null)."),
):
    """Fit a calibration of the run's scores into LLRs on labelled clips, store it in the run folder
    (calibrations/NAME.json, the newest is the default of evaluate, score and export), and print
    actDCF and Cllr before and after."""
    from dfdetect.evaluate.calibrate import calibrate_run
    from dfdetect.evaluate.evaluation import fmt
    from dfdetect.metrics import json_safe

    result = calibrate_run(run, on, epoch=epoch, method=method, name=name, held_out=held_out,
                           batch_size=batch_size, device=device)
    if as_json:
        print(json.dumps(json_safe(result), indent=2))
        return
    console.print(f"wrote {escape(result['file'])} ({result['method']}, epoch {result['epoch']})", soft_wrap=True,
                  highlight=False)
    if result["before_calibration"]:
        console.print(f"before: {escape(result['before_calibration'])}", soft_wrap=True, highlight=False)
    else:
        console.print("before: no calibration (P(fake) read as an LLR)", highlight=False)
    for key, what in (("on", "fitted on (optimistic: the calibration has seen these clips)"),
                      ("held_out", "held out (honest)")):
        if key in result:
            r = result[key]
            console.print(f"{escape(r['set'])} [{what}], {r['n_real']} real / {r['n_fake']} fake: actDCF "
                          f"{fmt(r['before']['act_dcf'])} -> {fmt(r['after']['act_dcf'])} "
                          f"(minDCF {fmt(r['min_dcf'])}), "
                          f"Cllr {fmt(r['before']['cllr'])} -> {fmt(r['after']['cllr'])} bits "
                          f"(minCllr {fmt(r['min_cllr'])})", soft_wrap=True, highlight=False)
    if "held_out" not in result:
        console.print("[yellow]warning:[/] these numbers are measured on the clips the calibration was fitted on, "
                      "so they are optimistic; give --held-out STORE[:SPLIT] to measure it honestly", soft_wrap=True)


@app.command("report")
def report_command(
    runs: list[Path] = typer.Argument(..., help="Run folders to compare."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML page; the Markdown tables go next to it (.md)."),
    ood: str = typer.Option(None, "--ood", help="OOD set to rank by (NAME of ood:NAME; default: the first)."),
    rank_by: str = typer.Option("accuracy", "--rank-by", help="Rank by the OOD set's accuracy (at 0.5, the "
                                "reference study's), eer, or act_dcf (the calibrated decisions' cost)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out or its .md even when they are not reports."),
):
    """One self-contained HTML page (+ Markdown): runs ranked by OOD accuracy, test vs OOD and their
    correlation, training curves, ROC/DET/score histograms, model size, failure warnings.

    Labels: 1 = fake, 0 = real; scores are P(fake); accuracies at threshold 0.5."""
    from dfdetect.evaluate.report import build_report

    report = build_report(runs, out, ood=ood, force=force, rank_by=rank_by)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(warning.run))}: {escape(warning.message)}", soft_wrap=True,
                      highlight=False)
    console.print(f"wrote {report.html} and {report.markdown} ({len(report.runs)} runs, "
                  f"{len(report.warnings)} warnings)")


@app.command("compare")
def compare_command(
    runs: list[Path] = typer.Argument(None, help="Two run folders, scored on --on."),
    on: str = typer.Option(None, "--on", help="STORE[@VERSION][:SPLIT] both runs score."),
    epoch: str = typer.Option("best", help="best (by validation EER) | last | N, for both runs"),
    scores: list[Path] = typer.Option(None, "--scores", help="Compare two score files instead: --scores A --scores B."),
    fmt: str = typer.Option(None, "--scores-format", help="Format of both --scores (as evaluate)."),
    score_col: str = typer.Option(None, help="Score column of both files (as evaluate)."),
    label_col: str = typer.Option(None, help="Label column (as evaluate)."),
    id_col: str = typer.Option(None, help="Clip id column: clips are joined by it (as evaluate)."),
    higher_is: str = typer.Option("fake", help="fake | real, for both files (as evaluate)."),
    labels: Path = typer.Option(None, "--labels", help="Protocol/key file giving the labels by clip id."),
    drop_bad: bool = typer.Option(False, "--drop-bad", help="Leave out bad rows instead of failing."),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Level of the intervals; significance at 1 - level."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Paired bootstrap resamples."),
    ci_groups: str = typer.Option(None, "--ci-groups", help="speaker | generator | source | clip (as evaluate)."),
    batch_size: int = typer.Option(None, help="Default: the architecture's."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: delta_eer, delta_eer_ci, p_value, ..."),
):
    """Two systems on the same clips: A - B of EER, minDCF and AUC with a paired bootstrap interval and
    p-value, McNemar's exact test on the decisions, and one line saying which is better and whether
    the difference is distinguishable from chance. Clips are joined by id; a clip on one side only
    is an error. The intervals cover clip sampling from this set, not another corpus."""
    from dfdetect.evaluate.compare import compare, print_comparison, system_from_run, system_from_table
    from dfdetect.evaluate.evaluation import EvaluationError, check_bootstrap
    from dfdetect.evaluate.score_files import read_scores
    from dfdetect.metrics import json_safe

    boot = check_bootstrap(ci_level, bootstrap, ci_groups)
    if boot is None:
        raise EvaluationError("--bootstrap 0: compare needs resamples (the default is 1000)")
    if bool(runs) == bool(scores) or len(runs or scores) != 2:
        raise EvaluationError("give two runs and --on STORE[:SPLIT], or --scores A --scores B")
    if runs:
        if on is None:
            raise EvaluationError("two runs need --on STORE[@VERSION][:SPLIT], the set both score")
        a, b = (system_from_run(r, on, epoch, batch_size, device) for r in runs)
    else:
        a, b = (system_from_table(read_scores(f, fmt, score_col, label_col, id_col, higher_is, labels, drop_bad))
                for f in scores)
    result = compare(a, b, boot, ci_groups)
    if as_json:
        print(json.dumps(json_safe(result), indent=2))
    else:
        print_comparison(result, console)


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run folder (runs/NAME) to export."),
    out: Path = typer.Option(None, "--out", help="Folder to write: config.json, model.safetensors, README.md."),
    onnx: Path = typer.Option(None, "--onnx", help="Also (or only) write the head as ONNX (mel_cnn, mel_aasist): "
                              "input mel [batch,2,128,301] float32, output p_fake [batch]; the frontend stays in "
                              "Python (dfdetect.featurize.frontend). Checked against PyTorch on the same windows "
                              "(max abs diff printed). Needs pip install 'dfdetect[onnx]'."),
    epoch: str = typer.Option("best", help="best (by validation EER) | last | N"),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder that is not an export, and "
                               "replace an existing --onnx FILE (never a run's or the export's own files)."),
    calibration: str = typer.Option(None, "--calibration", help="The run's calibration the export ships (its "
                                    "scores' LLRs): NAME | none (default: the newest fitted on the epoch)."),
):
    """A shareable, Hugging Face-style folder of the run's head: config.json (architecture, frontend,
    WavLM identity, threshold, precision), model.safetensors (no pickle) and a README.md model card
    (training data, every set's metrics at the epoch, OOD included, warnings, intended use).
    `dfdetect score --model DIR` scores with it."""
    from dfdetect.evaluate.model_card import export_run

    done = export_run(run, out, epoch=epoch, force=force, onnx=onnx, calibration=calibration)
    if "folder" in done:
        console.print(f"wrote {done['folder']} (config.json, model.safetensors, README.md)", soft_wrap=True,
                      highlight=False)
    if "onnx" in done:
        o = done["onnx"]
        console.print(f"wrote {o['path']} (one file, weights embedded): ONNX Runtime vs PyTorch on {o['windows']} "
                      f"windows, max abs diff of "
                      f"P(fake) {o['max_abs_diff']:.3g}", soft_wrap=True, highlight=False)


# -- dfdetect score ---------------------------------------------------------------------------------
@app.command("score")
def score_command(
    paths: list[str] = typer.Argument(..., help="Audio files, folders (recursive), archives (.tar, .tar.gz/.tgz, "
                                      ".tar.bz2, .tar.xz, .zip; read in place, never extracted), lists of paths "
                                      "(.txt, or .csv with a 'path' column), or - for a list on stdin."),
    model: Path = typer.Option(..., "--model", help="Run folder (runs/NAME) whose checkpoint scores, or a folder "
                               "`dfdetect export` wrote."),
    out: Path = typer.Option(..., "--out", help="Table to write: .csv | .jsonl | .parquet (or, with --format "
                             "asvspoof5 | asvspoof2019, the challenge score file)."),
    fmt: str = typer.Option("table", "--format", help="table (by --out's extension) | asvspoof5 (tab-separated "
                            "'filename<TAB>cm-score' with a header) | asvspoof2019 ('utt score' lines, 2019/2021). "
                            "Challenge scores are the bona fide LLR (-llr, higher = bona fide) when the run is "
                            "calibrated, else 1 - P(fake) = P(bona fide) from the 6-decimal score (not an LLR); "
                            "filename = the file or member name without folders and "
                            "extension. Failed/skipped inputs have no score and are left out; every row, with its "
                            "reason, goes to OUT.status.csv beside it."),
    epoch: str = typer.Option("best", help="best (by validation EER) | last | N"),
    window: float = typer.Option(None, help="Window length in seconds (default: the run's clip length, 3 s)."),
    hop: float = typer.Option(None, help="Window hop in seconds (default: half the window)."),
    aggregate: str = typer.Option("mean", help="File score from its window scores: mean (default; keeps the "
                                  "clip-level threshold's meaning) | max (any suspicious segment) | topk."),
    top_k: int = typer.Option(3, help="k for --aggregate topk."),
    windows: Path = typer.Option(None, "--windows", help="Also write every window's score with its start/end "
                                 "times to this table (.csv | .jsonl | .parquet)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted --out: inputs already in it are "
                                "skipped."),
    scheduler: str = typer.Option(None, help="Address of an existing dask cluster (default: a local one)."),
    workers: int = typer.Option(None, help="Local decode/feature worker processes (default: a third of the "
                                "cores, at least 1; the model uses the rest; 0 = all in this process)."),
    batch_size: int = typer.Option(64, help="Windows per model batch."),
    max_file_mb: float = typer.Option(2048, help="Inputs larger than this are error rows (too_large)."),
    max_hours: float = typer.Option(12, help="Recordings longer than this are error rows (too_long)."),
    device: str = typer.Option("auto", help="Where the model (and WavLM) runs: " + DEVICE_HELP),
    features_from: str = typer.Option(None, "--features-from", help="STORE[@VERSION] built by featurize over the "
                                      "same files: a plain file that is an ok row of it is scored from its stored "
                                      "features as one centre-clip window (features=store), not decoded; the rest "
                                      "live. Must match the run's frontend, inputs and WavLM."),
    calibration: str = typer.Option(None, "--calibration", help="The run's calibration giving the llr and "
                                    "llr_decision columns: NAME (dfdetect calibrate --name) | none (default: the "
                                    "newest fitted on the epoch; an export's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (scored, failed and "
                                 "skipped by error kind, audio seconds, rates, the table's path); progress and "
                                 "warnings go to stderr."),
):
    """Score every audio file in PATHS with a trained run: one row per input (path, archive member,
    duration, sample rate, channels, windows, score, decision at the run's threshold, run id,
    frontend hash, features (live, or store with --features-from), status, error).

    Scores are P(fake): higher = more likely fake (labels: 1 = fake, 0 = real); decision = fake when
    score >= the run's validation-EER threshold. Long files are decoded as a stream and scored in
    sliding windows; silent windows are left out. Broken, unsupported, huge or unsafe inputs become
    rows with status error or skipped and the reason; the batch goes on.

    Exit code: 0 when every input was scored, 1 when some failed or were skipped (the output still
    holds every row), 2 on a usage error (bad option, missing PATH or run, existing --out without
    --resume)."""
    from dfdetect.score.scoring import ScoreOptions, score

    options = ScoreOptions(window=window, hop=hop, aggregate=aggregate, top_k=top_k, batch_size=batch_size,
                           max_file_mb=max_file_mb, max_hours=max_hours, workers=workers, scheduler=scheduler,
                           device=device, features_from=features_from, format=fmt,
                           calibration=calibration).checked()
    summary = score(model, paths, out, options, windows_out=windows, resume=resume, epoch=epoch,
                    console=errors if as_json else console)   # under --json, stdout holds the JSON only
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for line in summary.lines():
            console.print(line, soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(summary.exit_code)


# -- dfdetect store: list, describe, verify and export feature stores -----------------------------
store_app = typer.Typer(help="Feature stores: list them, describe one, verify every chunk, export to HDF5.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("ls")
def store_ls(
    directory: Path = typer.Argument(Path("."), help="Folder searched recursively for *.zarr stores."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Every feature store under a folder, one row per version."""
    from dfdetect.store.inspect import find_stores, human_bytes

    rows = find_stores(directory)
    for r in rows:
        if r.get("version"):
            r["protocol"] = _store_protocol(r.get("windows"), r.get("clip_seconds"))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no dfdetect stores under {directory}")
        return
    table = Table("store", "dataset", "version", "protocol", "rows", "ok", "errors", "complete", "features",
                  "size", "created")
    for r in rows:
        complete = r.get("complete")
        blocks = (f" ({r['blocks_done']}/{r['blocks']} blocks)"
                  if not complete and r.get("blocks") is not None else "")
        table.add_row(escape(r["store"]), escape(str(r.get("dataset") or "-")), str(r.get("version") or "-"),
                      r.get("protocol") or "-", str(r.get("clips", "-")), str(r.get("ok", "-")),
                      str(r.get("errors", "-")),
                      ("yes" if complete else "[yellow]no[/]" + blocks) if "complete" in r else "-",
                      ",".join(r.get("features") or []), human_bytes(r.get("size_bytes")),
                      str(r.get("created") or r.get("problem") or "-"))
    console.print(table)


@store_app.command("info")
def store_info(
    store: str = typer.Argument(..., help="PATH[@VERSION] (default: the newest version)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
):
    """Arrays (shapes, chunks, codecs, sizes), version config and clip counts of one store version."""
    from dfdetect.store import parse_store_spec
    from dfdetect.store.inspect import store_info as info_of
    from dfdetect.store.schema import reading_metadata

    with reading_metadata(parse_store_spec(store)[0]):
        info = info_of(store)
    clip_seconds = info["coverage"]["clip_seconds"]
    info["protocol"] = info["coverage"]["protocol"] = _store_protocol(info["coverage"]["windows"], clip_seconds)
    for v in info["versions"]:
        v["protocol"] = _store_protocol(v["windows"], clip_seconds)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    _print_store_info(info)


def _store_protocol(windows: dict | None, clip_seconds: float | None) -> str:
    """A version's window protocol in words, as reports name it ("centre 3 s crop", "all 3 s windows,
    hop 1.5 s"); featurize/windows.py owns the words (the store layer below it cannot call it)."""
    from dfdetect.featurize.windows import WindowProtocol

    return WindowProtocol.words(windows, clip_seconds)


def _print_store_info(info: dict) -> None:
    from dfdetect.names import one_line, printable
    from dfdetect.store.inspect import human_bytes

    state = ("[green]complete[/]" if info["complete"] else
             f"[yellow]incomplete: {info['blocks_done']}/{info['blocks']} blocks done[/]")
    console.print(f"[bold]{escape(printable(info['store']))}@{info['version']}[/]  dataset "
                  f"{escape(printable(str(info['dataset'])))} ({escape(printable(str(info['dataset_root'])))}): "
                  f"{info['n_clips']} {'rows' if info['coverage']['windows'] else 'clips'}, "
                  f"blocks of {info['block_size']}, "
                  f"{state}; created {info['created']} by dfdetect {info['dfdetect_version']}",
                  soft_wrap=True)
    if len(info["versions"]) > 1:
        versions = Table("version", "protocol", "rows", "features", "complete", "created", "shown")
        for v in info["versions"]:
            versions.add_row(v["version"], v["protocol"], str(v["clips"]), ",".join(v["features"] or []),
                             "yes" if v["complete"] else "no", str(v["created"]), "<-" if v["shown"] else "")
        console.print(versions)
    config = Table("config", "value")
    config.add_row("features", ",".join(info["features"] or []))
    config.add_row("frontend hash", str(info["frontend_hash"]))
    config.add_row("frontend", json.dumps(info["frontend"], sort_keys=True))
    if info["wavlm"]:
        config.add_row("wavlm layers", ",".join(map(str, info["wavlm_layers"] or [])))
        config.add_row("wavlm storage", info["wavlm_storage"] + (" (codes + per-channel scale, read as float16)"
                                                                 if info["wavlm_storage"] == "uint8" else ""))
        config.add_row("wavlm", json.dumps(info["wavlm"], sort_keys=True))
    console.print(config)
    _print_coverage(info)
    _print_recording_statistics(info)
    arrays = Table("array", "shape", "dtype", "chunks", "shards", "codecs", "bytes", "stored", "ratio",
                   "stored/clip")
    for a in info["arrays"]:
        arrays.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])),
                       str(tuple(a["shards"])) if a["shards"] else "-", " + ".join(a["codecs"]),
                       human_bytes(a["nbytes"]), human_bytes(a["nbytes_stored"]),
                       f"{a['ratio']:.2f}" if a["ratio"] else "-", human_bytes(a.get("stored_per_clip")))
    per_clip = info["nbytes_stored"] / info["n_clips"] if info["nbytes_stored"] and info["n_clips"] else None
    arrays.add_row("total", "", "", "", "", "", human_bytes(info["nbytes"]), human_bytes(info["nbytes_stored"]),
                   f"{info['ratio']:.2f}" if info["ratio"] else "-", human_bytes(per_clip))
    console.print(arrays)
    counts = info["counts"]
    statuses = sorted({s for c in counts["by_split_status"].values() for s in c})
    files = info["coverage"].get("files_by_split")   # a windowed version: its rows are windows
    splits = Table("split", *(("files",) if files else ()), "real (0)", "fake (1)", "total", *statuses,
                   title="rows (windows) by split" if files else None)
    for split, c in counts["by_split"].items():
        by_status = counts["by_split_status"].get(split, {})
        splits.add_row(escape(printable(split)), *((str(files.get(split, 0)),) if files else ()), str(c["real"]),
                       str(c["fake"]), str(c["total"]), *(str(by_status.get(s, 0)) for s in statuses))
    console.print(splits)
    if counts["error_kinds"]:
        kinds = Table("error kind", "clips")
        for kind, n in counts["error_kinds"].items():
            kinds.add_row(kind, str(n))
        console.print(kinds)
    if counts["fake_by_generator"]:
        gen = Table("generator / attack", "fake rows (windows)" if files else "fake clips")
        for g, n in counts["fake_by_generator"].items():
            gen.add_row(escape(printable(g)), str(n))
        console.print(gen)
    for p in info["problems"]:
        console.print(f"[yellow]problem:[/] {escape(one_line(str(p)))}", soft_wrap=True)


def _print_coverage(info: dict) -> None:
    """The protocol, the files and windows it kept, and what the version costs on disk per audio-hour
    (windowed) or per stored clip (centre: a crop's cost does not follow its file's length)."""
    from dfdetect.store.inspect import human_bytes

    c = info["coverage"]
    if c.get("problem"):
        console.print(f"protocol: {c['protocol']}; [yellow]problem:[/] {c['problem']}", soft_wrap=True)
        return
    if not c["windows"]:
        console.print(f"protocol: {c['protocol']}: {c['files']} files, one row each; "
                      f"{human_bytes(c['bytes_per_clip'])} per stored clip ({c['note']})",
                      soft_wrap=True, highlight=False)
        return
    spread = c["windows_per_file"]
    spread = (f"; windows per file min {spread['min']}, median {spread['median']:g}, max {spread['max']}"
              if spread else "")
    n = c["other_error_rows"]
    errors = f", {n} other error row{'s' if n > 1 else ''}" if n else ""
    console.print(f"protocol: {c['protocol']}: {c['files']} files, {c['rows']} rows ({c['ok_windows']} ok windows, "
                  f"{c['silent_windows']} silent{errors}){spread}", soft_wrap=True, highlight=False)
    console.print(f"audio: {c['audio_hours']:.4g} hours in {c['files']} files; "
                  f"{human_bytes(c['bytes_per_audio_hour'])} stored per audio-hour ({c['note']})",
                  soft_wrap=True, highlight=False)


def _print_recording_statistics(info: dict) -> None:
    recorded = info.get("recording_statistics") or {}
    if recorded.get("columns"):
        console.print(f"recording statistics (definitions v{recorded.get('version')}, clip table): "
                      f"{', '.join(recorded['columns'])}", soft_wrap=True)
    else:
        console.print("recording statistics: none (featurized before they were kept; `dfdetect audit STORE "
                      "--add-statistics` adds them)", soft_wrap=True)


@store_app.command("verify")
def store_verify(
    store: str = typer.Argument(..., help="PATH[@VERSION] (default: the newest version)."),
    max_problems: int = typer.Option(50, help="How many problems to list (all are counted)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
):
    """Read every chunk of every array and check shapes, finiteness, shards and metadata.

    Exit code 0 when everything checks out, 1 when problems were found (each listed on one line),
    2 when STORE is not a store or has no such version."""
    from dfdetect.store import parse_store_spec
    from dfdetect.store.inspect import human_bytes, verify_store
    from dfdetect.store.schema import reading_metadata

    with reading_metadata(parse_store_spec(store)[0]):
        result = verify_store(store, max_problems=max_problems)
    if as_json:
        print(json.dumps(result, indent=2))
        raise typer.Exit(0 if result["ok"] else 1)
    where = f"{result['store']}@{result['version']}"
    read = (f"{result['arrays']} arrays, {result['chunks_read']} chunks read, "
            f"{human_bytes(result['bytes_read'])} decoded, {result['seconds']:.1f} s")
    if result["ok"]:
        console.print(f"OK: {where}: {result['n_clips']} clips, {read}", soft_wrap=True, highlight=False)
        raise typer.Exit(0)
    console.print(f"FAILED: {where}: {result['n_problems']} problem(s) ({read})", soft_wrap=True,
                  highlight=False, style="red")
    for p in result["problems"]:
        console.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
    if result["n_problems"] > len(result["problems"]):
        console.print(f"  ... and {result['n_problems'] - len(result['problems'])} more", highlight=False)
    raise typer.Exit(1)


@store_app.command("export", cls=_renamed_options({"--hdf5": "--out"}))
def store_export(
    store: str = typer.Argument(..., help="PATH[@VERSION][:SPLIT] of a complete version."),
    hdf5: Path = typer.Option(..., "--out", help="The HDF5 file to write."),
    arrays: str = typer.Option(None, "--arrays", help="Comma-separated feature arrays (default: all present)."),
    split: str = typer.Option(None, "--split", help="Only rows of this split."),
    status: str = typer.Option("ok", "--status", help="ok | error | all."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
):
    """Copy feature arrays and every metadata column of the selected rows into one HDF5 file."""
    from dfdetect.store.inspect import export_hdf5, human_bytes

    names = [a.strip() for a in arrays.split(",") if a.strip()] if arrays else None
    result = export_hdf5(store, hdf5, arrays=names, split=split, status=status, force=force)
    console.print(f"wrote {result['rows']} rows of {result['store']}@{result['version']} "
                  f"({', '.join(result['arrays']) or 'metadata only'} + {len(result['meta_columns'])} "
                  f"metadata columns) to {result['out']}: {human_bytes(result['bytes_written'])} "
                  f"({human_bytes(result['bytes_raw'])} uncompressed), {result['seconds']:.1f} s",
                  soft_wrap=True, highlight=False)


if __name__ == "__main__":
    app()
