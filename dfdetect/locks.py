"""One writer per output: an exclusive lock file beside what is written (`NAME.lock`).

featurize holds one on its store, score on its table, for as long as they write. flock is released
by the kernel when the process dies (Ctrl-C, kill -9), so a crashed run never leaves a stale lock.
With `remove` the lock file goes when the writer finishes (score: nothing beside the table); a
writer that locked a file since removed retries on the new one, so two never hold two files.
Paths on object storage (s3://, gs://) are not locked.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
from collections.abc import Callable

from dfdetect.errors import DfdetectError


class ExclusiveLock:
    """`busy(holder)` makes the error raised when another process holds the lock; `holder` says
    which (pid, host, since when)."""

    def __init__(self, target: str, busy: Callable[[str], DfdetectError], remove: bool = False):
        # Keyed on the real path: the same output through a symlink (or `a/../a`) is one lock.
        self.path = None if "://" in target else os.path.realpath(target.rstrip("/")) + ".lock"
        self._busy, self._remove = busy, remove
        self._fd: int | None = None

    def __enter__(self) -> ExclusiveLock:
        if self.path is None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise self._busy(holder) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)   # the holder removed it as it finished: lock the file there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{_dt.datetime.now().isoformat(timespec='seconds')}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if self._remove:   # still held: whoever opened this file retries on a new one
                os.unlink(self.path)
            os.close(self._fd)   # releases the flock
            self._fd = None
