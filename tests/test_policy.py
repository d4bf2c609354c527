"""The reporting policy on synthetic tracks: triggers, motion estimate, jitter, GPS-time rules."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.core.config import PolicyConfig
from tracker.core.fix import Fix, distance_m
from tracker.device.policy import ReportPolicy, heading_change

T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=timezone.utc)
LAT0, LON0 = 48.2, 8.4
M_PER_DEG_LAT = 111_195.0


def at(
    seconds: float,
    north_m: float = 0.0,
    east_m: float = 0.0,
    *,
    speed: float | None = 0.0,
    course: float | None = None,
) -> Fix:
    """A fix `seconds` after T0, displaced by metres from a fixed point."""
    lat = LAT0 + north_m / M_PER_DEG_LAT
    lon = LON0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))
    return Fix(
        time=T0 + timedelta(seconds=seconds),
        lat=lat,
        lon=lon,
        speed=speed,
        course=course,
        mode=3,
        sats=9,
        hdop=0.9,
    )


def drive(
    policy: ReportPolicy,
    start: float,
    end: float,
    *,
    speed: float = 10.0,
    course: float = 0.0,
    north0: float = 0.0,
    east0: float = 0.0,
) -> list[tuple[float, str]]:
    """Drive in a straight line at 1 Hz; returns (seconds, trigger) of each report."""
    out: list[tuple[float, str]] = []
    rad = math.radians(course)
    for i, t in enumerate(range(int(start), int(end))):
        d = speed * i
        trig = policy.consider(
            at(t, north0 + d * math.cos(rad), east0 + d * math.sin(rad), speed=speed, course=course)
        )
        if trig:
            out.append((t, trig))
    return out


def test_first_fix_is_reported() -> None:
    p = ReportPolicy(PolicyConfig())
    assert p.consider(at(0)) == "first"
    assert p.last_reported == at(0)


def test_parked_jitter_is_not_motion() -> None:
    """Wander within the still radius with noisy speed readings: no report, no motion."""
    cfg = PolicyConfig()
    p = ReportPolicy(cfg)
    rng = random.Random(7)
    assert p.consider(at(0)) == "first"
    for t in range(1, 3000):
        r = rng.uniform(0, cfg.still_radius_m * 0.95)
        a = rng.uniform(0, 2 * math.pi)
        fix = at(
            t,
            r * math.cos(a),
            r * math.sin(a),
            speed=rng.choice([0.0, 0.4, 2.5, 4.0]),
            course=rng.uniform(0, 360),
        )
        trig = p.consider(fix)
        assert trig in (None, "heartbeat"), (t, trig)
        assert not p.moving
    assert p.still_for(at(2999)) == 2999


def test_heartbeat_while_still() -> None:
    cfg = PolicyConfig(heartbeat_s=600)
    p = ReportPolicy(cfg)
    triggers = [(t, p.consider(at(t))) for t in range(0, 1300, 10)]
    assert [x for x in triggers if x[1]] == [(0, "first"), (600, "heartbeat"), (1200, "heartbeat")]


def test_start_then_distance_while_driving() -> None:
    cfg = PolicyConfig(distance_m=100, max_interval_s=120, min_interval_s=5)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    reports = drive(p, 1, 60, speed=10)
    # leaves the 30 m circle at 4 s (40 m from the start point)
    assert reports[0] == (5, "start")
    assert p.moving
    distances = [t for t, trig in reports if trig == "distance"]
    assert distances == [15, 25, 35, 45, 55]


def test_a_stretch_widens_distance_and_interval_and_1_is_the_settings() -> None:
    cfg = PolicyConfig(distance_m=100, max_interval_s=120, min_interval_s=5)
    wide = ReportPolicy(cfg)
    wide.stretch = 4.0  # the data plan governor, short of allowance
    wide.consider(at(0))
    reports = drive(wide, 1, 200, speed=10)
    # min_interval_s 20 s (the start waits for it), then every 400 m instead of 100 m
    assert reports == [(20, "start"), *((t, "distance") for t in (60, 100, 140, 180))]
    slow = ReportPolicy(PolicyConfig(distance_m=1000, max_interval_s=60))
    slow.stretch = 2.0
    slow.consider(at(0))
    assert [t for t, _ in drive(slow, 1, 400, speed=3)][1:] == [131, 251, 371]  # 120 s
    slow.stretch = 1.0  # the allowance is back: the settings again
    assert [t for t, _ in drive(slow, 400, 600, speed=3)] == [400, 460, 520, 580]


def test_interval_while_moving_slowly() -> None:
    cfg = PolicyConfig(distance_m=1000, max_interval_s=60)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    reports = drive(p, 1, 200, speed=3)
    assert [trig for _, trig in reports] == ["start", "interval", "interval", "interval"]
    assert [t for t, _ in reports][1:] == [71, 131, 191]


def test_heading_change_while_moving() -> None:
    cfg = PolicyConfig(distance_m=10_000, heading_deg=30)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    north = drive(p, 1, 30, speed=10, course=0)
    assert [trig for _, trig in north] == ["start"]
    east = drive(p, 30, 40, speed=10, course=45, north0=290)
    assert east[0] == (30, "heading")
    # a gentle curve below the threshold does not fire
    more = drive(p, 40, 60, speed=10, course=60, north0=360, east0=70)
    assert more == []


def test_heading_ignored_at_walking_pace() -> None:
    cfg = PolicyConfig(distance_m=10_000, heading_deg=30, moving_speed_mps=1.5)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    drive(p, 1, 30, speed=5, course=0)
    # course readings below moving speed are noise
    assert p.consider(at(31, 150, speed=1.0, course=180)) is None


def test_stop_after_halt_then_still_time_grows() -> None:
    cfg = PolicyConfig(max_interval_s=120, still_timeout_s=300)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    drive(p, 1, 60, speed=10)
    assert p.moving
    end_north = 10 * 58
    triggers = [(t, p.consider(at(t, end_north, speed=0.0))) for t in range(60, 400)]
    fired = [x for x in triggers if x[1]]
    assert fired == [(59 + int(p.stop_after_s), "stop")]  # 120 s after the last fast fix
    assert not p.moving
    assert p.still_for(at(399, end_north)) == 399 - 59


def test_traffic_light_is_not_a_stop() -> None:
    cfg = PolicyConfig(distance_m=10_000)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    drive(p, 1, 60, speed=10)
    for t in range(60, 120):  # 60 s at a red light
        assert p.consider(at(t, 580, speed=0.0)) is None
    assert p.moving
    assert drive(p, 120, 200, speed=10, north0=580) == [(125, "interval")]  # 120 s after start


def test_min_interval_holds_back_start_until_allowed() -> None:
    cfg = PolicyConfig(min_interval_s=30)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    assert p.consider(at(5, 40, speed=8)) is None  # left the circle, but too soon
    assert p.moving and p.pending == "start"
    assert p.consider(at(30, 240, speed=8)) == "start"
    assert p.pending is None


def test_moved_while_asleep_reports_distance() -> None:
    """A fix far from the anchor but slow (towed, or moved while the receiver slept)."""
    cfg = PolicyConfig(distance_m=100)
    p = ReportPolicy(cfg)
    p.consider(at(0))
    assert p.consider(at(3600, 5000, speed=0.0)) == "distance"
    assert not p.moving
    assert p.still_for(at(3700, 5000)) == 100  # the anchor moved with it


def test_no_speed_field_uses_displacement() -> None:
    p = ReportPolicy(PolicyConfig())
    p.consider(at(0, speed=None))
    assert p.consider(at(10, 5, speed=None)) is None
    assert p.consider(at(20, 100, speed=None)) == "start"


def test_repeated_and_backward_times() -> None:
    cfg = PolicyConfig()
    p = ReportPolicy(cfg)
    assert p.consider(at(100)) == "first"
    assert p.consider(at(100)) is None  # the same epoch twice
    assert p.consider(at(90, 500, speed=10)) is None  # a little back in time: ignored
    # a date jump backwards (bad rollover handling) restarts the policy
    assert p.consider(at(-86_400)) == "first"


def test_forced_report_uses_its_own_trigger() -> None:
    p = ReportPolicy(PolicyConfig())
    p.consider(at(0))
    assert p.consider(at(1)) is None
    assert p.consider(at(2), force="wake") == "wake"
    assert p.last_reported == at(2)


def test_reconfigure_keeps_motion_state() -> None:
    p = ReportPolicy(PolicyConfig())
    p.consider(at(0))
    drive(p, 1, 20, speed=10)
    p.reconfigure(dataclasses.replace(PolicyConfig(), distance_m=5000))
    assert p.moving
    assert drive(p, 20, 60, speed=10, north0=190) == []


def test_heading_change_wraps() -> None:
    assert heading_change(350, 10) == 20
    assert heading_change(10, 350) == 20
    assert heading_change(0, 180) == 180
    assert heading_change(90, 90) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.2, 20),
            st.floats(-40, 40),
            st.floats(-40, 40),
            st.floats(0, 30),
            st.floats(0, 359),
        ),
        min_size=2,
        max_size=80,
    )
)
def test_never_reports_faster_than_min_interval(steps: list[tuple[float, ...]]) -> None:
    cfg = PolicyConfig(min_interval_s=5)
    p = ReportPolicy(cfg)
    t, north, east = 0.0, 0.0, 0.0
    reported = []
    for dt, dn, de, speed, course in steps:
        t, north, east = t + dt, north + dn, east + de
        fix = at(t, north, east, speed=speed, course=course)
        if p.consider(fix):
            reported.append(fix)
    for a, b in itertools.pairwise(reported):
        assert (b.time - a.time).total_seconds() >= cfg.min_interval_s


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 29), st.floats(0, 6.3), st.floats(0, 10)), min_size=1, max_size=100
    )
)
def test_jitter_inside_the_radius_never_starts_motion(points: list[tuple[float, ...]]) -> None:
    cfg = PolicyConfig(still_radius_m=30)
    p = ReportPolicy(cfg)
    first = at(0)
    p.consider(first)
    for i, (r, a, speed) in enumerate(points, start=1):
        fix = at(i, r * math.cos(a), r * math.sin(a), speed=speed)
        assert distance_m(first.lat, first.lon, fix.lat, fix.lon) < 30
        assert p.consider(fix) in (None, "heartbeat")
        assert not p.moving
