"""GPS time carried on the monotonic clock, the unset-clock rule, and GPS as a motion sensor."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tracker.core.clock import FakeClock
from tracker.core.config import PolicyConfig
from tracker.core.errors import TrackerError
from tracker.core.fix import Fix
from tracker.daemon import setclock
from tracker.device.policy import ParkedWatch
from tracker.receiver.gpstime import CLOCK_REQUEST, GpsTime, write_clock_request

GPS = datetime(2027, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
OLD = datetime(2005, 9, 26, 0, 0, 0, tzinfo=timezone.utc)


def test_gps_time_runs_on_from_the_last_epoch() -> None:
    clock = FakeClock()
    gt = GpsTime(clock, set_clock=False)
    assert gt.now() is None
    gt.seen(GPS, has_fix=False)
    clock.advance(90.5)
    assert gt.now() == GPS + timedelta(seconds=90.5)


class ClockSetter:
    """The board's real-time clock: read and set through `time`, which tests must not touch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float, fail: bool = False) -> None:
        self.now, self.fail = now, fail
        self.calls: list[float] = []
        monkeypatch.setattr(time, "time", lambda: self.now)
        monkeypatch.setattr(time, "clock_settime", self.settime)

    def settime(self, which: Any, t: float) -> None:
        if self.fail:
            raise PermissionError(1, "Operation not permitted")
        self.calls.append(t)


def test_an_unset_clock_is_set_from_the_first_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    board = ClockSetter(monkeypatch, now=3600.0)  # booted without an RTC: 1970
    gt = GpsTime(FakeClock(), set_clock=True)
    gt.seen(GPS, has_fix=False)
    assert board.calls == []  # a time without a fix is not trusted
    gt.seen(GPS, has_fix=True)
    assert board.calls == [GPS.timestamp()]


@pytest.mark.parametrize(
    ("board_now", "gps", "set_clock"),
    [
        (GPS.timestamp() - 5, GPS, True),  # the clock is already plausible: NTP's job
        (3600.0, OLD, True),  # a replayed old recording never moves the clock
        (3600.0, GPS, False),  # turned off
    ],
)
def test_the_clock_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, board_now: float, gps: datetime, set_clock: bool
) -> None:
    board = ClockSetter(monkeypatch, now=board_now)
    GpsTime(FakeClock(), set_clock=set_clock).seen(gps, has_fix=True)
    assert board.calls == []


def test_no_privilege_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ClockSetter(monkeypatch, now=3600.0, fail=True)
    gt = GpsTime(FakeClock(), set_clock=True)
    for _ in range(3):
        gt.seen(GPS, has_fix=True)
    warnings = [r for r in caplog.records if "CAP_SYS_TIME" in r.message]
    assert len(warnings) == 1


def fix(metres_north: float, speed: float = 0.0, hdop: float = 0.9) -> Fix:
    return Fix(time=GPS, lat=48.0 + metres_north / 111_195.0, lon=8.0, speed=speed, hdop=hdop)


def test_parked_jitter_does_not_wake_but_leaving_the_circle_does() -> None:
    watch = ParkedWatch(PolicyConfig())  # still radius 30 m, moving speed 1.5 m/s
    assert watch.feed(fix(0)) is False  # where it parked
    assert not any(watch.feed(fix(m)) for m in (5, -8, 12, 3))
    assert watch.feed(fix(2, speed=1.8)) is False  # one speed spike is jitter
    assert watch.feed(fix(45)) is True
    assert watch.parked_at is None and watch.moved_m == pytest.approx(45, abs=0.5)


def test_sustained_speed_wakes_before_the_circle_is_left() -> None:
    watch = ParkedWatch(PolicyConfig())
    watch.feed(fix(0))
    assert [watch.feed(fix(1 + i, speed=2.5)) for i in range(3)] == [False, False, True]


def test_a_bad_fix_is_not_evidence_of_motion() -> None:
    watch = ParkedWatch(PolicyConfig())
    watch.feed(fix(0))
    assert watch.feed(fix(500, hdop=20.0)) is False  # worse than max_hdop: ignored


def test_without_the_privilege_under_systemd_the_tracker_asks_the_clock_helper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    board = ClockSetter(monkeypatch, now=3600.0, fail=True)
    mono = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: mono[0])
    gt = GpsTime(FakeClock(), set_clock=True, runtime_dir=str(tmp_path))
    gt.seen(GPS, has_fix=True)
    request = tmp_path / CLOCK_REQUEST
    assert json.loads(request.read_text()) == {
        "gps_time": "2027-03-01T12:00:00Z",
        "monotonic": 1000.0,
    }
    request.unlink()
    mono[0] += 30
    gt.seen(GPS, has_fix=True)
    assert not request.exists()  # at most one request a minute
    mono[0] += 31
    gt.seen(GPS, has_fix=True)
    assert json.loads(request.read_text())["monotonic"] == 1061.0
    assert board.calls == []

    # tracker-clock.service reads it 2.5 s later and sets the clock to GPS time then
    board.fail = False
    mono[0] += 2.5
    assert setclock.main(argparse.Namespace(request=str(request))) == 0
    assert board.calls == [GPS.timestamp() + 2.5]


def test_set_clock_leaves_a_set_clock_alone_and_refuses_stale_or_bad_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    request = tmp_path / CLOCK_REQUEST
    monkeypatch.setattr(time, "monotonic", lambda: 5000.0)
    write_clock_request(request, GPS, 5000.0 - 301)
    board = ClockSetter(monkeypatch, now=3600.0)
    with pytest.raises(TrackerError, match=r"is 301 s old \(at most 300\)"):
        setclock.main(argparse.Namespace(request=str(request)))
    write_clock_request(request, OLD, 4999.0)
    with pytest.raises(TrackerError, match="before the release date"):
        setclock.main(argparse.Namespace(request=str(request)))
    request.write_text("{not json")
    with pytest.raises(TrackerError, match="is malformed"):
        setclock.main(argparse.Namespace(request=str(request)))
    with pytest.raises(TrackerError, match="cannot read the clock request"):
        setclock.main(argparse.Namespace(request=str(tmp_path / "missing")))
    assert board.calls == []
    board.now = GPS.timestamp()  # NTP got there first
    write_clock_request(request, GPS, 4999.0)
    assert setclock.main(argparse.Namespace(request=str(request))) == 0
    assert board.calls == []
