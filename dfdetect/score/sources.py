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
- Zip members are inflated by dfdetect itself, a buffer at a time whatever the method (stored,
  DEFLATE, bzip2, LZMA), never more than the reader asks for: zipfile inflates bzip2 and LZMA a whole
  compressed chunk at once, and 4 KB of bzip2 can be gigabytes. A member that inflates past the size
  its archive declares or past --max-file-mb, or beyond its first MB at more than MAX_RATIO:1 (DEFLATE
  cannot exceed 1032:1; bombs reach 10^6:1), is an `error` row with the reason, found within the
  first MB or so of output.
- A list (.txt: one path per line, `#` comments; .csv: a `path` column; `-`: lines on stdin) names
  files, folders or archives; relative paths are relative to the list's folder (the working folder
  for stdin). A listed path that does not exist becomes an `error` row; a path given on the command
  line that does not exist is a usage error.
"""

from __future__ import annotations

import bz2
import csv
import io
import lzma
import os
import stat
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from dfdetect.datasets.refs import MAX_RATIO, RATIO_GRACE  # inflated:compressed bytes, checked beyond the grace
from dfdetect.errors import DfdetectError
from dfdetect.featurize.audio import NUL_IN_PATH, SPECIAL_FILE, AudioError, is_special
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
    if "\x00" in path:
        yield Item(path, status=ERROR, error_kind="bad_path", error=f"{path}: {NUL_IN_PATH}"
                   + (f" ({listed_in})" if listed_in else ""))
    elif not os.path.lexists(path) or (os.path.islink(path) and not os.path.exists(path)):
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
    """Files under `folder`, depth first in sorted order, as os.walk would give them, but with a
    stack of its own: os.walk recurses, and a tree 1,000 folders deep is a RecursionError."""
    stack = [folder]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:   # a folder that cannot be listed is a row, the walk goes on
            yield Item(root, status=ERROR, error_kind="unreadable",
                       error=f"{root}: cannot list the folder ({e.strerror or e})")
            continue
        folders, files = [], []
        for e in entries:
            if not _is_folder(e):
                files.append(e.path)
            elif e.is_symlink():
                yield Item(e.path, status=SKIPPED, error_kind="link",
                           error=f"{e.path}: symbolic link to a folder: not followed")
            else:
                folders.append(e.path)
        for path in files:
            yield from _expand_one(path, None)
        stack.extend(reversed(folders))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


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
        yield Item(path, status=ERROR, error_kind="bad_archive",
                   error=f"{path}: unreadable {kind} archive {where}: {e}")


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
    of consecutive members of one archive, and reopening a zip re-reads its whole directory.
    `max_bytes` bounds the bytes a zip member may inflate to (--max-file-mb)."""

    def __init__(self, max_bytes: float | None = None):
        self.max_bytes = max_bytes
        self._path: str | None = None
        self._archive = None
        self._member: _HeadCached | None = None

    def open(self, item: Item) -> BinaryIO:
        """A read-only stream of the item's bytes; AudioError when it cannot be opened."""
        self._member = None
        try:
            if not item.archive:
                return open(item.path, "rb")
            archive = self._archive_of(item)
            raw = (_ZipMember(item.path, item.info, item.where, self.max_bytes) if item.archive == "zip"
                   else archive.extractfile(item.info))
            self._member = _HeadCached(raw, item.size or 0)
            return io.BufferedReader(self._member)
        except FileNotFoundError:
            raise AudioError(item.where, "not_found", "file not found (removed after listing?)") from None
        except NotImplementedError as e:  # zip compression methods Python cannot read (e.g. deflate64)
            raise AudioError(item.where, "unsupported_compression", f"cannot decompress this member ({e})") from None
        except (OSError, RuntimeError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
            raise AudioError(item.where, "unreadable", f"cannot read ({e})") from None

    @property
    def failure(self) -> AudioError | None:
        """Why the last member opened stopped giving bytes (a bomb, a lie about its size), if it did.
        Decoders read through callbacks that turn exceptions into an early end (libsndfile would
        call it a truncated file), so the reader keeps the reason here for the row."""
        return self._member.failure if self._member is not None else None

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


class _ZipMember(io.RawIOBase):
    """A zip member's bytes, inflated as they are read and never more than asked for (see the
    module docstring): the bound is on the OUTPUT, whatever the compression method."""

    CHUNK = 1 << 16   # compressed bytes read at a time

    def __init__(self, path: str, info: zipfile.ZipInfo, where: str, max_bytes: float | None):
        method = info.compress_type
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            raise NotImplementedError(f"zip compression method {method} is not supported")
        self._file = open(path, "rb")
        try:
            self._file.seek(info.header_offset)
            header = self._file.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("no local file header where the directory says")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            self._file.seek(info.header_offset + 30 + name_length + extra_length)
        except BaseException:
            self._file.close()
            raise
        self._where, self._method, self._info, self._max_bytes = where, method, info, max_bytes
        self._start = self._file.tell()
        self._restart()

    def _restart(self) -> None:
        self._file.seek(self._start)
        self._left = self._info.compress_size    # compressed bytes not read yet
        self._produced, self._crc = 0, 0
        self._pending = b""                      # compressed bytes zlib has not consumed yet
        self._decompressor = {zipfile.ZIP_DEFLATED: lambda: zlib.decompressobj(-15),
                              zipfile.ZIP_BZIP2: bz2.BZ2Decompressor}.get(self._method, lambda: None)()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._produced

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """As zipfile seeks: back means inflating again from the start; forward reads on."""
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._produced, io.SEEK_END: self._info.file_size}[whence] + offset
        if target < self._produced:
            self._restart()
        while self._produced < target and self._inflate(min(target - self._produced, 1 << 16)):
            pass
        return self._produced

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._inflate(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        data = self._file.read(min(n, self._left))
        self._left -= len(data)
        if len(data) < n and self._left:
            self._left = 0   # the archive file ends inside the member
        return data

    def _inflate(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if self._method == zipfile.ZIP_STORED:
            return self._count(self._read(n), self._left == 0)
        if self._method == zipfile.ZIP_LZMA and self._decompressor is None:
            self._decompressor = self._lzma()
        d = self._decompressor
        while not d.eof:
            if self._method == zipfile.ZIP_DEFLATED:
                data = self._pending or self._read(self.CHUNK)
                out = d.decompress(data, n)
                self._pending = d.unconsumed_tail
            else:
                data = self._read(self.CHUNK) if d.needs_input else b""
                out = d.decompress(data, n)
            if out or d.eof:
                return self._count(out, d.eof)
            if not data and not self._left:
                raise EOFError("the compressed data ends before the member does")
        return b""

    def _lzma(self):
        # zip's LZMA: version (2 bytes), properties size (2), LZMA1 properties, then the raw stream
        # (as zipfile reads it; lzma has no public parser of the properties)
        head = self._read(4)
        if len(head) < 4:
            raise EOFError("the LZMA header is cut off")
        props = self._read(struct.unpack("<H", head[2:])[0])
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
            lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)])

    def _count(self, out: bytes, end: bool) -> bytes:
        self._check(out, end)
        if self._produced == self._info.file_size and not end:
            self._inflate(1)   # the member claims to end here: more bytes are a lie (and an error)
        return out

    def _check(self, out: bytes, end: bool) -> None:
        self._produced += len(out)
        self._crc = zlib.crc32(out, self._crc)
        consumed = self._info.compress_size - self._left
        where, produced = self._where, self._produced
        if produced > self._info.file_size:
            raise AudioError(where, "bad_archive", f"the member inflates past the {self._info.file_size} bytes "
                             "its archive declares: not read further (a lying or corrupt archive)")
        if self._max_bytes is not None and produced > self._max_bytes:
            raise AudioError(where, "too_large", f"inflates to over {self._max_bytes / 1e6:g} MB, the "
                             "--max-file-mb limit; not read further")
        if produced > RATIO_GRACE and produced > MAX_RATIO * max(consumed, 1):
            raise AudioError(where, "compression_bomb", f"{produced} bytes inflated from {consumed} compressed "
                             f"(over {MAX_RATIO}:1, which no recording compresses to): a compression bomb, "
                             "not read further")
        if end and self._crc != self._info.CRC:
            raise AudioError(where, "bad_archive", "corrupt member: its CRC does not match its bytes")

    def close(self) -> None:
        self._file.close()
        super().close()


class _HeadCached(io.RawIOBase):
    """An archive member whose first bytes stay in memory. Decoders seek back to the start to sniff
    and parse headers, and a backward seek inside a compressed tar restarts decompression at the
    start of the whole archive; with the head cached, reading a member stays one forward pass."""

    def __init__(self, raw: BinaryIO, size: int):
        self._raw, self._size = raw, size
        self.failure: AudioError | None = None   # see Opener.failure
        parts, got = [], 0
        while got < HEAD_CACHE and (part := raw.read(HEAD_CACHE - got)):   # a raw read may return less
            parts.append(part)
            got += len(part)
        self._head = b"".join(parts)
        self._pos = 0
        self._raw_pos = len(self._head)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._pos < len(self._head):
            data = self._head[self._pos:self._pos + len(buffer)]
        elif self.failure is not None:
            data = b""
        else:
            try:
                if self._raw_pos != self._pos:
                    self._raw.seek(self._pos)
                data = self._raw.read(len(buffer))
            except AudioError as e:   # the member refuses to go on (a bomb...): an end, with its reason kept
                self.failure, data = e, b""
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
