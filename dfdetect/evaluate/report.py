"""`dfdetect report`: the reference study's tables, curves and failure warnings for a set of runs, as one
self-contained HTML page (figures embedded as PNG data URIs, no other file needed) and the same
tables as Markdown next to it (report.md).

    report = build_report(["runs/mel_cnn", "runs/mel_aasist"], "report.html", ood="dfeval")

Which numbers. Everything is read from the runs' metrics.jsonl and scores/ (nothing is rescored).
The ranking table uses each run's best-validation epoch (lowest validation EER, as `load_run(...,
"best")` picks it): the epoch one would deploy without peeking at test or OOD. A second table shows
the last epoch, because OOD performance can keep moving after validation stops improving (the reference study's
Mel-AASIST: 58.6% OOD accuracy at 20 epochs, 83.2% at 50). Accuracy, F1, recall, specificity and MCC
are at threshold 0.5, as the reference study reported them; EER follows the ASVspoof convention. Runs are ranked
by the chosen OOD set's accuracy (`ood`; default: the first OOD set of the first run). ROC/DET curves
and histograms come from scores/best/ (the best-validation epoch).

Warnings: the reference study's failure signatures, each with the numbers that triggered it (constants below).

Reference systems. Runs of the field's baselines (LFCC-GMM, LFCC-LCNN, AASIST, AASIST-L: the
registry's `baseline=True` architectures) are marked as such in the ranking, and every other run is
read against them: per set (test and each OOD set), its EER minus the best baseline's (lowest EER
at its own best-validation epoch), in EER points, and a warning when a head does not beat the best
baseline out of distribution, because a head that does not has not earned its parameters.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfdetect.errors import DfdetectError, check_output
from dfdetect.evaluate.evaluation import HEADER, fmt, fmt_ci
from dfdetect.evaluate.score_files import read_scores
from dfdetect.metrics import bayes_error_curves, det_curve, eer
from dfdetect.models.registry import (
    WAVLM_LARGE_BYTES,
    WAVLM_LARGE_PARAMETERS,
    count_parameters,
    get_architecture,
)
from dfdetect.models.runs import SEED_FOLDER, EpochRecord, RunFolder, load_run, seeded_name
from dfdetect.names import printable

# (a) The 100%-accuracy trap (the reference study, Part 3: test accuracy 100% while validation EER sat at 0.50):
# an epoch with test accuracy at least TRAP_TEST_ACCURACY and validation EER at least TRAP_VAL_EER.
TRAP_TEST_ACCURACY = 0.99
TRAP_VAL_EER = 0.40
# (b) A model that calls (nearly) everything real or everything fake out of distribution (the reference study:
# recall 0.74% on Deepfake-Eval; the MP3-corrupt CNN's specificity 0.00%): OOD recall or
# specificity at threshold 0.5 at most DEGENERATE_RATE, at the best-validation or the last epoch.
DEGENERATE_RATE = 0.05
# (c) Predictions anti-correlated with the truth (the reference study: the FLAC-corrupt CNN's MCC -0.0736): MCC
# at 0.5 below 0 on any eval set at the best-validation or the last epoch.
# (d) In- and out-of-distribution performance moving apart (the reference study, Part 4): the epoch of best test
# accuracy and the epoch of best OOD accuracy at least max(EPOCH_GAP_MIN, EPOCH_GAP_FRACTION x
# epochs) apart.
EPOCH_GAP_MIN = 3
# (f) an OOD set whose actDCF is this far above its minDCF: the decisions do not transfer
CALIBRATION_GAP_RATIO, CALIBRATION_GAP_MIN = 2.0, 0.2
EPOCH_GAP_FRACTION = 0.25


class ReportError(DfdetectError):
    """Runs that cannot be reported as asked; the message says why."""


@dataclass
class RunInfo:
    """What the report needs of one run folder."""
    path: Path
    name: str
    title: str                 # architecture, e.g. "Mel-AASIST"
    data: str                  # the training set, e.g. "asvspoof5.zarr:train (182,357 clips)"
    wavlm: str | None          # the WavLM model of a WavLM head
    parameters: int
    checkpoint_bytes: int      # measured: the best epoch's checkpoint file
    best_epoch: int
    records: list[EpochRecord]
    baseline: bool = False     # one of the field's reference systems
    audit: dict | None = None  # the shortcut audit of its train set (config.json; None: not audited)
    protocols: dict = field(default_factory=dict)   # set name -> how its files were scored (RunConfig.protocol)

    @property
    def kind(self) -> str:
        return "baseline" if self.baseline else "head"

    @property
    def last_epoch(self) -> int:
        return self.records[-1].epoch

    @property
    def set_names(self) -> list[str]:
        return list(self.records[-1].sets)

    def metric(self, epoch: int, name: str, key: str):
        """A metric of set `name` at `epoch`: eer/auc/min_dcf as stored, the rest at threshold 0.5;
        None when the run has no such set, NaN when the metric is undefined there."""
        record = self.record(epoch)
        if name not in record.sets:
            return None
        value = record.metric(name, key)
        return math.nan if value is None else value

    def record(self, epoch: int) -> EpochRecord:
        return next(r for r in self.records if r.epoch == epoch)


@dataclass
class RunWarning:
    run: str
    signature: str             # trap | degenerate | negative_mcc | epoch_gap
    message: str


@dataclass
class Report:
    html: Path
    markdown: Path
    runs: list[RunInfo]
    warnings: list[RunWarning]
    ood: str | None


def _missing(value) -> bool:
    return value is None or math.isnan(value)


# -- reading runs ------------------------------------------------------------------------------------------
def read_run(path: Path) -> RunInfo:
    """Records, best epoch and sizes of a run (load_run checks the folder and the checkpoint)."""

    run = load_run(path, "best")
    train = run.config.train_set   # its spec may say more than STORE:SPLIT (held-out generators)
    data = train["spec"].replace(train["store"], Path(train["store"].rstrip("/")).name)
    arch = get_architecture(run.arch)
    wavlm = (run.config.wavlm or {}).get("model") if arch.uses_wavlm else None
    checkpoint = RunFolder(path).checkpoint(run.epoch)
    size = f"{train['files']:,} files, {train['rows']:,} windows" if "files" in train else f"{train['rows']:,} clips"
    return RunInfo(path, seeded_name(path)[0], arch.title, f"{data} ({size})", wavlm,
                   count_parameters(run.model), checkpoint.stat().st_size, run.epoch, run.records, arch.baseline,
                   run.config.get("audit"), {name: run.config.protocol(name) for name in run.config.get("sets", {})})


def _choose_ood(runs: list[RunInfo], ood: str | None) -> tuple[list[str], str | None]:
    names = list(dict.fromkeys(n for r in runs for n in r.set_names if n.startswith("ood:")))
    if ood is None:
        return names, names[0] if names else None
    wanted = ood if ood.startswith("ood:") else "ood:" + ood
    if wanted not in names:
        raise ReportError(f"no run has an OOD set {ood!r}; they have: {', '.join(n[4:] for n in names) or 'none'}")
    return names, wanted


# -- warnings ----------------------------------------------------------------------------------------------
def _ranges(epochs: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    spans: list[list[int]] = []
    for e in epochs:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _epochs_to_check(run: RunInfo) -> list[tuple[int, str]]:
    best = [(run.best_epoch, f"epoch {run.best_epoch} (best validation)")]
    return best if run.best_epoch == run.last_epoch else best + [(run.last_epoch, f"epoch {run.last_epoch} (last)")]


def _ood_names(run: RunInfo) -> list[str]:
    return [n for n in run.set_names if n.startswith("ood:")]


def trap_warnings(run: RunInfo) -> list[str]:
    """(a) test accuracy near 100% while validation EER sits near chance, at any epoch."""
    epochs = [r.epoch for r in run.records]
    trap = [e for e in epochs if (run.metric(e, "test", "accuracy") or 0) >= TRAP_TEST_ACCURACY
            and (run.metric(e, "val", "eer") or 0) >= TRAP_VAL_EER]
    if not trap:
        return []
    e = trap[-1]
    return [f"the 100%-accuracy trap: test accuracy >= {TRAP_TEST_ACCURACY:.0%} while validation EER >= "
            f"{TRAP_VAL_EER} at epochs {_ranges(trap)} (epoch {e}: test accuracy "
            f"{run.metric(e, 'test', 'accuracy'):.2%}, validation EER {run.metric(e, 'val', 'eer'):.4f}); the model "
            "memorised its training distribution, trust validation over test"]


def degenerate_warnings(run: RunInfo) -> list[str]:
    """(b) OOD recall or specificity near 0 at threshold 0.5: everything called real, or fake."""
    found = []
    for epoch, when in _epochs_to_check(run):
        for name in _ood_names(run):
            recall, spec = run.metric(epoch, name, "recall"), run.metric(epoch, name, "specificity")
            c = run.record(epoch).at_05(name)
            for value, calls, rate in ((recall, "real", "recall"), (spec, "fake", "specificity")):
                if not _missing(value) and value <= DEGENERATE_RATE:
                    found.append(f"calls (nearly) everything {calls} on {name} at {when}: {rate} {value:.2%} at "
                                 f"threshold 0.5 (tp {c['tp']}, fn {c['fn']}, tn {c['tn']}, fp {c['fp']}; recall "
                                 f"{fmt(recall, 'recall')}, specificity {fmt(spec, 'specificity')})")
    return found


def negative_mcc_warnings(run: RunInfo) -> list[str]:
    """(c) MCC below 0 on any eval set at threshold 0.5."""
    return [f"MCC {mcc:.4f} < 0 on {name} at {when} (threshold 0.5): its predictions are anti-correlated with "
            "the truth; flipping them would do better"
            for epoch, when in _epochs_to_check(run) for name in run.set_names
            if not _missing(mcc := run.metric(epoch, name, "mcc")) and mcc < 0]


def epoch_gap_warnings(run: RunInfo) -> list[str]:
    """(d) The epoch of best test accuracy far from the epoch of best OOD accuracy."""
    epochs = [r.epoch for r in run.records]
    test = [run.metric(e, "test", "accuracy") for e in epochs]
    if any(map(_missing, test)):
        return []
    limit = max(EPOCH_GAP_MIN, EPOCH_GAP_FRACTION * len(epochs))
    best_test, found = epochs[int(np.argmax(test))], []
    for name in _ood_names(run):
        ood = [run.metric(e, name, "accuracy") for e in epochs]
        best_ood = epochs[int(np.argmax(ood))]
        if abs(best_test - best_ood) >= limit:
            found.append(f"best test accuracy at epoch {best_test} ({max(test):.2%}) but best {name} accuracy at "
                         f"epoch {best_ood} ({max(ood):.2%}): {abs(best_test - best_ood)} of {len(epochs)} epochs "
                         f"apart (limit {limit:g}); in- and out-of-distribution performance moved apart")
    return found


def best_baselines(runs: list[RunInfo], sets: list[str]) -> dict[str, tuple[RunInfo, float]]:
    """Per set, the baseline run with the lowest EER on it at its best-validation epoch (sets no
    baseline has are left out)."""
    best = {}
    for name in sets:
        have = [(r, r.metric(r.best_epoch, name, "eer")) for r in runs if r.baseline]
        have = [(r, v) for r, v in have if not _missing(v)]
        if have:
            best[name] = min(have, key=lambda rv: rv[1])
    return best


def baseline_warnings(runs: list[RunInfo], oods: list[str]) -> list[RunWarning]:
    """A head whose best-validation EER on an OOD set is not below the best baseline's there."""
    found = []
    for name, (base, base_eer) in best_baselines(runs, oods).items():
        for run in runs:
            value = None if run.baseline else run.metric(run.best_epoch, name, "eer")
            if not _missing(value) and value >= base_eer:
                found.append(RunWarning(run.name, "below_baseline", (
                    f"does not beat the best reference system on {name}: EER {value:.2%} at epoch {run.best_epoch} "
                    f"(best validation) against {base.title} ({base.name}) {base_eer:.2%}, "
                    f"{(value - base_eer) * 100:+.2f} EER points; out of distribution its {run.parameters:,} "
                    "parameters buy nothing over the baseline")))
    return found


def calibration_warnings(run: RunInfo) -> list[str]:
    """(f) at the best-validation epoch, an OOD set whose actDCF (LLRs by the validation calibration)
    is at least CALIBRATION_GAP_RATIO x its minDCF and CALIBRATION_GAP_MIN above it."""
    found = []
    for name in _ood_names(run):
        act, low = run.metric(run.best_epoch, name, "act_dcf"), run.metric(run.best_epoch, name, "min_dcf")
        if _missing(act) or _missing(low):
            continue
        if act >= CALIBRATION_GAP_RATIO * low and act >= low + CALIBRATION_GAP_MIN:
            found.append(f"{name}: actDCF {act:.4f} against minDCF {low:.4f} at epoch {run.best_epoch}: the scores "
                         "rank well but the decisions do not transfer: recalibrate on data like yours "
                         "(`dfdetect calibrate`)")
    return found


def find_warnings(run: RunInfo) -> list[RunWarning]:
    """Every failure signature the run shows, with the numbers that triggered it."""
    checks = {"trap": trap_warnings, "degenerate": degenerate_warnings, "negative_mcc": negative_mcc_warnings,
              "epoch_gap": epoch_gap_warnings, "calibration": calibration_warnings}
    return [RunWarning(run.name, signature, message) for signature, check in checks.items()
            for message in check(run)]


# -- figures -------------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def curves_figure(run: RunInfo) -> bytes:
    """The reference study's training dynamics: train loss, validation EER, and accuracy and EER of test and
    every OOD set per epoch; the dotted line is the best-validation epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r.epoch for r in run.records]
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    axes = fig.subplots(2, 2)
    axes[0, 0].plot(epochs, [r.train["loss"] for r in run.records], marker=".")
    axes[0, 0].set_title("train loss")
    axes[0, 1].plot(epochs, [run.metric(e, "val", "eer") for e in epochs], marker=".", color="tab:purple")
    axes[0, 1].set_title("validation EER")
    shown = [n for n in run.set_names if n != "val"]
    for ax, key, title in ((axes[1, 0], "accuracy", "accuracy at 0.5"), (axes[1, 1], "eer", "EER")):
        for name in shown:
            line, = ax.plot(epochs, [run.metric(e, name, key) for e in epochs], marker=".", label=_mathtext_safe(name))
            _interval_band(ax, run, epochs, name, key, line.get_color())
        ax.set_title(title)
        if shown:   # a run with neither test nor OOD sets has nothing to label
            ax.legend(fontsize=8, loc="upper right")   # "best" is slow past the interval bands
    for ax in axes.flat:
        ax.axvline(run.best_epoch, color="grey", linestyle=":")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(_mathtext_safe(f"{run.name} ({run.title})"))
    return _png(fig)


def score_files(run: RunInfo) -> list[tuple[str, Path]]:
    """The best epoch's score table of each set that has one."""
    folder = RunFolder(run.path)
    return [(name, folder.score_table("best", name)) for name in run.set_names
            if folder.score_table("best", name).is_file()]


def scores_figure(run: RunInfo, files: list[tuple[str, Path]]) -> bytes:
    """ROC, DET (normal-deviate axes, the EER point marked) and score histograms per eval set."""
    from matplotlib.figure import Figure
    from scipy.stats import norm
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(12, 3.5 * len(files)), layout="constrained")
    axes = fig.subplots(len(files), 3, squeeze=False)
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99])
    limits = norm.ppf([0.0005, 0.9995])

    def probit(rate):   # DET axes: error rates on the normal-deviate scale
        return norm.ppf(np.clip(rate, 0.0005, 0.9995))

    for (name, path), (roc, det, hist) in zip(files, axes):
        table = read_scores(path, fmt="csv")
        labels, scores = table.labels, table.scores
        real, fake = scores[labels == 0], scores[labels == 1]
        bins = np.linspace(0, 1, 26) if ((scores >= 0) & (scores <= 1)).all() else 25
        hist.hist(real, bins=bins, alpha=0.6, label=f"real ({real.size})", color="tab:green")
        hist.hist(fake, bins=bins, alpha=0.6, label=f"fake ({fake.size})", color="tab:red")
        hist.set_title(_mathtext_safe(f"{name}: scores (P(fake))"))
        hist.legend(fontsize=8)
        if real.size == 0 or fake.size == 0:
            for ax in (roc, det):
                ax.text(0.5, 0.5, "one label only:\nno ROC/DET", ha="center", va="center")
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        roc.plot(fpr, tpr)
        roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
        roc.set(title=_mathtext_safe(f"{name}: ROC"), xlabel="reals called fake (FPR)", ylabel="fakes caught (TPR)")
        frr, far, _ = det_curve(-real, -fake)
        value, _ = eer(labels, scores)
        det.plot(probit(far), probit(frr))
        det.plot(probit(value), probit(value), "o", label=f"EER {value:.4f}")
        det.set_xticks(probit(ticks), [f"{t:.1%}" if t < 0.01 else f"{t:.0%}" for t in ticks])
        det.set_yticks(probit(ticks), [f"{t:.1%}" if t < 0.01 else f"{t:.0%}" for t in ticks])
        det.set(xlim=limits, ylim=limits)
        det.set(title=_mathtext_safe(f"{name}: DET"), xlabel="fakes accepted as real", ylabel="reals rejected as fake")
        det.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(_mathtext_safe(f"{run.name}: epoch {run.best_epoch} (best validation)"))
    return _png(fig)


def calibration_section(page: Page, run: RunInfo) -> None:
    """actDCF vs minDCF and Cllr vs minCllr per set at the best epoch (LLRs by the calibration fitted
    on that epoch's validation set), and the normalised Bayes error-rate plot of its score tables."""
    record = run.record(run.best_epoch)
    rows = [[name, fmt(m.get("act_dcf")), fmt(m.get("min_dcf")), fmt(m.get("cllr")), fmt(m.get("min_cllr"))]
            for name, m in record.sets.items()]
    calibration = record.calibration
    if not calibration:
        page.text(f"{run.name} has no calibration at epoch {run.best_epoch} "
                  f"({record.get('calibration_note') or 'trained before calibration existed'}): its scores are not "
                  "LLRs, so no actDCF or Cllr; minCllr is the ranking's floor.")
        page.table(["set", "actDCF", "minDCF", "Cllr (bits)", "minCllr"], rows)
        return
    f = calibration["fitted_on"]
    page.text(f"{run.name}, epoch {run.best_epoch}: LLRs by a {calibration['method']} calibration fitted on that "
              f"epoch's validation set ({f.get('n_real')} real, {f.get('n_fake')} fake clips; its own actDCF and "
              "Cllr are optimistic). actDCF is the cost of the decisions at the Bayes threshold, minDCF the best any "
              "threshold could do; Cllr - minCllr is what calibration loses.")
    page.table(["set", "actDCF", "minDCF", "Cllr (bits)", "minCllr"], rows)
    files = score_files(run)
    if files:
        page.figure(bayes_error_figure(run, files, calibration), f"{run.name}: normalised Bayes error rate per set "
                    "(actual, minimum, default 1) over the prior log-odds; dotted: ASVspoof 5's operating point")


def bayes_error_figure(run: RunInfo, files: list[tuple[str, Path]], calibration: dict) -> bytes:
    """BOSARIS's normalised Bayes error-rate plot of each set's best-epoch scores."""
    from matplotlib.figure import Figure

    from dfdetect.calibration import Calibration, effective_prior

    llr_of = Calibration.from_dict(calibration).llr
    etas = np.linspace(-7, 7, 141)
    operating = math.log(effective_prior() / (1 - effective_prior()))
    fig = Figure(figsize=(4 * len(files), 3.5), layout="constrained")
    for ax, (name, path) in zip(fig.subplots(1, len(files), squeeze=False)[0], files):
        table = read_scores(path, fmt="csv")
        actual, minimum = bayes_error_curves(table.labels, llr_of(table.scores), etas)
        ax.plot(etas, actual, label="actual")
        ax.plot(etas, minimum, label="minimum", linestyle="--")
        ax.axhline(1, color="grey", label="default")
        ax.axvline(operating, color="grey", linestyle=":")
        ax.set(title=_mathtext_safe(name), xlabel="prior log-odds logit(P(fake))", ylabel="normalised DCF",
               ylim=(0, 1.2))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


# -- the page ------------------------------------------------------------------------------------------------
class Page:
    """The report's content once, rendered as HTML (with figures) and as Markdown (without)."""

    def __init__(self, title: str):
        self.title, self.blocks = title, []

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warning(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", headers, rows))

    def figure(self, png: bytes, caption: str) -> None:
        self.blocks.append(("img", png, caption))

    def html(self) -> str:
        e = html.escape
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(self.title)}</title><style>"
                 "body{font-family:sans-serif;max-width:1250px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:right}th{background:#f3f3f3}td:nth-child(-n+5){text-align:left}"
                 ".warn{background:#fff3cd;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0}"
                 "img{max-width:100%}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h2>{e(block[1])}</h2>")
            elif kind == "p":
                parts.append(f"<p>{e(block[1])}</p>")
            elif kind == "warn":
                parts.append(f"<div class='warn'>{e(block[1])}</div>")
            elif kind == "table":
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block[1]) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
                             + "</table>")
            else:
                data = base64.b64encode(block[1]).decode()
                parts.append(f"<figure><img alt='{e(block[2])}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(block[2])}</figcaption></figure>")
        return "\n".join(parts + ["</body></html>"])

    def markdown(self, html_name: str) -> str:
        e = _md
        lines = [f"# {e(self.title)}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                lines += [f"## {e(block[1])}", ""]
            elif kind == "p":
                lines += [e(block[1]), ""]
            elif kind == "warn":
                lines += [f"> **warning:** {e(block[1])}", ""]
            elif kind == "table":
                for i, row in enumerate([block[1], *block[2]]):
                    lines.append("| " + " | ".join(e(str(c)) for c in row) + " |")
                    if i == 0:
                        lines.append("|" + "---|" * len(row))
                lines.append("")
            else:
                lines += [f"*Figure in {e(html_name)}: {e(block[2])}*", ""]
        return "\n".join(lines)


def _md(text: str) -> str:
    """Text as Markdown shows it, never as markup that acts: run, set and generator names are
    untrusted, and Markdown renders inline HTML, links and images. CommonMark backslash escapes for
    < > [ ] (and | for table cells); control characters and newlines as escapes (printable).
    Emphasis characters are left alone: at worst they restyle a name."""
    return re.sub(r"([\\<>\[\]|])", r"\\\1", printable(text))


def _mathtext_safe(text: str) -> str:
    """A name in a matplotlib title or label: `$` would start mathtext (and crash on a bad formula)."""
    return text.replace("$", r"\$")


def _cell(run: RunInfo, epoch: int, name: str | None, key: str) -> str:
    value = None if name is None else run.metric(epoch, name, key)
    ci = None if value is None else run.record(epoch).sets[name].get(f"{key}_ci")   # the per-epoch interval
    return "n/a" if value is None else fmt_ci({key: value, f"{key}_ci": ci}, key)


# What the ranking can be sorted by, on the chosen OOD set: accuracy at 0.5 (the reference study's
# ranking), EER (the ranking alone), or actDCF (the decisions of the calibrated LLRs: what a user gets).
RANK_BY = {"accuracy": "accuracy at 0.5", "eer": "EER", "act_dcf": "actDCF"}


def _sort_key(run: RunInfo, epoch: int, ood: str | None, rank_by: str = "accuracy"):
    """Higher OOD accuracy first, ties by lower OOD EER (rank_by "accuracy"), or lower OOD EER or
    actDCF first; runs without the set (or the metric, e.g. no calibration) last."""
    def value(key):
        return None if ood is None else run.metric(epoch, ood, key)

    if rank_by != "accuracy":
        v = value(rank_by)
        return (_missing(v), 0 if _missing(v) else v)
    acc, err = value("accuracy"), value("eer")
    return (_missing(acc), 0 if _missing(acc) else -acc, _missing(err), 0 if _missing(err) else err)


def ranking_table(page: Page, runs: list[RunInfo], oods: list[str], ood: str | None, which: str,
                  rank_by: str = "accuracy") -> None:
    """The reference study's "Complete Picture": ranked by the chosen OOD set's accuracy (or `rank_by`)
    at the given epoch."""
    epoch_of = {"best": lambda r: r.best_epoch, "last": lambda r: r.last_epoch}[which]
    ranked = sorted(runs, key=lambda r: _sort_key(r, epoch_of(r), ood, rank_by))
    headers = ["Rank", "Run", "Model", "Kind", "Data", "Epochs", "Epoch", "Val EER", "Test Acc"]
    for name in oods:
        headers += [f"{name[4:]} Acc", f"{name[4:]} F1", f"{name[4:]} EER"]
        headers += [f"{name[4:]} actDCF"] if rank_by == "act_dcf" else []
    rows = []
    for rank, run in enumerate(ranked, 1):
        e = epoch_of(run)
        row = [str(rank), run.name, run.title, run.kind, run.data, str(len(run.records)), str(e),
               _cell(run, e, "val", "eer"), _cell(run, e, "test", "accuracy")]
        for name in oods:
            row += [_cell(run, e, name, "accuracy"), _cell(run, e, name, "f1"), _cell(run, e, name, "eer")]
            row += [_cell(run, e, name, "act_dcf")] if rank_by == "act_dcf" else []
        rows.append(row)
    page.table(headers, rows)


def protocol_text(page: Page, runs: list[RunInfo], sets: list[str]) -> None:
    """How each set's files were scored (the whole-file protocol: featurize --windows); a warning
    where the runs ranked together were scored differently on one set, whose numbers then measure
    different things (a centre 3 s crop of a long file vs all of it)."""
    said = []
    for name in sets:
        protocols: dict[str, list[str]] = {}
        for run in runs:
            if name in run.protocols:
                protocols.setdefault(run.protocols[name], []).append(run.name)
        if len(protocols) == 1:
            said.append(f"{name}: {next(iter(protocols))}")
        elif protocols:
            page.warning(f"the runs were scored under different protocols on {name}, so its numbers in one table "
                         "measure different things: " + "; ".join(f"{p} ({', '.join(r)})" for p, r in protocols.items())
                         + ". Rank them on a store featurized the same way (featurize --windows).")
    if said:
        page.text("Protocol (how each file is scored): " + "; ".join(said) + ".")


def baseline_table(page: Page, runs: list[RunInfo], oods: list[str]) -> None:
    """Every head against the best reference system of each set: EER and the gap in EER points."""
    sets = [n for n in ["test", *oods] if any(r.metric(r.best_epoch, n, "eer") is not None for r in runs)]
    best = best_baselines(runs, sets)
    if not best:
        page.text("No reference system among these runs, so nothing says whether a head learned more than a "
                  "classical baseline gets for free: train lfcc_gmm, lfcc_lcnn or aasist on the same sets "
                  "(`dfdetect models` lists them) and report them together.")
        return
    page.text("Best reference system per set (lowest EER at its best-validation epoch): "
              + "; ".join(f"{n}: {b.title} ({b.name}) {v:.2%}" for n, (b, v) in best.items())
              + ". Gap: the run's EER minus that one, in EER points (negative = better than the baseline).")
    headers = ["Run", "Model", "Kind", "Params"]
    for name in best:
        label = name[4:] if name.startswith("ood:") else name
        headers += [f"{label} EER", f"{label} gap"]
    rows = []
    for run in sorted(runs, key=lambda r: (r.baseline, r.name)):
        row = [run.name, run.title, run.kind, f"{run.parameters:,}"]
        for name, (_, base_eer) in best.items():
            value = run.metric(run.best_epoch, name, "eer")
            row += (["n/a", "n/a"] if value is None else ["undefined", "undefined"] if _missing(value)
                    else [_percent_ci(run, name, value), f"{(value - base_eer) * 100:+.2f} pts"])
        rows.append(row)
    page.table(headers, rows)


def correlation_text(runs: list[RunInfo], ood: str | None) -> str:
    """Pearson and Spearman correlation of test accuracy and OOD accuracy across runs."""
    from scipy.stats import ConstantInputWarning, pearsonr, spearmanr

    if ood is None:
        return "Correlation of test and OOD accuracy: undefined (no OOD set)."
    pairs = [(r.metric(r.best_epoch, "test", "accuracy"), r.metric(r.best_epoch, ood, "accuracy")) for r in runs]
    pairs = [(t, o) for t, o in pairs if not _missing(t) and not _missing(o)]
    what = f"Correlation across runs of test accuracy and {ood} accuracy (best-validation epoch, threshold 0.5)"
    if len(pairs) < 3:
        return f"{what}: undefined: it needs at least 3 runs with both sets, and there are {len(pairs)}."
    test, out = np.array(pairs).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        pearson, spearman = pearsonr(test, out).statistic, spearmanr(test, out).statistic
    return (f"{what}, over {len(pairs)} runs: Pearson {fmt(float(pearson))}, Spearman {fmt(float(spearman))} "
            "(undefined when one of them is the same for every run). The reference study found it near zero: "
            "test accuracy did not predict real-world accuracy.")


def size_table(page: Page, runs: list[RunInfo], ood: str | None) -> None:
    """The reference study's model size table: parameters, checkpoint MB (the file, measured), OOD accuracy per MB."""

    label = ood[4:] if ood else "OOD"
    rows = []
    for run in sorted(runs, key=lambda r: r.checkpoint_bytes):
        mb = run.checkpoint_bytes / 1e6
        acc = None if ood is None else run.metric(run.best_epoch, ood, "accuracy")
        per_mb = "n/a" if acc is None else ("undefined" if math.isnan(acc) else f"{acc * 100 / mb:.2f}%/MB")
        rows.append([run.name, run.title, f"{run.parameters:,}", f"{mb:.3f}",
                     "n/a" if acc is None else fmt(acc, "accuracy"), per_mb])
    page.table(["Run", "Model", "Params", "Checkpoint MB", f"{label} Acc", "Acc/MB"], rows)
    for run in runs:
        if run.wavlm:
            page.text(f"{run.name}: the checkpoint holds the head only; scoring audio also needs the frozen "
                      f"{run.wavlm} (WavLM-Large: {WAVLM_LARGE_PARAMETERS / 1e6:.1f}M parameters, "
                      f"{WAVLM_LARGE_BYTES / 1e6:,.0f} MB as float32).")


# -- intervals and seeds -----------------------------------------------------------------------------------
SEED_ALPHA = 0.05   # neighbours in the seed ranking are "not different" when the pooled paired test's p >= this
SEED_RESAMPLES = 1000


def _interval_band(ax, run: RunInfo, epochs: list[int], name: str, key: str, color) -> None:
    """The per-epoch bootstrap interval of `key` (EER, minDCF: the trainer records them) as a band."""
    cis = [run.record(e).sets.get(name, {}).get(f"{key}_ci") for e in epochs]
    if all(ci and None not in ci for ci in cis):
        low, high = np.array(cis, dtype=float).T
        ax.fill_between(epochs, low, high, color=color, alpha=0.15, linewidth=0)


def _percent_ci(run: RunInfo, name: str, value: float) -> str:
    """An EER in % with the interval the trainer recorded at the best epoch: `17.60% [15.90%, 19.40%]`."""
    ci = run.record(run.best_epoch).sets[name].get("eer_ci")
    return f"{value:.2%}" + (f" [{ci[0]:.2%}, {ci[1]:.2%}]" if ci and None not in ci else "")


def seed_runs(paths: list[str | Path]) -> list[Path]:
    """The run folders to read: a folder that is not a run itself but holds seed-N runs (what
    train --seeds and a study's `seeds` write) stands for those runs."""
    out = []
    for path in map(Path, paths):
        seeds = [] if not path.is_dir() or (path / "config.json").exists() else \
            sorted((c for c in path.iterdir() if c.is_dir() and SEED_FOLDER.match(c.name)),
                   key=lambda c: int(SEED_FOLDER.match(c.name).group(1)))
        out += seeds or [path]
    return out


def seed_groups(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """Runs by what they repeat: NAME/seed-N folders grouped under NAME, any other run alone."""
    groups: dict[str, list[RunInfo]] = {}
    for run in runs:
        base, seed = seeded_name(run.path)
        groups.setdefault(base.rsplit("/", 1)[0] if seed is not None else run.name, []).append(run)
    return groups


def mean_sd(values: list[float], key: str) -> str:
    """`0.1760 +- 0.0120` over the seeds that have the metric; one value alone says n = 1."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{fmt(values[0], key)} (n = 1)"
    return f"{fmt(float(np.mean(values)), key)} ± {fmt(float(np.std(values, ddof=1)), key)}"


def pooled_difference_p(a: list[RunInfo], b: list[RunInfo], set_name: str) -> float | None:
    """Two-sided p of mean-over-seeds EER(a) - mean-over-seeds EER(b) on the set's clips, by a paired
    bootstrap of the clips (the same resampled clips for every seed of both); None without scores."""
    from dfdetect.evaluate.compare import System, join, paired_p_value
    from dfdetect.uncertainty import Bootstrap, SetMetrics, bootstrap_values

    systems = []
    for run in a + b:
        path = RunFolder(run.path).score_table("best", set_name)
        if not path.is_file():
            return None
        table = read_scores(path)
        systems.append(System(run.name, table.ids, table.labels, table.scores))
    try:
        systems = [systems[0]] + [join(systems[0], other)[1] for other in systems[1:]]
    except DfdetectError:   # not the same clips: nothing to pair
        return None
    values = bootstrap_values([SetMetrics(s.labels, s.scores, ("eer",)) for s in systems], None,
                              Bootstrap(n=SEED_RESAMPLES))
    eers = np.array([v["eer"] for v in values])
    return paired_p_value(eers[:len(a)].mean(axis=0) - eers[len(a):].mean(axis=0))


def seeds_table(page: Page, runs: list[RunInfo], oods: list[str], ood: str | None) -> None:
    """Runs repeated over seeds: mean +- sd of EER and minDCF per set at each seed's best-validation
    epoch, ranked by the mean EER on the chosen set, each row with its seed count, and whether it is
    distinguishable from the next row (pooled paired bootstrap)."""
    groups = seed_groups(runs)
    if all(len(g) == 1 for g in groups.values()):
        page.text("Every run here stands on n = 1 seed: a difference between two runs mixes what the recipe does "
                  "with what one seed happened to do. `seeds = [0, 1, 2]` in a study file (or train --seeds 0,1,2) "
                  "gives the mean ± sd over seeds here.")
        return
    key_set = ood or "test"

    def mean_eer(group):
        values = [r.metric(r.best_epoch, key_set, "eer") for r in group]
        values = [v for v in values if v is not None and not math.isnan(v)]
        return np.mean(values) if values else math.inf
    ranked = sorted(groups.items(), key=lambda item: (mean_eer(item[1]), item[0]))
    sets = [n for n in ["test", *oods] if any(r.metric(r.best_epoch, n, "eer") is not None for r in runs)]
    headers = ["Rank", "Run", "Model", "Seeds"]
    for name in sets:
        label = name[4:] if name.startswith("ood:") else name
        headers += [f"{label} EER", f"{label} minDCF"]
    rows = []
    for rank, (name, group) in enumerate(ranked, 1):
        row = [str(rank), name, group[0].title, f"{len(group)} seed{'s' if len(group) > 1 else ''}"]
        for set_name in sets:
            row += [mean_sd([r.metric(r.best_epoch, set_name, k) for r in group], k) for k in ("eer", "min_dcf")]
        following = ranked[rank][1] if rank < len(ranked) else None
        p = None if following is None else pooled_difference_p(group, following, key_set)
        row.append("" if following is None else "no scores to pair" if p is None else
                   f"p = {p:.3g}" + (" (not different)" if p >= SEED_ALPHA else ""))
        rows.append(row)
    page.table(headers + [f"vs next ({key_set} EER)"], rows)


def seed_curves_figure(name: str, group: list[RunInfo]) -> bytes:
    """EER per epoch of each set: the mean over seeds, and the band from the lowest to the highest seed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    epochs = sorted(set.intersection(*({r.epoch for r in run.records} for run in group)))
    for set_name in [n for n in group[0].set_names if n != "val"]:
        values = np.array([[run.metric(e, set_name, "eer") for e in epochs] for run in group], dtype=float)
        line, = ax.plot(epochs, np.nanmean(values, axis=0), marker=".", label=_mathtext_safe(set_name))
        ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set_title(_mathtext_safe(f"{name}: EER per epoch, mean of {len(group)} seeds (band: lowest to highest)"))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


TITLE = "dfdetect report"
MARKDOWN_HEAD = f"# {TITLE}\n".encode()


def audit_section(page: Page, runs: list[RunInfo]) -> None:
    """"Audit": per training set, the cues of the shortcut audit train ran before its first epoch
    (featurize/shortcuts.py): the statistics that alone separate its real from fake clips."""
    page.heading("Audit")
    page.text("Before its first epoch, train audits its training set: does a recording statistic alone (silence, "
              "sample rate, level, bandwidth, ...) separate real from fake? Such a cue is a shortcut a detector can "
              "learn instead of synthesis (`dfdetect audit` shows every statistic).")
    sets: dict[str, dict | None] = {}
    for run in runs:
        sets.setdefault(run.data, run.audit)
    for data, audit in sets.items():
        if audit is None:
            page.text(f"{data}: not audited (trained with --no-audit, or before the audit existed).")
            continue
        if audit.get("note"):
            page.text(f"{data}: {audit['note']}")
        flagged = [c for c in audit.get("cues", []) if c.get("warning")]
        combined = audit.get("combined_eer")
        page.text(f"{data}: {audit['n_real']:,} real, {audit['n_fake']:,} fake clips; "
                  + (f"all recording statistics together: EER {combined:.2f}; " if combined is not None else "")
                  + (f"{len(flagged)} cue(s) at or below EER {audit['max_cue_eer']}." if flagged else
                     f"no statistic alone separates the classes (EER > {audit['max_cue_eer']} or within chance)."))
        for cue in flagged:
            page.warning(f"{data}: {cue['warning']}")


def _is_report(file: Path) -> bool:
    """Whether `file` is a page or Markdown this command wrote (by its first bytes), which a rerun
    may overwrite. A file that is the start of those bytes (empty included) was cut off while an
    older dfdetect wrote it in place: the report's own leftover too."""
    with open(file, "rb") as f:
        head = f.read(512)
    if Page(TITLE).html().encode().startswith(head) or MARKDOWN_HEAD.startswith(head):
        return True
    return head.startswith(MARKDOWN_HEAD) or (head.startswith(b"<!DOCTYPE html>")
                                              and f"<title>{TITLE}</title>".encode() in head)


def check_outputs(out: Path, force: bool, option: str = "--out") -> None:
    """The page and its Markdown can be written: an .html name, each a file (or nothing yet) in a
    writable folder, and an existing one a report this command wrote (a rerun), unless `force`.
    Errors name `option` (a study names its key)."""
    if Path(out).suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"{option} {out}: the report is an HTML page (its tables go beside it as .md); "
                          "name it e.g. report.html")
    for file in (out, out.with_suffix(".md")):
        check_output(option, file)
        if file.exists() and not force and not _is_report(file):
            raise ReportError(f"{option} {out}: {file} exists and is not a dfdetect report; choose another "
                              f"{option} or move the file away" + (", or pass --force to overwrite it"
                                                                    if option == "--out" else ""))


def build_report(runs: list[str | Path], out: str | Path = "report.html", ood: str | None = None,
                 force: bool = False, rank_by: str = "accuracy") -> Report:
    """Write the HTML page and the Markdown next to it; returns where, and the warnings. The ranking
    is by the OOD set's `rank_by` (RANK_BY)."""
    if not runs:
        raise ReportError("give at least one run folder")
    if rank_by not in RANK_BY:
        raise ReportError(f"--rank-by {rank_by!r}: choose one of {', '.join(RANK_BY)}")
    check_outputs(Path(out), force)
    infos = [read_run(p) for p in seed_runs(runs)]
    if len({r.name for r in infos}) < len(infos):
        for r in infos:
            r.name = str(r.path)
    oods, chosen = _choose_ood(infos, ood)
    found = [w for r in infos for w in find_warnings(r)] + baseline_warnings(infos, oods)

    page = Page(TITLE)
    page.text(HEADER)
    page.heading("Ranking (the reference study's \"Complete Picture\")")
    page.text(f"Ranked by {chosen or 'OOD'} {RANK_BY[rank_by]}"
              + (" (ties: lower EER first)" if rank_by == "accuracy" else " (lower first; runs without it last)")
              + ". Metrics at each run's best-validation "
              "epoch (lowest validation EER: the epoch chosen without looking at test or OOD). Accuracy and F1 at "
              "threshold 0.5, EER by the ASVspoof convention. Epochs: trained; Epoch: the one shown. n/a: the run has "
              "no such set.")
    page.text("Each row is one training run: n = 1 seed. EER [low, high]: its 95% bootstrap interval over the set's "
              "clips (drawing the clips again, not another corpus).")
    protocol_text(page, infos, ["test", *oods])
    ranking_table(page, infos, oods, chosen, "best", rank_by)
    page.text("The same at each run's last epoch (OOD performance can keep moving after validation stops improving):")
    ranking_table(page, infos, oods, chosen, "last", rank_by)
    page.text(correlation_text(infos, chosen))
    page.heading("Across seeds")
    seeds_table(page, infos, oods, chosen)
    page.heading("Against the reference systems")
    baseline_table(page, infos, oods)
    page.heading("Warnings")
    page.text(f"Checked: (a) test accuracy >= {TRAP_TEST_ACCURACY:.0%} while validation EER >= {TRAP_VAL_EER} (any "
              f"epoch); (b) OOD recall or specificity <= {DEGENERATE_RATE:.0%} at 0.5; (c) MCC < 0 on any set "
              f"((b), (c): best-validation and last epoch); (d) best-test and best-OOD epochs at least "
              f"max({EPOCH_GAP_MIN}, {EPOCH_GAP_FRACTION:.0%} of epochs) apart; (e) a head whose OOD EER is not below "
              "the best reference system's (best-validation epochs); (f) an OOD set whose actDCF is at least "
              f"{CALIBRATION_GAP_RATIO:g}x its minDCF and {CALIBRATION_GAP_MIN} above it (best-validation epoch).")
    for w in found:
        page.warning(f"{w.run}: {w.message}")
    if not found:
        page.text("None of the runs shows the reference study's failure signatures.")
    audit_section(page, infos)
    page.heading("Model size")
    size_table(page, infos, chosen)
    for name, group in seed_groups(infos).items():
        if len(group) > 1:
            page.heading(f"{name}: {len(group)} seeds")
            page.figure(seed_curves_figure(name, group), f"{name}: EER per epoch over {len(group)} seeds")
    for run in infos:
        page.heading(f"{run.name}: training curves and scores")
        page.figure(curves_figure(run), f"{run.name}: train loss, validation EER, accuracy and EER per epoch "
                                        f"(dotted: best-validation epoch {run.best_epoch})")
        files = score_files(run)
        if files:
            page.figure(scores_figure(run, files), f"{run.name}: ROC, DET and score histograms per set at epoch "
                                                   f"{run.best_epoch} (scores/best)")
        else:
            page.text(f"{run.name} has no scores/best/*.csv: no ROC/DET curves or histograms.")
        page.heading(f"{run.name}: calibration (actDCF vs minDCF, Cllr vs minCllr)")
        calibration_section(page, run)

    out = Path(out)
    markdown = out.with_suffix(".md")
    _write_replacing({out: page.html(), markdown: page.markdown(out.name)})
    return Report(out, markdown, infos, found, chosen)


def _temporary(file: Path) -> Path:
    """Where `file` is written before its rename; `_leftovers` knows the name."""
    return file.with_name(f".{file.name}.{os.getpid()}.tmp")


def _leftovers(file: Path) -> list[Path]:
    """Temporary files of `file` left by a report that was killed: this naming (`_temporary`), and
    no live process of that id (a report writing beside this one keeps its file)."""
    pattern = re.compile(rf"\.{re.escape(file.name)}\.(\d+)\.tmp")
    found = [(p, pattern.fullmatch(p.name)) for p in file.parent.glob(f".{glob.escape(file.name)}.*.tmp")]
    return [p for p, m in found if m and not _alive(int(m.group(1)))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _write_replacing(texts: dict[Path, str]) -> None:
    """Each file written beside itself and renamed into place once all are written: a kill at any
    instant leaves the previous page and Markdown (or, between the renames, a new page beside the
    previous Markdown), never a cut-off file. Temporary files of killed reports are removed first."""
    temporaries = {}
    try:
        for file, text in texts.items():
            file.parent.mkdir(parents=True, exist_ok=True)
            for leftover in _leftovers(file):
                leftover.unlink(missing_ok=True)
            temporaries[file] = _temporary(file)
            temporaries[file].write_text(text, encoding="utf-8")
        for file, tmp in temporaries.items():
            os.replace(tmp, file)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
