"""Whole recordings through the real Decoder and the Device, in simulated time.

The FakeClock moves by the GPS time between epochs (1 s for an epoch without time); due timers
fire in between, as the daemon's loop would. While the machine has the receiver powered down, the
recording's epochs are dropped (a sleeping receiver sends nothing); an optional simulated
accelerometer fires `on_motion` when a dropped epoch shows the vehicle moving.

Each run is compared with tests/data/golden/device/NAME.txt; TRACKER_REGEN_GOLDEN=1 rewrites them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import golden

from tracker.core.clock import FakeClock
from tracker.core.config import PolicyConfig
from tracker.core.fix import Fix, format_time
from tracker.core.scheduler import Scheduler
from tracker.device.machine import HEARTBEAT_MARGIN_S, Device, State
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder, Epoch

DATA = Path(__file__).parent / "data"
NMEA = DATA / "nmea"
GOLDEN = DATA / "golden" / "device"


@dataclass
class Trace:
    """Effects that log every call with the simulated time, plus state changes."""

    clock: FakeClock
    start: float
    lines: list[str] = field(default_factory=list)
    records: list[tuple[Fix, str]] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    gps_on: bool = False

    def _log(self, text: str) -> None:
        self.lines.append(f"{self.clock.monotonic() - self.start:9.1f} {text}")

    def gps_power(self, on: bool) -> None:
        self.gps_on = on
        self._log(f"gps {'on' if on else 'off'}")

    def record(self, fix: Fix, trigger: str) -> None:
        self.records.append((fix, trigger))
        speed = "-" if fix.speed is None else f"{fix.speed:.1f}"
        self._log(f"record {trigger} {format_time(fix.time)} {fix.lat:.5f} {fix.lon:.5f} {speed}")

    def condition(self, reason: str) -> None:
        self.conditions.append(reason)
        self._log(f"condition {reason}")

    def link(self, wanted: bool) -> None:
        self._log(f"link {'up' if wanted else 'down'}")

    def on_state(self, event: Any) -> None:
        state = State[event.transition.dest].value
        self.states.append(state)
        self._log(f"state {state} ({event.event.name})")


@dataclass
class Run:
    device: Device
    trace: Trace
    clock: FakeClock


def epochs_of(data: bytes) -> list[Epoch]:
    dec = Decoder(allow_no_checksum=True, date_floor=RECORDING_DATE_FLOOR)
    return dec.feed(data) + dec.flush()


def simulate(
    epochs: list[Epoch],
    cfg: PolicyConfig | None = None,
    *,
    accelerometer: bool = False,
    at: Callable[[float, Device], None] | None = None,
    tail_s: float = 0.0,
) -> Run:
    """Feed epochs to a Device; `at(elapsed, device)` runs before each epoch (scripted inputs)."""
    cfg = cfg or PolicyConfig()
    clock = FakeClock(1000.0)
    trace = Trace(clock, clock.monotonic())
    timers = Scheduler()
    device = Device(cfg, trace, clock, timers)
    device.machine.after_state_change.append(trace.on_state)
    device.start()
    prev = None
    for epoch in epochs:
        step = 1.0
        if epoch.time is not None and prev is not None:
            step = max(0.0, (epoch.time - prev).total_seconds())
        if epoch.time is not None:
            prev = epoch.time if prev is None else max(prev, epoch.time)
        target = clock.monotonic() + step
        while (due := timers.next_due()) is not None and due <= target:
            clock.set(max(due, clock.monotonic()))
            timers.run_due(clock.monotonic())
        clock.set(target)
        if at is not None:
            at(clock.monotonic() - trace.start, device)
        if trace.gps_on:
            device.on_epoch(epoch)
        elif accelerometer and epoch.fix and (epoch.fix.speed or 0) >= cfg.moving_speed_mps:
            device.on_motion()
    end = clock.monotonic() + tail_s  # time goes on after the recording: timers still fire
    while (due := timers.next_due()) is not None and due <= end:
        clock.set(max(due, clock.monotonic()))
        timers.run_due(clock.monotonic())
    return run_summary(Run(device, trace, clock))


def run_summary(run: Run) -> Run:
    stats = run.device.stats()
    counters = {k: v for k, v in sorted(stats.items()) if type(v) is int and k != "epochs"}
    run.trace.lines.append(
        "end " + run.device.state.value + " " + " ".join(f"{k}={v}" for k, v in counters.items())
    )
    return run


def check_golden(name: str, run: Run) -> None:
    text = "\n".join(run.trace.lines) + "\n"
    golden.check_golden(GOLDEN / f"{name}.txt", text, "device trace")


def recording(rel: str) -> list[Epoch]:
    return epochs_of((NMEA / rel).read_bytes())


def cold_start_without_fix() -> bytes:
    """The Telit HE910 log cut just before its first valid RMC: a receiver that never gets a fix."""
    lines = (NMEA / "gpsd" / "telit-he910.log").read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b"$GPRMC") and line.split(b",")[2] == b"A":
            return b"".join(lines[:i])
    raise AssertionError("the recording has no fix")


# ---- golden runs ---------------------------------------------------------------------------------


def test_long_drive_with_stops_and_accelerometer() -> None:
    run = simulate(recording("nmeaparser/NmeaSampleData.txt"), accelerometer=True)
    check_golden("nmeasampledata-drive", run)
    triggers = [t for _, t in run.trace.records]
    assert {"first", "start", "stop", "distance", "heading"} <= set(triggers)
    # parked for minutes mid-drive: low power, then the accelerometer wakes the device
    assert "low_power" in run.trace.states
    lp = run.trace.states.index("low_power")
    assert run.trace.states[lp + 1] == "acquiring_fix"
    assert "low_power_enter" in run.trace.conditions
    assert "low_power_exit" in run.trace.conditions
    wake = run.trace.conditions.index("low_power_exit")
    assert wake > run.trace.conditions.index("low_power_enter")
    assert triggers.count("start") >= 2  # moving again after the wake-up


def test_city_drive_heading_and_distance() -> None:
    run = simulate(recording("qtpositioning/nmealog.txt"))
    check_golden("qtpositioning-city", run)
    triggers = [t for _, t in run.trace.records]
    assert triggers[0] == "first"
    assert triggers.count("heading") >= 3
    assert triggers.count("distance") >= 5
    times = [f.time for f, _ in run.trace.records]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= PolicyConfig().min_interval_s


def test_dashcam_drive() -> None:
    run = simulate(recording("leaflet-nmealayer/test.nmea"))
    check_golden("leaflet-dashcam", run)
    assert run.device.state is State.REPORTING
    assert run.device.policy.moving


def test_parked_boat_goes_to_low_power() -> None:
    cfg = PolicyConfig()
    run = simulate(recording("signalk/gps.log"), cfg)
    check_golden("signalk-parked", run)
    assert run.device.state is State.LOW_POWER
    assert [t for _, t in run.trace.records] == ["first"]  # jitter is not motion
    assert run.trace.conditions == ["low_power_enter"]
    assert run.device.deadline == pytest.approx(
        run.trace.start + 3.0 + cfg.still_timeout_s + cfg.heartbeat_s - HEARTBEAT_MARGIN_S, abs=5
    )


def test_sparse_parked_then_driving_log() -> None:
    """nl2008u: fixes minutes apart; each gap longer than the fix timeout is a no-fix."""
    run = simulate(recording("gpsd/nl2008u.log"), PolicyConfig(settle_s=0))
    check_golden("nl2008u-sparse", run)
    assert run.trace.records[0][1] == "first"
    assert "no_fix" in run.trace.conditions


def test_cold_start_without_fix_times_out_and_backs_off() -> None:
    cfg = PolicyConfig(fix_timeout_s=20, fix_backoff_s=10)
    run = simulate(epochs_of(cold_start_without_fix()), cfg, tail_s=100)
    check_golden("telit-no-fix", run)
    assert run.trace.records == []
    assert set(run.trace.conditions) == {"no_fix"}
    assert run.device.stats()["fix_timeouts"] == len(run.trace.conditions) >= 3
    # the receiver sleeps through each back-off, and each one in a row is twice the last
    retries = [float(ln.split()[0]) for ln in run.trace.lines if "(retry)" in ln]
    timeouts = [float(ln.split()[0]) for ln in run.trace.lines if "(fix_timeout)" in ln]
    backoffs = [r - t for t, r in zip(timeouts, retries, strict=False)]
    assert backoffs[:3] == [10.0, 20.0, 40.0]


def test_low_battery_parks_the_device_and_says_why() -> None:
    def battery(elapsed: float, device: Device) -> None:
        if elapsed >= 60 and not device.battery_is_low():
            device.on_battery(12.0, False)

    run = simulate(recording("qtpositioning/nmealog.txt"), at=battery)
    check_golden("qtpositioning-battery-low", run)
    assert run.device.state is State.LOW_POWER
    assert run.trace.conditions == ["battery_low"]
    # the car kept driving, but nothing more is reported once the battery is low
    last_report = run.trace.records[-1][0].time
    assert (last_report - run.trace.records[0][0].time).total_seconds() <= 62


def test_golden_files_have_no_strays() -> None:
    names = {p.stem for p in GOLDEN.glob("*.txt")}
    assert names == {
        "nmeasampledata-drive",
        "qtpositioning-city",
        "leaflet-dashcam",
        "signalk-parked",
        "nl2008u-sparse",
        "telit-no-fix",
        "qtpositioning-battery-low",
    }


def test_replaying_twice_gives_the_same_trace() -> None:
    epochs = recording("leaflet-nmealayer/test.nmea")
    a, b = simulate(epochs), simulate(epochs)
    assert a.trace.lines == b.trace.lines


def test_policy_changes_change_the_trace() -> None:
    epochs = recording("leaflet-nmealayer/test.nmea")
    base = simulate(epochs)
    sparse = simulate(epochs, dataclasses.replace(PolicyConfig(), distance_m=500, heading_deg=90))
    assert len(sparse.trace.records) < len(base.trace.records)
