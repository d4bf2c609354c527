"""Small files: the one atomic write (temporary file, fsync, rename, fsync the directory), the
directory fsync that makes a created or renamed entry survive a power cut, the one readable-file
check (`read_file`: why a file cannot be read, in one line) and the one lock file (`try_lock`).

Standard library only; used by the spool and its sidecar, the remote settings, the budget,
provisioning, the credential checks, the uplinks, the instance lock and the lake.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, never a
    mix: a synced temporary file beside it, renamed over it, the directory synced.

    Raises:
        OSError: the write failed; the old file is untouched and no temporary file is left.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def read_file(
    path: str | os.PathLike[str],
    what: str,
    error: Callable[[str], Exception],
    *,
    limit: int | None = None,
    unreadable_fix: str = "",
) -> bytes:
    """The bytes of `what` at `path`: all of them, or at most `limit` + 1 (so that the caller can
    tell a file over its limit). Raises `error` with one line that names the file and why it
    cannot be read: missing, not readable by this user (then `unreadable_fix`, say " (run as
    root)" for a command an operator runs), a directory, an I/O error, a NUL in the path."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        why = "does not exist"
    except PermissionError:
        why = f"is not readable by this user{unreadable_fix}"
    except IsADirectoryError:
        why = "is a directory, not a file"
    except OSError as exc:
        why = f"cannot be read: {exc.strerror or exc}"
    except ValueError:  # a NUL in the path
        raise error(f"{what} path {path!r} holds a NUL character") from None
    raise error(f"{what} {path} {why}")


def try_lock(path: str | os.PathLike[str], mode: int = 0o600) -> int | None:
    """Open (or create) `path` and take an exclusive `flock` on it without waiting: the open file
    descriptor, which holds the lock until it is closed or the process ends; None when another
    process holds it.

    Raises:
        OSError: the file cannot be opened or locked (a read-only folder, no locks there).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
