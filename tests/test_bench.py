"""Tests of scripts/bench: its arguments and fault schedule, and one whole run on a short cut of
the bundled drive with a broker outage and a tracker kill, checked through its summary.json."""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tracker.core import config
from tracker.core.fix import Fix

REPO = Path(__file__).resolve().parent.parent
DRIVE = REPO / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts/bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_bench()
import bench_plan  # noqa: E402  (beside bench.py, which put scripts/ on sys.path)


def cut(data: bytes, start: bytes, stop: bytes) -> bytes:
    """The recording's lines from the RMC at time `start` up to the RMC at `stop`, bytes intact."""
    lines = data.splitlines(keepends=True)
    first = next(i for i, ln in enumerate(lines) if ln.startswith(b"$GPRMC," + start))
    last = next(i for i, ln in enumerate(lines) if ln.startswith(b"$GPRMC," + stop))
    return b"".join(lines[first:last])


def test_durations_and_outages_parse_with_units() -> None:
    assert bench_plan.parse_duration("90") == 90.0
    assert bench_plan.parse_duration("1.5m") == 90.0
    assert bench_plan.parse_duration("2h") == 7200.0
    assert bench_plan.parse_outage("60s@120s") == bench_plan.Outage(at=120.0, length=60.0)
    for bad in ("soon", "60s", "0s@10s"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_plan.parse_outage(bad)


def test_parser_defaults_and_repeatable_outages() -> None:
    args = bench_plan.build_parser().parse_args(
        ["--outage", "60s@120s", "--outage", "1m@10m", "--kill", "2"]
    )
    assert Path(args.recording) == DRIVE
    assert args.speed == 75.0 and args.kill == 2
    assert args.outage == [bench_plan.Outage(120.0, 60.0), bench_plan.Outage(600.0, 60.0)]


def test_schedule_follows_the_recording_and_its_bytes() -> None:
    lines = [
        b"$GPRMC,000000,A*00\r\n",
        b"$GPGSA,x*00\r\n",
        b"$GPRMC,000010.5,A*00\r\n",
        b"$GPRMC,001000,A*00\r\n",
        b"$GPRMC,001010,A*00\r\n",
    ]
    s = bench_plan.schedule(b"".join(lines), 10.0)
    assert s.rec == [0.0, 0.0, 10.5, 600.0, 610.0]
    assert s.play == [0.0, 0.0, 1.05, 3.05, 4.05]  # the 589.5 s gap is capped at 2 s
    assert s.length == 610.0
    ends = list(itertools.accumulate(len(x) for x in lines))
    assert s.rec_at_byte(0) == 0.0
    assert s.rec_at_byte(ends[2]) == 10.5 and s.rec_at_byte(ends[2] - 1) == 0.0
    assert s.rec_at_byte(10**9) == 610.0
    t = datetime(2005, 9, 26, 0, 0, 10, 500000, tzinfo=timezone.utc)
    origin = s.origin(Fix(time=t, lat=0.0, lon=0.0))
    assert origin == t.timestamp() - 10.5
    assert s.origin(Fix(time=t.replace(second=11), lat=0.0, lon=0.0)) is None


def test_the_default_drive_takes_about_two_minutes() -> None:
    s = bench_plan.schedule(DRIVE.read_bytes(), 75.0)
    assert 8000 < s.length < 9000
    assert 90 < s.play[-1] < 150


def test_kills_are_spread_over_recorded_lines_and_kept_out_of_outages() -> None:
    rec = [float(i) for i in range(100)] + [1000.0 + i for i in range(100)]  # a gap at 100 s
    assert bench_plan.kill_moments(3, rec, []) == [50.0, 1000.0, 1050.0]
    moved = bench_plan.kill_moments(1, rec, [bench_plan.Outage(at=990.0, length=30.0)])
    assert moved[0] > 1020.0


def test_bench_config_is_a_valid_tracker_config(tmp_path: Path) -> None:
    pki = SimpleNamespace(client=SimpleNamespace(cert="c.crt", key="c.key"), ca="ca.crt")
    path = tmp_path / "tracker.toml"
    path.write_text(bench_plan.bench_config(tmp_path, "/dev/pts/9", 18883, pki, 75.0, "info"))
    cfg = config.load(path, environ={})
    assert cfg.gps.url == "/dev/pts/9" and not cfg.gps.detect_baud
    assert cfg.aws.port == 18883 and cfg.aws.endpoint == "localhost"
    assert cfg.debug.clock_speed == 75.0
    assert cfg.device.thing_name == bench_plan.THING
    # a recording keeps its own dates, and a bench never sets the machine's clock
    assert cfg.gps.date_floor == "1999-08-22" and not cfg.device.set_clock


def test_status_line_is_quiet_when_not_a_terminal() -> None:
    out = io.StringIO()
    line = bench.StatusLine(out)
    line.show("state=reporting")
    line.event("broker stopped")
    assert out.getvalue() == "broker stopped\n"


@pytest.mark.slow
def test_a_short_drive_with_an_outage_and_a_kill_loses_no_fix(tmp_path: Path) -> None:
    recording = tmp_path / "drive-cut.nmea"
    recording.write_bytes(cut(DRIVE.read_bytes(), b"001700", b"003330"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/bench.py"),
            str(recording),
            "--speed",
            "60",
            "--outage",
            "60s@120s",
            "--kill",
            "1",
            "--out",
            str(out),
            "--drain-timeout",
            "20s",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "tracker.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gaps"] == []
    assert summary["fixes_recorded"] > 20
    assert summary["fixes_received"] == summary["fixes_recorded"]
    assert summary["duplicates"] == summary["records_received"] - summary["fixes_received"]
    assert summary["restarts"] == 1
    assert [f["kind"] for f in summary["faults"]] == ["outage", "kill"]
    assert summary["messages_received"] <= summary["fixes_received"] + summary["duplicates"]
    assert {"acquiring_fix", "reporting", "low_power"} <= set(summary["seconds_in_state"])
    assert summary["seconds_in_state"]["reporting"] > 0
    for name in ("track.gpx", "track.geojson", "track.svg", "timeline.svg", "tracker.log"):
        assert (out / name).stat().st_size > 0, name
    # the cloud saw the drive on the day it was recorded, not a week-rollover guess
    assert "<time>2005-09-26T00:17" in (out / "track.gpx").read_text()
