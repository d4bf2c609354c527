"""One tracker per spool: an exclusive lock beside the spool file, held for the process's life.

Two daemons on one board kick each other off the broker (same client id), split the GPS bytes
and write one spool; the second is refused with the first one's pid. Standard library and
`tracker.core.files` (the lock file) only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tracker.core.errors import TrackerError
from tracker.core.files import try_lock


def lock_path(spool_path: str | os.PathLike[str]) -> Path:
    p = Path(spool_path)
    return p.with_name(p.name + ".lock")


class InstanceLock:
    """`acquire()` or TrackerError naming who holds it; released when the process ends."""

    def __init__(self, spool_path: str | os.PathLike[str]) -> None:
        self.path = lock_path(spool_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = try_lock(self.path)
        except OSError as exc:
            raise TrackerError(
                f"cannot open the lock file {self.path}: {exc.strerror or exc}; make the spool"
                " directory writable by the tracker's user"
            ) from exc
        if fd is None:
            pid = holder(self.path)
            who = f"pid {pid}" if pid else "another process"
            raise TrackerError(
                f"another tracker ({who}) is running with the spool beside {self.path};"
                " stop it first (systemctl stop tracker) or give this one its own [spool] path"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def holder(path: Path) -> int | None:
    """The pid written by the process that holds the lock, or None."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None


def running_pid(spool_path: str | os.PathLike[str]) -> int | None:
    """The pid of a tracker holding this spool's lock now (0 if unknown), or None when free."""
    path = lock_path(spool_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(path) or 0
    finally:
        os.close(fd)
    return None
