"""Synthetic fixes for the bench and the tests: a plausible moving track, and a spool filled fast.

Imports the tracker's fix and spool only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tracker.core.fix import Fix
from tracker.spool.store import Spool

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)


def synthetic_fix(i: int) -> Fix:
    """A plausible moving fix, one second after fix i-1."""
    return Fix(
        time=T0 + timedelta(seconds=i),
        lat=52.0 + i * 1e-5,
        lon=4.3 + i * 2e-5,
        alt=12.5 + (i % 7),
        speed=3.2,
        course=float(i % 360),
        mode=3,
        sats=9,
        hdop=0.9,
    )


def fill(spool: Spool, n: int) -> None:
    """Add n fixes quickly: a test set-up step, so the per-fix fsync is switched off meanwhile."""
    db = spool._db  # set-up only; the spool's durability is tested by its own tests
    assert db is not None
    db.execute("PRAGMA synchronous = OFF")
    try:
        start = spool.stats().next_seq
        for i in range(start, start + n):
            spool.put(synthetic_fix(i), "interval")
    finally:
        db.execute("PRAGMA synchronous = FULL")
