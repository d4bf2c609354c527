"""The bench's report: summary, seq gaps and duplicates, GeoJSON of the received track (the
SVG pictures are `benchkit.report_svg`). Pure functions of what was received; standard library and
the tracker's codec, fix and PUBLISH size (`tracker.link.forward`) only, no I/O but the caller's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from tracker.core.errors import CodecError
from tracker.core.fix import Fix, parse_time
from tracker.link import codec
from tracker.link.forward import publish_packet_bytes


@dataclass(frozen=True)
class Message:
    """One MQTT message the collector received: `at` in bench seconds, the PUBLISH as sent."""

    at: float
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Status:
    """One sd_notify STATUS= line of the daemon, received at bench second `at`."""

    at: float
    state: str
    gps_time: datetime | None
    fixes: int
    reports: int
    backlog: int
    link: str


@dataclass(frozen=True)
class Fault:
    """A fault the bench injected (bench seconds): an outage spans start..end; a kill, a moment."""

    kind: str  # "outage" | "kill"
    start: float
    end: float


@dataclass(frozen=True)
class Point:
    """A received fix with its seq, trigger and the bench second it arrived."""

    seq: int
    fix: Fix
    trigger: str
    at: float


@dataclass
class Received:
    """Location messages decoded: every record (duplicates included) and what could not decode."""

    points: list[Point] = field(default_factory=list)
    messages: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0
    decode_errors: list[str] = field(default_factory=list)


def parse_status(text: str, at: float) -> Status | None:
    """`state=... gps_time=... fixes=N reports=N backlog=N link=up` -> Status; None if not one."""
    kv = dict(part.partition("=")[::2] for part in text.split())
    try:
        gps = kv.get("gps_time", "-")
        return Status(
            at=at,
            state=kv["state"],
            gps_time=None if gps in ("", "-") else parse_time(gps),
            fixes=int(kv.get("fixes", 0)),
            reports=int(kv.get("reports", 0)),
            backlog=int(kv.get("backlog", 0)),
            link=kv.get("link", "down"),
        )
    except (KeyError, ValueError):
        return None


def decode_messages(messages: Iterable[Message], location_topic: str) -> Received:
    """Decode every location message; bad payloads are counted, never raised."""
    out = Received()
    for m in messages:
        if m.topic != location_topic:
            continue
        out.messages += 1
        out.wire_bytes += publish_packet_bytes(m.topic, len(m.payload))
        out.payload_bytes += len(m.payload)
        try:
            records = codec.decode(m.payload)
        except CodecError as exc:
            out.decode_errors.append(str(exc))
            continue
        out.points += [Point(r.seq, r.fix, r.trigger, m.at) for r in records]
    return out


def duplicates(seqs: Iterable[int]) -> int:
    """How many records repeat a seq already seen."""
    seen: set[int] = set()
    dup = 0
    for s in seqs:
        dup += s in seen
        seen.add(s)
    return dup


def seq_gaps(seqs: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """Missing seq ranges (inclusive) in first..last; empty when every fix arrived."""
    have = sorted({s for s in seqs if first <= s <= last})
    gaps: list[tuple[int, int]] = []
    expect = first
    for s in have:
        if s > expect:
            gaps.append((expect, s - 1))
        expect = s + 1
    if expect <= last:
        gaps.append((expect, last))
    return gaps


def unique_track(points: Iterable[Point]) -> list[Point]:
    """One point per seq (the first arrival), in seq order."""
    first: dict[int, Point] = {}
    for p in points:
        first.setdefault(p.seq, p)
    return [first[s] for s in sorted(first)]


def seconds_in_state(statuses: Sequence[Status]) -> dict[str, float]:
    """GPS seconds spent in each state, from consecutive STATUS lines that carry a GPS time."""
    out: dict[str, float] = {}
    timed = [s for s in statuses if s.gps_time is not None]
    for a, b in itertools.pairwise(timed):
        assert a.gps_time is not None and b.gps_time is not None
        span = (b.gps_time - a.gps_time).total_seconds()
        if span > 0:
            out[a.state] = out.get(a.state, 0.0) + span
    for s in statuses:
        out.setdefault(s.state, 0.0)
    return {k: round(v, 1) for k, v in sorted(out.items())}


Timebase = Sequence[tuple[float, float]]  # (bench second, GPS time in POSIX seconds), ascending


def timebase(statuses: Sequence[Status]) -> list[tuple[float, float]]:
    """Bench seconds to GPS time as the daemon's STATUS lines saw it."""
    return [(s.at, s.gps_time.timestamp()) for s in statuses if s.gps_time is not None]


def gps_at(base: Timebase, at: float) -> float | None:
    """GPS time (POSIX seconds) at bench second `at`, interpolated, clamped to the ends."""
    if not base:
        return None
    if at <= base[0][0]:
        return base[0][1]
    lo, hi = 0, len(base) - 1
    if at >= base[hi][0]:
        return base[hi][1]
    while hi - lo > 1:  # bisect: the drive's timebase has thousands of points
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if base[mid][0] <= at else (lo, mid)
    (a0, g0), (a1, g1) = base[lo], base[hi]
    return g0 if a1 == a0 else g0 + (g1 - g0) * (at - a0) / (a1 - a0)


def fill_times(statuses: Sequence[Status], base: Timebase) -> list[Status]:
    """STATUS lines without a GPS time (a restart before its first fix) given one from `base`."""
    out = []
    for s in statuses:
        g = None if s.gps_time is not None else gps_at(base, s.at)
        out.append(s if g is None else replace(s, gps_time=datetime.fromtimestamp(g, timezone.utc)))
    return out


def clip(statuses: Sequence[Status], at: float) -> list[Status]:
    """The STATUS lines up to bench second `at`, closed by one interpolated at `at`."""
    head = [s for s in statuses if s.at <= at]
    g = gps_at(timebase(statuses), at)
    if head and g is not None:
        head.append(replace(head[-1], at=at, gps_time=datetime.fromtimestamp(g, timezone.utc)))
    return head


def undelivered(
    points: Sequence[Point], base: Timebase, tolerance_s: float = 0.0
) -> list[tuple[float, int]]:
    """Fixes made but not yet received, as steps (GPS time, count) from first arrivals; a fix
    that arrived within `tolerance_s` GPS seconds counts as received at once."""
    steps: list[tuple[float, int]] = []
    for p in unique_track(points):
        made = p.fix.time.timestamp()
        arrived = gps_at(base, p.at)
        if arrived is not None and arrived > made + tolerance_s:
            steps += [(made, 1), (arrived, -1)]
    out: list[tuple[float, int]] = []
    n = 0
    for t, d in sorted(steps, key=lambda s: (s[0], s[1])):
        n += d
        if out and out[-1][0] == t:
            out[-1] = (t, n)
        else:
            out.append((t, n))
    return out


def state_at(statuses: Sequence[Status], when: float) -> str:
    """The state the daemon reported last at or before GPS time `when` (POSIX seconds)."""
    state = statuses[0].state if statuses else "reporting"
    for s in statuses:
        if s.gps_time is not None and s.gps_time.timestamp() <= when:
            state = s.state
    return state


# ---- track files --------------------------------------------------------------------------------


def to_geojson(points: Sequence[Point], statuses: Sequence[Status] = ()) -> dict[str, Any]:
    """A FeatureCollection: the track as a LineString and every fix as a Point with its fields."""
    coords = [[round(p.fix.lon, 7), round(p.fix.lat, 7)] for p in points]
    feats: list[dict[str, Any]] = []
    if len(coords) >= 2:
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": coords},
                "properties": {"name": "received track", "fixes": len(coords)},
            }
        )
    for p, c in zip(points, coords, strict=True):
        props = {"seq": p.seq, "trigger": p.trigger, **p.fix.to_dict()}
        if statuses:
            props["state"] = state_at(statuses, p.fix.time.timestamp())
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": c},
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": feats}


# ---- summary ------------------------------------------------------------------------------------


def summarize(
    received: Received,
    statuses: Sequence[Status],
    *,
    first_seq: int,
    fixes_recorded: int,
    conditions: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's summary (summary.json): what the device recorded against what arrived."""
    seqs = [p.seq for p in received.points]
    unique = len(set(seqs))
    gaps = seq_gaps(seqs, first_seq, first_seq + fixes_recorded - 1)
    out: dict[str, Any] = {
        "fixes_recorded": fixes_recorded,
        "fixes_received": unique,
        "records_received": len(seqs),
        "messages_received": received.messages,
        "conditions_received": conditions,
        "duplicates": duplicates(seqs),
        "gaps": [list(g) for g in gaps],
        "lost": sum(b - a + 1 for a, b in gaps),
        "decode_errors": len(received.decode_errors),
        "wire_bytes_per_fix": round(received.wire_bytes / unique, 1) if unique else None,
        "payload_bytes_per_fix": round(received.payload_bytes / unique, 1) if unique else None,
        "fixes_per_message": round(len(seqs) / received.messages, 2) if received.messages else None,
        "seconds_in_state": seconds_in_state(statuses),
    }
    out.update(extra or {})
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few aligned lines for the terminal."""
    gaps = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in s["gaps"]) or "none"
    states = ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds_in_state"].items()) or "-"
    faults = "; ".join(
        f"outage {f['at_s']:.0f}-{f['until_s']:.0f} s"
        if f["kind"] == "outage"
        else f"kill at {f['at_s']:.0f} s"
        for f in s.get("faults", ())
    )
    rows = [
        ("fixes recorded", str(s["fixes_recorded"])),
        (
            "fixes received",
            f"{s['fixes_received']} in {s['messages_received']} messages "
            f"({s['duplicates']} duplicates)",
        ),
        ("missing seq", gaps),
        (
            "bytes per fix",
            f"{s['wire_bytes_per_fix']} on the wire ({s['payload_bytes_per_fix']} payload)",
        ),
        ("time in state", states),
        ("faults", faults + (f" ({s['restarts']} restarts)" if s.get("restarts") else "")),
    ]
    return "\n".join(f"  {k:<15} {v}" for k, v in rows if v)


def dumps(summary: dict[str, Any]) -> str:
    """summary.json text."""
    return json.dumps(summary, indent=2, default=str) + "\n"
