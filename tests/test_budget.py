"""The data plan governor: per GPS day, spread over the day, persisted; the whole app within it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_app import THING, Harness

from tracker.core import config
from tracker.core.clock import FakeClock
from tracker.core.config import BudgetConfig
from tracker.core.events import Inbound, LinkDown, LinkUp
from tracker.daemon.app import App
from tracker.device.budget import CONNECT_COST, MAX_STRETCH, RESERVE, Budget, BudgetState, load
from tracker.link import codec
from tracker.receiver.nmea import frame

NOON = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


class GpsClock:
    def __init__(self, t: datetime | None) -> None:
        self.t = t
        self.mono = 0.0

    def __call__(self) -> datetime | None:
        return self.t


def make_budget(tmp_path: Path, clock: GpsClock, **cfg: int) -> Budget:
    return Budget(BudgetConfig(**cfg), clock, lambda: clock.mono, tmp_path / "budget.json")


def test_the_allowance_is_spread_over_the_day(tmp_path: Path) -> None:
    gps = GpsClock(NOON.replace(hour=0))
    b = make_budget(tmp_path, gps, bytes_per_day=100_000)
    assert b.wait_s(int(100_000 * RESERVE)) == 0  # the morning reserve
    assert b.wait_s(int(100_000 * RESERVE) + 1000) > 0
    gps.t = NOON  # half the day gone: 10 % + 45 %
    assert b.wait_s(54_000) == 0
    wait = b.wait_s(64_000)
    assert wait == pytest.approx(0.1 * 86_400, rel=0.01)  # 64 %: 60 % of the day after 10 %
    assert b.wait_s(100_001) > 12 * 3600  # more than a day's worth: not before midnight


def test_spending_counts_against_the_gps_day_and_a_new_day_starts_over(tmp_path: Path) -> None:
    gps = GpsClock(NOON)
    b = make_budget(tmp_path, gps, bytes_per_day=100_000, messages_per_day=100)
    b.spend(50_000, 10)
    assert b.wait_s(10_000) > 0 and b.wait_s(4_000) == 0
    assert b.report()["bytes"] == 50_000 and b.report()["day"] == "2026-06-01"
    gps.t = NOON + timedelta(days=1)
    assert b.report()["bytes"] == 0 and b.report()["day"] == "2026-06-02"
    assert b.wait_s(4_000) == 0


def test_messages_are_governed_too(tmp_path: Path) -> None:
    b = make_budget(tmp_path, GpsClock(NOON), messages_per_day=100)
    b.spend(0, 54)
    assert b.wait_s(0, 1) > 0
    assert b.wait_s(10**9, 0) == 0  # bytes unlimited


def test_without_gps_time_or_limits_nothing_waits(tmp_path: Path) -> None:
    assert make_budget(tmp_path, GpsClock(None), bytes_per_day=20_000).wait_s(10**6) == 0
    assert make_budget(tmp_path, GpsClock(NOON)).wait_s(10**9) == 0


def test_intervals_widen_as_spending_nears_the_allowance_and_narrow_again(
    tmp_path: Path,
) -> None:
    gps = GpsClock(NOON)  # half the day gone: 55 % of the allowance may be spent
    b = make_budget(tmp_path, gps, bytes_per_day=100_000)
    assert b.stretch() == 1.0
    b.spend(40_000)  # 73 % of what the day allows so far: not yet
    assert b.stretch() == 1.0
    b.spend(5_000)  # 82 %: wider
    assert 1.0 < b.stretch() < MAX_STRETCH
    b.spend(10_000)  # all of it
    assert b.stretch() == pytest.approx(MAX_STRETCH)
    gps.t = NOON + timedelta(hours=8)  # the day went on: 85 % allowed, 55 % spent
    assert b.stretch() == 1.0
    assert b.wait_s(40_000) > 0 and b.stretch() == MAX_STRETCH  # a message waits
    gps.mono += b.wait_s(40_000) + 1
    gps.t += timedelta(hours=4)
    assert b.stretch() == 1.0
    assert make_budget(tmp_path / "x", gps).stretch() == 1.0  # no limit: never


def test_keepalive_pings_are_counted_while_connected(tmp_path: Path) -> None:
    gps = GpsClock(NOON)
    b = make_budget(tmp_path, gps)
    b.link(True)
    connect = b.state.bytes
    gps.mono += 600  # five keep-alive intervals of silence
    b.link(False)
    assert b.state.bytes - connect == 5 * 170


def test_the_count_survives_a_restart_and_a_bad_file_starts_from_zero(tmp_path: Path) -> None:
    gps = GpsClock(NOON)
    b = make_budget(tmp_path, gps, bytes_per_day=100_000)
    b.spend(12_345, 3)
    b.save_if_due(force=True)
    again = make_budget(tmp_path, gps, bytes_per_day=100_000)
    assert (again.state.bytes, again.state.messages) == (12_345, 3)
    (tmp_path / "budget.json").write_text("{broken")
    assert load(tmp_path / "budget.json") == BudgetState()
    (tmp_path / "budget.json").write_text('{"day": "x", "bytes": -1, "messages": 0}')
    assert load(tmp_path / "budget.json") == BudgetState()


# ---- the whole app in simulated time ------------------------------------------------------------


def budget_app(tmp_path: Path, **budget: int) -> App:
    cfg = config.from_dict(
        {
            "device": {"thing_name": THING, "set_clock": False},
            "aws": {"endpoint": "localhost", "cert": "c", "key": "k", "ca": "a"},
            "gps": {"url": "/dev/null", "date_floor": "1999-08-22"},
            "spool": {"path": str(tmp_path / "spool.db")},
            "budget": budget,
            "power": {"gps": "sim://"},
            "sensors": {"battery": "sim://?percent=80", "temperature": "sim://?temp=21.5"},
        }
    )
    return App(cfg, clock=FakeClock())


def parked_nmea(path: Path, fix: Any, days: float, step_s: int = 30) -> Path:
    """A receiver left on at `fix`'s place for `days` after it: RMC + GGA every `step_s`."""
    lines = []
    lat, lon = abs(fix.lat), abs(fix.lon)
    la = f"{int(lat):02d}{(lat - int(lat)) * 60:07.4f},{'N' if fix.lat >= 0 else 'S'}"
    lo = f"{int(lon):03d}{(lon - int(lon)) * 60:07.4f},{'E' if fix.lon >= 0 else 'W'}"
    for i in range(1, int(days * 86_400 / step_s)):
        t = fix.time + timedelta(seconds=i * step_s)
        hms, dmy = t.strftime("%H%M%S"), t.strftime("%d%m%y")
        for body in (f"GPRMC,{hms},A,{la},{lo},0.0,0.0,{dmy},,,A",
                     f"GPGGA,{hms},{la},{lo},1,09,0.9,100.0,M,0.0,M,,"):  # fmt: skip
            lines.append(frame(body).decode())
    path.write_text("".join(lines))
    return path


def drive_day(
    h: Harness, tmp_path: Path, stretches: list[float] | None = None
) -> tuple[list[tuple[str, int]], int]:
    """The 2.5-hour drive, then three days parked; (GPS day, bytes spent) after every epoch."""
    seen: list[tuple[str, int]] = []

    def note(*_: Any) -> None:
        st = h.app.budget.state
        seen.append((st.day, st.bytes))
        if stretches is not None:
            stretches.append(h.app.device.policy.stretch)

    h.event(LinkUp())
    epochs = h.play("nmeaparser/NmeaSampleData.txt", each=note)
    last = [e.fix for e in epochs if e.fix is not None][-1]
    drive_reports = h.app.reports
    h.play(str(parked_nmea(tmp_path / "parked.nmea", last, 3.0)), each=note)
    return seen, drive_reports


def test_a_day_that_would_overspend_stays_within_budget_and_loses_nothing(
    tmp_path: Path,
) -> None:
    limit = 20_000
    h = Harness(budget_app(tmp_path, bytes_per_day=limit))
    stretches: list[float] = []
    seen, drive_reports = drive_day(h, tmp_path, stretches)
    worst: dict[str, int] = {}
    for day, spent in seen:
        worst[day] = max(worst.get(day, 0), spent)
    assert all(spent <= limit for spent in worst.values()), sorted(worst.items())
    stats = h.app.forwarder.stats() if h.app.forwarder else None
    assert stats is not None and stats.budget_waits > 0  # it did have to wait
    # the drive's fixes all arrived once the allowance came back, the backlog oldest first;
    # the last heartbeats still wait in the spool for tomorrow's allowance; none was lost
    got = [r.seq for r in h.uplink.records()]
    st = h.app.spool.stats()
    assert sorted(set(got)) == list(range(1, h.app.reports - st.backlog + 1))
    assert h.app.reports - st.backlog > drive_reports and st.backlog < 24 and not st.dropped
    # the backlog went oldest first (a reconnect may send the newest fix alone before it)
    batches = [codec.decode(p.payload) for p in h.uplink.on("/location")]
    backlog = [r.seq for b in batches if len(b) > 1 for r in b]
    assert backlog == sorted(backlog) and len(set(backlog)) == len(backlog)
    # short of allowance the reporting intervals widened (fewer fixes taken, not fixes
    # dropped), and went back to the settings once the allowance came back
    free = Harness(budget_app(tmp_path / "free"))
    free.event(LinkUp())
    free.play("nmeaparser/NmeaSampleData.txt")
    assert max(stretches) == MAX_STRETCH and stretches[-1] == 1.0
    assert drive_reports < free.app.reports * 0.6, (drive_reports, free.app.reports)


def test_a_day_that_fits_is_not_slowed(tmp_path: Path) -> None:
    free = Harness(budget_app(tmp_path / "free"))
    free.event(LinkUp())
    free.play("nmeaparser/NmeaSampleData.txt", limit=2000)
    roomy = Harness(budget_app(tmp_path / "roomy", bytes_per_day=10_000_000))
    roomy.event(LinkUp())
    roomy.play("nmeaparser/NmeaSampleData.txt", limit=2000)
    loc = [p.payload for p in free.uplink.on("/location")]
    assert loc and loc == [p.payload for p in roomy.uplink.on("/location")]
    stats = roomy.app.forwarder.stats() if roomy.app.forwarder else None
    assert stats is not None and stats.budget_waits == 0


def test_budget_goes_into_conditions_and_the_shadow_and_is_set_remotely(tmp_path: Path) -> None:
    h = Harness(budget_app(tmp_path, bytes_per_day=500_000))
    h.event(LinkUp())
    h.play("qtpositioning/nmealog.txt", limit=30)
    h.app.condition("test")
    c = h.uplink.conditions()[-1]
    assert c["budget"]["bytes_per_day"] == 500_000 and c["budget"]["bytes"] > 0
    reports = [json.loads(p.payload) for p in h.uplink.on("/shadow/update")]
    status = [r["state"]["reported"]["status"] for r in reports if "status" in str(r)]
    assert status and "budget_bytes" in status[-1]
    delta = {"version": 7, "state": {"budget": {"bytes_per_day": 137_000}}}
    topic = f"$aws/things/{THING}/shadow/update/delta"
    h.event(Inbound(topic, json.dumps(delta).encode()))
    assert h.app.budget.cfg.bytes_per_day == 137_000
    h.event(Inbound(topic, b'{"version": 8, "state": {"budget": {"bytes_per_day": 5}}}'))
    assert h.app.budget.cfg.bytes_per_day == 137_000  # refused: it would silence the device
    h.app.shutdown()
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved["bytes"] == h.app.budget.state.bytes


def test_reconnects_and_shadow_replies_are_charged(tmp_path: Path) -> None:
    """A reconnect after an outage pays a handshake and the shadow sync again (the get only:
    the settings did not change); the shadow's replies come down the same link and count too."""
    h = Harness(budget_app(tmp_path, bytes_per_day=500_000))
    h.event(LinkUp())
    h.play("qtpositioning/nmealog.txt", limit=5)
    before = h.app.budget.state.bytes
    sent = len(h.uplink.sent)
    h.event(LinkDown("outage"))
    h.event(LinkUp())
    resync = h.uplink.sent[sent:]  # the shadow get of the new connection
    assert [p.topic.rsplit("/", 1)[-1] for p in resync] == ["get"]
    spent = h.app.budget.state.bytes - before
    assert spent >= CONNECT_COST + sum(len(p.payload) for p in resync)
    reply = json.dumps({"state": {"desired": {}}, "version": 3}).encode()
    before = h.app.budget.state.bytes
    h.event(Inbound(f"$aws/things/{THING}/shadow/get/accepted", reply))
    assert h.app.budget.state.bytes - before >= len(reply) + 100  # with TLS/TCP overheads


def test_condition_messages_in_low_power_leave_out_empty_fields(tmp_path: Path) -> None:
    h = Harness(budget_app(tmp_path))
    h.event(LinkUp())
    epochs = h.play("qtpositioning/nmealog.txt", limit=5)
    last = [e.fix for e in epochs if e.fix is not None][-1]
    h.app.condition("test")  # awake: the full message
    h.play(str(parked_nmea(tmp_path / "parked.nmea", last, 0.5)))
    awake: list[tuple[dict[str, Any], int]] = []
    asleep: list[tuple[dict[str, Any], int]] = []
    for p in h.uplink.on("/condition"):
        doc = json.loads(p.payload)
        (asleep if doc["state"] == "low_power" else awake).append((doc, len(p.payload)))
    assert asleep and awake
    for doc, _ in asleep:  # sparse: no null, zero or empty value at any level
        flat = json.dumps(doc)
        assert "null" not in flat and ":0," not in flat and "{}" not in flat and "[]" not in flat
        assert doc["reason"] and doc["battery"]["percent"] == 80 and doc["time"]
    assert max(n for _, n in asleep) < min(n for _, n in awake) / 2
