"""`tracker gaps LAKE`: per device, the seq ranges missing from the lake and how long it is silent.

A missing seq is a fix still in the device's backlog or one it lost (see the README's "seq: gaps
and duplicates"). Exit status 1 when any seq is missing, 0 otherwise. Ranges are counted between
the lowest and the highest seq the lake holds for the device.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tracker.core.config import THING_NAME_RE
from tracker.core.errors import TrackerError
from tracker.core.fix import format_time
from tracker.twin.lake import check_lake, read_fixes, things


@dataclass
class DeviceGaps:
    thing: str
    fixes: int = 0  # distinct seqs
    first_seq: int | None = None
    last_seq: int | None = None
    missing: list[tuple[int, int]] = field(default_factory=list)
    newest_fix: datetime | None = None
    newest_received: datetime | None = None

    @property
    def lost(self) -> int:
        return sum(b - a + 1 for a, b in self.missing)


def ranges(seqs: set[int]) -> list[tuple[int, int]]:
    """Missing inclusive ranges between min(seqs) and max(seqs)."""
    out: list[tuple[int, int]] = []
    prev: int | None = None
    for s in sorted(seqs):
        if prev is not None and s > prev + 1:
            out.append((prev + 1, s - 1))
        prev = s
    return out


def device_gaps(lake: Path, thing: str) -> DeviceGaps:
    g = DeviceGaps(thing)
    seqs: set[int] = set()
    for lf in read_fixes(lake, thing):
        seqs.add(lf.record.seq)
        t = lf.record.fix.time
        if g.newest_fix is None or t > g.newest_fix:
            g.newest_fix = t
        r = lf.received
        if r is not None and (g.newest_received is None or r > g.newest_received):
            g.newest_received = r
    if seqs:
        g.fixes, g.first_seq, g.last_seq = len(seqs), min(seqs), max(seqs)
        g.missing = ranges(seqs)
    return g


def _age(now: datetime, t: datetime | None) -> str:
    if t is None:
        return "-"
    s = max(0, int((now - t).total_seconds()))
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def as_dict(g: DeviceGaps, now: datetime) -> dict[str, Any]:
    return {
        "thing": g.thing,
        "fixes": g.fixes,
        "first_seq": g.first_seq,
        "last_seq": g.last_seq,
        "missing": [list(r) for r in g.missing],
        "lost": g.lost,
        "newest_fix": format_time(g.newest_fix) if g.newest_fix else None,
        "newest_received": format_time(g.newest_received) if g.newest_received else None,
        "silent_s": round((now - g.newest_received).total_seconds()) if g.newest_received else None,
    }


def describe(g: DeviceGaps, now: datetime) -> str:
    missing = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in g.missing[:20])
    if len(g.missing) > 20:
        missing += f", ... ({len(g.missing)} ranges)"
    return (
        f"{g.thing}: seq {g.first_seq}-{g.last_seq}, {g.fixes} fixes, "
        f"missing {missing + f' ({g.lost} fixes)' if g.missing else 'none'}; "
        f"silent {_age(now, g.newest_fix)} by fix time, {_age(now, g.newest_received)} "
        "by receive time"
    )


def main(args: argparse.Namespace) -> int:
    lake = Path(args.lake)
    check_lake(lake)
    names = things(lake)
    if args.thing:
        if not THING_NAME_RE.fullmatch(args.thing) or args.thing not in names:
            raise TrackerError(
                f"no fixes of {args.thing!r} in {lake} (things there: "
                f"{', '.join(names[:10]) or 'none'})"
            )
        names = [args.thing]
    now = datetime.now(timezone.utc)
    found = [device_gaps(lake, t) for t in names]
    for g in found:
        print(json.dumps(as_dict(g, now)) if args.json else describe(g, now))
    if not found and not args.json:
        print(f"no devices in {lake}", file=sys.stderr)
    return 1 if any(g.missing for g in found) else 0
