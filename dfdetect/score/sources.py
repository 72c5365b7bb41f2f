"""What `dfdetect score` reads: files, folders, archives and lists of paths, expanded into one `Item`
per input; a worker later opens each item as a read-only stream.

- A folder is walked recursively in sorted order; hidden files and folders (names starting with ".")
  are not inputs. Symbolic links to files are followed (they are the user's files); links to folders
  are reported and not followed (no loops), and so are FIFOs, sockets and devices (reading a FIFO
  would block forever).
- An archive (.tar, .tar.gz/.tgz, .tar.bz2/.tbz2, .tar.xz/.txz, .zip), given or found in a folder,
  contributes its members in archive order (so compressed tars are read front to back). Members are
  read as streams from the archive and never extracted. Untrusted archives are the normal case, so
  members with absolute paths or `..`, symbolic and hard links, devices and FIFOs, and a second
  member with an earlier member's name (which would replace it on extraction) become `skipped` rows
  with the reason; none is ever opened or followed. Archives are read one level deep: a nested
  archive is a `skipped` row (extract it and score it separately). Hidden members (macOS `._*`
  files and the like) are not inputs. An archive that cannot be read (further) adds an `error` row
  with an empty member, after the members listed up to that point.
- A list (.txt: one path per line, `#` comments; .csv: a `path` column; `-`: lines on stdin) names
  files, folders or archives; relative paths are relative to the list's folder (the working folder
  for stdin). A listed path that does not exist becomes an `error` row; a path given on the command
  line that does not exist is a usage error.
"""

from __future__ import annotations

import csv
import io
import lzma
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from dfdetect.errors import DfdetectError
from dfdetect.featurize.audio import SPECIAL_FILE, AudioError, is_special
from dfdetect.names import printable

OK, ERROR, SKIPPED = "ok", "error", "skipped"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LIST_SUFFIXES = (".txt", ".csv")
HEAD_CACHE = 1 << 20   # bytes of each archive member kept in memory (see _HeadCached)


class SourceError(DfdetectError):
    """A PATH argument that cannot be used at all (a usage error, not a bad input row)."""


@dataclass(frozen=True)
class Item:
    """One input: a file, or a member of an archive. `status` is "" for items to score, or the
    skipped/error outcome decided while listing (with its reason)."""
    path: str                      # the file, or the archive holding the member
    member: str = ""               # member name inside the archive; "" for plain files
    size: int | None = None        # bytes (declared by the archive for members)
    archive: str = ""              # "tar" | "zip" | "" (plain file)
    info: object = None            # the member's TarInfo / ZipInfo, which locates its bytes
    status: str = ""
    error_kind: str = ""
    error: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """How the output names this input (and how --resume recognises it)."""
        return printable(self.path), printable(self.member)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    @property
    def sequential(self) -> bool:
        """A member of a compressed tar: reaching it means decompressing the archive up to it."""
        return self.archive == "tar" and not self.path.lower().endswith(".tar")


def archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    return "tar" if lower.endswith(TAR_SUFFIXES) else None


def expand(paths: list[str], stdin: io.TextIOBase | None = None) -> list[Item]:
    """Every input named by the PATH arguments, once each (a file named twice, e.g. directly and
    through its folder, is one input). Raises SourceError for a PATH that does not exist or a list
    that cannot be read."""
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for path in paths:
        if path == "-":
            entries = _list_entries(stdin or sys.stdin, "<stdin>", Path("."), ".txt")
        elif not os.path.lexists(path):
            raise SourceError(f"{path}: no such file or directory")
        elif path.lower().endswith(LIST_SUFFIXES) and os.path.isfile(path):
            try:
                with open(path, newline="", encoding="utf-8-sig") as f:
                    entries = _list_entries(f, path, Path(path).parent, Path(path).suffix.lower())
            except (OSError, UnicodeDecodeError) as e:
                raise SourceError(f"{path}: cannot read the list ({e})") from None
        else:
            entries = [(path, None)]
        for entry, listed_in in entries:
            # what an earlier PATH already named is dropped; repeated names inside one archive are
            # distinct members, reported as duplicates
            new = [item for item in _expand_one(entry, listed_in)
                   if (os.path.normpath(item.path), item.member) not in seen]
            seen.update((os.path.normpath(item.path), item.member) for item in new)
            items += new
    return items


def _list_entries(f, name: str, base: Path, suffix: str) -> list[tuple[str, str]]:
    if suffix == ".csv":
        reader = csv.DictReader(f)
        column = next((c for c in reader.fieldnames or [] if c.strip().lower() == "path"), None)
        if column is None:
            raise SourceError(f"{name}: a CSV list needs a 'path' column; its columns: "
                              f"{', '.join(reader.fieldnames or []) or '(none)'}")
        paths = [row[column] or "" for row in reader]
    else:
        paths = [line.rstrip("\r\n") for line in f]
    paths = [p.strip() for p in paths if p.strip() and not p.lstrip().startswith("#")]
    return [(p if os.path.isabs(p) else str(base / p), name) for p in paths]


def _expand_one(path: str, listed_in: str | None) -> Iterator[Item]:
    if not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
        yield Item(path, status=ERROR, error_kind="not_found",
                   error=f"{path}: file not found" + (f" (listed in {listed_in})" if listed_in else ""))
    elif os.path.isdir(path):
        yield from _walk(path)
    else:
        yield from _file(path)


def _file(path: str) -> Iterator[Item]:
    try:
        st = os.stat(path)
    except OSError as e:
        yield Item(path, status=ERROR, error_kind="unreadable", error=f"{path}: cannot read ({e.strerror})")
        return
    if is_special(st.st_mode):
        yield Item(path, size=0, status=SKIPPED, error_kind="special_file", error=f"{path}: {SPECIAL_FILE}")
    elif archive_kind(path):
        yield from _archive_members(path)
    else:
        yield Item(path, size=st.st_size)


def _walk(folder: str) -> Iterator[Item]:
    unlistable: list[OSError] = []   # os.walk skips folders it cannot list; they become rows
    for root, dirs, files in os.walk(folder, onerror=unlistable.append, followlinks=False):
        yield from _unlistable(unlistable)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield Item(os.path.join(root, d), status=SKIPPED, error_kind="link",
                       error=f"{os.path.join(root, d)}: symbolic link to a folder: not followed")
        for name in sorted(f for f in files if not f.startswith(".")):
            yield from _expand_one(os.path.join(root, name), None)
    yield from _unlistable(unlistable)


def _unlistable(errors: list[OSError]) -> Iterator[Item]:
    while errors:
        e = errors.pop(0)
        yield Item(str(e.filename), status=ERROR, error_kind="unreadable",
                   error=f"{e.filename}: cannot list the folder ({e.strerror})")


# -- archives ----------------------------------------------------------------------------------
def unsafe_name(name: str) -> str | None:
    """Why a member name is unsafe to use (absolute, or climbing out with '..'); None when safe."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        return "absolute path: not read (archives from the wild are untrusted)"
    if ".." in parts:
        return "path with '..': not read (archives from the wild are untrusted)"
    return None


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(name.replace("\\", "/")).parts)


def _archive_members(path: str) -> Iterator[Item]:
    kind = archive_kind(path)
    count = 0
    try:
        for item in _tar_members(path) if kind == "tar" else _zip_members(path):
            count += 1
            yield item
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
        where = f"after {count} members (they have their own rows)" if count else "at the start"
        yield Item(path, status=ERROR, error_kind="bad_archive", error=f"{path}: unreadable {kind} archive {where}: {e}")


class _Members:
    """Turns an archive's entries into items: what is unsafe or nested is reported, hidden entries
    (macOS `._*` files and the like) are left out, a repeated name is reported the second time."""

    def __init__(self, path: str, kind: str):
        self.path, self.kind, self.seen = path, kind, set()

    def item(self, name: str, info, size: int, problem: tuple[str, str, str] | None) -> Item | None:
        """problem: (status, kind, reason) found from the entry's type, or None."""
        if problem is None and (reason := unsafe_name(name)):
            problem = SKIPPED, "unsafe_path", reason
        if problem is None and _hidden(name):
            return None
        if problem is None and archive_kind(name):
            problem = SKIPPED, "nested_archive", ("nested archive: not opened (archives are read one level deep; "
                                                  "extract it and score it separately)")
        if problem is None and name in self.seen:
            problem = SKIPPED, "duplicate", ("a second member with the same name (it would replace the first "
                                             "on extraction): not read")
        self.seen.add(name)
        if problem:
            status, kind, reason = problem
            return Item(self.path, name, size, status=status, error_kind=kind, error=f"{self.path}:{name}: {reason}")
        return Item(self.path, name, size, self.kind, info)


def _tar_members(path: str) -> Iterator[Item]:
    members = _Members(path, "tar")
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if info.isdir():
                continue
            if info.issym() or info.islnk():
                kind = "symbolic" if info.issym() else "hard"
                problem = SKIPPED, "link", f"{kind} link to {info.linkname!r}: not followed"
            elif not info.isreg():
                problem = SKIPPED, "special_file", "device file, FIFO or other special member: not read"
            else:
                problem = None
            if item := members.item(info.name, info, info.size, problem):
                yield item


def _zip_members(path: str) -> Iterator[Item]:
    members = _Members(path, "zip")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            mode = info.external_attr >> 16   # the Unix mode, when the zip was made on Unix
            if stat.S_ISLNK(mode):
                problem = SKIPPED, "link", "symbolic link: not followed"
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                problem = SKIPPED, "special_file", "device file, FIFO or socket: not read"
            elif info.flag_bits & 0x1:
                problem = ERROR, "encrypted", "encrypted member: cannot be read without its password"
            else:
                problem = None
            if item := members.item(info.filename, info, info.file_size, problem):
                yield item


# -- opening (worker side) ---------------------------------------------------------------------------
class Opener:
    """Opens items as seekable binary streams, keeping the last archive open: a worker reads runs
    of consecutive members of one archive, and reopening a zip re-reads its whole directory."""

    def __init__(self):
        self._path: str | None = None
        self._archive = None

    def open(self, item: Item) -> BinaryIO:
        """A read-only stream of the item's bytes; AudioError when it cannot be opened."""
        try:
            if not item.archive:
                return open(item.path, "rb")
            archive = self._archive_of(item)
            raw = archive.open(item.info) if item.archive == "zip" else archive.extractfile(item.info)
            return io.BufferedReader(_HeadCached(raw, item.size or 0))
        except FileNotFoundError:
            raise AudioError(item.where, "not_found", "file not found (removed after listing?)") from None
        except NotImplementedError as e:  # zip compression methods Python cannot read (e.g. deflate64)
            raise AudioError(item.where, "unsupported_compression", f"cannot decompress this member ({e})") from None
        except (OSError, RuntimeError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
            raise AudioError(item.where, "unreadable", f"cannot read ({e})") from None

    def _archive_of(self, item: Item):
        if self._path != item.path:
            self.close()
            self._archive = zipfile.ZipFile(item.path) if item.archive == "zip" else tarfile.open(item.path, "r:*")
            self._path = item.path
        return self._archive

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
        self._path, self._archive = None, None


class _HeadCached(io.RawIOBase):
    """An archive member whose first bytes stay in memory. Decoders seek back to the start to sniff
    and parse headers, and a backward seek inside a compressed tar restarts decompression at the
    start of the whole archive; with the head cached, reading a member stays one forward pass."""

    def __init__(self, raw: BinaryIO, size: int):
        self._raw, self._size = raw, size
        self._head = raw.read(HEAD_CACHE)
        self._pos = 0
        self._raw_pos = len(self._head)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._pos < len(self._head):
            data = self._head[self._pos:self._pos + len(buffer)]
        else:
            try:
                if self._raw_pos != self._pos:
                    self._raw.seek(self._pos)
                data = self._raw.read(len(buffer))
            except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile):
                # an archive cut short or corrupt inside this member: its end, for the decoder,
                # which then reports the member as truncated (libsndfile would swallow the error)
                data = b""
            self._raw_pos = self._pos + len(data)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: max(self._size, len(self._head))}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._raw.close()
        super().close()
