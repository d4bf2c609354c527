"""The spool's files beside its database: the seq sidecar and corrupt files moved aside.

Standard library (os, json, pathlib), `tracker.core.errors` and `tracker.core.files` only; must not
import sqlite3: only `tracker.spool.store` does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tracker.core.errors import SpoolError
from tracker.core.files import atomic_write

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # seqs reserved ahead in the sidecar file: one small atomic write per block
LOST_RANGES = 8  # most recent seq ranges possibly lost, kept in the sidecar
WAL_SLACK = 8  # WAL frames a transaction may add past the autocheckpoint (max_file_bytes)


class SeqSidecar:
    """PATH.seq: the seq reservation, whether the last stop was clean, and the loss counters.

    Survives the database file: after a corrupt file is moved aside (or lost), the new file's
    seqs still start above every seq the old one may have used. `clean` is false while the spool
    is open; a clean close records the exact `last` seq handed out and the lowest unacknowledged
    one (`first`), so a database that comes back older than that is noticed.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".seq")
        self.state = "ok"  # or "missing", "unreadable"
        side = self._read()
        self.reserved: int = _int(side.get("reserved"))  # no seq below this was handed out
        self.recovered: int = _int(side.get("recovered_corrupt"))  # corrupt files moved aside
        self.lost: int = _int(side.get("lost"))  # loss events detected at open
        ranges = side.get("lost_ranges")
        self.lost_ranges: list[tuple[int, int]] = [
            (int(r[0]), int(r[1]))
            for r in (ranges if isinstance(ranges, list) else [])
            if isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r)
        ]
        clean = side.get("clean")
        self.clean: bool | None = clean if isinstance(clean, bool) else None  # None: old format
        self.last: int = _int(side.get("last"))  # at a clean stop: the last seq handed out
        self.first: int = _int(side.get("first"), 1)  # lowest unacknowledged seq at open/close

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.state = "missing"
            return {}
        except (OSError, ValueError):
            self.state = "unreadable"
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("reserved"), int):
            self.state = "unreadable"
            return {}
        return data

    def reserve(self, seq: int) -> None:
        """Make sure the sidecar promises no seq below `seq` will be handed out again."""
        if seq > self.reserved:
            old = self.reserved
            self.reserved = seq + SEQ_BLOCK
            if not self.write():
                self.reserved = old

    def opened(self, next_seq: int, first: int) -> None:
        """The spool is open: not clean until `closed`; reserve a block from `next_seq` on."""
        self.clean, self.first = False, first
        old = self.reserved
        if next_seq > old:
            self.reserved = next_seq + SEQ_BLOCK
        if not self.write():
            self.reserved = old

    def closed(self, last: int, first: int) -> None:
        """A clean stop: `last` is the last seq used, `first` the lowest unacknowledged one."""
        self.clean, self.last, self.first = True, last, first
        self.write()

    def add_loss(self, first: int, last: int) -> None:
        """Count one loss event of seqs `first`..`last` (kept in memory until the next write)."""
        self.lost += 1
        self.lost_ranges = [*self.lost_ranges, (first, last)][-LOST_RANGES:]

    def write(self) -> bool:
        """Write the sidecar atomically (temporary file, fsync, rename); False on failure."""
        data = {
            "reserved": self.reserved,
            "recovered_corrupt": self.recovered,
            "lost": self.lost,
            "lost_ranges": [list(r) for r in self.lost_ranges],
            "clean": bool(self.clean),
            "last": self.last,
            "first": self.first,
        }
        try:
            atomic_write(self.path, json.dumps(data).encode())
            return True
        except OSError as exc:
            log.warning("spool %s: cannot write %s: %s", self.db_path, self.path, exc)
            return False


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def size_caps(db_path: Path, max_bytes: int, page: int) -> tuple[int, int, int]:
    """Split `max_bytes` between a small WAL and the database: (autocheckpoint frames, WAL
    bytes, database pages).

    Raises:
        SpoolError: the limit leaves no room for the database beside its WAL.
    """
    frame = page + 24
    wal_frames = min(1000, max(4, max_bytes // 4 // frame))
    wal_bytes = 32 + (wal_frames + WAL_SLACK) * frame
    pages = (max_bytes - wal_bytes) // page
    if pages < 4:
        raise SpoolError(
            f"spool {db_path}: max_file_bytes {max_bytes} leaves no room beside the WAL;"
            f" allow at least {wal_bytes + 4 * page} bytes"
        )
    return wal_frames, wal_bytes, pages


def prepare_dir(db_path: Path) -> None:
    """Create the spool's directory and check that it is writable.

    Raises:
        SpoolError: one line naming the directory and the fix.
    """
    parent = db_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{db_path.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SpoolError(
            f"cannot write the spool directory {parent}: {exc.strerror or exc}; make it"
            " writable by the tracker's user or set [spool] path to a writable place"
        ) from exc


def move_aside(db_path: Path) -> Path:
    """Rename a (closed) corrupt file and its WAL or journal to PATH.corrupt-<n>; returns it.

    Raises:
        OSError: the file could not be moved.
    """
    n = 1
    while db_path.with_name(f"{db_path.name}.corrupt-{n}").exists():
        n += 1
    aside = db_path.with_name(f"{db_path.name}.corrupt-{n}")
    os.replace(db_path, aside)
    for suffix in ("-wal", "-journal"):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    db_path.with_name(db_path.name + "-shm").unlink(missing_ok=True)
    return aside
