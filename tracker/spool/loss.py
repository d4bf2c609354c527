"""At open: did the spool's files lose fixes since the last stop, and where must seqs continue?

Compares what the sidecar (PATH.seq) says about the last stop with the database and its WAL as
found before SQLite touches them. A floor that cannot be trusted moves forward (a gap the cloud
sees), never back. Standard library only; must not import sqlite3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracker.spool.files import SEQ_BLOCK, SeqSidecar
from tracker.spool.wal import db_page_size, unbackfilled, wal_damage

log = logging.getLogger("tracker.spool")


@dataclass(frozen=True)
class Found:
    """The database and its WAL before opening."""

    db_bytes: int | None  # None: no file
    wal: bool  # the -wal file exists
    unbackfilled: int  # committed frames the WAL index (-shm) says the WAL holds
    damage: str | None  # why the WAL would lose committed frames on open


@dataclass(frozen=True)
class Loss:
    """Seqs `first`..`last` (inclusive) may have been lost, because `why`."""

    first: int
    last: int
    why: str


def look(db: Path, side: SeqSidecar) -> Found:
    """Inspect the files; the WAL is only parsed when the last stop was not known to be clean."""
    try:
        size: int | None = db.stat().st_size
    except FileNotFoundError:
        size = None
    wal = db.with_name(db.name + "-wal")
    damage = None if side.clean else wal_damage(wal, db_page_size(db))
    return Found(size, wal.exists(), unbackfilled(db.with_name(db.name + "-shm")), damage)


def settle(side: SeqSidecar, found: Found | None, db_last: int, fresh: bool, db: Path) -> int:
    """The next seq after opening; a detected loss is counted in the sidecar and logged once.

    `found` is None when the file was moved aside as corrupt (counted there, not as a loss).
    """
    loss, nxt = assess(side, found, db_last, db) if found else (None, db_last + 1)
    if fresh:  # nothing on disk says which seqs were used: trust the reservation
        nxt = max(nxt, side.reserved)
    nxt = max(nxt, db_last + 1)
    if loss is not None:
        side.add_loss(loss.first, loss.last)
        log.warning(
            "spool %s: %s; fixes with seq %d to %d may be lost, continuing at seq %d",
            db,
            loss.why,
            loss.first,
            loss.last,
            nxt,
        )
    return nxt


def assess(side: SeqSidecar, found: Found, db_last: int, db: Path) -> tuple[Loss | None, int]:
    """The loss detected (if any) and the lowest seq the spool may hand out next.

    `db_last` is the highest seq the opened database knows was used (rows or its seq floor).
    """
    nxt = db_last + 1
    if side.state != "ok":
        if side.state == "missing" and db_last == 0:
            return None, nxt  # a first start
        lost = Loss(db_last + 1, db_last + SEQ_BLOCK, f"{side.path.name} is {side.state}")
        return lost, db_last + 1 + SEQ_BLOCK
    if side.clean:
        if db_last >= side.last:
            return None, nxt
        first = max(side.first, db_last + 1)
        behind = (
            f"{db.name} holds seqs up to {db_last} only, the clean stop was at {side.last}"
            if found.db_bytes
            else f"{_what(db, found)} after a clean stop at seq {side.last}"
        )
        if first > side.last:  # nothing unacknowledged was in it
            return None, side.last + 1
        return Loss(first, side.last, behind), max(side.reserved, side.last + 1)
    why: str | None = None
    if not found.db_bytes and not found.wal:
        why = f"{_what(db, found)} after {_stop(side)}"
    elif not found.wal and found.unbackfilled:
        why = f"{db.name}-wal is missing with {found.unbackfilled} frames not yet in {db.name}"
    elif found.damage:
        why = found.damage
    if why is None:
        return None, nxt
    nxt = max(nxt, side.reserved)
    first = max(side.first, db_last + 1)
    return (Loss(first, nxt - 1, why) if first <= nxt - 1 else None), nxt


def _what(db: Path, found: Found) -> str:
    if found.db_bytes is None:
        return f"{db.name} is missing"
    if found.db_bytes == 0:
        return f"{db.name} is empty"
    return db.name


def _stop(side: SeqSidecar) -> str:
    return "an unclean stop" if side.clean is False else "the last stop"
