"""`dfdetect calibrate`: a run's P(fake) -> LLR map fitted on labelled clips of a store.

    calibrate_run("runs/mel", "stores/mine.zarr:dev", held_out="stores/mine.zarr:test")

scores the set with the run's checkpoint (as `evaluate` does), fits a `dfdetect.calibration`
Calibration on it, stores it in the run folder as calibrations/NAME.json (models/runs.py owns the
file) and returns act_dcf and Cllr before and after: on the set it was fitted on (optimistic: the
map has seen those clips) and, when `held_out` is given, on that set (the honest numbers). "Before"
is the calibration the run used so far for the epoch, or, without one, P(fake) read as an LLR.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dfdetect.calibration import METHODS, CalibrationError, fit_calibration, score_logit
from dfdetect.metrics import act_dcf, cllr, min_cllr, min_dcf


def _scores(loaded, spec: str, batch_size: int | None, device) -> tuple[np.ndarray, np.ndarray, object]:
    """(labels, P(fake), the set) of the set `spec` scored by the loaded run (a windowed set: per
    file, as evaluate and score score one)."""
    from dfdetect.evaluate.evaluation import score_set
    from dfdetect.train.data import open_set

    data = open_set(spec, "calibration")
    rows, scores = score_set(loaded, data, batch_size, device)
    return data.store.meta["label"][rows].astype(int), scores, data


def _costs(labels, scores, before, after) -> dict:
    """act_dcf and cllr of the LLRs before and after, with the ranking's floor (minDCF, minCllr)."""
    old = before.llr(scores) if before is not None else score_logit(scores)
    new = after.llr(scores)
    return {"clips": int(labels.size), "n_real": int((labels == 0).sum()), "n_fake": int(labels.sum()),
            "before": {"act_dcf": act_dcf(labels, old), "cllr": cllr(labels, old)},
            "after": {"act_dcf": act_dcf(labels, new), "cllr": cllr(labels, new)},
            "min_dcf": min_dcf(labels, scores)[0], "min_cllr": min_cllr(labels, scores)}


def default_name(spec: str) -> str:
    """A calibration's name from its set: 'stores/mine.zarr:dev' -> 'mine-dev'."""
    from dfdetect.store import parse_store_spec

    path, _, split = parse_store_spec(spec)
    stem = Path(path.rstrip("/")).stem + (f"-{split}" if split else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")[:64] or "calibration"


def calibrate_run(run: str | Path, on: str, epoch: str | int = "best", method: str = "logistic",
                  name: str | None = None, held_out: str | None = None, batch_size: int | None = None,
                  device: str = "cpu") -> dict:
    """Fit, store and measure a calibration of the run's `epoch` on the set `on` (see the module)."""
    from dfdetect.devices import resolve_device
    from dfdetect.models.runs import RunFolder, load_run

    if method not in METHODS:
        raise CalibrationError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    loaded = load_run(run, epoch)
    folder, name = RunFolder(loaded.path), name or default_name(on)
    folder.calibration_file(name)        # a bad --name fails before any scoring
    device = resolve_device(device)
    before = loaded.calibration()
    labels, scores, data = _scores(loaded, on, batch_size, device)
    fitted_on = {"spec": on, "store": data.store.path, "version": data.store.version, "epoch": loaded.epoch}
    after = fit_calibration(labels, scores, method, fitted_on=fitted_on, what=f"--on {on}")
    result = {"run": str(loaded.path), "epoch": loaded.epoch, "name": name, "method": method,
              "before_calibration": before.describe() if before is not None else None,
              "on": {"set": on, **_costs(labels, scores, before, after)}}
    if held_out:
        held_labels, held_scores, _ = _scores(loaded, held_out, batch_size, device)
        result["held_out"] = {"set": held_out, **_costs(held_labels, held_scores, before, after)}
    result["file"] = str(folder.write_calibration(name, after))
    result["calibration"] = after.to_dict()
    return result
