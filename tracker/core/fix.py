"""The `Fix` value: one accepted position from one receiver epoch, timestamped in GPS (UTC) time.

Pure data; imports nothing but the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

EARTH_RADIUS_M = 6_371_008.8

# What a real receiver on a tracked asset can report; the one home of these bounds. The decoder
# drops a field outside them (and counts it), the codec refuses a fix outside them, so every fix
# the decoder produces can be encoded live and in a batch, and decoded again.
FIELD_LIMITS: dict[str, tuple[float, float]] = {
    "alt": (-1_000.0, 100_000.0),  # metres MSL: below the Dead Sea shore .. far above any aircraft
    "speed": (0.0, 1_000.0),  # m/s: the export-control limit of receivers is 515 m/s
    "course": (0.0, 360.0),  # degrees true
    "hdop": (0.0, 1_000.0),  # receivers with a poor view report 176 (recorded), some cap at 99.99
    "sats": (0, 255),  # satellites used
}
TIME_LIMITS = (
    datetime(1980, 1, 6, tzinfo=timezone.utc),  # GPS time starts
    datetime(2100, 1, 1, tzinfo=timezone.utc),  # past the last date the decoder's rollover gives
)


@dataclass(frozen=True, slots=True)
class Fix:
    """A position the receiver vouches for (validity gates already passed)."""

    time: datetime  # timezone-aware UTC, from the receiver; never the board's clock
    lat: float  # decimal degrees, north positive
    lon: float  # decimal degrees, east positive
    alt: float | None = None  # metres above mean sea level
    speed: float | None = None  # metres per second over ground
    course: float | None = None  # degrees true, [0, 360)
    mode: int = 2  # 2 = 2D, 3 = 3D
    sats: int | None = None  # satellites used in the solution
    hdop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields of `tracker replay`'s JSON lines, in their documented order."""
        return {
            "time": format_time(self.time),
            "lat": self.lat,
            "lon": self.lon,
            "alt": self.alt,
            "speed": self.speed,
            "course": self.course,
            "mode": self.mode,
            "sats": self.sats,
            "hdop": self.hdop,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fix:
        """Inverse of `to_dict`; raises KeyError/ValueError/TypeError on malformed input."""
        return cls(
            time=parse_time(str(d["time"])),
            lat=float(d["lat"]),
            lon=float(d["lon"]),
            alt=_opt_float(d.get("alt")),
            speed=_opt_float(d.get("speed")),
            course=_opt_float(d.get("course")),
            mode=int(d.get("mode", 2)),
            sats=None if d.get("sats") is None else int(d["sats"]),
            hdop=_opt_float(d.get("hdop")),
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def in_limits(name: str, value: float) -> bool:
    """Whether an optional field's value is one a real receiver reports (finite, in bounds)."""
    lo, hi = FIELD_LIMITS[name]
    return lo <= value <= hi  # False for NaN


def fix_problem(fix: Fix) -> str | None:
    """Why this fix is not one a receiver can report (one line), or None when it is."""
    if not TIME_LIMITS[0] <= fix.time < TIME_LIMITS[1]:
        return f"time {fix.time.isoformat()} is outside 1980-01-06..2099-12-31"
    if not (-90.0 <= fix.lat <= 90.0 and -180.0 <= fix.lon <= 180.0):
        return f"position {fix.lat}, {fix.lon} is out of range"
    if fix.mode not in (2, 3):
        return f"mode {fix.mode} is not 2 or 3"
    for name in FIELD_LIMITS:
        v = getattr(fix, name)
        if v is not None and not in_limits(name, v):
            lo, hi = FIELD_LIMITS[name]
            return f"{name} {v} is outside {lo:g}..{hi:g}"
    return None


def format_time(t: datetime) -> str:
    """ISO-8601 UTC ending in Z; milliseconds only when the receiver gave a fraction."""
    t = t.astimezone(timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        return f"{base}.{t.microsecond // 1000:03d}Z"
    return base + "Z"


def parse_time(s: str) -> datetime:
    """Parse `format_time` output (or any ISO-8601 UTC string) into an aware datetime."""
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError(f"time {s!r} has no timezone")
    return t.astimezone(timezone.utc)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class Record:
    """A fix as stored in the spool: its device-wide sequence number and what triggered it."""

    seq: int  # grows by one per recorded fix, survives restarts, never reused
    fix: Fix
    trigger: str = ""  # why the policy reported it: "first", "interval", "distance", ...
