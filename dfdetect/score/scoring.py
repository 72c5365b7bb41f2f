"""Bulk scoring: files, folders, archives and lists of audio from the wild -> one table, every input
accounted for.

    coordinator: expand the inputs (sources.py) -> lanes of consecutive items (lanes.py) -> run
                 the model on each piece of windows as it arrives -> each file's answer
                 (per_file.py, the rule the API shares) -> one row per input (tables.py)
    worker:      a lane (a dask actor, windows.py) opens its items one by one, decodes them as a
                 stream (stream.py), cuts sliding windows, prepares each window exactly as
                 training prepared a clip (Frontend.crop_or_pad + peak_normalise) and computes the
                 frontend features of a batch of windows: one `Piece`, pulled by the coordinator

A lane hands out pieces of at most `batch_size` windows, so a multi-hour file flows through in
bounded memory on both sides; the coordinator asks for a lane's next piece before scoring the current
one, so workers decode while the model runs. WavLM heads get the windows' waveforms and run WavLM
where the model runs (load_wavlm, GPU when present). `workers=0` runs the lanes in this process.

With `features_from` (--features-from STORE[@VERSION], a store built by `featurize` over the same
files), a plain file (not an archive member) whose absolute path is an ok row of the store is not
decoded: that row's stored features (every array the head reads) are scored as ONE window, the
centre clip exactly as in training, so windows=1 and the `features` column says "store" (decoded
rows say "live"); a store of every window at score's window and hop (featurize --windows all) gives
a file its windows, any other windowed store none. Rows are read in whole-chunk groups
(from_store.py); inputs not in the store are scored live. The store must match the run: same
frontend hash, every array the head reads, and the same WavLM (model, revision, layers,
normalisation) as the run was trained on, else ScoreError.

Scores are P(fake): higher = more likely fake (labels: 1 = fake, 0 = real). A file's score
aggregates its window scores; silent windows (peak below the frontend's silence level) are left
out and counted; the decision is taken on the unrounded score, the table shows 6 decimals
(per_file.py). The aggregates (mean, max, topk) and how windows are cut are the whole-file
protocol's, featurize/windows.py, which featurize --windows and evaluation share.

Outputs by extension (.csv, .jsonl, .parquet), one row per input in the order inputs finish; the
`score_meaning` column says what the score is in every row (and the Parquet schema metadata holds
the run, threshold, window and hop). CSV and JSONL rows are written as they finish, so an
interrupted run keeps them and `--resume` continues it; Parquet is written next to the output and
moved into place when the run ends (also when it is interrupted).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfdetect import __version__
from dfdetect.devices import autocast, out_of_memory, resolve_device, tf32
from dfdetect.errors import check_output
from dfdetect.featurize.frontend import FRONTEND_FEATURES
from dfdetect.featurize.pipeline import dask_client
from dfdetect.featurize.wavlm import load_wavlm
from dfdetect.locks import ExclusiveLock
from dfdetect.metrics import bayes_threshold
from dfdetect.models.pretrained import load_model
from dfdetect.names import printable
from dfdetect.score.from_store import open_feature_store, store_matches, store_pieces
from dfdetect.score.lanes import dask_pieces, local_pieces, make_lanes
from dfdetect.score.options import SCORE_MEANING, ScoreError, ScoreOptions
from dfdetect.score.per_file import SCORE_DIGITS, FileRule, FileWindows, aggregate, rounded  # noqa: F401 (aggregate: re-exported)
from dfdetect.score.sources import ERROR, OK, SKIPPED, Item, expand
from dfdetect.score.tables import (
    CHALLENGE_MEANING,
    COLUMNS,
    WINDOW_COLUMNS,
    TableWriter,
    output_format,
    previous_rows,
    status_table,
    write_challenge,
)
from dfdetect.score.windows import STORE, FileResult, Piece, WindowConfig
from dfdetect.store.schema import wavlm_differences, wavlm_precision_of


# -- coordinator: the model --------------------------------------------------------------------------
class Scorer:
    """The run's head (and WavLM for WavLM heads) on one device: model inputs -> P(fake).
    Both run at the precision the run records (the head at its score_precision and TF32 setting,
    WavLM at the precision of its training features), so the run's threshold means what it meant in
    training.
    Out of CUDA memory, a batch is scored in halves (down to one window); `seconds` counts the
    time spent in forward passes."""

    def __init__(self, run, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = run.model.to(self.device).eval()
        self.inputs = run.inputs
        self.precision, self.tf32 = run.score_precision, run.tf32
        self.wavlm = None
        if "wavlm" in self.inputs:

            if run.wavlm_config is None:
                raise ScoreError(f"{run.path} reads WavLM features but records no WavLM config")
            self.wavlm = load_wavlm(run.wavlm_config, self.device, wavlm_precision_of(run.wavlm_info))
            differ = wavlm_differences(run.wavlm_info, self.wavlm.info())
            if differ:   # the same rule as for stores: exactly the WavLM the head was trained on
                raise ScoreError(f"{run.path} was trained on features of another WavLM than the one that loads now "
                                 f"({'; '.join(differ)}); restore that WavLM ({run.wavlm_info.get('model')}) or "
                                 "retrain the head on features of this one")
        self.seconds = 0.0

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """P(fake) of a batch: its features, or for WavLM heads its "waveform" (WavLM runs here)
        unless the batch holds stored "wavlm" features."""
        t0 = time.perf_counter()
        if "wavlm" in self.inputs and "wavlm" not in inputs:   # WavLM backs off its own batch
            inputs = {**inputs, "wavlm": self.wavlm(inputs["waveform"])["layers"]}
        try:
            return self._head(inputs)
        finally:
            self.seconds += time.perf_counter() - t0

    def _head(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The head on a batch; out of CUDA memory, on each half in turn (halved again as needed)."""
        n = len(next(iter(inputs.values())))
        try:
            return self._forward(inputs)
        except RuntimeError as e:   # torch.cuda.OutOfMemoryError is one
            if n == 1 or not out_of_memory(e):
                raise
        # The halves run after leaving the except block (so does featurize/wavlm.py's back-off):
        # inside it, the traceback would keep the failed forward's frames, and its activations, alive.
        torch.cuda.empty_cache()
        half = n // 2
        return np.concatenate([self._head({k: v[:half] for k, v in inputs.items()}),
                               self._head({k: v[half:] for k, v in inputs.items()})])

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: torch.from_numpy(inputs[k]).to(self.device) for k in self.inputs if k in inputs}
        with tf32(self.tf32), autocast(self.device, self.precision):
            return torch.sigmoid(self.model(batch).float()).cpu().numpy()


def window_config(run, options: ScoreOptions) -> WindowConfig:
    """How `run`'s head sees a file under `options`: windows (default the frontend's clip, hop
    half of it), the features it reads, batch and input limits. `score` and the API both use it."""
    frontend = run.frontend_config
    window = options.window or frontend.clip_seconds
    hop = options.hop or window / 2
    return WindowConfig(frontend, int(round(window * frontend.sample_rate)), int(round(hop * frontend.sample_rate)),
                        tuple(k for k in FRONTEND_FEATURES if k in run.inputs), "wavlm" in run.inputs,
                        options.batch_size, options.max_hours * 3600, options.max_file_mb * 1e6)


def score_piece(scorer: Scorer, piece: Piece, files: FileWindows) -> None:
    """The piece's window scores into `files`. Out of GPU memory even one window at a time, the
    files with windows in it become `out_of_memory` errors and the rest go on (score and the API)."""
    scores = np.full(len(piece.item), np.nan)
    try:
        if (~piece.silent).any():
            scores[~piece.silent] = scorer(piece.inputs)
    except RuntimeError as e:
        if not out_of_memory(e):
            raise
        files.fail(piece, "out_of_memory", f"out of GPU memory scoring one window ({_first_line(e)}); free the "
                   "GPU or score on the CPU (--device cpu)")
    files.add(piece, scores)


# -- the command --------------------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    out: str
    run_id: str
    rows: int = 0                   # in the output, earlier runs' included
    resumed: int = 0                # rows already there (--resume)
    scored: int = 0                 # this run, status ok
    from_store: int = 0             # of which scored from --features-from rows
    failed: int = 0                 # this run, status error
    skipped: int = 0                # this run, status skipped
    not_ok_before: int = 0          # earlier rows with status error/skipped
    windows: int = 0
    silent_windows: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    model_seconds: float = 0.0
    by_status: dict = field(default_factory=lambda: defaultdict(Counter))   # error/skipped -> kind -> inputs
    examples: dict = field(default_factory=dict)
    table: str = ""                 # the table of every row (--out, or beside a challenge file)
    challenge: str = ""             # --format asvspoof5|asvspoof2019: the challenge file
    challenge_scores: int = 0       # trials written to it
    challenge_left_out: int = 0     # rows without a score (failed, skipped), only in the table

    @property
    def errors(self) -> Counter:
        """Error kind -> inputs, failed and skipped."""
        return sum(self.by_status.values(), Counter())

    @property
    def exit_code(self) -> int:
        """0 when every input in the output was scored; 1 when some failed or were skipped."""
        return 0 if self.failed + self.skipped + self.not_ok_before == 0 else 1

    def to_dict(self) -> dict:
        """What `score --json` prints: the counts (failed and skipped by error kind), audio seconds,
        rates and where the rows are."""
        wall = max(self.seconds, 1e-9)
        done = self.scored + self.failed + self.skipped
        return {"out": self.out, "table": self.table, "challenge": self.challenge or None, "run_id": self.run_id,
                "rows": self.rows, "resumed": self.resumed, "not_ok_before": self.not_ok_before,
                "scored": self.scored, "from_store": self.from_store,
                "failed": {"total": self.failed, "by_kind": dict(self.by_status.get(ERROR, {}))},
                "skipped": {"total": self.skipped, "by_kind": dict(self.by_status.get(SKIPPED, {}))},
                "windows": self.windows, "silent_windows": self.silent_windows,
                "audio_seconds": round(self.audio_seconds, 3), "seconds": round(self.seconds, 3),
                "model_seconds": round(self.model_seconds, 3), "files_per_second": round(done / wall, 3),
                "audio_hours_per_hour": round(self.audio_seconds / wall, 3),
                "challenge_scores": self.challenge_scores, "challenge_left_out": self.challenge_left_out,
                "exit_code": self.exit_code}

    def lines(self) -> list[str]:
        done = self.scored + self.failed + self.skipped
        wall = max(self.seconds, 1e-9)
        from_store = f" ({self.from_store} from the store)" if self.from_store else ""
        lines = [f"{self.out}: {self.scored} scored" + from_store
                 + f", {self.failed} failed, {self.skipped} skipped"
                 + (f" (+{self.resumed} rows from before, resumed)" if self.resumed else ""),
                 f"{_duration(self.audio_seconds)} of audio, {self.windows} windows ({self.silent_windows} silent, "
                 f"left out), in {_duration(self.seconds)}: {done / wall:.1f} files/s, "
                 f"{self.audio_seconds / wall:.0f} audio-hours per hour; model forward {self.model_seconds / wall:.0%} "
                 "of the time"]
        lines += [f"  {kind}: {n} (e.g. {self.examples[kind]})" for kind, n in self.errors.most_common()]
        if self.challenge:
            lines.append(f"{self.challenge}: {self.challenge_scores} scores as {CHALLENGE_MEANING}; "
                         f"{self.challenge_left_out} failed or skipped inputs have no score and are left out "
                         f"(their rows and reasons: {self.table})")
        return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def score(model: str | Path, paths: list[str], out: str | Path, options: ScoreOptions = ScoreOptions(),
          windows_out: str | Path | None = None, resume: bool = False, epoch: str | int = "best",
          console=None, stdin=None) -> ScoreSummary:
    """Score every input named by `paths` with the run at `model`; write one row per input to
    `out` (and one per window to `windows_out`). Raises ScoreError, SourceError or RunError, before
    any output is touched, when it cannot start as asked."""
    from rich.console import Console

    console = console or Console(stderr=True)
    options = options.checked()
    out, challenge, windows_out = _outputs(Path(out), windows_out, options.format, resume)
    run = load_model(model, epoch)
    config = window_config(run, options)
    rule = FileRule.of(run, options)
    constants, metadata = _table_header(run, config, rule)
    store = None
    if options.features_from:
        store = open_feature_store(options.features_from, run, config, console)
        metadata["features_from"] = f"{store.path}@{store.version}"
    items = expand([str(p) for p in paths], stdin)
    scorer = Scorer(run, options.device)

    with _locked(out, windows_out):   # one writer per table, as featurize per store
        before, complete = previous_rows(out, resume)
        other = {(r.get("run_id"), r.get("aggregate"), r.get("calibration") or "") for r in before
                 if r.get("status") == OK}
        if other - {(run.run_id, rule.name, constants["calibration"])}:
            raise ScoreError(f"{out} holds scores of {sorted(other)} (run id, aggregate, calibration); --resume needs "
                             f"the same --model/--epoch/--aggregate/--calibration ({run.run_id}, {rule.name}, "
                             f"{constants['calibration']!r}) or a new --out")
        done = {(r["path"], r["member"]) for r in before}
        summary = ScoreSummary(str(out), run.run_id, resumed=len(before),
                               not_ok_before=sum(r.get("status") != OK for r in before))
        results = _Results(items, FileWindows(rule), constants, summary)
        results.rows = TableWriter(out, COLUMNS, metadata, before, rewrite=not complete)
        try:
            if windows_out is not None:
                results.window_rows = _window_writer(windows_out, metadata, done, resume)
            _score_items(scorer, items, done, config, options, results, console, store)
        finally:
            results.close()
        summary.rows = summary.resumed + summary.scored + summary.failed + summary.skipped
        summary.table = str(out)
        if options.format != "table":   # only after a finished run: a partial one must not look complete
            summary.challenge = str(challenge)
            summary.challenge_scores, summary.challenge_left_out = write_challenge(
                challenge, options.format, previous_rows(out, True)[0])
        return summary


def _outputs(out: Path, windows_out, fmt: str, resume: bool) -> tuple[Path, Path, Path | None]:
    """(the table, the challenge file, the window table) of --out/--format/--windows, checked before
    any work: with a challenge format the table goes beside --out (tables.status_table)."""
    challenge = out
    if fmt != "table":   # the challenge file is made from the table's ok rows at the end
        check_output("--out", challenge)
        if challenge.exists() and not resume:
            raise ScoreError(f"{challenge} exists; pass --resume to continue its run, or remove it")
        out = status_table(challenge)
    windows_out = None if windows_out is None else Path(windows_out)
    for option, path in (("--out", out), ("--windows", windows_out)):
        if path is not None:
            check_output(option, path)
            output_format(path)
    if windows_out is not None and windows_out.absolute() == out.absolute():
        raise ScoreError(f"--windows {windows_out} is the --out table too; give the window table its own file")
    return out, challenge, windows_out


def _table_header(run, config: WindowConfig, rule: FileRule) -> tuple[dict, dict]:
    """(the columns every row repeats, the table's metadata)."""
    rate = config.frontend.sample_rate
    constants = {"threshold": rule.threshold, "score_meaning": SCORE_MEANING, "aggregate": rule.name,
                 "run_id": run.run_id, "frontend_hash": config.frontend.hash(),
                 "calibration": rule.calibration.name if rule.calibration is not None else ""}
    metadata = {"dfdetect": __version__, "score": SCORE_MEANING, "decision": "fake when score >= threshold",
                "run": str(run.path), **constants, "window_seconds": config.window / rate,
                "hop_seconds": config.hop / rate,
                "llr": "natural-log LLR fake vs real, higher = more likely fake; llr_decision: fake when llr > "
                       f"{-bayes_threshold():.4f} (the Bayes threshold of Pspoof 0.05, Cmiss 1, Cfa 10)",
                "calibration_fitted": rule.calibration.describe() if rule.calibration is not None else None}
    return constants, metadata


@contextlib.contextmanager
def _locked(*paths: Path | None):
    """One writer per table (--out, --windows), as featurize per store."""
    with contextlib.ExitStack() as held:
        for option, path in zip(("--out", "--windows"), paths):
            if path is not None:
                held.enter_context(ExclusiveLock(str(path), lambda holder, o=option, p=path: ScoreError(
                    f"another score is writing {p} ({holder}); wait for it to finish, or give a different {o}"),
                    remove=True))
        yield


def _window_writer(path: Path, metadata: dict, done: set, resume: bool) -> TableWriter:
    """The window table; on --resume, window rows of a file whose row is missing (interrupted between
    the two writes) go: that file is rescored."""
    before, complete = previous_rows(path, resume, WINDOW_COLUMNS, "--windows")
    kept = [r for r in before if (r["path"], r["member"]) in done]
    return TableWriter(path, WINDOW_COLUMNS, metadata, kept, not complete or len(kept) < len(before))


class _Results:
    """Each finished file's row (and window rows) from its FileOutcome, and the summary's counts."""

    def __init__(self, items: list[Item], files: FileWindows, constants: dict, summary: ScoreSummary):
        self.items, self.files, self.constants, self.summary = items, files, constants, summary
        self.rows: TableWriter | None = None
        self.window_rows: TableWriter | None = None

    def finish(self, result: FileResult) -> None:
        item, summary = self.items[result.item], self.summary
        path, member = item.key
        outcome = self.files.finish(result, item.where)
        if outcome.status == OK:
            if self.window_rows is not None:  # before the file's row: a file row means its windows are there
                arrays = (outcome.window, outcome.start, outcome.end, outcome.silent, outcome.scores)
                for w, s, e, q, p in zip(*(a.tolist() for a in arrays)):
                    self.window_rows.write({"path": path, "member": member, "window": w, "start": round(s, 4),
                                            "end": round(e, 4), "silent": q, "score": rounded(p, SCORE_DIGITS),
                                            "score_meaning": SCORE_MEANING})
            summary.scored += 1
            summary.from_store += result.features == STORE
            summary.audio_seconds += result.duration or 0.0
            summary.windows += result.windows
            summary.silent_windows += result.silent_windows
        else:
            summary.failed += outcome.status == ERROR
            summary.skipped += outcome.status == SKIPPED
            summary.by_status[outcome.status][outcome.error_kind] += 1
            summary.examples.setdefault(outcome.error_kind, printable(outcome.error))
        self.rows.write({"path": path, "member": member, "status": outcome.status, "score": outcome.table_score,
                         "decision": outcome.decision, "llr": outcome.table_llr, "llr_decision": outcome.llr_decision,
                         "duration": rounded(result.duration, 3),
                         "sample_rate": result.sample_rate, "channels": result.channels,
                         "container": result.container, "windows": result.windows,
                         "silent_windows": result.silent_windows, "error_kind": outcome.error_kind,
                         "features": result.features if outcome.status == OK else "",
                         "error": printable(outcome.error), "warning": printable(result.warning), **self.constants})

    def close(self) -> None:
        for writer in (self.rows, self.window_rows):
            if writer is not None:
                writer.close()


def _score_items(scorer: Scorer, items: list[Item], done: set, config: WindowConfig, options: ScoreOptions,
                 results: _Results, console, store=None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.perf_counter()
    summary = results.summary
    todo = [(i, item) for i, item in enumerate(items) if item.key not in done]
    decided, pending = [], []   # outcomes known from the listing; inputs for the workers
    for i, item in todo:
        if item.status:
            decided.append(FileResult(i, item.status, item.error_kind, item.error))
        elif item.size is not None and item.size > options.max_file_mb * 1e6:
            decided.append(FileResult(i, ERROR, "too_large", f"{item.where}: {item.size / 1e6:.0f} MB, over the "
                                      f"--max-file-mb limit of {options.max_file_mb:g} MB; not read"))
        else:
            pending.append((i, item))
    stored, pending = store_matches(store, pending, config) if store is not None else ([], pending)
    columns = [TextColumn("score"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[files]:.1f} files/s"),
               TextColumn("{task.fields[rate]:.0f} audio-h/h"), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("files", total=len(todo), files=0.0, rate=0.0)

        def advance() -> None:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            n = summary.scored + summary.failed + summary.skipped
            bar.update(task, completed=n, files=n / elapsed, rate=summary.audio_seconds / elapsed)

        def scored(piece: Piece) -> None:
            score_piece(scorer, piece, results.files)
            for result in piece.finished:
                results.finish(result)
            advance()

        for result in decided:
            results.finish(result)
        advance()
        if stored:
            live = dict(pending)
            for piece in store_pieces(store, stored, scorer.inputs, config.frontend.clip_seconds, config.batch_size):
                if isinstance(piece, Piece):
                    scored(piece)
                else:  # a damaged store row: that file is decoded and scored live instead
                    index, message = piece
                    console.print(f"warning: {message}; scoring {printable(items[index].where)} live",
                                  soft_wrap=True, highlight=False, markup=False)
                    live[index] = items[index]
            pending = sorted(live.items(), key=lambda p: p[0])
        for piece in _pieces(pending, config, options):
            scored(piece)
    summary.seconds = time.perf_counter() - t0
    summary.model_seconds = scorer.seconds


def _pieces(pending: list[tuple[int, Item]], config: WindowConfig, options: ScoreOptions) -> Iterator[Piece]:
    """Pieces from lanes on dask worker processes, or in this process (workers=0).

    Workers by default: decoders run apart from the coordinator, so a crash in FFmpeg or
    libsndfile on a hostile file costs that file's row, not the run (in this process, --resume
    would crash on the same file again). A window's features cost about half of Mel-AASIST's
    forward on a core, so a third of the cores (at least one) decode and featurize, and the model
    keeps the cores the local workers leave. On 2 cores this is ~30% slower than workers=0, where
    torch's two threads nearly halve the forward (bench/score.py); both are far above 100x real time."""
    if not pending:
        return
    if options.workers == 0 and not options.scheduler:
        yield from local_pieces(make_lanes(pending, 1), config)
        return

    cores = os.cpu_count() or 1
    workers = max(1, cores // 3) if options.workers is None else options.workers
    threads = torch.get_num_threads()
    if not options.scheduler:
        torch.set_num_threads(max(1, cores - workers))
    try:
        with dask_client(options.scheduler, workers, preload=(__name__,)) as client:
            n = len(client.scheduler_info()["workers"])
            yield from dask_pieces(make_lanes(pending, n), config, client)
    finally:
        torch.set_num_threads(threads)
