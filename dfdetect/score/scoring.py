"""Bulk scoring: files, folders, archives and lists of audio from the wild -> one table, every input
accounted for.

    coordinator: expand the inputs (sources.py) -> lanes of consecutive items -> run the model on
                 each piece of windows as it arrives -> aggregate per file -> one row per input
    worker:      a lane (a dask actor) opens its items one by one, decodes them as a stream
                 (score/stream.py), cuts sliding windows, prepares each window exactly as
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
rows say "live"). Rows are read in whole-chunk groups (`store_pieces`); inputs not in the store are
scored live. The store must match the run: same frontend hash, every array the head reads, and the
same WavLM (model, revision, layers, normalisation) as the run was trained on, else ScoreError.

Scores are P(fake): higher = more likely fake (labels: 1 = fake, 0 = real). A file's score
aggregates its window scores; silent windows (peak below the frontend's silence level) are left
out and counted. The aggregates:

    mean  (default) the mean of the window probabilities. The run's threshold was chosen on single
          clips' scores, and the mean stays on that scale whatever the file's length: one false
          alarm among 40 windows moves it by 1/40, and a file that is fake throughout scores high.
    max   the most suspicious window. Flags a short spliced segment in a long real recording, but
          its false-alarm rate grows with the number of windows, so long real files drift to "fake"
          at a clip-level threshold.
    topk  the mean of the k highest windows (--top-k): between the two, a segment of about k
          windows decides.

Outputs by extension (.csv, .jsonl, .parquet), one row per input in the order inputs finish; the
`score_meaning` column says what the score is in every row (and the Parquet schema metadata holds
the run, threshold, window and hop). CSV and JSONL rows are written as they finish, so an
interrupted run keeps them and `--resume` continues it; Parquet is written next to the output and
moved into place when the run ends (also when it is interrupted).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dfdetect import __version__
from dfdetect.devices import resolve_device
from dfdetect.errors import ConfigError, DfdetectError
from dfdetect.featurize.audio import AudioError
from dfdetect.featurize.frontend import Frontend, FrontendConfig
from dfdetect.score.sources import ERROR, OK, SKIPPED, Item, Opener, expand, printable
from dfdetect.score.stream import AudioStream, sliding_windows
from dfdetect.store.schema import wavlm_differences

AGGREGATES = ("mean", "max", "topk")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
SCORE_MEANING = "P(fake): higher = more likely fake"
LANE_FILES = 64          # at most this many consecutive inputs per lane
LANES_PER_WORKER = 2     # one decoding while the other's piece travels or waits to be scored

# Output columns and their types (the Parquet schema; CSV/JSONL write the same names in this order).
COLUMNS = {
    "path": str, "member": str, "status": str, "score": float, "decision": str, "threshold": float,
    "score_meaning": str, "duration": float, "sample_rate": int, "channels": int, "container": str,
    "windows": int, "silent_windows": int, "aggregate": str, "features": str, "run_id": str,
    "frontend_hash": str, "error_kind": str, "error": str,
}
LIVE, STORE = "live", "store"   # the `features` column: decoded and windowed here, or read from --features-from
WINDOW_COLUMNS = {"path": str, "member": str, "window": int, "start": float, "end": float,
                  "silent": bool, "score": float, "score_meaning": str}


class ScoreError(DfdetectError):
    """Scoring cannot start as asked (a usage error); the message says what to change."""


@dataclass(frozen=True)
class ScoreOptions:
    window: float | None = None   # seconds; default: the run's clip length
    hop: float | None = None      # seconds; default: half the window
    aggregate: str = "mean"
    top_k: int = 3
    batch_size: int = 64
    max_file_mb: float = 2048.0
    max_hours: float = 12.0
    workers: int | None = None    # None: a third of the cores, at least 1 (see _pieces); 0: in-process
    scheduler: str | None = None
    device: str = "auto"
    features_from: str | None = None   # STORE[@VERSION]: score its rows' features for files it holds


@dataclass(frozen=True)
class WindowConfig:
    """What a worker needs to turn items into pieces; small and picklable."""
    frontend: FrontendConfig
    window: int                   # samples at the frontend's rate
    hop: int
    features: tuple[str, ...]     # computed on the worker: mel / lfcc
    waveforms: bool               # ship the prepared waveforms too (for WavLM)
    batch_size: int
    max_seconds: float


# -- worker side ----------------------------------------------------------------------------------
@dataclass
class FileResult:
    item: int                      # index into the coordinator's list of inputs
    status: str = OK
    error_kind: str = ""
    error: str = ""
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    container: str = ""
    windows: int = 0
    silent_windows: int = 0
    features: str = LIVE


@dataclass
class Piece:
    """Up to batch_size windows, possibly of several files, and the files that finished with them
    (all of a file's windows arrive before or with its FileResult)."""
    item: np.ndarray               # [n] input index per window
    window: np.ndarray             # [n] window number within its file
    start: np.ndarray              # [n] seconds
    end: np.ndarray                # [n] seconds
    silent: np.ndarray             # [n] bool: left out of the scores
    inputs: dict[str, np.ndarray]  # model inputs of the non-silent windows, in order
    finished: list[FileResult]
    last: bool = False

    @classmethod
    def of_results(cls, finished: list[FileResult]) -> "Piece":
        """A piece without windows that only reports finished files."""
        empty = np.zeros(0, np.int64)
        return cls(empty, empty, empty / 1.0, empty / 1.0, empty.astype(bool), {}, finished)


class _Batch:
    def __init__(self, config: WindowConfig, frontend: Frontend):
        self.config, self.frontend = config, frontend
        self.rows: list[tuple[int, int, int, int, bool]] = []
        self.waves: list[np.ndarray] = []
        self.finished: list[FileResult] = []

    def add(self, item: int, window: int, start: int, length: int, wave: np.ndarray | None) -> None:
        self.rows.append((item, window, start, start + length, wave is None))
        if wave is not None:
            self.waves.append(wave)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.config.batch_size

    def take(self, last: bool = False) -> Piece:
        rate = self.config.frontend.sample_rate
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, 5)
        waves = np.stack(self.waves) if self.waves else np.zeros((0, self.config.frontend.clip_samples), np.float32)
        inputs = {}
        if len(waves):
            # float16: the dtype the heads were trained on (the store's), and half the transfer
            inputs = {k: v.astype(np.float16) for k, v in self.frontend.features(waves, self.config.features).items()}
            if self.config.waveforms:
                inputs["waveform"] = waves
        piece = Piece(rows[:, 0], rows[:, 1], rows[:, 2] / rate, rows[:, 3] / rate, rows[:, 4].astype(bool),
                      inputs, self.finished, last)
        self.rows, self.waves, self.finished = [], [], []
        return piece


def lane_pieces(items: list[tuple[int, Item]], config: WindowConfig) -> Iterator[Piece]:
    """Decode, window and featurize the items in order; yield pieces, the last with last=True.
    Every item ends as one FileResult, whatever is wrong with its bytes."""
    frontend = Frontend(config.frontend)
    batch = _Batch(config, frontend)
    opener = Opener()
    try:
        for index, item in items:
            result = FileResult(index)
            for number, start, length, prepared in _windows_of(item, opener, frontend, config, result):
                batch.add(index, number, start, length, prepared)
                if batch.full:
                    yield batch.take()
            batch.finished.append(result)
        yield batch.take(last=True)
    finally:
        opener.close()


def _windows_of(item: Item, opener: Opener, frontend: Frontend, config: WindowConfig,
                result: FileResult) -> Iterator[tuple[int, int, int, np.ndarray | None]]:
    """(number, start, length, prepared window or None when silent) of one item; what goes wrong
    with the item ends it and is recorded in `result`."""
    stream = None
    try:
        with opener.open(item) as source:
            stream = AudioStream(source, item.where, config.frontend, config.max_seconds)
            info = stream.info
            result.sample_rate, result.channels, result.container = info.sample_rate, info.channels, info.container
            for number, (start, wave) in enumerate(sliding_windows(stream.blocks(), config.window, config.hop)):
                prepared = _prepare(frontend, wave, item.where)
                result.windows += 1
                result.silent_windows += prepared is None
                yield number, start, len(wave), prepared
        if result.silent_windows == result.windows:
            raise AudioError(item.where, "silent", f"silent: all {result.windows} windows peak below "
                             f"{config.frontend.silence_peak:g}; nothing to score")
    except AudioError as e:
        result.status, result.error_kind, result.error = ERROR, e.kind, str(e)
    except Exception as e:  # a decoder bug on one hostile file must not stop the batch
        result.status, result.error_kind = ERROR, "internal"
        result.error = f"{item.where}: unexpected {type(e).__name__}: {e}"
    result.duration = stream.seconds if stream is not None else None


def _prepare(frontend: Frontend, wave: np.ndarray, where: str) -> np.ndarray | None:
    """A window as training prepared a clip (crop/pad to the clip length, peak normalisation);
    None for a silent window."""
    try:
        return frontend.peak_normalise(frontend.crop_or_pad(wave), where)
    except AudioError:
        return None


class Lane:
    """One lane on a dask worker (an actor): `pull()` returns its next Piece."""

    def __init__(self, items: list[tuple[int, Item]], config: WindowConfig):
        torch.set_num_threads(1)  # one core per worker process, as in featurize
        self._pieces = lane_pieces(items, config)

    def pull(self) -> Piece:
        return next(self._pieces)


# -- coordinator: lanes ----------------------------------------------------------------------------
def make_lanes(pending: list[tuple[int, Item]], workers: int) -> list[list[tuple[int, Item]]]:
    """Consecutive runs of inputs (members of one archive stay together), a few per worker. Each
    lane opening a compressed tar decompresses it from the start up to its first member, so the
    members of one are split into no more lanes than run at once: at most that many passes."""
    workers = max(1, workers)
    size = max(1, min(LANE_FILES, math.ceil(len(pending) / (4 * workers))))
    lanes = []
    for archive, group in itertools.groupby(pending, key=lambda p: p[1].path if p[1].sequential else None):
        group = list(group)
        n = size if archive is None else max(size, math.ceil(len(group) / (LANES_PER_WORKER * workers)))
        lanes += [group[i:i + n] for i in range(0, len(group), n)]
    return lanes


def _local_pieces(lanes, config: WindowConfig) -> Iterator[Piece]:
    for lane in lanes:
        yield from lane_pieces(lane, config)


@dataclass
class _Running:
    lane: list[tuple[int, Item]]
    created: object                # the future that holds the actor alive
    actor: object
    pending: object                # the ActorFuture of the next piece
    finished: set = field(default_factory=set)


def _dask_pieces(lanes, config: WindowConfig, client) -> Iterator[Piece]:
    """Pieces of all lanes in the order they are ready, LANES_PER_WORKER lanes per worker at a
    time. A lane whose worker dies (a decoder crash, out of memory) reports the file it was on as
    an error and its remaining files go on in a new lane."""
    addresses = sorted(client.scheduler_info()["workers"]) or [None]
    queue, running, started = deque(lanes), {}, 0
    while queue or running:
        while queue and len(running) < LANES_PER_WORKER * len(addresses):
            lane = queue.popleft()
            where = addresses[started % len(addresses)]
            created = client.submit(Lane, lane, config, actor=True, pure=False,
                                    workers=[where] if where else None, allow_other_workers=True)
            actor = created.result()
            running[started] = _Running(lane, created, actor, actor.pull())
            started += 1
        key = _first_ready(running)
        lane = running[key]
        try:
            piece = lane.pending.result()
        except Exception as e:
            del running[key]
            left = [(i, item) for i, item in lane.lane if i not in lane.finished]
            if left:
                culprit = FileResult(left[0][0], ERROR, "worker_failed",
                                     f"{left[0][1].where}: the worker scoring this file failed ({type(e).__name__}: "
                                     f"{e}); it may have crashed on this file or run out of memory")
                if left[1:]:
                    queue.appendleft(left[1:])
                yield Piece.of_results([culprit])
            continue
        lane.finished.update(r.item for r in piece.finished)
        if piece.last:
            del running[key]
        else:
            lane.pending = lane.actor.pull()
        yield piece


def _first_ready(running: dict) -> int:
    while True:
        for key, lane in running.items():
            if lane.pending.done():
                return key
        time.sleep(0.002)


# -- coordinator: features from a store (--features-from) ------------------------------------------------
def open_feature_store(spec: str, run):
    """The store version `spec` (PATH[@VERSION]) names, checked against the run with the one
    compatibility rule (store.fit_problems): every array the head reads, the same frontend, the
    WavLM the head was trained on. ScoreError says what differs."""
    from dfdetect.store import StoreError, open_store

    try:
        store = open_store(spec)
    except StoreError as e:
        raise ScoreError(f"--features-from {spec}: {e}") from None
    problems = store.fit_problems(run.inputs, run.frontend_hash, run.wavlm_info, run.arch)
    if problems:
        raise ScoreError(f"--features-from {store.path}@{store.version} does not fit the run {run.path}: "
                         + "; ".join(problems) + " (or score the files live, without --features-from)")
    return store


def store_matches(store, pending: list[tuple[int, Item]]) -> tuple[list[tuple[int, int]], list[tuple[int, Item]]]:
    """([(input index, store row)] of the plain files that are ok rows of the store, the rest)."""
    meta = store.meta
    rows = {os.path.abspath(str(p)): r for r, p in zip(store.rows().tolist(), meta["path"][store.rows()])}
    matched, rest = [], []
    for index, item in pending:
        row = None if item.member or item.archive else rows.get(os.path.abspath(item.path))
        if row is None:
            rest.append((index, item))
        else:
            matched.append((index, row))
    return matched, rest


def store_pieces(store, matched: list[tuple[int, int]], features: tuple[str, ...], clip_seconds: float,
                 batch_size: int) -> Iterator[Piece | tuple[int, str]]:
    """Pieces of one window per matched input, from its store row. Rows are read sorted, in whole
    read units (the lcm of the arrays' chunk rows), one unit at a time. A row whose features are not
    finite yields (input index, message) instead: the caller scores that input live."""
    arrays = {k: store.array(k) for k in features}
    unit = math.lcm(*(a.chunks[0] for a in arrays.values()))
    meta = store.meta
    matched = sorted(matched, key=lambda m: m[1])
    batch: list[tuple[int, int, dict]] = []

    def take() -> Piece:
        index = np.array([i for i, _, _ in batch], np.int64)
        duration = np.array([float(meta["duration"][r]) for _, r, _ in batch])
        start = np.maximum(0.0, (duration - clip_seconds) / 2)
        finished = [FileResult(i, OK, duration=float(meta["duration"][r]), sample_rate=int(meta["sample_rate"][r]),
                               channels=int(meta["channels"][r]), container=str(meta["container"][r]), windows=1,
                               features=STORE) for i, r, _ in batch]
        inputs = {k: np.stack([x[k] for _, _, x in batch]) for k in features}
        piece = Piece(index, np.zeros(len(batch), np.int64), start, start + np.minimum(duration, clip_seconds),
                      np.zeros(len(batch), bool), inputs, finished)
        batch.clear()
        return piece

    for _, group in itertools.groupby(matched, key=lambda m: m[1] // unit):
        group = list(group)
        values = store.read_rows(features, [row for _, row in group])    # whole chunks of every array
        for i, (index, row) in enumerate(group):
            x = {k: values[k][i] for k in features}
            bad = [k for k in features if not np.isfinite(x[k]).all()]
            if bad:
                yield index, f"{store.path}@{store.version} row {row}: {', '.join(bad)} not finite"
                continue
            batch.append((index, row, x))
            if len(batch) >= batch_size:
                yield take()
    if batch:
        yield take()


# -- coordinator: the model --------------------------------------------------------------------------
class Scorer:
    """The run's head (and WavLM for WavLM heads) on one device: model inputs -> P(fake).
    `seconds` counts the time spent in forward passes."""

    def __init__(self, run, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = run.model.to(self.device).eval()
        self.inputs = run.inputs
        self.wavlm = None
        if "wavlm" in self.inputs:
            from dfdetect.featurize.wavlm import load_wavlm

            if run.wavlm_config is None:
                raise ScoreError(f"{run.path} reads WavLM features but records no WavLM config")
            self.wavlm = load_wavlm(run.wavlm_config, self.device)
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
        batch = {k: torch.from_numpy(inputs[k]).to(self.device) for k in self.inputs if k in inputs}
        if "wavlm" in self.inputs and "wavlm" not in inputs:
            batch["wavlm"] = torch.from_numpy(self.wavlm(inputs["waveform"])["layers"]).to(self.device)
        scores = torch.sigmoid(self.model(batch).float()).cpu().numpy()
        self.seconds += time.perf_counter() - t0
        return scores


def aggregate(scores: np.ndarray, how: str = "mean", top_k: int = 3) -> float:
    """A file's score from its (non-silent) window scores; see the module docstring."""
    if how == "mean":
        return float(np.mean(scores))
    if how == "max":
        return float(np.max(scores))
    if how == "topk":
        return float(np.mean(np.sort(scores)[-top_k:]))
    raise ConfigError(f"unknown aggregate {how!r}; valid: {', '.join(AGGREGATES)}")


# -- outputs -------------------------------------------------------------------------------------------
def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ScoreError(f"{path}: the output format comes from the extension; use one of {', '.join(FORMATS)}")
    return fmt


def previous_rows(path: Path, resume: bool) -> tuple[list[dict], bool]:
    """(rows, complete) already in an output; complete is False when its last line was cut off by
    an interrupted write (that line is left out). An existing output is only continued on --resume."""
    if not path.exists():
        return [], True
    if not resume:
        raise ScoreError(f"{path} exists; pass --resume to continue it, or remove it")
    if output_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), True
    text = path.read_text(encoding="utf-8")
    complete = text == "" or text.endswith("\n")
    lines = io.StringIO(text, newline="\n").readlines()[:None if complete else -1]  # only \n ends a row
    if output_format(path) == "csv":
        return list(csv.DictReader(lines)), complete
    return [json.loads(line) for line in lines if line.strip()], complete


class TableWriter:
    """Rows into .csv/.jsonl, appended and flushed as they come, or into .parquet, in row groups
    written beside the output and moved into place by close(). `rows` are earlier rows that stay
    before the new ones; `rewrite` replaces a CSV/JSONL file with them first (a cut-off last line,
    or rows left out)."""

    def __init__(self, path: Path, columns: dict, metadata: dict, rows: list[dict] = (), rewrite: bool = False):
        self.path, self.columns, self.fmt = Path(path), columns, output_format(Path(path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            types = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
            self._schema = pa.schema([(k, types[t]) for k, t in columns.items()],
                                     metadata={"dfdetect": json.dumps(metadata)})
            self._writer = pq.ParquetWriter(self._partial, self._schema)
            self._buffer: list[dict] = []
            for row in rows:
                self.write(row)
            return
        if rewrite:
            self._open(self._partial, "w")
            for row in rows:
                self.write(row)
            self._file.close()
            os.replace(self._partial, self.path)
        self._open(self.path, "a")

    def _open(self, path: Path, mode: str) -> None:
        new = mode == "w" or not path.exists()
        self._file = open(path, mode, newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, list(self.columns)) if self.fmt == "csv" else None
        if new and self._csv:
            self._csv.writeheader()

    def write(self, row: dict) -> None:
        if self.fmt == "parquet":
            self._buffer.append(row)
            if len(self._buffer) >= 10_000:
                self._flush()
        elif self._csv:
            self._csv.writerow({k: "" if row.get(k) is None else row[k] for k in self.columns})
            self._file.flush()
        else:
            self._file.write(json.dumps({k: row.get(k) for k in self.columns}, ensure_ascii=False) + "\n")
            self._file.flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
            self._buffer = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush()
            self._writer.close()
            os.replace(self._partial, self.path)
        else:
            self._file.close()


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
    errors: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every input in the output was scored; 1 when some failed or were skipped."""
        return 0 if self.failed + self.skipped + self.not_ok_before == 0 else 1

    def lines(self) -> list[str]:
        done = self.scored + self.failed + self.skipped
        wall = max(self.seconds, 1e-9)
        lines = [f"{self.out}: {self.scored} scored" + (f" ({self.from_store} from the store)" if self.from_store else "")
                 + f", {self.failed} failed, {self.skipped} skipped"
                 + (f" (+{self.resumed} rows from before, resumed)" if self.resumed else ""),
                 f"{_duration(self.audio_seconds)} of audio, {self.windows} windows ({self.silent_windows} silent, "
                 f"left out), in {_duration(self.seconds)}: {done / wall:.1f} files/s, "
                 f"{self.audio_seconds / wall:.0f} audio-hours per hour; model forward {self.model_seconds / wall:.0%} "
                 "of the time"]
        lines += [f"  {kind}: {n} (e.g. {self.examples[kind]})" for kind, n in self.errors.most_common()]
        return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def score(model: str | Path, paths: list[str], out: str | Path, options: ScoreOptions = ScoreOptions(),
          windows_out: str | Path | None = None, resume: bool = False, epoch: str | int = "best",
          console=None, stdin=None) -> ScoreSummary:
    """Score every input named by `paths` with the run at `model`; write one row per input to
    `out` (and one per window to `windows_out`). Raises ScoreError, SourceError or RunError, before
    any output is touched, when it cannot start as asked."""
    from rich.console import Console

    from dfdetect.models.runs import load_run

    console = console or Console(stderr=True)
    out = Path(out)
    windows_out = None if windows_out is None else Path(windows_out)
    if options.aggregate not in AGGREGATES:
        raise ScoreError(f"unknown --aggregate {options.aggregate!r}; valid: {', '.join(AGGREGATES)}")
    for name in ("window", "hop", "top_k", "batch_size", "max_file_mb", "max_hours"):
        if getattr(options, name) is not None and getattr(options, name) <= 0:
            raise ScoreError(f"--{name.replace('_', '-')} must be positive")
    for path in (out, windows_out):
        if path is not None:
            output_format(path)
    run = load_run(model, epoch)
    frontend = run.frontend_config
    window = options.window or frontend.clip_seconds
    hop = options.hop or window / 2
    config = WindowConfig(frontend, int(round(window * frontend.sample_rate)), int(round(hop * frontend.sample_rate)),
                          tuple(k for k in ("mel", "lfcc") if k in run.inputs), "wavlm" in run.inputs,
                          options.batch_size, options.max_hours * 3600)
    aggregate_name = f"top{options.top_k}" if options.aggregate == "topk" else options.aggregate
    constants = {"threshold": run.threshold, "score_meaning": SCORE_MEANING, "aggregate": aggregate_name,
                 "run_id": run.run_id, "frontend_hash": frontend.hash()}
    metadata = {"dfdetect": __version__, "score": SCORE_MEANING, "decision": "fake when score >= threshold",
                "run": str(run.path), **constants, "window_seconds": window, "hop_seconds": hop}
    store = None
    if options.features_from:
        store = open_feature_store(options.features_from, run)
        metadata["features_from"] = f"{store.path}@{store.version}"
    items = expand([str(p) for p in paths], stdin)
    scorer = Scorer(run, options.device)

    before, complete = previous_rows(out, resume)
    other = {(r.get("run_id"), r.get("aggregate")) for r in before if r.get("status") == OK}
    if other - {(run.run_id, aggregate_name)}:
        raise ScoreError(f"{out} holds scores of {sorted(other)} (run id, aggregate); --resume needs the same "
                         f"--model/--epoch/--aggregate ({run.run_id}, {aggregate_name}) or a new --out")
    done = {(r["path"], r["member"]) for r in before}
    windows_before, windows_complete = previous_rows(windows_out, resume) if windows_out else ([], True)
    # window rows of a file whose row is missing (interrupted between the two writes) go; it is rescored
    windows_kept = [r for r in windows_before if (r["path"], r["member"]) in done]
    summary = ScoreSummary(str(out), run.run_id, resumed=len(before),
                           not_ok_before=sum(r.get("status") != OK for r in before))
    results = _Results(items, options, constants, summary)
    results.rows = TableWriter(out, COLUMNS, metadata, before, rewrite=not complete)
    try:
        if windows_out is not None:
            results.window_rows = TableWriter(windows_out, WINDOW_COLUMNS, metadata, windows_kept,
                                              rewrite=not windows_complete or len(windows_kept) < len(windows_before))
        _score_items(scorer, items, done, config, options, results, console, store)
    finally:
        results.close()
    summary.rows = summary.resumed + summary.scored + summary.failed + summary.skipped
    return summary


class _Results:
    """Window scores collected per file until its FileResult arrives; then its row (and window rows)."""

    def __init__(self, items: list[Item], options: ScoreOptions, constants: dict, summary: ScoreSummary):
        self.items, self.options, self.constants, self.summary = items, options, constants, summary
        self.rows: TableWriter | None = None
        self.window_rows: TableWriter | None = None
        self._windows: dict[int, list] = {}

    def add(self, piece: Piece, scores: np.ndarray) -> None:
        for index in np.unique(piece.item).tolist():
            m = piece.item == index
            self._windows.setdefault(index, []).append(
                (piece.window[m], piece.start[m], piece.end[m], piece.silent[m], scores[m]))

    def finish(self, result: FileResult) -> None:
        item, summary = self.items[result.item], self.summary
        path, member = item.key
        parts = self._windows.pop(result.item, [])   # an error drops the windows sent before it
        score = None
        if result.status == OK:
            window, start, end, silent, scores = (np.concatenate(c) for c in zip(*parts))
            score = aggregate(scores[~silent], self.options.aggregate, self.options.top_k)
            if self.window_rows is not None:  # before the file's row: a file row means its windows are there
                for w, s, e, q, p in zip(*(a.tolist() for a in (window, start, end, silent, scores))):
                    self.window_rows.write({"path": path, "member": member, "window": w, "start": round(s, 4),
                                            "end": round(e, 4), "silent": q, "score": _rounded(p, 6),
                                            "score_meaning": SCORE_MEANING})
            summary.scored += 1
            summary.from_store += result.features == STORE
            summary.audio_seconds += result.duration or 0.0
            summary.windows += result.windows
            summary.silent_windows += result.silent_windows
        else:
            summary.failed += result.status == ERROR
            summary.skipped += result.status == SKIPPED
            summary.errors[result.error_kind] += 1
            summary.examples.setdefault(result.error_kind, printable(result.error))
        decision = None if score is None else ("fake" if score >= self.constants["threshold"] else "real")
        self.rows.write({"path": path, "member": member, "status": result.status, "score": _rounded(score, 6),
                         "decision": decision, "duration": _rounded(result.duration, 3),
                         "sample_rate": result.sample_rate, "channels": result.channels,
                         "container": result.container, "windows": result.windows,
                         "silent_windows": result.silent_windows, "error_kind": result.error_kind,
                         "features": result.features if result.status == OK else "",
                         "error": printable(result.error), **self.constants})

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
    stored, pending = store_matches(store, pending) if store is not None else ([], pending)
    columns = [TextColumn("score"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[files]:.1f} files/s"),
               TextColumn("{task.fields[rate]:.0f} audio-h/h"), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("files", total=len(todo), files=0.0, rate=0.0)

        def advance() -> None:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            n = summary.scored + summary.failed + summary.skipped
            bar.update(task, completed=n, files=n / elapsed, rate=summary.audio_seconds / elapsed)

        def scored(piece: Piece) -> None:
            scores = np.full(len(piece.item), np.nan)
            if (~piece.silent).any():
                scores[~piece.silent] = scorer(piece.inputs)
            results.add(piece, scores)
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
        yield from _local_pieces(make_lanes(pending, 1), config)
        return
    from dfdetect.featurize.pipeline import dask_client

    cores = os.cpu_count() or 1
    workers = max(1, cores // 3) if options.workers is None else options.workers
    threads = torch.get_num_threads()
    if not options.scheduler:
        torch.set_num_threads(max(1, cores - workers))
    try:
        with dask_client(options.scheduler, workers) as client:
            n = len(client.scheduler_info()["workers"])
            yield from _dask_pieces(make_lanes(pending, n), config, client)
    finally:
        torch.set_num_threads(threads)
