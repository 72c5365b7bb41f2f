"""`dfdetect export RUN --onnx FILE`: a mel head (mel_cnn, mel_aasist) as an ONNX graph for
deployment, verified against PyTorch on the same windows.

The graph takes `mel` [batch, 2, 128, 301] float32 (the frontend's mel + delta of one 3 s window)
and gives `p_fake` [batch] (sigmoid of the head's logit). The frontend stays in Python
(featurize/frontend.py: decode, 16 kHz mono, window, crop/pad, peak normalisation, mel + delta),
because its resampling and decoding are not ONNX operators; a deployment runs it, then the graph.
The weights are embedded: FILE is the whole graph (no FILE.data beside it), written beside its name
and renamed into place. Needs the `onnx` extra (onnx, onnxruntime, onnxscript: torch's exporter)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dfdetect.errors import ConfigError, DfdetectError, check_output
from dfdetect.featurize.frontend import Frontend
from dfdetect.models.pretrained import CARD, CONFIG, WEIGHTS
from dfdetect.models.runs import RunFolder

ONNX_ARCHS = ("mel_cnn", "mel_aasist")
VERIFY_WINDOWS = 8
MAX_EMBEDDED_BYTES = 2_000_000_000     # protobuf's 2 GB limit on one ONNX file (the mel heads: a few MB)


class OnnxError(DfdetectError):
    """The head cannot be exported to ONNX as asked; the message says why."""


class _Probabilities(torch.nn.Module):
    """The head on a bare mel tensor, with the sigmoid score applies (a graph has no dict input)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model({"mel": mel}).float())


def verification_windows(frontend: Frontend, n: int = VERIFY_WINDOWS) -> np.ndarray:
    """Mel features of `n` seeded windows (tones in noise at several levels) through the run's own
    frontend: inputs of the kind the graph will see, the same for PyTorch and ONNX Runtime."""
    rng = np.random.default_rng(0)
    t = np.arange(frontend.config.clip_samples) / frontend.config.sample_rate
    waves = np.stack([0.3 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t) + rng.uniform(0.01, 0.3)
                      * rng.standard_normal(t.size) for _ in range(n)]).astype(np.float32)
    waves = np.stack([frontend.peak_normalise(w) for w in waves])
    return frontend.features(waves, ("mel",), dtype=np.float16)["mel"].astype(np.float32)  # as scoring feeds it


def check_onnx_target(path: Path, force: bool, export_folder: str | Path | None = None) -> None:
    """ConfigError unless `path` may take the ONNX file: never a file of a run folder or of the export
    (`export_folder`'s config.json, model.safetensors, README.md); an existing file only with `force`."""
    check_output("--onnx", path)
    where = path.resolve()
    for folder in where.parents:
        if RunFolder(folder).is_run:
            raise ConfigError(f"--onnx {path} lies inside the run folder {folder}; write it elsewhere")
    export = None if export_folder is None else Path(export_folder).resolve()
    if export is not None and (where == export or where.parent == export and where.name in {
            name + suffix for name in (CONFIG, WEIGHTS, CARD) for suffix in ("", ".tmp")}):
        raise ConfigError(f"--onnx {path} is the export --out {export_folder} or one of its files; name another "
                          "file (e.g. model.onnx)")
    if path.exists() and not force:
        raise ConfigError(f"--onnx {path} exists; pass --force to replace it, or name another file")


def export_onnx(run, path: str | Path, force: bool = False, export_folder: str | Path | None = None) -> dict:
    """Write the ONNX graph of `run`'s head, weights embedded, to `path`; run it with ONNX Runtime and
    PyTorch on the same windows. Returns {"path", "windows", "max_abs_diff"}."""
    path = Path(path)
    if run.arch not in ONNX_ARCHS:
        raise ConfigError(f"--onnx exports the mel heads ({', '.join(ONNX_ARCHS)}); {run.arch} is not one")
    check_onnx_target(path, force, export_folder)
    try:
        import onnxruntime
    except ImportError:
        raise OnnxError("--onnx needs onnx, onnxruntime and onnxscript: pip install 'dfdetect[onnx]'") from None
    size = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    if size > MAX_EMBEDDED_BYTES:
        raise OnnxError(f"the {run.arch} head's weights are {size:,} bytes, over the {MAX_EMBEDDED_BYTES:,} one "
                        "ONNX file can embed; not exported")
    wrapped = _Probabilities(run.model.float()).eval()
    x = torch.from_numpy(verification_windows(Frontend(run.frontend_config)))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            torch.onnx.export(wrapped, (x,), str(tmp), input_names=["mel"], output_names=["p_fake"],
                              dynamic_shapes={"mel": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
                              external_data=False)
        except Exception as e:   # torch.export / onnxscript failures: say which, in one line
            raise OnnxError(f"torch.onnx.export of {run.arch} failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}") from None
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"mel": x.numpy()})[0]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with torch.inference_mode():
        want = wrapped(x).numpy()
    return {"path": str(path), "windows": len(x), "max_abs_diff": float(np.abs(got - want).max())}
