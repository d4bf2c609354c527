"""`tracker export LAKE --thing T ...`: one device's track from the lake, one point per seq.

Reads `tracker.twin.lake`'s layout (written by `tracker collect`, or an `aws s3 sync` of the
bucket), keeps the first-received copy of each seq, orders by seq, and writes GPX (the `tracker
replay` writer), GeoJSON, CSV or JSON lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tracker.core.config import THING_NAME_RE
from tracker.core.errors import TrackerError
from tracker.core.fix import format_time
from tracker.twin.lake import LakeFix, check_lake, fix_line, read_fixes, things

CSV_FIELDS = ("thing", "seq", "trigger", "time", "lat", "lon", "alt", "speed", "course", "mode",
              "sats", "hdop", "received")  # fmt: skip


class ExportError(TrackerError):
    """A user mistake in the export's options (one line, with the fix)."""


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ExportError(
            f"--day {text!r} is not a date: use YYYY-MM-DD, e.g. 2026-11-30"
        ) from None


def parse_zone(text: str) -> tzinfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExportError(
            f"--tz {text!r} is not a known time zone: use an IANA name like Europe/Amsterdam or UTC"
        ) from None


def parse_instant(option: str, text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ExportError(
            f"{option} {text!r} is not an ISO time: use e.g. 2026-11-30T08:00:00Z"
        ) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def window(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    """The [start, end) UTC interval the options ask for; (None, None) for everything."""
    if args.day and (args.start or args.end):
        raise ExportError("--day and --from/--to exclude each other: pass one or the other")
    if args.tz and not args.day:
        raise ExportError("--tz goes with --day (the day in that zone); --from/--to carry offsets")
    if args.day:
        day = parse_day(args.day)
        zone = parse_zone(args.tz) if args.tz else timezone.utc
        start = datetime.combine(day, time(), zone).astimezone(timezone.utc)
        end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(timezone.utc)
        return start, end
    since = parse_instant("--from", args.start) if args.start else None
    until = parse_instant("--to", args.end) if args.end else None
    if since and until and until <= since:
        raise ExportError(f"--to {args.end} is not after --from {args.start}")
    return since, until


def utc_days(start: datetime | None, end: datetime | None) -> list[date] | None:
    """The UTC day partitions that hold [start, end); None: all of them."""
    if start is None or end is None:
        return None
    days, d = [], start.date()
    while d <= (end - timedelta(microseconds=1)).date():
        days.append(d)
        d += timedelta(days=1)
    return days


def track(
    lake: Path, thing: str, start: datetime | None = None, end: datetime | None = None
) -> list[LakeFix]:
    """The device's fixes in [start, end): the first-received copy of each seq, by seq."""
    best: dict[int, LakeFix] = {}
    for lf in read_fixes(lake, thing, utc_days(start, end)):
        t = lf.record.fix.time
        if (start is not None and t < start) or (end is not None and t >= end):
            continue
        have = best.get(lf.record.seq)
        if have is None or _earlier(lf, have):
            best[lf.record.seq] = lf
    return [best[s] for s in sorted(best)]


def _earlier(a: LakeFix, b: LakeFix) -> bool:
    if a.received is None or b.received is None:
        return False
    return a.received < b.received


def _line(lf: LakeFix) -> dict[str, Any]:
    d = fix_line(lf.thing, lf.record, lf.received or datetime.now(timezone.utc))
    if lf.received is None:
        d["received"] = None
    return d


def write_jsonl(points: Iterable[LakeFix], out: TextIO) -> None:
    for lf in points:
        out.write(json.dumps(_line(lf)) + "\n")


def write_csv(points: Iterable[LakeFix], out: TextIO) -> None:
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for lf in points:
        w.writerow({k: ("" if v is None else v) for k, v in _line(lf).items()})


def geojson(points: list[LakeFix], thing: str) -> dict[str, Any]:
    """A FeatureCollection: the track as a LineString, then every fix as a Point."""
    coords = [[round(p.record.fix.lon, 7), round(p.record.fix.lat, 7)] for p in points]
    feats: list[dict[str, Any]] = []
    if len(coords) >= 2:
        feats.append({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {"thing": thing, "fixes": len(coords)},
        })  # fmt: skip
    for p, c in zip(points, coords, strict=True):
        props = _line(p)
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": c},
                      "properties": props})  # fmt: skip
    return {"type": "FeatureCollection", "features": feats}


def render(points: list[LakeFix], thing: str, fmt: str) -> str:
    buf = io.StringIO()
    if fmt == "gpx":
        from tracker.receiver.replay import write_gpx

        write_gpx([p.record.fix for p in points], buf, thing)
    elif fmt == "geojson":
        buf.write(json.dumps(geojson(points, thing)) + "\n")
    elif fmt == "csv":
        write_csv(points, buf)
    else:
        write_jsonl(points, buf)
    return buf.getvalue()


def main(args: argparse.Namespace) -> int:
    lake = Path(args.lake)
    check_lake(lake)
    if not THING_NAME_RE.fullmatch(args.thing):
        raise ExportError(f"--thing {args.thing!r} is invalid: use 1-128 of A-Z a-z 0-9 : _ -")
    start, end = window(args)
    if args.thing not in things(lake):
        there = ", ".join(things(lake)[:10]) or "none"
        raise ExportError(f"no fixes of {args.thing} in {lake} (things there: {there})")
    points = track(lake, args.thing, start, end)
    text = render(points, args.thing, args.format)
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise ExportError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    first = format_time(points[0].record.fix.time) if points else "-"
    last = format_time(points[-1].record.fix.time) if points else "-"
    print(f"tracker export: {args.thing}: {len(points)} fixes, {first} to {last}", file=sys.stderr)
    return 0
