"""The whole daemon in simulated time: recorded drives in, spool and messages out.

A FakeClock drives time (advanced by the recording's GPS time), the uplink is an in-memory stand-in
that the test acknowledges, and everything else is real: the decoder, the machine, the policy, the
SQLite spool, the forwarder, the codec, the shadow logic and the sim power/sensor backends.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.fake_uplink import FakeUplink

from hw.power import open_power
from hw.sensors import open_battery, open_motion, open_temperature
from tracker.core import config
from tracker.core.clock import FakeClock
from tracker.core.errors import HardwareError, UplinkError
from tracker.core.events import GpsEpoch, GpsPort, Inbound, LinkDown, LinkUp, SignalReceived
from tracker.daemon.app import App, Parts, make_decoder
from tracker.device.machine import State
from tracker.receiver.epoch import Epoch
from tracker.spool.store import Spool

DATA = Path(__file__).parent / "data" / "nmea"
THING = "truck-7"


def make_app(
    tmp_path: Path, *, battery: str = "sim://?percent=80", close_link: bool = True, **policy: Any
) -> App:
    cfg = config.from_dict(
        {
            "device": {"thing_name": THING, "set_clock": False},
            "aws": {"endpoint": "localhost", "cert": "c", "key": "k", "ca": "a"},
            "gps": {"url": "/dev/null", "date_floor": "1999-08-22"},
            "spool": {"path": str(tmp_path / "spool.db")},
            "policy": policy,
            # these tests pin closing the link in low power (the default keeps it open)
            "power": {"gps": "sim://", "close_link": close_link},
            "sensors": {"battery": battery, "temperature": "sim://?temp=21.5"},
        }
    )
    return App(cfg, clock=FakeClock())


class Harness:
    """Feeds a recording's epochs to the app at their GPS times, firing timers in between."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.clock: FakeClock = app.clock  # type: ignore[assignment]
        self.uplink = FakeUplink(app.post)
        parts = Parts(
            uplink=self.uplink,
            gps=None,
            power=open_power("sim://"),
            battery=open_battery(app.cfg.sensors.battery, clock=self.clock),
            temperature=open_temperature(app.cfg.sensors.temperature),
            motion=open_motion("none://", lambda: None),
        )
        app.attach(parts)
        self.auto_ack = True
        self.states: list[str] = [app.device.state.value]

    def drain(self) -> None:
        """Handle whatever the app posted to itself; the broker acknowledges if auto_ack."""
        while True:
            if self.auto_ack and self.app.link_up:
                self.uplink.ack_all()
            try:
                event = self.app.events.get_nowait()
            except Exception:
                return
            self.app.handle(event)
            self._note_state()

    def _note_state(self) -> None:
        if self.app.device.state.value != self.states[-1]:
            self.states.append(self.app.device.state.value)

    def advance_to(self, t: float) -> None:
        """Move the clock to t, firing every timer due on the way."""
        while (d := self.app.next_deadline()) is not None and d <= t:
            self.clock.set(max(d, self.clock.monotonic()))
            self.app.run_due()
            self._note_state()
            self.drain()
        self.clock.set(max(t, self.clock.monotonic()))
        self.app.run_due()
        self.drain()

    def event(self, event: Any) -> None:
        self.app.handle(event)
        self._note_state()
        self.drain()

    def play(
        self,
        name: str,
        *,
        each: Callable[[int, Epoch], None] | None = None,
        limit: int | None = None,
    ) -> list[Epoch]:
        decoder = make_decoder(self.app.cfg)
        data = (DATA / name).read_bytes()
        epochs = decoder.feed(data) + decoder.flush()
        if limit is not None:
            epochs = epochs[:limit]
        start = self.clock.monotonic()
        t0 = next(e.time for e in epochs if e.time is not None)
        for i, epoch in enumerate(epochs):
            if epoch.time is not None:
                self.advance_to(start + (epoch.time - t0).total_seconds())
            self.event(GpsEpoch(epoch))
            if each is not None:
                each(i, epoch)
        return epochs


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(make_app(tmp_path))


def seqs(records: list[Any]) -> list[int]:
    return [r.seq for r in records]


def test_a_drive_reports_every_recorded_fix_once_in_seq_order(harness: Harness) -> None:
    harness.event(LinkUp())
    harness.play("qtpositioning/nmealog.txt")
    harness.advance_to(harness.clock.monotonic() + 60)  # the last ones wait max_delay_s at most
    received = harness.uplink.records()
    assert harness.app.reports > 10
    assert seqs(received) == list(range(1, harness.app.reports + 1))
    triggers = {r.trigger for r in received}
    assert received[0].trigger == "first"
    assert {"distance", "heading"} & triggers
    assert harness.app.spool.stats().backlog == 0
    assert "reporting" in harness.states


def test_outage_sends_the_newest_fix_first_then_the_backlog(harness: Harness) -> None:
    harness.event(LinkUp())

    def cut(i: int, epoch: Epoch) -> None:
        if i == 40:
            harness.event(LinkDown("broker gone"))

    harness.play("qtpositioning/nmealog.txt", each=cut)
    before = len(harness.uplink.records())
    total = harness.app.reports
    assert harness.app.spool.stats().backlog == total - before > 5
    harness.event(LinkUp())
    after = harness.uplink.records()[before:]
    assert after[0].seq == total  # the map shows where the asset is now
    assert sorted(set(seqs(harness.uplink.records()))) == list(range(1, total + 1))
    assert harness.app.spool.stats().backlog == 0


def test_parked_recording_goes_to_low_power_and_says_so(harness: Harness) -> None:
    harness.event(LinkUp())
    harness.play("signalk/gps.log")
    assert harness.app.device.state is State.LOW_POWER
    reasons = [c["reason"] for c in harness.uplink.conditions()]
    assert "low_power_enter" in reasons
    # the link closed once the broker had everything: nothing left in flight, nothing lost
    assert harness.app.link_closed and harness.uplink.stopped and not harness.app.link_up
    assert all(p.acked for p in harness.uplink.sent)
    # asleep: the next wake-up is minutes away, not a polling tick
    now = harness.clock.monotonic()
    deadline = harness.app.next_deadline()
    assert deadline is not None and deadline - now >= 60


def test_low_battery_leads_to_low_power_and_the_condition_says_why(tmp_path: Path) -> None:
    h = Harness(make_app(tmp_path, battery="sim://?percent=80&steps=200:9"))
    h.event(LinkUp())
    h.play("nmeaparser/NmeaSampleData.txt", limit=1500)
    low = [c for c in h.uplink.conditions() if c["reason"] == "battery_low"]
    assert low, [c["reason"] for c in h.uplink.conditions()]
    assert low[0]["battery"]["percent"] == 9
    assert low[0]["state"] == "low_power"
    assert "low_power" in h.states


def test_condition_message_carries_the_device_health(harness: Harness) -> None:
    harness.event(LinkUp())
    harness.play("qtpositioning/nmealog.txt", limit=30)
    harness.advance_to(harness.clock.monotonic() + 60)  # the last ones wait max_delay_s at most
    harness.app.condition("test")
    c = harness.uplink.conditions()[-1]
    assert c["reason"] == "test"
    assert c["time"].startswith("20") and c["time"].endswith("Z")  # GPS time, not the board's
    assert c["battery"]["percent"] == 80 and c["temperature_c"] == 21.5
    assert c["gps"]["port"] in ("up", "down") and c["gps"]["sats_used"] is not None
    assert c["spool"]["backlog"] == 0 and c["link"]["up"] is True
    assert c["state"] in {s.value for s in State} and c["version"]


def test_sigterm_stops_and_unacknowledged_fixes_stay_on_disk(tmp_path: Path) -> None:
    h = Harness(make_app(tmp_path))
    h.auto_ack = False
    h.event(LinkUp())
    h.play("qtpositioning/nmealog.txt", limit=60)
    h.event(SignalReceived(signal.SIGTERM))
    assert h.app.running is False and h.app.stop_reason == "SIGTERM"
    h.app.shutdown()
    assert h.uplink.stopped
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.stats().backlog == h.app.reports > 0
        assert spool.take_oldest(1)[0].seq == 1


def test_a_shadow_delta_changes_the_policy_without_a_restart(harness: Harness) -> None:
    harness.event(LinkUp())
    prefix = f"$aws/things/{THING}/shadow"
    assert f"{prefix}/update/delta" in harness.uplink.subscriptions
    delta = {"version": 7, "state": {"policy": {"distance_m": 40, "bogus": 1}}}
    harness.event(Inbound(f"{prefix}/update/delta", json.dumps(delta).encode()))
    assert harness.app.cfg.policy.distance_m == 40
    assert harness.app.device.cfg.distance_m == 40
    reports = [json.loads(p.payload) for p in harness.uplink.on("/shadow/update")]
    assert reports[-1]["state"]["reported"]["policy"]["distance_m"] == 40
    # persisted: a new app on the same spool directory starts with it
    harness.app.shutdown()
    again = make_app(Path(harness.app.cfg.spool.path).parent)
    assert again.cfg.policy.distance_m == 40
    again.spool.close()


def test_a_shadow_delta_is_said_once_and_a_stranger_topic_is_ignored(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.event(LinkUp())
    caplog.set_level(logging.DEBUG, logger="tracker")
    caplog.clear()
    delta = {"version": 7, "state": {"policy": {"distance_m": 40, "min_sats": 99}}}
    harness.event(Inbound(f"$aws/things/{THING}/shadow/update/delta", json.dumps(delta).encode()))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert [m.split(":")[0] for m in said] == [
        "remote settings applied (shadow version 7)",
        "remote settings refused",
    ]
    before, sent = harness.app.cfg, len(harness.uplink.sent)
    caplog.clear()
    harness.event(Inbound("$aws/things/other/shadow/update/delta", json.dumps(delta).encode()))
    assert harness.app.cfg == before and len(harness.uplink.sent) == sent
    assert [r.getMessage() for r in caplog.records] == [
        "message on unexpected topic $aws/things/other/shadow/update/delta ignored"
    ]


def test_a_malicious_shadow_document_changes_nothing(harness: Harness) -> None:
    harness.event(LinkUp())
    before = harness.app.cfg
    topic = f"$aws/things/{THING}/shadow/update/delta"
    for payload in (
        b"\xff" * 10,
        b"[]",
        b'{"version": 9, "state": {"policy": {"distance_m": -5}}}',
        json.dumps({"version": 10, "state": {"aws": {"endpoint": "evil.example"}}}).encode(),
    ):
        harness.event(Inbound(topic, payload))
    assert harness.app.cfg == before


def test_driving_off_after_parking_wakes_from_low_power(harness: Harness) -> None:
    """No motion sensor, no GPS power control: the fixes that keep coming are the motion sensor."""
    harness.event(LinkUp())
    harness.play("nmeaparser/NmeaSampleData.txt", limit=4000)
    i = harness.states.index("low_power")
    assert "reporting" in harness.states[i:]
    reasons = [c["reason"] for c in harness.uplink.conditions()]
    assert reasons.index("low_power_enter") < reasons.index("low_power_exit")
    assert harness.uplink.restarts >= 1 and harness.app.link_up  # opened again on waking


def test_a_shadow_delta_changes_reporting_within_one_report(tmp_path: Path) -> None:
    """Reports 60 s apart at most... until the cloud asks for one every 5 s."""
    h = Harness(
        make_app(tmp_path, min_interval_s=60, distance_m=100000, heading_deg=180, max_interval_s=60)
    )
    h.event(LinkUp())
    delta = {"version": 3, "state": {"policy": {"min_interval_s": 5, "max_interval_s": 5}}}
    topic = f"$aws/things/{THING}/shadow/update/delta"
    sent_at: list[float] = []

    def change(i: int, epoch: Epoch) -> None:
        if i == 70:
            sent_at.append(epoch.time.timestamp())  # type: ignore[union-attr]
            h.event(Inbound(topic, json.dumps(delta).encode()))

    h.play("qtpositioning/nmealog.txt", each=change)
    times = [r.fix.time.timestamp() for r in h.uplink.records()]
    before = [b - a for a, b in itertools.pairwise(times) if b <= sent_at[0]]
    after = [t for t in times if t > sent_at[0]]
    assert before and min(before) >= 60
    assert after[0] - sent_at[0] <= 60  # the next report is the last one at the old pace
    steps = [b - a for a, b in itertools.pairwise(after)]
    assert len(after) > 10 and sorted(steps)[len(steps) // 2] == 5  # the new pace
    assert max(steps) < 60


def test_sighup_reloads_the_policy_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    base = f"""
[device]
thing_name = "{THING}"
set_clock = false
[aws]
endpoint = "localhost"
cert = "c"
key = "k"
ca = "a"
[spool]
path = "{tmp_path / "spool.db"}"
[power]
gps = "sim://"
"""
    path.write_text(base + "[policy]\ndistance_m = 100\n")
    app = App(config.load(path, environ={}), clock=FakeClock(), config_path=str(path))
    h = Harness(app)
    path.write_text(base + "[policy]\ndistance_m = 250\n[gps]\nurl = '/dev/ttyUSB1'\n")
    h.event(SignalReceived(signal.SIGHUP))
    assert app.cfg.policy.distance_m == 250 and app.device.cfg.distance_m == 250
    path.write_text(base + "[policy]\ndistance_m = -1\n")  # a broken file keeps what runs
    h.event(SignalReceived(signal.SIGHUP))
    assert app.cfg.policy.distance_m == 250
    root = logging.getLogger()
    before = root.level
    try:
        path.write_text(base + "[policy]\ndistance_m = 250\n[log]\nlevel = 'debug'\n")
        h.event(SignalReceived(signal.SIGHUP))
        assert app.cfg.log.level == "debug" and root.level == logging.DEBUG  # applied at once
    finally:
        root.setLevel(before)
    app.shutdown()


class FlakyPower:
    """A serial-command power backend whose port is not open yet (as at start-up)."""

    def __init__(self) -> None:
        self.port_open = False
        self.sent: list[bool] = []

    def set(self, on: bool) -> None:
        if not self.port_open:
            raise HardwareError("GPS wake (pmtk) failed: GPS port is not open; command not sent")
        self.sent.append(on)


def test_a_power_command_that_cannot_be_sent_yet_is_sent_when_the_port_opens(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    power = FlakyPower()
    uplink = FakeUplink(app.post)
    app.attach(
        Parts(
            uplink=uplink,
            gps=None,
            power=power,
            battery=open_battery("none://"),
            temperature=open_temperature("none://"),
            motion=open_motion("none://", lambda: None),
        )
    )
    assert app.device.state is State.ACQUIRING_FIX and power.sent == []  # no crash
    power.port_open = True
    app.handle(GpsPort(True, "open"))
    assert power.sent == [True]
    app.shutdown()
    assert power.sent == [True, False]  # standby before the port closes


def test_a_link_that_cannot_reopen_on_waking_is_retried(harness: Harness) -> None:
    harness.event(LinkUp())
    harness.play("signalk/gps.log")
    assert harness.app.link_closed
    uplink = harness.uplink
    real_start, failures = uplink.start, [1]

    def start() -> None:
        if failures:
            failures.pop()
            raise UplinkError("[aws] key file /etc/tracker/device.key is not readable by this user")
        real_start()

    uplink.start = start  # type: ignore[method-assign]
    harness.event(SignalReceived(signal.SIGUSR1))  # wake: the link is wanted again
    assert harness.app.link_closed and not harness.app.link_up  # the first try failed
    harness.advance_to(harness.clock.monotonic() + 61)
    assert not harness.app.link_closed and harness.app.link_up and uplink.restarts == 1


def test_sighup_names_the_settings_that_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tracker.toml"
    base = f"""
[device]
thing_name = "{THING}"
set_clock = false
[spool]
path = "{tmp_path / "spool.db"}"
[power]
gps = "sim://"
"""
    aws = '[aws]\nendpoint = "{}"\ncert = "c"\nkey = "k"\nca = "a"\nbatch_bytes = {}\n'
    path.write_text(base + aws.format("localhost", 5120))
    app = App(config.load(path, environ={}), clock=FakeClock(), config_path=str(path))
    h = Harness(app)
    path.write_text(base + aws.format("localhost", 2048))
    h.event(SignalReceived(signal.SIGHUP))
    assert app.forwarder is not None and app.forwarder.batch_bytes == 2048
    assert not any("after a restart" in r.message for r in caplog.records)
    path.write_text(base + aws.format("other-ats.iot.example.com", 2048))
    h.event(SignalReceived(signal.SIGHUP))
    assert any("[aws] apply after a restart" in r.message for r in caplog.records)
    app.shutdown()


def _timed_locations(h: Harness) -> list[tuple[float, list[Any]]]:
    """Wrap the fake uplink: (monotonic time, records) of every location message."""
    from tracker.link import codec

    sent: list[tuple[float, list[Any]]] = []
    publish = h.uplink.publish

    def timed(topic: str, payload: bytes) -> int:
        if topic.endswith("/location"):
            sent.append((h.clock.monotonic(), codec.decode(payload)))
        return publish(topic, payload)

    h.uplink.publish = timed  # type: ignore[method-assign]
    return sent


def test_a_moving_tracker_sends_one_message_per_max_delay_and_no_fix_waits_longer(
    tmp_path: Path,
) -> None:
    h = Harness(make_app(tmp_path, max_delay_s=60))
    sent = _timed_locations(h)
    start = h.clock.monotonic()
    h.event(LinkUp())
    epochs = h.play("nmeaparser/NmeaSampleData.txt", limit=1500)
    h.advance_to(h.clock.monotonic() + 60)
    t0 = next(e.time for e in epochs if e.time is not None)
    recs = [r for _, rs in sent for r in rs]
    assert sorted(r.seq for r in recs) == list(range(1, h.app.reports + 1))
    for at, rs in sent:
        for r in rs:
            recorded = start + (r.fix.time - t0).total_seconds()
            assert at - recorded <= 60 + 1e-6, (r, at - recorded)
    urgent = sum(1 for r in recs if r.trigger in ("first", "start", "stop", "heartbeat"))
    span = h.clock.monotonic() - start
    assert len(sent) <= span / 60 + urgent + 1
    assert len(recs) > 3 * len(sent)  # several fixes per message on average
    assert all(len(rs) == 1 for _, rs in sent if rs[0].trigger == "first")  # at once


def test_max_delay_zero_sends_each_fix_in_its_own_message(tmp_path: Path) -> None:
    h = Harness(make_app(tmp_path, max_delay_s=0))
    sent = _timed_locations(h)
    h.event(LinkUp())
    h.play("nmeaparser/NmeaSampleData.txt", limit=600)
    assert h.app.reports > 20 and all(len(rs) == 1 for _, rs in sent)
    assert len(sent) == h.app.reports


def test_a_publish_without_puback_in_time_reconnects_and_resends(harness: Harness) -> None:
    """With a long keep-alive a dead link shows first as a missing PUBACK: reconnect then."""
    from tracker.core.events import PubFailed

    harness.auto_ack = False
    harness.event(LinkUp())
    harness.play("qtpositioning/nmealog.txt", limit=20)
    harness.advance_to(harness.clock.monotonic() + 60)
    pending = [p for p in harness.uplink.sent if not p.acked and p.topic.endswith("/location")]
    assert pending
    harness.event(PubFailed(pending[0].token, "AWS_ERROR_MQTT_TIMEOUT: no PUBACK"))
    assert harness.uplink.restarts == 1 and harness.app.link_up
    harness.event(PubFailed(pending[-1].token, "AWS_ERROR_MQTT_TIMEOUT: no PUBACK"))
    assert harness.uplink.restarts == 1  # at most once a minute
    harness.auto_ack = True
    harness.advance_to(harness.clock.monotonic() + 120)
    got = {r.seq for r in harness.uplink.records()}
    assert got == set(range(1, harness.app.reports + 1))
    assert harness.app.spool.stats().backlog == 0
