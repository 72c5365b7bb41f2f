"""`dfdetect export RUN --out DIR`: the exported folder (models/pretrained.py owns its format) and
its README.md model card, generated from the run: training data, epochs, every set's metrics at the
exported epoch (OOD included), the reference study's failure warnings (report.find_warnings, the
report's own checks), intended use and limits. The card is rendered by the report's Page, so names
from the run (sets, stores) are escaped the way the report escapes them, and defanged: the hubs render
a card as GitHub-flavoured Markdown, which makes links of bare www.x.y, scheme://x.y and user@x.y."""

from __future__ import annotations

import re
from pathlib import Path

from dfdetect.errors import ConfigError
from dfdetect.evaluate.evaluation import HEADER, fmt, fmt_ci
from dfdetect.evaluate.report import Page, find_warnings, read_run
from dfdetect.models.onnx_export import check_onnx_target, export_onnx
from dfdetect.models.pretrained import check_export_target, write_pretrained
from dfdetect.models.registry import get_architecture
from dfdetect.models.runs import LoadedRun, load_run

# Hugging Face reads this front matter; nothing in it comes from the run.
FRONT_MATTER = "---\nlibrary_name: dfdetect\ntags:\n- audio-deepfake-detection\n- anti-spoofing\n---\n\n"

# What GFM's autolink extension links in plain text: www., a scheme before // (http, https, ftp...),
# mailto: / xmpp:, and any user@domain.
_LINKING = re.compile(r"(?i)\b(www)\.|\b([a-z][a-z0-9+.-]*):(?=//)|\b(mailto|xmpp):|@")


def defang(text: str) -> str:
    """`text` with nothing GFM would link, as security advisories write it: www[.]x.y, https[:]//x.y,
    user[@]x.y (still readable; Page escapes the brackets, so they print as brackets)."""
    return _LINKING.sub(lambda m: "[@]" if m.group() == "@" else f"{m.group(1) or m.group(2) or m.group(3)}"
                        + ("[.]" if m.group(1) else "[:]"), text)


class _CardPage(Page):
    """The report's Page, every text from the run defanged (the card's own text links nothing)."""

    def __init__(self, title: str):
        super().__init__(defang(title))

    def heading(self, text: str) -> None:
        super().heading(defang(text))

    def text(self, text: str) -> None:
        super().text(defang(text))

    def warning(self, text: str) -> None:
        super().warning(defang(text))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        super().table(headers, [[defang(str(cell)) for cell in row] for row in rows])


def calibration_section(page, run: LoadedRun, calibration) -> None:
    """The calibration the export ships and what it was fitted on, and the epoch's actDCF and Cllr
    per set (LLRs by the calibration fitted on that epoch's validation set) beside minDCF and minCllr."""
    page.heading("Calibration")
    if calibration is None:
        page.text("No calibration ships with this model: its scores are P(fake), not log-likelihood ratios, so "
                  "no actual DCF or Cllr can be read from them. Fit one on labelled clips of your own domain "
                  "with `dfdetect calibrate`.")
    else:
        page.text(f"Ships the calibration {calibration.describe()}. Scores map to natural-log LLRs (fake vs real); "
                  "a clip is called fake at the Bayes threshold llr > 0.642 (ASVspoof 5: Pspoof 0.05, Cmiss 1, "
                  "Cfa 10). A calibration holds only for data like the data it was fitted on: on other domains "
                  "recalibrate with `dfdetect calibrate` on a few hundred labelled clips of yours.")
    rows = [[name, fmt(m.get("act_dcf")), fmt(m.get("min_dcf")), fmt(m.get("cllr")), fmt(m.get("min_cllr"))]
            for name, m in run.record["sets"].items() if m.get("act_dcf") is not None]
    if rows:
        page.text(f"Per set at epoch {run.epoch}, LLRs by the calibration fitted on that epoch's validation set "
                  "(validation's own numbers are optimistic):")
        page.table(["set", "actDCF", "minDCF", "Cllr (bits)", "minCllr"], rows)


def model_card(run: LoadedRun, calibration=None) -> str:
    """The model card of `run` at its loaded epoch, as Markdown; `calibration`: the one it ships."""
    arch = get_architecture(run.arch)
    info = read_run(run.path)
    train = run.config.train_set
    page = _CardPage(f"{run.path.name}: {arch.title} audio deepfake detector (dfdetect)")
    page.text(HEADER)
    page.heading("Model")
    page.text(f"{arch.title} ({run.arch}, {info.parameters:,} parameters; from the {arch.source}). Exported "
              f"epoch {run.epoch} of {len(run.records)} trained (best validation epoch: {info.best_epoch}). "
              f"Decision threshold {run.threshold:.6f} on P(fake): the validation-EER threshold of this epoch.")
    wavlm = run.wavlm_info
    needs = (f"Needs the frozen WavLM {wavlm.get('model')} (revision {wavlm.get('revision')}, layers "
             f"{wavlm.get('layers')}) to score audio; it is not in this folder." if wavlm else
             "No WavLM: the folder is the whole detector.")
    page.text(f"Frontend {run.frontend_hash}: 16 kHz mono, {run.frontend_config.clip_seconds:g} s clips "
              "(centre crop / zero pad), peak normalisation; long files are scored in windows and their "
              "window scores averaged. " + needs)
    page.heading("Training data")
    size = (f"{train['files']:,} files, {train.get('rows', 0):,} windows" if "files" in train
            else f"{train.get('rows', 0):,} clips")
    page.text(f"Trained on {train.get('spec')} ({size}, store version "
              f"{train.get('version')}); the other sets below were measured every epoch.")
    page.heading(f"Metrics at epoch {run.epoch}")
    rows = []
    for name, m in run.record.sets.items():
        at = m.get("at_0.5", {})
        kind = ("out of distribution" if name.startswith("ood:") else
                "validation" if name == "val" else "in distribution")
        rows.append([name, kind, run.config.protocol(name), str(m.get("n", "")), _with_ci(m, "eer"),
                     fmt(m.get("auc")), _with_ci(m, "min_dcf"), fmt(at.get("accuracy"), "accuracy"),
                     fmt(at.get("recall"), "recall"), fmt(at.get("specificity"), "specificity")])
    page.table(["set", "kind", "each file scored as", "files", "EER", "AUC", "minDCF", "accuracy at 0.5",
                "recall at 0.5", "specificity at 0.5"], rows)
    if any(m.get("eer_ci") for m in run.record.sets.values()):
        page.text("EER and minDCF [low, high]: 95% bootstrap intervals over each set's clips, as the epoch recorded "
                  "them (drawing the clips again from the same population, not another corpus).")
    calibration_section(page, run, calibration)
    page.heading("Warnings")
    found = find_warnings(info)
    for w in found:
        page.warning(w.message)
    if not found:
        page.text("None of the reference study's failure signatures (dfdetect report's checks).")
    page.heading("Intended use and limits")
    page.text("Screening audio for synthetic speech as one signal among others, and research on generalization. "
              "Not proof that a recording is real or fake. In-distribution accuracy says little about audio from "
              "generators, codecs, languages and channels it never saw: trust the out-of-distribution rows above "
              "(if there are none, its real-world performance is unmeasured). Scores are P(fake); recalibrate "
              "the threshold on data like yours.")
    page.text("Load it with `dfdetect score --model DIR ...`. The folder holds config.json and model.safetensors "
              "(no pickle, nothing executable).")
    return FRONT_MATTER + page.markdown("")


def export_run(run_path: str | Path, out: str | Path | None = None, epoch: str | int = "best", force: bool = False,
               onnx: str | Path | None = None, calibration: str | None = None) -> dict:
    """Write the exported folder of the run at `run_path`, `epoch` (best | last | N), to `out`
    and/or its head as ONNX to `onnx` (models/onnx_export.py: the check against PyTorch included)."""
    if out is None and onnx is None:
        raise ConfigError("give --out DIR (the shareable folder), --onnx FILE (the mel head as ONNX), or both")
    if out is not None:     # both targets checked before any work
        check_export_target(Path(out), force)
    if onnx is not None:
        check_onnx_target(Path(onnx), force, export_folder=out)
    run = load_run(run_path, epoch)
    done = {}
    if out is not None:
        calibrated = run.calibration(calibration)
        done["folder"] = write_pretrained(run, out, model_card(run, calibrated), force=force,
                                          calibration=calibrated)
    if onnx is not None:
        done["onnx"] = export_onnx(run, onnx, force=force, export_folder=out)
    return done


def _with_ci(metrics: dict, name: str) -> str:
    """A headline metric with the interval its epoch recorded (runs written before: the value alone)."""
    return fmt(metrics.get(name)) if metrics.get(name) is None else fmt_ci(metrics, name)
