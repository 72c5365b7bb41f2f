"""One writer per output: an exclusive lock file beside what is written (`NAME.lock`).

featurize holds one on its store, score on its table, for as long as they write. flock is released
by the kernel when the process dies (Ctrl-C, kill -9), so a crashed run never leaves a stale lock;
the lock file stays, empty of meaning (removing it could let two writers lock two different files).
Paths on object storage (s3://, gs://) are not locked.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
from typing import Callable

from dfdetect.errors import DfdetectError


class ExclusiveLock:
    """`busy(holder)` makes the error raised when another process holds the lock; `holder` says
    which (pid, host, since when)."""

    def __init__(self, target: str, busy: Callable[[str], DfdetectError]):
        # Keyed on the real path: the same output through a symlink (or `a/../a`) is one lock.
        self.path = None if "://" in target else os.path.realpath(target.rstrip("/")) + ".lock"
        self._busy = busy
        self._fd: int | None = None

    def __enter__(self) -> "ExclusiveLock":
        if self.path is None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise self._busy(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{_dt.datetime.now().isoformat(timespec='seconds')}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)   # releases the flock
            self._fd = None
