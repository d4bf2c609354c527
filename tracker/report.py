"""The bench's report: summary, seq gaps and duplicates, GPX/GeoJSON of the received track, SVG
track and timeline pictures. Pure functions of what was received; standard library and
`tracker.codec`/`tracker.fix` only, no plotting library, no I/O but the caller's.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

from tracker import codec
from tracker.errors import CodecError
from tracker.fix import Fix, format_time, parse_time

STATE_COLOURS = {
    "idle": "#9e9e9e",
    "acquiring_fix": "#f5a623",
    "reporting": "#2e7d32",
    "low_power": "#1565c0",
}
OTHER_COLOURS = ("#8e24aa", "#00838f", "#6d4c41", "#c2185b")
OUTAGE_FILL, KILL_COLOUR, BACKLOG_DOT, LINE = "#e53935", "#b71c1c", "#ef6c00", "#37474f"
METRES_PER_DEG = 111_195.0  # along a great circle


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


def publish_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 3.1.1 QoS 1 PUBLISH packet (TLS records not counted)."""
    rest = 2 + len(topic.encode()) + 2 + len(payload)  # topic length, topic, packet id, payload
    varint = 1
    while rest >= 128**varint:
        varint += 1
    return 1 + varint + rest


def decode_messages(messages: Iterable[Message], location_topic: str) -> Received:
    """Decode every location message; bad payloads are counted, never raised."""
    out = Received()
    for m in messages:
        if m.topic != location_topic:
            continue
        out.messages += 1
        out.wire_bytes += publish_size(m.topic, m.payload)
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


def colour(state: str) -> str:
    """The colour a state is drawn in."""
    if state in STATE_COLOURS:
        return STATE_COLOURS[state]
    return OTHER_COLOURS[sum(state.encode()) % len(OTHER_COLOURS)]


# ---- track files --------------------------------------------------------------------------------


def to_gpx(points: Sequence[Point], name: str = "tracker bench") -> str:
    """A GPX 1.1 track of the points, in order."""
    rows = []
    for p in points:
        f = p.fix
        ele = f"<ele>{f.alt:.1f}</ele>" if f.alt is not None else ""
        sat = f"<sat>{f.sats}</sat>" if f.sats is not None else ""
        hdop = f"<hdop>{f.hdop:.2f}</hdop>" if f.hdop is not None else ""
        rows.append(
            f'      <trkpt lat="{f.lat:.7f}" lon="{f.lon:.7f}">{ele}'
            f"<time>{format_time(f.time)}</time><fix>{'3d' if f.mode == 3 else '2d'}</fix>"
            f"{sat}{hdop}<desc>seq {p.seq} {escape(p.trigger)}</desc></trkpt>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="tracker bench" xmlns="http://www.topografix.com/GPX/1/1">\n'
        f"  <trk><name>{escape(name)}</name>\n    <trkseg>\n"
        + "\n".join(rows)
        + "\n    </trkseg>\n  </trk>\n</gpx>\n"
    )


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


# ---- pictures -----------------------------------------------------------------------------------


def _el(tag: str, text: str = "", /, **attrs: object) -> str:
    """One SVG element; `stroke_width=2` is written stroke-width="2", floats to 0.1."""
    a = " ".join(
        f'{k.replace("_", "-")}="{f"{v:.1f}" if isinstance(v, float) else v}"'
        for k, v in attrs.items()
    )
    return f"<{tag} {a}>{escape(text)}</{tag}>" if text else f"<{tag} {a}/>"


def _move(p: tuple[float, float]) -> str:
    return f"M{p[0]:.1f},{p[1]:.1f}"


def _rect(x: float, y: float, w: float, h: float, fill: str, **attrs: object) -> str:
    return _el("rect", x=x, y=y, width=w, height=h, fill=fill, **attrs)


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
    )
    top = [
        head,
        f"<title>{escape(title)}</title>",
        _el("rect", width=width, height=height, fill="white"),
        _el("text", title, x=60, y=24, font_size=15),
    ]
    return "\n".join([*top, *body, "</svg>"]) + "\n"


def _legend(
    states: Iterable[str], x: float, y: float, extra: Sequence[tuple[str, str]]
) -> list[str]:
    items = [(s, colour(s)) for s in states] + list(extra)
    return [
        _rect(x, y + 16 * i - 9, 12, 10, fill) + _el("text", label, x=x + 16, y=y + 16 * i)
        for i, (label, fill) in enumerate(items)
    ]


def _fault_times(faults: Sequence[Fault], base: Timebase) -> list[tuple[str, float, float]]:
    out = []
    for f in faults:
        a, b = gps_at(base, f.start), gps_at(base, f.end)
        if a is not None and b is not None:
            out.append((f.kind, a, b))
    return out


def _scale_bar(span_deg: float, scale: float, x: float, y: float) -> str:
    """A bar of a round length near a quarter of the map, labelled in m or km."""
    quarter = span_deg * METRES_PER_DEG / 4
    metres = 10 ** math.floor(math.log10(max(quarter, 1)))
    metres *= 5 if quarter >= 5 * metres else 2 if quarter >= 2 * metres else 1
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    bar = f"M{x:.1f},{y:.1f}h{metres / METRES_PER_DEG * scale:.1f}"
    return _el("path", d=bar, stroke="black", stroke_width=3) + _el("text", label, x=x, y=y - 6)


def track_svg(
    points: Sequence[Point],
    statuses: Sequence[Status],
    faults: Sequence[Fault],
    base: Timebase | None = None,
    width: int = 800,
    height: int = 600,
) -> str:
    """The received track coloured by state; fixes made during an outage ringed, kills crossed.

    `base` maps bench seconds to GPS time (default: from the STATUS lines).
    """
    title = f"received track: {len(points)} fixes"
    if not points:
        return _svg(width, height, [], title)
    base = timebase(statuses) if base is None else base
    lat0 = math.radians(sum(p.fix.lat for p in points) / len(points))
    xs = [p.fix.lon * math.cos(lat0) for p in points]
    ys = [p.fix.lat for p in points]
    pad, top = 30.0, 40.0
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-6)
    scale = min((width - 2 * pad - 150) / span, (height - top - pad) / span)

    def xy(i: int) -> tuple[float, float]:
        return (pad + (xs[i] - min(xs)) * scale, height - pad - (ys[i] - min(ys)) * scale)

    states = [state_at(statuses, p.fix.time.timestamp()) for p in points]
    body = []
    for state, run in itertools.groupby(range(1, len(points)), key=lambda i: states[i]):
        d = "".join(_move(xy(i - 1)) + "L{:.1f},{:.1f}".format(*xy(i)) for i in run)
        body.append(_el("path", d=d, stroke=colour(state), stroke_width=2.5, fill="none"))
    windows = _fault_times(faults, base)
    times = [p.fix.time.timestamp() for p in points]
    for i, t in enumerate(times):
        if any(k == "outage" and a <= t <= b for k, a, b in windows):
            x, y = xy(i)
            body.append(_el("circle", cx=x, cy=y, r=4, fill="none", stroke=OUTAGE_FILL))
    for k, a, _ in windows:
        if k == "kill":
            x, y = xy(min(range(len(times)), key=lambda j: abs(times[j] - a)))
            cross = f"M{x - 7:.1f},{y - 7:.1f}l14,14m0,-14l-14,14"
            body.append(_el("path", d=cross, stroke=KILL_COLOUR, stroke_width=3))
    for i, label in ((0, "start"), (len(points) - 1, "end")):
        x, y = xy(i)
        body.append(_el("circle", cx=x, cy=y, r=5) + _el("text", label, x=x + 8, y=y + 4))
    body.append(_scale_bar(span, scale, width - 150.0, height - pad))
    body += _legend(
        dict.fromkeys(states),
        width - 140,
        top + 10,
        [("during outage", OUTAGE_FILL), ("tracker killed", KILL_COLOUR)],
    )
    return _svg(width, height, body, title)


def timeline_svg(
    statuses: Sequence[Status],
    faults: Sequence[Fault],
    points: Sequence[Point] = (),
    base: Timebase | None = None,
    tolerance_s: float = 0.0,
    width: int = 900,
    height: int = 320,
) -> str:
    """State (a coloured band) and backlog over GPS time, outages shaded, kills marked.

    The line counts fixes made but not yet received (from arrival times, `tolerance_s` of delay
    allowed); the dots are the spool backlog the daemon reported in its STATUS lines.
    """
    timed = [s for s in statuses if s.gps_time is not None]
    title = "state and backlog over GPS time"
    if len(timed) < 2:
        return _svg(
            width, height, [_el("text", "no STATUS lines with a GPS time", x=60, y=60)], title
        )
    base = timebase(statuses) if base is None else base
    t = [s.gps_time.timestamp() for s in timed if s.gps_time is not None]
    steps = undelivered(points, base, tolerance_s)
    t0 = min([t[0], *(v for v, _ in steps[:1])])
    t1 = max([t[-1], t0 + 1, *(v for v, _ in steps[-1:])])
    left, right, band_y, band_h = 70.0, width - 170.0, 40.0, 24.0
    plot_y, bottom = 80.0, height - 40.0
    top = max([1, *(s.backlog for s in timed), *(n for _, n in steps)])

    def x(v: float) -> float:
        return left + (min(max(v, t0), t1) - t0) / (t1 - t0) * (right - left)

    def y(b: int) -> float:
        return bottom - b / top * (bottom - plot_y)

    body = []
    for k, a, b in _fault_times(faults, base):
        if k == "outage":
            w = max(x(b) - x(a), 1.0)
            body.append(_rect(x(a), band_y, w, bottom - band_y, OUTAGE_FILL, opacity=0.2))
        else:
            d = f"M{x(a):.1f},{band_y}V{bottom}"
            body.append(_el("path", d=d, stroke=KILL_COLOUR, stroke_width=2, stroke_dasharray=4))
    for s, a, b in zip(timed, t, [*t[1:], t1], strict=True):  # +0.6: no hairlines between
        body.append(_rect(x(a), band_y, x(b) - x(a) + 0.6, band_h, colour(s.state)))
    if steps:
        d = f"M{x(steps[0][0]):.1f},{y(0):.1f}" + "".join(
            f"H{x(v):.1f}V{y(n):.1f}" for v, n in steps
        )
        body.append(_el("path", d=f"{d}H{x(t1):.1f}", fill="none", stroke=LINE, stroke_width=1.5))
    body += [
        _el("circle", cx=x(a), cy=y(s.backlog), r=2.5, fill=BACKLOG_DOT)
        for s, a in zip(timed, t, strict=True)
    ]
    body.append(_el("path", d=f"M{left},{plot_y}V{bottom}H{right}", fill="none", stroke="black"))
    for text, ty in ((str(top), plot_y + 4), ("0", bottom + 4), ("fixes", (plot_y + bottom) / 2)):
        body.append(_el("text", text, x=left - 8, y=ty, text_anchor="end"))
    for i in range(6):
        v = t0 + (t1 - t0) * i / 5
        label = datetime.fromtimestamp(v, timezone.utc).strftime("%H:%M:%S")
        body.append(_el("text", label, x=x(v), y=bottom + 18, text_anchor="middle"))
    extra = [
        ("broker outage", "#f6b8b7"),
        ("tracker killed", KILL_COLOUR),
        ("not yet received", LINE),
        ("spool backlog", BACKLOG_DOT),
    ]
    body += _legend(dict.fromkeys(s.state for s in timed), right + 20, band_y + 10, extra)
    return _svg(width, height, body, title)


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
