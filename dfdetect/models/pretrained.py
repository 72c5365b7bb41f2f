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

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dfdetect import __version__
from dfdetect.calibration import Calibration
from dfdetect.devices import PRECISIONS
from dfdetect.errors import ConfigError, DfdetectError, check_output, check_range
from dfdetect.featurize.frontend import FRONTEND_VERSION, FrontendConfig, LfccConfig, MelConfig
from dfdetect.featurize.wavlm import WavLMConfig
from dfdetect.models.registry import build_model, config_to_dict, get_architecture
from dfdetect.models.runs import LoadedRun, RunError, RunFolder, load_run
from dfdetect.names import printable
from dfdetect.store.schema import wavlm_storage_of

FORMAT, FORMAT_VERSION = "dfdetect-model", 1
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
MAX_CONFIG_BYTES = 1 << 20          # a config of a few KB; more is not one of ours
MAX_WEIGHTS_BYTES = 512 << 20       # the largest head is ~11 MB; WavLM is never inside
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_LISTED = 10_000                 # entries of --out looked at for a run or a store inside

# What an exported folder's frontend may ask for, (low, high) per field: the reference study's values
# sit well inside, and no value (nor their combination, FrontendConfig's checks) makes one window
# cost more than MAX_FEATURE_VALUES values (4 MB as float32) per feature.
FRONTEND_LIMITS = {
    "sample_rate": (1_000, 96_000), "clip_seconds": (0.1, 60.0), "min_seconds": (0.0, 60.0),
    "silence_peak": (0.0, 1.0),
    "mel.n_fft": (16, 16_384), "mel.hop_length": (1, 16_384), "mel.n_mels": (1, 512), "mel.f_min": (0.0, 48_000.0),
    "mel.f_max": (0.0, 48_000.0), "mel.top_db": (0.0, 200.0), "mel.delta_window": (3, 31), "mel.norm_eps": (0.0, 1.0),
    "lfcc.n_fft": (16, 16_384), "lfcc.win_length": (1, 16_384), "lfcc.hop_length": (1, 16_384),
    "lfcc.n_filters": (1, 512), "lfcc.n_coefficients": (1, 512), "lfcc.f_min": (0.0, 48_000.0),
    "lfcc.f_max": (0.0, 48_000.0), "lfcc.log_offset": (0.0, 1.0), "lfcc.delta_window": (3, 31)}
ZERO_ALLOWED = ("min_seconds", "silence_peak", "f_min")   # the other floats must be > 0
MAX_FEATURE_VALUES = 1 << 20
RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")     # soxr's
MAX_WAVLM_LAYER = 64
WAVLM_RECEPTIVE, WAVLM_STRIDE = 400, 320   # WavLM's conv feature encoder: 25 ms windows every 20 ms at 16 kHz
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


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


def check_export_target(out: Path, force: bool) -> None:
    """ConfigError unless `out` can take an export: never a run folder or a folder inside one, never a
    folder holding a run or a store (their config.json and files are not ours to replace, even with
    --force); a non-empty folder that is not an export only with `force`."""
    check_output("--out", out, folder=True)
    for folder in (out, *out.resolve().parents):
        if RunFolder(folder).is_run:
            raise ConfigError(f"--out {out}: {'is' if folder == out else 'lies inside'} the run folder {folder}; "
                              "export to a folder of its own")
    if not out.is_dir():
        return
    held = [p for p in (out, *sorted(out.iterdir())[:MAX_LISTED]) if p.is_dir()
            and (RunFolder(p).is_run or (p / "zarr.json").is_file())]
    if held:
        raise ConfigError(f"--out {out} holds {'a run' if RunFolder(held[0]).is_run else 'a store'} "
                          f"({printable(str(held[0]))}); export to a folder of its own")
    if any(out.iterdir()) and not (_holds_export(out) or force):
        raise ConfigError(f"--out {out} exists and is not an exported dfdetect model; choose an empty folder "
                          "or pass --force")


def _holds_export(out: Path) -> bool:
    """Whether `out` holds an export dfdetect wrote (its config.json is ours: a Hugging Face folder's
    config.json and model.safetensors are not), or what a cut-off one leaves (an export's file names
    only, config.json not yet there)."""
    config = out / CONFIG
    if config.is_file():
        try:
            return config.stat().st_size <= MAX_CONFIG_BYTES and \
                json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError, AttributeError):
            return False
    ours = {name + suffix for name in (CONFIG, WEIGHTS, CARD) for suffix in ("", ".tmp")}
    return all(p.name in ours for p in out.iterdir())


def write_pretrained(run: LoadedRun, out: str | Path, card: str, force: bool = False, calibration=None) -> Path:
    """The exported folder of `run` at `out` (an existing export is replaced; a non-empty folder that is
    not one only with `force`; a run, a folder inside a run, or one holding a run or a store never).

    A kill at any instant never leaves a folder that loads as a mix of two exports: every file is
    written whole beside its name first; then the old config.json goes, the weights and the card are
    renamed into place, and the new config.json (which records the weights' sha256) is renamed in
    last. Until then the folder has no config.json (or one whose checksum the weights fail), so
    loading refuses it and says to export again."""
    out = Path(out)
    check_export_target(out, force)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    staged = {name: out / (name + ".tmp") for name in (WEIGHTS, CARD, CONFIG)}
    save_file(weights, str(staged[WEIGHTS]), metadata={"format": "pt"})
    with open(staged[WEIGHTS], "rb+") as f:
        os.fsync(f.fileno())
    _write_synced(staged[CARD], card)
    config = {**export_config(run), "files": {WEIGHTS: {"sha256": _sha256(staged[WEIGHTS])}},
              "calibration": calibration.to_dict() if calibration is not None else None}
    _write_synced(staged[CONFIG], json.dumps(config, indent=2))
    if (out / CONFIG).exists():
        os.unlink(out / CONFIG)        # from here until the last rename the folder is not loadable
    for name in (WEIGHTS, CARD, CONFIG):
        os.replace(staged[name], out / name)
    return out


def _write_synced(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_pretrained(path: str | Path) -> LoadedRun:
    """The head of an exported folder, as a LoadedRun (the shape score and evaluate use). Everything
    in the folder is checked before anything is allocated by it (docs/reliability.md, "Exported
    folders"); any problem is a RunError naming the file."""
    path = Path(path)
    config_file, weights = path / CONFIG, path / WEIGHTS
    if not weights.is_file():
        pickled = sorted(p.name for p in path.glob("*") if p.suffix.lower() in PICKLES) if path.is_dir() else []
        raise RunError(f"{path}: no {WEIGHTS}" + (f" (found {', '.join(map(printable, pickled))}: pickled weights "
                       "can run code and are never loaded)" if pickled else "")
                       + "; export the run with `dfdetect export RUN --out DIR`")
    for file, limit in ((config_file, MAX_CONFIG_BYTES), (weights, MAX_WEIGHTS_BYTES)):
        if not file.is_file():
            raise RunError(f"{file}: missing; the exported folder is incomplete (an export cut off?): "
                           "export it again")
        if file.stat().st_size > limit:
            raise RunError(f"{file}: {file.stat().st_size:,} bytes, over the {limit:,} an exported model has; "
                           "not loaded")
    config = _read_config(config_file)
    arch, options = config["arch"], config["model_config"]
    try:
        get_architecture(arch)
    except ConfigError as e:
        raise RunError(f"{config_file}: {printable(str(e))[:300]}; this dfdetect cannot build the exported "
                       "head") from None
    threshold, frontend = _threshold(config_file, config["threshold"]), _frontend(config_file, config)
    wavlm = _wavlm(config_file, arch, config.get("wavlm"))
    precision = config.get("score_precision", "float32")
    if precision not in PRECISIONS:
        raise RunError(f"{config_file}: score_precision {printable(repr(precision))[:60]}: must be one of "
                       f"{', '.join(PRECISIONS)}; export the run again")
    _check_files(weights, config.get("files"))
    model = _load_head(config_file, weights, arch, options)
    _check_inputs(config_file, model, arch, frontend, wavlm)
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    epoch = source.get("epoch") if isinstance(source.get("epoch"), int) else 0
    # The run-folder shape LoadedRun reads: the trainer's config keys scoring uses, and one record
    # holding the exported threshold.
    run_config = {"config": {"arch": arch, "score_precision": precision},
                  "model": options, "frontend": frontend.to_dict(),
                  "sets": {"train": {"frontend_hash": config["frontend_hash"]}}, "wavlm": wavlm}
    records = [{"epoch": epoch, "sets": {"val": {"eer_threshold": threshold}}}]
    if config.get("calibration") is not None:   # checked here: a bad one is a RunError naming the file
        records[0]["calibration"] = _calibration(config_file, config["calibration"])
    return LoadedRun(path, arch, epoch, model, run_config, records)


def _calibration(config_file: Path, data) -> dict:
    """The exported calibration's JSON, checked (Calibration.from_dict's rules)."""
    try:
        return Calibration.from_dict(data, str(config_file)).to_dict()
    except DfdetectError as e:
        raise RunError(f"{printable(str(e))[:300]}; export the run again") from None


def _check_inputs(config_file: Path, model: torch.nn.Module, arch: str, frontend: FrontendConfig, wavlm) -> None:
    """The head runs on one window of the features scoring will give it (zeros of the frontend's
    shapes; WavLM's hidden states as the config names them), so a head that cannot take them is
    refused here, not a traceback in score."""
    batch = {k: torch.zeros(1, *frontend.feature_shape(k)) for k in get_architecture(arch).inputs if k != "wavlm"}
    if wavlm:
        frames = max(1, (frontend.clip_samples - WAVLM_RECEPTIVE) // WAVLM_STRIDE + 1)
        batch["wavlm"] = torch.zeros(1, len(wavlm["layers"]), frames, model.config.hidden_size)
    try:
        with torch.inference_mode():
            model(batch)
    except Exception as e:  # noqa: BLE001  (shape errors of any kind: the folder's, not dfdetect's)
        raise RunError(f"{config_file}: the {arch} head does not take the features its frontend and WavLM "
                       f"make ({type(e).__name__}: {printable((str(e).splitlines() or [''])[0])[:200]}); "
                       "export the run again") from None


def _read_config(config_file: Path) -> dict:
    """config.json as a dict with the keys loading needs, or a RunError (JSON nested deeper than
    Python's recursion limit included)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != FORMAT \
                or config.get("format_version") != FORMAT_VERSION:
            raise KeyError("format")
        for key, kind in (("arch", str), ("model_config", dict), ("frontend", dict), ("frontend_hash", str)):
            if not isinstance(config[key], kind):
                raise TypeError(f"{key} is not a JSON {'object' if kind is dict else 'string'}")
        config["threshold"]   # noqa: B018 (a KeyError when missing)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"{config_file}: not the config.json of an exported dfdetect model (format {FORMAT} "
                       f"v{FORMAT_VERSION}; {type(e).__name__} {printable(str(e))[:100]}); "
                       "export the run again") from None
    return config


def _threshold(config_file: Path, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:   # NaN fails too
        raise RunError(f"{config_file}: threshold {printable(repr(value))[:60]}: must be a number in [0, 1] "
                       "(P(fake) >= threshold -> fake); export the run again")
    return float(value)


def _frontend(config_file: Path, config: dict) -> FrontendConfig:
    """The frontend config.json names, within FRONTEND_LIMITS, and the one its frontend_hash says."""
    try:
        frontend = check_frontend(config["frontend"])
    except ConfigError as e:
        raise RunError(f"{config_file}: {e}; export the run again") from None
    if frontend.hash() != config["frontend_hash"]:
        raise RunError(f"{config_file}: frontend_hash {printable(config['frontend_hash'])[:20]} is not the hash "
                       f"of its frontend values ({frontend.hash()}): the file was edited or damaged; export the "
                       "run again")
    return frontend


def check_frontend(values: dict) -> FrontendConfig:
    """The FrontendConfig of `values` (FrontendConfig.to_dict()'s shape: every field, nothing else),
    each number within FRONTEND_LIMITS and the frontend's own rules, or a ConfigError naming the field."""
    values = dict(values)
    version = values.pop("frontend_version", None)
    if version != FRONTEND_VERSION:
        raise ConfigError(f"frontend_version {printable(repr(version))[:20]}: this dfdetect computes frontend "
                          f"version {FRONTEND_VERSION}")
    values.setdefault("trim_silence", False)   # FrontendConfig.to_dict writes it only when on
    checked = _fields(FrontendConfig, values, "frontend")
    c = FrontendConfig(**{**checked, "mel": MelConfig(**checked["mel"]), "lfcc": LfccConfig(**checked["lfcc"])})
    nyquist, samples = c.sample_rate / 2, c.clip_samples
    rules = [(c.min_seconds <= c.clip_seconds, "frontend.min_seconds must be <= clip_seconds"),
             (c.resample_quality in RESAMPLE_QUALITIES,
              f"frontend.resample_quality must be one of {', '.join(RESAMPLE_QUALITIES)}"),
             (samples <= MAX_FEATURE_VALUES, f"a clip of {samples:,} samples: at most {MAX_FEATURE_VALUES:,}")]
    for name, s in (("mel", c.mel), ("lfcc", c.lfcc)):
        frames, bins = samples // s.hop_length + 1, s.n_fft // 2 + 1
        rules += [(s.f_min < s.f_max <= nyquist, f"frontend.{name}: f_min < f_max <= sample_rate / 2 must hold"),
                  (s.n_fft <= samples, f"frontend.{name}.n_fft must be <= the clip's {samples:,} samples"),
                  (frames * bins <= MAX_FEATURE_VALUES * 4, f"frontend.{name}: {frames:,} frames of {bins:,} "
                   f"frequency bins per clip: at most {MAX_FEATURE_VALUES * 4:,}"),
                  (s.delta_window % 2 == 1, f"frontend.{name}.delta_window must be odd")]
    rules += [(c.lfcc.win_length <= c.lfcc.n_fft, "frontend.lfcc.win_length must be <= n_fft"),
              (c.lfcc.n_coefficients <= c.lfcc.n_filters, "frontend.lfcc.n_coefficients must be <= n_filters")]
    rules += [(math.prod(c.feature_shape(k)) <= MAX_FEATURE_VALUES,
               f"frontend: {k} features of shape {c.feature_shape(k)} per clip: at most {MAX_FEATURE_VALUES:,} "
               "values") for k in ("mel", "lfcc")]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    return c


def _fields(cls: type, values, where: str) -> dict:
    """`values` for the dataclass `cls`: exactly its fields, numbers within FRONTEND_LIMITS (by
    `where`.field), nested configs as dicts of theirs."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(values) != set(fields):
        odd = sorted(set(values) ^ set(fields))
        raise ConfigError(f"{where}: fields {', '.join(printable(repr(n))[:40] for n in odd[:5])} missing or "
                          "unknown")
    checked = {}
    for name, value in values.items():
        default, key = getattr(cls(), name), f"{where}.{name}"
        if dataclasses.is_dataclass(default):
            checked[name] = _fields(type(default), value, key)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false")
            checked[name] = value
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be text")
            checked[name] = value
        else:
            low, high = FRONTEND_LIMITS[key.removeprefix("frontend.")]
            whole = isinstance(default, int)
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                kind = "an integer" if whole else "a number"
                raise ConfigError(f"{key} {printable(repr(value))[:40]}: must be {kind}")
            check_range(key, value, low, high, low_open=low == 0 and not whole and name not in ZERO_ALLOWED)
            checked[name] = value
    return checked


def _wavlm(config_file: Path, arch: str, info):
    """The WavLM identity a WavLM head needs (None for the others), in the shape WavLMConfig takes."""
    if not get_architecture(arch).uses_wavlm:
        return None
    try:
        if not isinstance(info, dict) or not isinstance(info.get("model"), str) \
                or not isinstance(info.get("revision"), (str, type(None))):
            raise ConfigError("wavlm must name the model (text) and its revision")
        layers = info.get("layers")
        if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_WAVLM_LAYER + 1 or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_WAVLM_LAYER for i in layers):
            raise ConfigError(f"wavlm.layers must be a list of hidden-state indices 0-{MAX_WAVLM_LAYER}")
        if not isinstance(info.get("normalize"), (bool, type(None))):
            raise ConfigError("wavlm.normalize must be true, false or null")
        WavLMConfig(model=info["model"], revision=info.get("revision"), layers=tuple(layers),
                    normalize=info.get("normalize"), storage=wavlm_storage_of(info))
    except (ConfigError, TypeError, ValueError) as e:
        raise RunError(f"{config_file}: {printable(str(e))[:200]}; export the run again") from None
    return info


def _check_files(weights: Path, files) -> None:
    """The weights are the ones config.json was written with (exports of older dfdetect versions
    record no checksum: nothing to compare)."""
    if files is None:
        return
    want = files.get(WEIGHTS, {}).get("sha256") if isinstance(files, dict) and isinstance(files.get(WEIGHTS), dict) \
        else None
    if not isinstance(want, str) or _sha256(weights) != want:
        raise RunError(f"{weights}: not the weights its config.json was written with (sha256 differs): an "
                       "export cut off or files mixed from two exports; export the run again")


def _load_head(config_file: Path, weights: Path, arch: str, options: dict) -> torch.nn.Module:
    """The head, built only once the weights' header (names, shapes, dtypes) matches a copy of it
    built on the meta device (which allocates nothing), so no config size costs memory."""
    try:
        with torch.device("meta"):
            skeleton = build_model(arch, **options)
    except Exception as e:  # noqa: BLE001  (a checked config this dfdetect still cannot build)
        raise RunError(f"{config_file}: {printable(str(e))[:300]}; this dfdetect cannot build the exported "
                       "head") from None
    want = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    try:
        with safe_open(str(weights), "pt") as f:
            have = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (SafetensorError: not a safetensors file)
        raise RunError(f"{weights}: not a safetensors file ({type(e).__name__}: "
                       f"{printable((str(e).splitlines() or [''])[0])[:200]}); export the run again") from None
    problems = [f"{printable(k)[:80]} is not one of the head's" for k in sorted(set(have) - set(want))]
    problems += [f"{k} is missing" for k in sorted(set(want) - set(have))]
    problems += [f"{k} is {have[k][1]} {list(have[k][0])}, the head's is {SAFETENSORS_DTYPES.get(w[1], w[1])} "
                 f"{list(w[0])}" for k, w in want.items() if k in have
                 and (have[k][0] != w[0] or have[k][1] != SAFETENSORS_DTYPES.get(w[1]))]
    if problems:
        raise RunError(f"{weights}: not the weights of this {arch} head ({len(problems)} problem(s): "
                       f"{'; '.join(problems[:3])}); export the run again")
    model = build_model(arch, **options)
    try:
        model.load_state_dict(load_file(str(weights)))   # strict: exactly the head's tensors
    except Exception as e:  # noqa: BLE001  (a file changed since its header was read)
        raise RunError(f"{weights}: not the weights of this {arch} head ({type(e).__name__}: "
                       f"{printable((str(e).splitlines() or [''])[0])[:300]}); export the run again") from None
    return model.eval()


def load_model(path: str | Path, epoch: str | int = "best") -> LoadedRun:
    """A run folder's head at `epoch`, or an exported folder's (which holds one epoch)."""
    if is_pretrained(path):
        if str(epoch) not in ("best", "last"):
            raise RunError(f"{path} is an exported model of one epoch; --epoch {epoch} needs the run folder")
        return load_pretrained(path)
    return load_run(path, epoch)
