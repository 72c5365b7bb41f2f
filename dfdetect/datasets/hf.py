"""A Hugging Face dataset on local disk, read with pyarrow alone (the `datasets` library is not needed).

Three layouts, told apart by what is in ``root``::

    root/dataset_dict.json + root/<split>/{state.json, dataset_info.json, data-*.arrow}
                                       DatasetDict.save_to_disk: one subfolder per split
    root/{state.json, dataset_info.json, data-*.arrow}
                                       Dataset.save_to_disk: one split (state.json's _split, else all)
    root/**/*.parquet                  parquet shards, e.g. a hub repository as downloaded:
                                       data/<split>-00000-of-00003.parquet (or <split>/*.parquet);
                                       the split is the file name before the first '-' (or the
                                       folder name) when it is a known split name, else ``all``

Columns (each option names one; the defaults are tried in order, case-insensitively):

- audio (``audio_column``): the feature typed ``Audio`` in the metadata, else ``audio``; a struct of
  ``bytes`` and ``path``. Embedded bytes are read lazily per clip (`refs.py`); a row without bytes
  uses its path: relative paths from the dataset folder, never outside it; absolute paths, as
  `datasets` writes for local files, only inside ``root`` unless ``allow_outside=1``. Symlinks
  are resolved: one leading out of the folder (an audio file, a folder, a shard, a data file) is
  refused like ``../``. Rows repeating an audio file already indexed are problems (one clip per
  file). Compressed embedded bytes are inflated only within `refs.py`'s bounds.
- label (``label_column``): label, labels, is_fake, is_spoof, fake, spoof, target, class, key.
  Strings take the usual spellings (fake/spoof/deepfake/1, real/bonafide/bona fide/genuine/0);
  integers are ClassLabel ids mapped through the metadata's ``names`` (each name read as a
  spelling), else 0 = real, 1 = fake; booleans: true = fake. ``fake_values`` / ``real_values``
  (comma-separated) replace the spellings when a corpus uses its own.
- optional: ``split_column`` (split; overrides the file's split), ``generator_column`` (generator,
  attack, system, model, source_model), ``language_column`` (language, lang, locale),
  ``speaker_column`` (speaker, speaker_id, spk), ``id_column`` (id, clip_id, utt_id, file_id).
  clip_id defaults to ``<file>:<row>`` (file relative to root), unique and stable.

Metadata: ``dataset_info.json``'s ``features`` for arrow folders; for parquet, the schema's
``huggingface`` key (what `datasets` writes into every shard). Indexing reads only the label-side
columns and the audio ``path`` field, one record batch / row group at a time; whether a row has
embedded bytes comes from the row group statistics (or, when a row group mixes, its null bitmap).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import (
    FAKE,
    REAL,
    BadJson,
    Clip,
    DatasetIndex,
    DatasetLayoutError,
    IndexBuilder,
    load_json,
    parse_label,
    path_inside,
    require,
)
from .refs import AudioRef, arrow_batches, parquet_chunk_problem

NAME = "hf"
DESCRIPTION = "A Hugging Face dataset on disk: save_to_disk folder (arrow) or parquet shards / hub repo"
LAYOUT = """\
  ROOT/dataset_dict.json + ROOT/<split>/{state.json,dataset_info.json,data-*.arrow}  (DatasetDict.save_to_disk)
  ROOT/{state.json,dataset_info.json,data-*.arrow}                                   (Dataset.save_to_disk)
  ROOT/**/*.parquet, e.g. a hub repo: ROOT/data/<split>-00000-of-00002.parquet
  columns: audio (Audio: bytes and/or path), label (fake/spoof/1, real/bonafide/0, or ClassLabel ids);
  optional split, generator, language, speaker, id
  options: audio_column label_column fake_values real_values split_column generator_column
           language_column speaker_column id_column allow_outside"""

LABEL_COLUMNS = ("label", "labels", "is_fake", "is_spoof", "fake", "spoof", "target", "class", "key")
OPTIONAL_COLUMNS = {
    "split": ("split",),
    "generator": ("generator", "attack", "system", "model", "source_model"),
    "language": ("language", "lang", "locale"),
    "speaker": ("speaker", "speaker_id", "spk"),
    "clip_id": ("id", "clip_id", "utt_id", "file_id"),
}
SPLITS = {"train", "training", "dev", "val", "valid", "validation", "test", "eval", "evaluation"}


def prepare(root: Path, audio_column: str = "", label_column: str = "", fake_values: str = "",
            real_values: str = "", split_column: str = "", generator_column: str = "",
            language_column: str = "", speaker_column: str = "", id_column: str = "",
            allow_outside: str = "") -> DatasetIndex:
    """Index a Hugging Face dataset saved with save_to_disk or stored as parquet shards."""
    root = Path(root)
    require(root, "the dataset folder", LAYOUT)
    if not root.is_dir():
        raise DatasetLayoutError(f"expected a folder at {root}, found a file.\nExpected layout:\n{LAYOUT}")
    b = IndexBuilder(NAME, root)
    opts = _Options(audio_column, label_column, fake_values, real_values,
                    {"split": split_column, "generator": generator_column, "language": language_column,
                     "speaker": speaker_column, "clip_id": id_column},
                    str(allow_outside).strip().lower() in ("1", "true", "yes"))
    parts = _parts(b, root)
    if not parts:
        raise DatasetLayoutError(f"found no dataset_dict.json, state.json or *.parquet in {root}."
                                 f"\nExpected layout:\n{LAYOUT}")
    for split, folder, files in parts:
        features = _folder_features(b, folder)
        for f in files:
            _index_file(b, f, split, features, opts)
    return b.finish()


class _Options:
    def __init__(self, audio, label, fake, real, columns, allow_outside):
        self.audio, self.label, self.columns, self.allow_outside = audio, label, columns, allow_outside
        self.values = None
        self.resolved: dict[str, str | None] = {}   # audio path as named -> as resolved (None: refused)
        if fake or real:
            self.values = {**{v.strip().lower(): FAKE for v in fake.split(",") if v.strip()},
                           **{v.strip().lower(): REAL for v in real.split(",") if v.strip()}}


def _parts(b: IndexBuilder, root: Path) -> list[tuple[str, Path, list[Path]]]:
    """(split, folder, data files) of every part of the dataset, in a stable order; a split or data
    file named outside its folder, or leading out of the root through a symlink (an untrusted
    dataset_dict.json / state.json / link), is a problem."""
    if (root / "dataset_dict.json").is_file():
        where = root / "dataset_dict.json"
        try:
            splits = load_json(where)["splits"]
            if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
                raise BadJson(f"'splits' is {type(splits).__name__}, not a list of names")
        except (BadJson, KeyError, TypeError) as exc:
            raise DatasetLayoutError(f"{where} is not a DatasetDict description "
                                     f"({exc}).\nExpected layout:\n{LAYOUT}") from None
        inside = []
        for s in splits:
            if path_inside(str(root), s) in (None, str(b.root)):
                b.problem(str(where), f"split {s!r} names a folder outside {root}; skipped")
            elif _stays_inside(b, str(root / s), f"split folder {s!r}"):
                inside.append(s)
        return [(s, root / s, _arrow_files(b, root / s)) for s in inside]
    if (root / "state.json").is_file():
        return [(_state_split(b, root) or "all", root, _arrow_files(b, root))]
    by_split: dict[str, list[Path]] = {}
    for p in _parquet_shards(b, root):
        by_split.setdefault(_shard_split(root, p), []).append(p)
    return [(s, root, files) for s, files in by_split.items()]


def _stays_inside(b: IndexBuilder, path: str, what: str) -> bool:
    """False plus a problem when a symlink takes `path` out of the root: the same rule as `../`."""
    target = b.link_outside(path)
    if target is not None:
        b.problem(path, f"{what} is a symlink leading outside {b.root} (to {target}); not read "
                        "(a dataset's paths never leave its folder)")
    return target is None


def _parquet_shards(b: IndexBuilder, root: Path) -> list[Path]:
    """Every *.parquet under root, hidden names skipped, sorted. A stack of its own (rglob recurses:
    a tree 1,300 folders deep is a RecursionError); a symlinked folder or shard is followed only when
    it stays inside the root, and each real folder is entered once (a link loop ends)."""
    # each folder's real path from its parent's (a realpath per folder would be quadratic in depth)
    found, seen, stack = [], set(), [(str(root), b.real_root)]
    while stack:
        folder, real = stack.pop()
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            b.problem(folder, f"cannot read folder ({exc.strerror or exc}); its shards are not indexed")
            continue
        for e in entries:
            link, wanted = e.is_symlink(), e.is_dir() or e.name.endswith(".parquet")
            if e.name.startswith(".") or not wanted or (link and not _stays_inside(b, e.path, repr(b.rel(e.path)))):
                continue
            if e.is_dir():
                stack.append((e.path, os.path.realpath(e.path) if link else os.path.join(real, e.name)))
            elif e.is_file():
                found.append(Path(e.path))
    shards, shown = [], {}
    for p in sorted(found):   # one file reached twice (a link to a shard inside) is read once
        first = shown.setdefault(os.path.realpath(p), b.rel(p))
        if first != b.rel(p):
            b.problem(str(p), f"the same file as {first} (through a symlink); its rows are indexed once, there")
        else:
            shards.append(p)
    return shards


def _read_state(b: IndexBuilder, folder: Path) -> dict | None:
    """state.json as a dict; None (plus a problem when it is there but unreadable) otherwise."""
    where = folder / "state.json"
    try:
        state = load_json(where)
        if not isinstance(state, dict):
            raise BadJson(f"a JSON {type(state).__name__}, not an object")
        return state
    except FileNotFoundError:
        return None
    except (BadJson, OSError) as exc:
        b.problem(str(where), f"cannot read ({exc}); every *.arrow in {folder} is read, split from the folder")
        return None


def _arrow_files(b: IndexBuilder, folder: Path) -> list[Path]:
    """The data files state.json lists (in its order), else every *.arrow in the folder."""
    state = _read_state(b, folder)
    entries = state.get("_data_files") if state is not None else None
    if not isinstance(entries, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                                for f in entries):
        if state is not None:
            b.problem(str(folder / "state.json"), "'_data_files' is not a list of {\"filename\": ...}; "
                                                  f"every *.arrow in {folder} is read instead")
        names = [p.name for p in sorted(folder.glob("*.arrow"))]
    else:
        names = [f["filename"] for f in entries]
    files = []
    for n in names:
        if path_inside(str(folder), n) is None:
            b.problem(str(folder / "state.json"), f"data file {n!r} lies outside {folder}; not read")
        elif _stays_inside(b, str(folder / n), f"data file {n!r}"):
            files.append(folder / n)
    return files


def _state_split(b: IndexBuilder, folder: Path) -> str:
    state = _read_state(b, folder) or {}
    split = state.get("_split")
    return split if isinstance(split, str) else ""


def _shard_split(root: Path, path: Path) -> str:
    stem = path.name.split("-", 1)[0].split(".", 1)[0].lower()
    if stem in SPLITS:
        return stem
    parent = path.parent.name.lower()
    return parent if path.parent != root and parent in SPLITS else "all"


def _folder_features(b: IndexBuilder, folder: Path) -> dict:
    where = folder / "dataset_info.json"
    try:
        features = load_json(where).get("features") or {}
        if not isinstance(features, dict):
            raise BadJson(f"'features' is a JSON {type(features).__name__}, not an object")
        return features
    except FileNotFoundError:
        return {}
    except (BadJson, OSError, AttributeError) as exc:
        b.problem(str(where), f"cannot read its features ({exc}); columns found by their names")
        return {}


def _parquet_features(schema) -> dict:
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError, RecursionError):
        return {}
    return features if isinstance(features, dict) else {}


def _find(names: list[str], wanted: str, defaults) -> str | None:
    lower = {n.lower(): n for n in names}
    for name in ([wanted] if wanted else defaults):
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def _type_of(feature) -> str:
    return feature.get("_type", "") if isinstance(feature, dict) else ""


def _columns(b, where, names, features, schema, opts):
    """(audio, label, {field: column}) for one file, or None plus a problem when it cannot be read."""
    import pyarrow as pa

    audio = _find(names, opts.audio, [n for n in names if _type_of(features.get(n)) == "Audio"]
                  + ["audio"])
    if audio is None:
        b.problem(where, f"no audio column (columns: {names}); pass --option audio_column=NAME; file skipped")
        return None
    t = schema.field(audio).type
    if not (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) and not pa.types.is_binary(t) \
            and not pa.types.is_large_binary(t):
        b.problem(where, f"audio column {audio!r} is {t}, not an Audio struct of bytes and path; file skipped")
        return None
    label = _find(names, opts.label, LABEL_COLUMNS)
    if label is None:
        b.problem(where, f"no label column (tried {', '.join([opts.label] if opts.label else LABEL_COLUMNS)}; "
                         f"columns: {names}); pass --option label_column=NAME; file skipped")
        return None
    extra = {}
    for field, defaults in OPTIONAL_COLUMNS.items():
        found = _find(names, opts.columns[field], defaults)
        if found is None and opts.columns[field]:
            b.problem(where, f"no column {opts.columns[field]!r} for {field} (columns: {names}); "
                             f"{field} left empty")
        elif found is not None and found not in (audio, label):
            extra[field] = found
    return audio, label, extra


def _label_map(feature, opts):
    """value -> label for this column: the options' values, or ClassLabel names read as spellings."""
    names = feature.get("names") if _type_of(feature) == "ClassLabel" else None
    names = names if isinstance(names, list) else None

    def read(value):
        if value is None:
            return None
        if opts.values is not None:
            key = str(value).strip().lower()
            if isinstance(value, int) and names and 0 <= value < len(names):
                key = str(names[value]).strip().lower()
            return opts.values.get(key)
        if isinstance(value, bool):
            return FAKE if value else REAL
        if isinstance(value, int) and names:
            return parse_label(names[value]) if 0 <= value < len(names) else None
        if isinstance(value, (int, float)) and value in (0, 1):
            return int(value)
        return parse_label(value)
    return read


def _index_file(b: IndexBuilder, path: Path, split: str, features: dict, opts: _Options) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shown = b.rel(path)
    try:
        if path.suffix == ".parquet":
            schema = pq.ParquetFile(path).schema_arrow
            features = _parquet_features(schema) or features
        else:
            schema = arrow_batches(str(path))[0]
    except FileNotFoundError:
        b.problem(str(path), "listed in state.json but missing; its rows are not indexed")
        return
    except Exception as exc:   # pyarrow: ArrowInvalid, OSError ... for a damaged or foreign file
        b.problem(str(path), f"cannot read as {'parquet' if path.suffix == '.parquet' else 'arrow'} "
                             f"({exc}); file skipped")
        return
    names = list(schema.names)
    cols = _columns(b, str(path), names, features, schema, opts)
    if cols is None:
        return
    audio, label, extra = cols
    read_label = _label_map(features.get(label), opts)
    struct = pa.types.is_struct(schema.field(audio).type)
    row = 0
    try:
        for rg, in_group, row, batch, has_bytes in _batches(b, path, audio, label, extra, struct):
            data = batch.to_pydict()
            paths = data.get("__path") or [None] * batch.num_rows
            for i in range(batch.num_rows):
                # parquet: the row within its row group (the unit read back); arrow: the row in the file
                ref_row = in_group + i if rg >= 0 else row
                _add_row(b, path, shown, split, rg, row, ref_row, data, i, paths[i], has_bytes[i], audio,
                         label, extra, read_label, opts)
                row += 1
    except Exception as exc:   # a damaged batch: what came before stays indexed
        b.problem(f"{path} row {row}", f"cannot read the rest of the file ({exc}); rows from here skipped")


BATCH_ROWS = 65_536   # rows of label-side columns in memory at a time


def _batches(b: IndexBuilder, path: Path, audio: str, label: str, extra: dict, struct: bool):
    """(row group or -1, first row in the row group, first row in the file, label-side columns +
    __path, has-bytes per row) per record batch (arrow) or up to BATCH_ROWS rows of a row
    group (parquet). The audio bytes are not read, except an arrow batch's (zero-copy unless
    compressed) and once for a parquet row group whose statistics say it mixes rows with and
    without bytes; both only within refs' inflation bounds (beyond them the rows are a problem)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = [label, *extra.values()]
    if path.suffix != ".parquet":
        schema, batches = arrow_batches(str(path))
        for first, rows, message, problem in batches:
            if problem is not None:
                b.problem(f"{path} rows {first}-{first + rows - 1}", f"{problem}; rows skipped")
                continue
            batch = pa.ipc.read_record_batch(message, schema)
            col = batch.column(audio)
            out = {n: batch.column(n) for n in wanted}
            if struct and col.type.get_field_index("path") >= 0:
                out["__path"] = col.field("path")
            yield -1, first, first, pa.RecordBatch.from_pydict(out), \
                pc.is_valid(col.field("bytes") if struct else col).to_pylist()
        return
    pf = pq.ParquetFile(path)
    leaf = f"{audio}.bytes" if struct else audio
    columns = wanted + ([f"{audio}.path"] if struct and pf.schema_arrow.field(audio).type.get_field_index("path") >= 0
                        else [])
    index = {pf.metadata.schema.column(i).path: i for i in range(pf.metadata.num_columns)}
    group_start = 0
    for rg in range(pf.num_row_groups):
        meta = pf.metadata.row_group(rg)
        group_start += meta.num_rows
        stats = meta.column(index[leaf]).statistics if leaf in index else None
        nulls = stats.null_count if stats is not None and stats.has_null_count else None
        problem = parquet_chunk_problem(pf.metadata, rg, audio) if nulls != meta.num_rows else None
        if problem is not None:
            b.problem(f"{path} row group {rg}", f"column {audio!r}: {problem}; its {meta.num_rows} rows skipped")
            continue
        valid = None
        if nulls is None or 0 < nulls < meta.num_rows:   # mixes rows with and without bytes: read them once
            blob = pf.read_row_group(rg, columns=[audio]).column(audio).combine_chunks()
            valid = pc.is_valid(blob.field("bytes") if struct else blob).to_pylist()
        first = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=columns, use_threads=False):
            if struct and audio in batch.schema.names:
                batch = _with_path(batch, audio, wanted)
            has = valid[first:first + batch.num_rows] if valid is not None else [nulls == 0] * batch.num_rows
            yield rg, first, group_start - meta.num_rows + first, batch, has
            first += batch.num_rows


def _with_path(batch, audio: str, wanted: list[str]):
    """The batch's label-side columns plus the audio struct's path as __path."""
    import pyarrow as pa

    out = {n: batch.column(n) for n in wanted}
    out["__path"] = batch.column(audio).field("path")
    return pa.RecordBatch.from_pydict(out)


def _add_row(b, path, shown, split, rg, row, ref_row, data, i, audio_path, has_bytes, audio, label, extra,
             read_label, opts) -> None:
    where = f"{path} row {row}"
    value = data[label][i]
    try:
        y = read_label(value)
    except (TypeError, ValueError):
        y = None
    if y is None:
        b.problem(where, f"unknown label {value!r} in column {label!r} (expected fake/spoof/1 or "
                         "real/bonafide/0; --option fake_values=... real_values=... for your own); row skipped")
        return
    get = {f: ("" if data[c][i] is None else str(data[c][i])) for f, c in extra.items()}
    if has_bytes:
        clip_path = AudioRef(kind="parquet" if rg >= 0 else "arrow", file=os.path.abspath(path),
                             row=ref_row, row_group=rg, column=audio).to_path()
    elif audio_path:
        if audio_path in opts.resolved:   # a name seen before: resolved (or refused) once
            clip_path = opts.resolved[audio_path]
            if clip_path is None:
                b.problem(where, f"audio path {audio_path!r} refused (as at its first row); row skipped")
        else:
            clip_path = opts.resolved[audio_path] = _file_path(b, where, str(audio_path), opts)
        if clip_path is None or not b.first_use(clip_path, where):
            return
    else:
        b.problem(where, f"column {audio!r} has neither bytes nor a path; row skipped")
        return
    clip_id = get.pop("clip_id", "") or f"{shown}:{row}"
    clip = Clip(clip_id=clip_id, path=clip_path, label=y, split=get.pop("split", "") or split, **get)
    if b.add(clip, where) and not has_bytes and not b.is_file(clip_path):
        b.problem(where, f"{clip_path} named in {shown} row {row} but missing "
                         "(kept; it will be recorded as an error)")


def _file_path(b: IndexBuilder, where: str, name: str, opts: _Options) -> str | None:
    """An audio path named in the table: relative from the root, absolute only inside the root
    (unless allow_outside), since a downloaded dataset is untrusted."""
    if "\x00" in name:
        b.problem(where, "audio path holds a NUL byte; row skipped")
        return None
    if os.path.isabs(name) and opts.allow_outside:
        return os.path.normpath(name)
    full = path_inside(b.root, name)
    target = b.link_outside(full) if full is not None else None
    if full is None or target is not None:
        how = "points" if target is None else f"is a symlink leading to {target},"
        b.problem(where, f"audio path {name!r} {how} outside {b.root}; row skipped (for a dataset "
                         "you made yourself, --option allow_outside=1 reads absolute paths anywhere)")
        return None
    return full
