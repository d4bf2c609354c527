"""The device state machine in simulated time: gates, timeouts, low power, wake-ups, effects."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from support.effects import EffectsLog
from transitions import Machine

from tracker.core.clock import FakeClock
from tracker.core.config import PolicyConfig
from tracker.core.fix import Fix
from tracker.core.scheduler import Scheduler
from tracker.device.machine import (
    HEARTBEAT_LEAD_MAX,
    HEARTBEAT_MARGIN_S,
    TRANSITIONS,
    Device,
    Effects,
    State,
    mermaid,
    trigger_table,
)
from tracker.receiver.epoch import Epoch

T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=timezone.utc)
CFG = PolicyConfig(settle_s=0)


def epoch(
    seconds: float,
    north_m: float = 0.0,
    *,
    speed: float = 0.0,
    hdop: float = 0.9,
    sats: int = 9,
    fix: bool = True,
) -> Epoch:
    t = T0 + timedelta(seconds=seconds)
    f = (
        Fix(
            time=t,
            lat=48.2 + north_m / 111_195.0,
            lon=8.4,
            speed=speed,
            course=0.0,
            mode=3,
            sats=sats,
            hdop=hdop,
        )
        if fix
        else None
    )
    return Epoch(time=t, fix=f, sats_used=sats, sats_in_view=12, hdop=hdop)


class Bench:
    """A device, its effects log and a fake clock; GPS time and the clock move together."""

    def __init__(self, cfg: PolicyConfig = CFG) -> None:
        self.cfg = cfg
        self.clock = FakeClock(500.0)
        self.t0 = self.clock.monotonic()
        self.fx = EffectsLog()
        self.timers = Scheduler()
        self.dev = Device(cfg, self.fx, self.clock, self.timers)

    @property
    def now(self) -> float:
        return self.clock.monotonic() - self.t0

    def until(self, seconds: float) -> None:
        """Let time pass to `seconds` after the start, firing timers as the daemon would."""
        end = self.t0 + seconds
        while (due := self.timers.next_due()) is not None and due <= end:
            self.clock.set(max(due, self.clock.monotonic()))
            self.timers.run_due(self.clock.monotonic())
        self.clock.set(end)

    def feed(self, seconds: float, north_m: float = 0.0, **kw: Any) -> None:
        self.until(seconds)
        self.dev.on_epoch(epoch(seconds, north_m, **kw))

    def park(self, start: float, end: float, north_m: float = 0.0) -> None:
        for t in range(int(start), int(end)):
            if self.fx.gps_on:
                self.feed(t, north_m)
            else:
                self.until(t)

    def reports(self) -> list[str]:
        return [trigger for _, trigger in self.fx.of("record")]


def test_starts_idle_and_boot_powers_the_receiver() -> None:
    b = Bench()
    assert b.dev.state is State.IDLE
    assert b.dev.deadline is None
    b.dev.start()
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.fx.calls == [("gps_power", True)]
    assert b.dev.deadline == b.t0 + CFG.fix_timeout_s


def test_first_good_fix_is_reported() -> None:
    b = Bench()
    b.dev.start()
    b.feed(3)
    assert b.dev.state is State.REPORTING
    assert b.reports() == ["first"]
    assert b.dev.stats()["last_fix_age_s"] == 0


@pytest.mark.parametrize(("kw", "reason"), [({"hdop": 9.0}, "hdop"), ({"sats": 3}, "sats")])
def test_quality_gates_reject(kw: dict[str, Any], reason: str) -> None:
    b = Bench()
    b.dev.start()
    b.feed(1, **kw)
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.dev.stats()[f"rejected_{reason}"] == 1
    assert b.fx.of("record") == []


def test_settle_time_after_power_on() -> None:
    b = Bench(dataclasses.replace(CFG, settle_s=3))
    b.dev.start()
    for t in (10, 11, 12):
        b.feed(t)
        assert b.dev.state is State.ACQUIRING_FIX
    b.feed(13)
    assert b.dev.state is State.REPORTING
    assert b.dev.stats()["rejected_settle"] == 3


def test_epochs_without_fix_are_counted_only() -> None:
    b = Bench()
    b.dev.start()
    b.feed(1, fix=False)
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.dev.stats()["epochs"] == 1


def test_fix_timeout_reports_no_fix_and_backs_off() -> None:
    cfg = dataclasses.replace(CFG, fix_timeout_s=60, fix_backoff_s=100, heartbeat_s=300)
    b = Bench(cfg)
    b.dev.start()
    b.until(60)
    assert b.dev.state is State.IDLE
    assert b.fx.of("condition") == ["no_fix"]
    assert b.fx.gps_on is False
    assert b.dev.deadline == b.t0 + 160
    b.until(160)
    assert b.dev.state is State.ACQUIRING_FIX
    b.until(220)  # second timeout in a row: twice the back-off
    assert b.dev.deadline == b.t0 + 220 + 200
    b.until(420 + 60)  # third: capped at the heartbeat interval
    assert b.dev.deadline == b.t0 + 480 + 300
    assert b.dev.stats()["fix_timeouts"] == 3
    b.feed(780 + 5)
    assert b.dev.state is State.REPORTING
    b.park(786, 786 + 20)
    b.until(805 + 60 + 60)  # fixes stop: lost at 865, timeout at 925, back-off 100 s again
    assert b.dev.state is State.IDLE
    assert b.dev.deadline == b.t0 + 925 + 100


def test_fix_lost_goes_back_to_acquiring() -> None:
    b = Bench()
    b.dev.start()
    b.feed(1)
    b.until(1 + CFG.fix_timeout_s)
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.fx.gps_on is True


def test_still_leads_to_low_power_and_heartbeat_wakes() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=300, heartbeat_s=3600)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 400)
    assert b.dev.state is State.LOW_POWER
    assert b.fx.calls[-3:] == [
        ("gps_power", False),
        ("condition", "low_power_enter"),
        ("link", False),
    ]
    entered = b.t0 + 301
    # the wake comes early by a margin and the time the last fix took (1 s, at boot)
    assert b.dev.deadline == entered + 3600 - HEARTBEAT_MARGIN_S - 1
    # heartbeat: wake, one report, back to sleep without more condition messages
    n = len(b.fx.calls)
    b.park(400, 3901 + 10)
    assert b.reports() == ["first", "heartbeat"]
    assert b.dev.state is State.LOW_POWER
    assert [c for c in b.fx.calls[n:] if c[0] in ("condition", "link")] == [
        ("link", True),
        ("link", False),
    ]
    stats = b.dev.stats()
    assert stats["seconds_in"]["low_power"] == pytest.approx(3600 + 9, abs=1)


def test_the_first_heartbeat_allows_for_the_time_the_last_fix_took() -> None:
    # no heartbeat wake yet to learn from: the boot's 40 s to a first fix stands in, so the
    # first heartbeat report also lands before a keep-alive ping that divides heartbeat_s
    cfg = dataclasses.replace(CFG, still_timeout_s=300, heartbeat_s=3600)
    b = Bench(cfg)
    b.dev.start()
    b.until(40)
    b.park(40, 400)
    assert b.reports() == ["first"] and b.dev.state is State.LOW_POWER
    entered = b.t0 + 340
    assert b.dev.deadline == entered + 3600 - HEARTBEAT_MARGIN_S - 40


def test_heartbeat_without_fix_goes_back_to_sleep() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=60, heartbeat_s=1000, fix_timeout_s=30)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 100)
    assert b.dev.state is State.LOW_POWER
    # a heartbeat wake comes early by a margin and the time the last fix took (1 s, at boot),
    # by a share of heartbeat_s at most
    lead = min(HEARTBEAT_MARGIN_S + 1, HEARTBEAT_LEAD_MAX * 1000)
    woke = 61 + 1000 - lead
    b.until(woke + 30)  # woke for the heartbeat, no fix in 30 s
    assert b.dev.state is State.LOW_POWER
    assert b.fx.of("condition")[-1] == "no_fix"
    assert b.dev.deadline == b.t0 + woke + 30 + 1000 - lead


def test_heartbeat_reports_come_a_little_under_heartbeat_s_apart() -> None:
    # each wake allows for the time the last one took to a fix: reports go just before a
    # keep-alive ping that divides heartbeat_s instead of just after it
    cfg = dataclasses.replace(CFG, still_timeout_s=60, heartbeat_s=3600, settle_s=0)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 5 * 3600)
    times = [fix.time for fix, trigger in b.fx.of("record") if trigger == "heartbeat"]
    gaps = [(b2 - a).total_seconds() for a, b2 in itertools.pairwise(times)]
    assert len(gaps) >= 3
    assert all(3600 - 2 * HEARTBEAT_MARGIN_S <= g < 3600 for g in gaps), gaps


def test_motion_wakes_from_low_power() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=60)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 100)
    assert b.dev.state is State.LOW_POWER
    b.until(200)
    b.dev.on_motion()
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.fx.calls[-3:] == [("link", True), ("condition", "low_power_exit"), ("gps_power", True)]
    # not moved yet: the device stays awake long enough to see the start of motion
    b.park(201, 210)
    assert b.dev.state is State.REPORTING
    for i, t in enumerate(range(210, 220)):
        b.feed(t, 10 * i, speed=10)
    assert b.reports() == ["first", "start"]
    assert b.dev.state is State.REPORTING


def test_motion_false_alarm_sleeps_again() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=60)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 100)
    b.until(200)
    b.dev.on_motion()
    b.park(201, 260)
    assert b.dev.state is State.LOW_POWER
    assert b.reports() == ["first"]


def test_motion_ignored_when_awake_or_battery_low() -> None:
    b = Bench()
    b.dev.start()
    b.dev.on_motion()
    assert b.dev.state is State.ACQUIRING_FIX
    b.dev.on_battery(5.0, False)
    assert b.dev.state is State.LOW_POWER
    b.dev.on_motion()
    assert b.dev.state is State.LOW_POWER
    assert b.dev.stats()["motion_events"] == 2


def test_battery_low_with_hysteresis() -> None:
    cfg = dataclasses.replace(CFG, battery_low_pct=15, battery_ok_pct=25)
    b = Bench(cfg)
    b.dev.start()
    b.feed(1)
    b.dev.on_battery(20.0, False)
    assert b.dev.state is State.REPORTING
    b.dev.on_battery(14.0, False)
    assert b.dev.state is State.LOW_POWER
    assert b.fx.of("condition") == ["battery_low"]
    assert b.fx.of("link")[-1] is False
    b.dev.on_battery(20.0, False)  # above low, below ok: stay
    b.dev.on_battery(None, None)
    assert b.dev.state is State.LOW_POWER
    b.dev.on_battery(26.0, False)
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.fx.of("condition") == ["battery_low", "battery_ok"]


def test_charging_is_never_low_and_ends_low() -> None:
    b = Bench()
    b.dev.start()
    b.dev.on_battery(5.0, True)
    assert b.dev.state is State.ACQUIRING_FIX
    b.dev.on_battery(5.0, False)
    assert b.dev.state is State.LOW_POWER
    b.dev.on_battery(5.0, True)
    assert b.dev.state is State.ACQUIRING_FIX


def test_battery_low_heartbeat_reports_then_sleeps() -> None:
    cfg = dataclasses.replace(CFG, heartbeat_s=600)
    b = Bench(cfg)
    b.dev.start()
    b.feed(1)
    b.dev.on_battery(5.0, False)
    for i, t in enumerate(range(601, 620)):  # driving, but the battery is low
        if b.fx.gps_on:
            b.feed(t, 20 * i, speed=20)
        else:
            b.until(t)
    assert b.reports() == ["first", "heartbeat"]
    assert b.dev.state is State.LOW_POWER
    assert b.fx.of("condition") == ["battery_low"]


def test_battery_low_while_already_asleep_is_reported() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=60)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 100)
    b.dev.on_battery(3.0, False)
    assert b.fx.of("condition") == ["low_power_enter", "battery_low"]


def test_external_power_wakes_and_clears_low_battery() -> None:
    b = Bench()
    b.dev.start()
    b.dev.on_battery(5.0, False)
    assert b.dev.state is State.LOW_POWER
    b.dev.on_external_power(True)
    assert b.dev.state is State.ACQUIRING_FIX
    assert b.dev.battery_is_low() is False
    assert b.fx.of("condition")[-1] == "external_power_on"
    b.dev.on_external_power(False)
    assert b.fx.of("condition")[-1] == "external_power_off"
    assert b.dev.state is State.ACQUIRING_FIX


def test_wake_signal_forces_a_report() -> None:
    cfg = dataclasses.replace(CFG, still_timeout_s=60)
    b = Bench(cfg)
    b.dev.start()
    b.park(1, 100)
    b.until(500)
    b.dev.on_wake()
    assert b.dev.state is State.ACQUIRING_FIX
    b.feed(501)
    assert b.reports() == ["first", "wake"]
    # awake: the wake-up asks for a report of the next fix
    b.dev.on_wake()
    b.feed(502)
    assert b.reports() == ["first", "wake", "wake"]


def test_reconfigure_applies_new_policy() -> None:
    b = Bench()
    b.dev.start()
    b.feed(1)
    b.dev.reconfigure(dataclasses.replace(CFG, max_hdop=1.0))
    b.feed(2, hdop=2.0)
    assert b.dev.stats()["rejected_hdop"] == 1


def test_stats_time_in_states() -> None:
    b = Bench(dataclasses.replace(CFG, fix_timeout_s=60))
    b.dev.start()
    b.until(100)
    s = b.dev.stats()
    assert s["seconds_in"]["acquiring_fix"] == 60
    assert s["seconds_in"]["idle"] == 40
    assert s["fix_timeouts"] == 1
    assert s["state"] == "idle"


def test_effects_interactions(mocker: Any) -> None:
    effects = mocker.create_autospec(Effects, instance=True)
    clock = FakeClock()
    dev = Device(CFG, effects, clock, Scheduler())
    dev.start()
    dev.on_epoch(epoch(0))
    effects.gps_power.assert_called_once_with(True)
    effects.record.assert_called_once_with(epoch(0).fix, "first")
    effects.condition.assert_not_called()
    dev.on_battery(1.0, False)
    effects.condition.assert_called_once_with("battery_low")
    effects.link.assert_called_once_with(False)
    effects.gps_power.assert_called_with(False)


def test_table_is_data_and_names_existing_guards() -> None:
    states = {
        s
        for t in TRANSITIONS
        for s in (t["source"] if isinstance(t["source"], list) else [t["source"]])
    } | {t["dest"] for t in TRANSITIONS}
    assert states == set(State)
    for t in TRANSITIONS:
        for key in ("conditions", "unless"):
            if key in t:
                assert callable(getattr(Device, t[key]))

    # the table builds a plain machine too (no hidden dependencies on Device)
    class Model:
        pass

    Machine(
        model=Model(),
        states=list(State),
        transitions=TRANSITIONS,
        initial=State.IDLE,
        auto_transitions=False,
    )


def test_mermaid_and_trigger_table() -> None:
    text = mermaid()
    assert text.startswith("stateDiagram-v2\n  [*] --> idle\n")
    assert "reporting --> low_power: rest [settled_still]" in text
    assert "low_power --> acquiring_fix: motion [!battery_is_low]" in text
    assert text.count("-->") == 1 + sum(
        len(t["source"]) if isinstance(t["source"], list) else 1 for t in TRANSITIONS
    )
    table = trigger_table()
    assert "| motion | idle, low_power | acquiring_fix | not battery_is_low | `on_motion`" in table
    assert len(table.splitlines()) == 2 + len(TRANSITIONS)


def test_readme_shows_the_machine_as_it_is() -> None:
    """The README's diagram and trigger table are the machine's own (scripts/diagram.py)."""
    from pathlib import Path

    from tracker.device.machine import mermaid, trigger_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in (mermaid() + "\n" + trigger_table()).splitlines():
        assert line in readme, f"README is out of date (run scripts/diagram.py): {line!r}"
