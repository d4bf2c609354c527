"""A really full disk: a ballast file beside the database pays for the checkpoint that lets the
WAL start over, so deletes, counters and evictions can still be written.

Standard library only; the SQLite side (checkpoint, free pages) is passed in as callables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

BALLAST_BYTES = 256 * 1024  # PATH.reserve, given up when the disk is full
RETAKE_MARGIN = 16 * 1024  # left free when the ballast is taken back: the sidecar's writes


class Ballast:
    """PATH.reserve: a file of zeros kept beside the database to be deleted when the disk fills.

    Deleting it leaves room for the checkpoint and the eviction transaction that make space for
    new fixes; it is written again once the disk has plenty of room.
    """

    def __init__(self, db_path: Path, size: int = BALLAST_BYTES) -> None:
        self.path = db_path.with_name(db_path.name + ".reserve")
        self.size = size

    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def disk_full(self) -> bool:
        """True when less than the ballast's size is free: the disk, not a size cap, is full."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize < self.size

    def release(self) -> bool:
        """Delete the ballast; True when there was one to delete."""
        try:
            self.path.unlink()
        except OSError:
            return False
        return True

    def restore(self) -> bool:
        """Write the whole ballast when twice its size is free; True when it is in place."""
        if self.present():
            return True
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        if st.f_bavail * st.f_frsize < 2 * self.size:
            return False
        return self._allocate(self.size)

    def retake(self) -> None:
        """Take back as much of the ballast as the disk still has free (after a checkpoint)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        size = min(self.size, st.f_bavail * st.f_frsize - RETAKE_MARGIN) // 4096 * 4096
        if size > 0:
            self._allocate(size)

    def _allocate(self, size: int) -> bool:
        try:
            with open(self.path, "wb") as f:
                try:  # blocks allocated without writing them (no flash wear)
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError:
                    f.write(bytes(size))
                    f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False


class Room:
    """When the disk is full: checkpoint (the WAL is reused, not grown), paid for by the ballast."""

    def __init__(
        self, db_path: Path, checkpoint: Callable[[], bool], free_pages: Callable[[], int]
    ) -> None:
        self.ballast = Ballast(db_path)
        self._checkpoint = checkpoint
        self._free_pages = free_pages

    def make(self) -> None:
        """A write failed for lack of space: make the WAL start over, with the ballast if needed."""
        ballast = self.ballast
        if self._checkpoint() or not ballast.disk_full() or not ballast.release():
            return
        self._checkpoint()  # it may have had to grow the database file: the ballast paid
        ballast.retake()  # what is left stays reserved, not for new fixes

    def none_left(self) -> bool:
        """The disk is full, the ballast spent, and the database has no free page."""
        ballast = self.ballast
        return not ballast.present() and ballast.disk_full() and self._free_pages() == 0

    def after_put(self) -> None:
        """Bring the ballast back when there is room; while there is none, keep the WAL short."""
        if not self.ballast.present() and not self.ballast.restore():
            self._checkpoint()
