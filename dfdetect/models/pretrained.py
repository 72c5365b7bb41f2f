"""The exported model folder (`dfdetect export RUN --out DIR`), the one owner of its format:

    DIR/
      config.json        what the head is and what scoring it needs: architecture and its config,
                         the frontend config and hash, the WavLM identity (WavLM heads), the
                         decision threshold, the scoring precision, where it came from
      model.safetensors  the head's weights (safetensors: tensors and a JSON header, no code)
      README.md          the model card (written by evaluate/model_card.py, which has the metrics)

Nothing in the folder is executable, and loading reads nothing else: config.json is bounded JSON,
the weights are read only from model.safetensors (a pickle such as pytorch_model.bin is refused,
never opened), and every tensor must be exactly one of the head's. `load_model` is what `score`,
`evaluate` and the API load a detector with: a run folder or an exported one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from dfdetect import __version__
from dfdetect.errors import ConfigError, check_output
from dfdetect.models.registry import build_model, config_to_dict
from dfdetect.models.runs import LoadedRun, RunError, RunFolder, load_run
from dfdetect.names import printable

FORMAT, FORMAT_VERSION = "dfdetect-model", 1
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
MAX_CONFIG_BYTES = 1 << 20          # a config of a few KB; more is not one of ours
MAX_WEIGHTS_BYTES = 4 << 30         # the largest head is ~11 MB; WavLM is never inside
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def is_pretrained(path: str | Path) -> bool:
    """Whether `path` is meant as an exported folder (model.safetensors or config.json, and no
    metrics.jsonl) rather than a run; load_pretrained then says what is wrong with it."""
    path = Path(path)
    return ((path / WEIGHTS).is_file() or (path / CONFIG).is_file()) and not RunFolder(path).metrics_file.exists()


def export_config(run: LoadedRun) -> dict:
    """config.json of an exported `run`: everything scoring needs, and where it came from."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "dfdetect_version": __version__,
            "arch": run.arch, "model_config": config_to_dict(run.model.config),
            "frontend": run.frontend_config.to_dict(), "frontend_hash": run.frontend_hash,
            "wavlm": run.wavlm_info, "threshold": run.threshold,
            "threshold_meaning": "P(fake) >= threshold -> fake; the validation-EER threshold of the epoch",
            "score_precision": run.score_precision,
            "labels": {"0": "real (bona fide)", "1": "fake (spoof)"}, "score": "P(fake): higher = more likely fake",
            "source": {"run": run.path.name, "epoch": run.epoch}}


def write_pretrained(run: LoadedRun, out: str | Path, card: str, force: bool = False) -> Path:
    """The exported folder of `run` at `out` (an existing export is replaced; anything else only with `force`)."""
    out = Path(out)
    check_output("--out", out, folder=True)
    if out.exists() and any(out.iterdir()) and not (is_pretrained(out) or force):
        raise ConfigError(f"--out {out} exists and is not an exported dfdetect model; choose an empty folder "
                          "or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    for name, write in ((WEIGHTS, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"})),
                        (CONFIG, lambda tmp: tmp.write_text(json.dumps(export_config(run), indent=2))),
                        (CARD, lambda tmp: tmp.write_text(card, encoding="utf-8"))):
        tmp = out / (name + ".tmp")
        write(tmp)
        os.replace(tmp, out / name)   # a kill mid-export leaves whole files only
    return out


def load_pretrained(path: str | Path) -> LoadedRun:
    """The head of an exported folder, as a LoadedRun (the shape score and evaluate use)."""
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        pickled = sorted(p.name for p in path.glob("*") if p.suffix.lower() in PICKLES) if path.is_dir() else []
        raise RunError(f"{path}: no {WEIGHTS}" + (f" (found {', '.join(map(printable, pickled))}: pickled weights "
                       "can run code and are never loaded)" if pickled else "")
                       + "; export the run with `dfdetect export RUN --out DIR`")
    config_file, weights = path / CONFIG, path / WEIGHTS
    for file, limit in ((config_file, MAX_CONFIG_BYTES), (weights, MAX_WEIGHTS_BYTES)):
        if not file.is_file():
            raise RunError(f"{file}: missing; the exported folder is incomplete: export it again")
        if file.stat().st_size > limit:
            raise RunError(f"{file}: {file.stat().st_size:,} bytes, over the {limit:,} an exported model has; "
                           "not loaded")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise KeyError("format")
        arch, options, threshold = config["arch"], config["model_config"], float(config["threshold"])
        frontend, frontend_hash = dict(config["frontend"]), str(config["frontend_hash"])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"{config_file}: not the config.json of an exported dfdetect model (format {FORMAT} "
                       f"v{FORMAT_VERSION}; {type(e).__name__} {printable(str(e))[:100]}); export the run again") from None
    try:
        model = build_model(arch, **options)
    except (ConfigError, TypeError) as e:
        raise RunError(f"{config_file}: {printable(str(e))[:300]}; this dfdetect cannot build the exported head") from None
    try:
        model.load_state_dict(load_file(str(weights)))   # strict: exactly the head's tensors
    except Exception as e:  # SafetensorError, or tensors that do not fit the head
        raise RunError(f"{weights}: not the weights of this {arch} head ({type(e).__name__}: "
                       f"{printable(str(e).splitlines()[0])[:300]}); export the run again") from None
    model.eval()
    source = config.get("source") or {}
    epoch = source.get("epoch") if isinstance(source.get("epoch"), int) else 0
    # The run-folder shape LoadedRun reads: the trainer's config keys scoring uses, and one record
    # holding the exported threshold.
    run_config = {"config": {"arch": arch, "score_precision": config.get("score_precision", "float32")},
                  "model": options, "frontend": frontend, "sets": {"train": {"frontend_hash": frontend_hash}},
                  "wavlm": config.get("wavlm")}
    records = [{"epoch": epoch, "sets": {"val": {"eer_threshold": threshold}}}]
    return LoadedRun(path, arch, epoch, model, run_config, records)


def load_model(path: str | Path, epoch: str | int = "best") -> LoadedRun:
    """A run folder's head at `epoch`, or an exported folder's (which holds one epoch)."""
    if is_pretrained(path):
        if str(epoch) not in ("best", "last"):
            raise RunError(f"{path} is an exported model of one epoch; --epoch {epoch} needs the run folder")
        return load_pretrained(path)
    return load_run(path, epoch)
