"""SVG pictures of a bench run: the received track and the state/backlog timeline.

Pure functions of `benchkit.report`'s data; standard library and `benchkit.report` only, no plotting
library, no I/O but the caller's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from xml.sax.saxutils import escape

from benchkit.report import Fault, Point, Status, Timebase, gps_at, state_at, timebase, undelivered

STATE_COLOURS = {
    "idle": "#9e9e9e",
    "acquiring_fix": "#f5a623",
    "reporting": "#2e7d32",
    "low_power": "#1565c0",
}
OTHER_COLOURS = ("#8e24aa", "#00838f", "#6d4c41", "#c2185b")
OUTAGE_FILL, KILL_COLOUR, BACKLOG_DOT, LINE = "#e53935", "#b71c1c", "#ef6c00", "#37474f"
METRES_PER_DEG = 111_195.0  # along a great circle


def colour(state: str) -> str:
    """The colour a state is drawn in."""
    if state in STATE_COLOURS:
        return STATE_COLOURS[state]
    return OTHER_COLOURS[sum(state.encode()) % len(OTHER_COLOURS)]


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
