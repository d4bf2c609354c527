"""The spool's files beside its database: the seq reservation sidecar and corrupt files moved aside.

Standard library (os, json, pathlib) and `tracker.errors` only; must not import sqlite3: only
`tracker.spool` does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tracker.errors import SpoolError

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # seqs reserved ahead in the sidecar file: one small atomic write per block


class SeqSidecar:
    """PATH.seq: the highest seq promised never to be handed out again, and the corrupt count.

    Survives the database file: after a corrupt file is moved aside (or lost), the new file's
    seqs still start above every seq the old one may have used.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".seq")
        side = self._read()
        self.reserved = side.get("reserved", 0)  # no seq below this was handed out
        self.recovered = side.get("recovered_corrupt", 0)  # times a corrupt file was moved aside

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            return {k: int(v) for k, v in data.items() if isinstance(v, int)}
        except (OSError, ValueError, AttributeError):
            return {}

    def reserve(self, seq: int) -> None:
        """Make sure the sidecar promises no seq below `seq` will be handed out again."""
        if seq > self.reserved:
            old = self.reserved
            self.reserved = seq + SEQ_BLOCK
            if not self.write():
                self.reserved = old

    def write(self) -> bool:
        """Write the sidecar atomically (temporary file, fsync, rename); False on failure."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {"reserved": self.reserved, "recovered_corrupt": self.recovered}
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.db_path.parent)
            return True
        except OSError as exc:
            log.warning("spool %s: cannot write %s: %s", self.db_path, self.path, exc)
            return False


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


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
