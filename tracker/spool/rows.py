"""The spool's row format and counters: fix columns <-> Record, SpoolStats, SQLite error kinds.

No sqlite3 import (only `tracker.spool.store` imports it): errors are read by their result code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tracker.core.fix import Fix, Record

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
US = timedelta(microseconds=1)
COLS = "seq, t_us, lat, lon, alt, speed, course, mode, sats, hdop, trigger"
MARKS = ",".join("?" * 11)
FIX_FIELDS = ("lat", "lon", "alt", "speed", "course", "mode", "sats", "hdop")
HELD_SEQS = 16  # most recent seqs set aside, in SpoolStats


@dataclass(frozen=True)
class SpoolStats:
    """Counters for condition messages and logs."""

    backlog: int  # records not yet acknowledged (ready + in flight), not counting held ones
    in_flight: int
    dropped: dict[str, int]  # by reason: "full_oldest", "full_newest", "disk_full"
    recovered_corrupt: int  # times a corrupt file was moved aside
    next_seq: int
    file_bytes: int  # database + WAL
    lost: int = 0  # loss events detected at open (database or WAL lost or damaged)
    lost_ranges: tuple[tuple[int, int], ...] = ()  # the last few seq ranges possibly lost
    held: int = 0  # records set aside (`Spool.set_aside`), kept on disk, never sent
    held_seqs: tuple[int, ...] = ()  # the most recent of them


def kind(exc: Exception) -> str:
    """'full', 'corrupt' or 'other', from the SQLite result code (or the message on 3.10)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        return {13: "full", 11: "corrupt", 26: "corrupt"}.get(primary, "other")
    msg = str(exc)
    if "is full" in msg:
        return "full"
    if "malformed" in msg or "not a database" in msg:
        return "corrupt"
    return "other"


def to_row(rec: Record) -> tuple[Any, ...]:
    values = (getattr(rec.fix, name) for name in FIX_FIELDS)
    return (rec.seq, (rec.fix.time - EPOCH) // US, *values, rec.trigger)


def to_record(r: tuple[Any, ...]) -> Record:
    seq, t_us, lat, lon, alt, speed, course, mode, sats, hdop, trigger = r
    fix = Fix(EPOCH + US * t_us, lat, lon, alt, speed, course, mode, sats, hdop)
    return Record(seq, fix, trigger)
