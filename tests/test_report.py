"""Unit tests of benchkit.report and benchkit.report_svg: gaps, duplicates, state time, GeoJSON
and SVG validity."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from benchkit import report, report_svg
from benchkit.report import Fault, Message, Point, Status

from tracker.core.fix import Fix, Record
from tracker.link import codec
from tracker.link.forward import publish_packet_bytes

T0 = datetime(2005, 9, 25, 23, 52, 34, tzinfo=timezone.utc)
TOPIC = "dt/tracker/bench-1/location"


def fix(i: int) -> Fix:
    return Fix(
        time=T0 + timedelta(seconds=5 * i),
        lat=39.43 - 0.001 * i,
        lon=-119.76 + 0.001 * i,
        alt=1378.6,
        speed=23.2,
        course=153.1,
        mode=3,
        sats=10,
        hdop=0.8,
    )


def status(at: float, state: str, gps_s: float | None, backlog: int = 0) -> Status:
    t = None if gps_s is None else T0 + timedelta(seconds=gps_s)
    return Status(at=at, state=state, gps_time=t, fixes=0, reports=0, backlog=backlog, link="up")


STATUSES = [
    status(0.0, "acquiring_fix", None),
    status(0.5, "acquiring_fix", 0.0),
    status(1.0, "reporting", 30.0),
    status(2.0, "reporting", 100.0, backlog=4),
    status(3.0, "low_power", 160.0),
    status(4.0, "low_power", 400.0),
]


def test_seq_gaps_finds_missing_ranges_including_the_ends() -> None:
    assert report.seq_gaps([1, 2, 3], 1, 3) == []
    assert report.seq_gaps([2, 3, 6, 9], 1, 10) == [(1, 1), (4, 5), (7, 8), (10, 10)]
    assert report.seq_gaps([], 1, 2) == [(1, 2)]
    assert report.seq_gaps([5, 5, 4], 4, 5) == []


def test_duplicates_count_repeats_only() -> None:
    assert report.duplicates([1, 2, 3]) == 0
    assert report.duplicates([1, 2, 2, 3, 2, 1]) == 3


def test_parse_status_reads_every_field_and_rejects_other_text() -> None:
    s = report.parse_status(
        "state=reporting gps_time=2005-09-25T23:52:34Z fixes=12 reports=3 backlog=7 link=down", 1.5
    )
    assert s == Status(1.5, "reporting", T0, 12, 3, 7, "down")
    no_time = report.parse_status("state=idle gps_time=- fixes=0 reports=0 backlog=0 link=up", 0)
    assert no_time is not None and no_time.gps_time is None
    assert report.parse_status("READY=1", 0) is None
    assert report.parse_status("state=idle fixes=x", 0) is None


def test_seconds_in_state_follows_gps_time_between_status_lines() -> None:
    assert report.seconds_in_state(STATUSES) == {
        "acquiring_fix": 30.0,
        "low_power": 240.0,
        "reporting": 130.0,
    }


def test_clip_cuts_at_a_bench_second_and_closes_the_last_state() -> None:
    cut = report.clip(STATUSES, 2.5)
    assert [s.state for s in cut] == [
        "acquiring_fix",
        "acquiring_fix",
        "reporting",
        "reporting",
        "reporting",
    ]
    assert cut[-1].gps_time == T0 + timedelta(seconds=130)
    assert report.seconds_in_state(cut) == {"acquiring_fix": 30.0, "reporting": 100.0}


def test_gps_at_interpolates_and_clamps() -> None:
    t0 = T0.timestamp()
    base = report.timebase(STATUSES)
    assert report.gps_at(base, 1.5) == t0 + 65.0
    assert report.gps_at(base, 3.0) == t0 + 160.0
    assert report.gps_at(base, -1) == t0
    assert report.gps_at(base, 99) == t0 + 400.0
    assert report.gps_at(report.timebase([status(0, "idle", None)]), 1.0) is None


def test_undelivered_counts_fixes_made_and_not_yet_received() -> None:
    base = [(0.0, T0.timestamp()), (100.0, T0.timestamp() + 100)]
    # fixes made at 0, 5 and 10 s; the first two arrive at 20 s (a backlog), the last at once
    pts = [
        Point(0, fix(0), "", 20.0),
        Point(1, fix(1), "", 20.0),
        Point(2, fix(2), "", 10.0),
        Point(0, fix(0), "", 30.0),
    ]
    t = T0.timestamp()
    assert report.undelivered(pts, base) == [(t, 1), (t + 5, 2), (t + 20, 0)]
    assert report.undelivered(pts, base, tolerance_s=16) == [(t, 1), (t + 20, 0)]


def test_decode_messages_counts_live_batch_duplicates_and_bad_payloads() -> None:
    live = codec.encode_live(Record(1, fix(1), "first"))
    batch, n = codec.encode_batch([Record(i, fix(i), "interval") for i in range(2, 6)])
    assert n == 4
    msgs = [
        Message(1.0, TOPIC, live),
        Message(2.0, TOPIC, batch),
        Message(2.5, TOPIC, live),
        Message(3.0, TOPIC, b"not json"),
        Message(3.1, "dt/tracker/bench-1/condition", b"{}"),
    ]
    got = report.decode_messages(msgs, TOPIC)
    assert got.messages == 4
    assert [p.seq for p in got.points] == [1, 2, 3, 4, 5, 1]
    assert len(got.decode_errors) == 1
    assert got.payload_bytes == 2 * len(live) + len(batch) + len(b"not json")
    assert got.wire_bytes == sum(publish_packet_bytes(TOPIC, len(m.payload)) for m in msgs[:4])
    assert [p.seq for p in report.unique_track(got.points)] == [1, 2, 3, 4, 5]


def test_wire_size_is_an_mqtt5_publish_with_a_multi_byte_remaining_length() -> None:
    # fixed header, remaining length, topic length + topic, packet id, properties length, payload
    assert publish_packet_bytes("t", 10) == 1 + 1 + 2 + 1 + 2 + 1 + 10
    assert publish_packet_bytes("t", 200) == 1 + 2 + 2 + 1 + 2 + 1 + 200


def test_summary_reports_a_lost_fix_as_a_gap() -> None:
    points = [Point(s, fix(s), "interval", 1.0) for s in (1, 2, 2, 4)]
    rec = report.Received(points=points, messages=3, wire_bytes=300, payload_bytes=200)
    s = report.summarize(rec, STATUSES, first_seq=1, fixes_recorded=5, extra={"speed": 75})
    assert s["fixes_recorded"] == 5 and s["fixes_received"] == 3
    assert s["duplicates"] == 1 and s["records_received"] == 4
    assert s["gaps"] == [[3, 3], [5, 5]] and s["lost"] == 2
    assert s["wire_bytes_per_fix"] == 100.0
    assert s["seconds_in_state"]["reporting"] == 130.0
    assert s["speed"] == 75
    json.loads(report.dumps(s))
    text = report.format_summary(s)
    assert "3, 5" in text and "1 duplicates" in text


def test_geojson_has_a_linestring_and_points_in_lon_lat_order() -> None:
    pts = [Point(i, fix(i), "interval", 0.0) for i in (0, 1, 7)]
    doc = json.loads(json.dumps(report.to_geojson(pts, STATUSES)))
    assert doc["type"] == "FeatureCollection"
    line = doc["features"][0]
    assert line["geometry"]["type"] == "LineString"
    assert line["geometry"]["coordinates"][0] == [fix(0).lon, fix(0).lat]
    assert [f["properties"]["seq"] for f in doc["features"][1:]] == [0, 1, 7]
    assert doc["features"][1]["properties"]["state"] == "acquiring_fix"
    assert doc["features"][3]["properties"]["state"] == "reporting"


def test_svgs_are_well_formed_and_mark_faults() -> None:
    pts = [Point(i, fix(i), "interval", 0.0) for i in range(40)]
    faults = [Fault("outage", 1.2, 1.6), Fault("kill", 2.5, 2.5)]
    track = ET.fromstring(report_svg.track_svg(pts, STATUSES, faults))
    assert track.tag == "{http://www.w3.org/2000/svg}svg"
    svg = "{http://www.w3.org/2000/svg}"
    assert any(c.get("stroke") == report_svg.OUTAGE_FILL for c in track.iter(f"{svg}circle"))
    assert any(p.get("stroke") == report_svg.KILL_COLOUR for p in track.iter(f"{svg}path"))
    strokes = {ln.get("stroke") for ln in track.iter(f"{svg}path")}
    assert report_svg.colour("reporting") in strokes and report_svg.colour("low_power") in strokes
    timeline = ET.fromstring(report_svg.timeline_svg(STATUSES, faults))
    fills = {r.get("fill") for r in timeline.iter(f"{svg}rect")}
    assert report_svg.OUTAGE_FILL in fills and report_svg.colour("acquiring_fix") in fills
    assert any(ln.get("stroke") == report_svg.KILL_COLOUR for ln in timeline.iter(f"{svg}path"))


def test_svgs_of_an_empty_run_are_still_well_formed() -> None:
    ET.fromstring(report_svg.track_svg([], [], []))
    ET.fromstring(report_svg.timeline_svg([], []))
