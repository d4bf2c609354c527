"""No recorded fix is lost on the store-and-forward path: event orders, edge values, restarts.

Real spool files, the real forwarder and codec; the app in simulated time with the in-memory
uplink; the real uplink against Mosquitto where the SDK's own behaviour matters.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from awsiot import mqtt5_client_builder
from benchkit.broker import Broker
from benchkit.fixes import fill, synthetic_fix
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fake_uplink import FakeUplink

from hw.power import open_power
from hw.sensors import open_battery, open_motion, open_temperature
from tracker.core import config as config_mod
from tracker.core.clock import FakeClock
from tracker.core.events import Event, LinkDown, LinkUp, PubAck, PubFailed, SignalReceived
from tracker.core.fix import Fix, Record
from tracker.daemon.app import App, Parts
from tracker.link import codec
from tracker.link.forward import Forwarder
from tracker.link.uplink import Uplink
from tracker.spool.store import Spool

THING = "truck-9"
TOPIC = f"dt/tracker/{THING}/location"


# ---- the app in simulated time ------------------------------------------------------------------


class AppRig:
    """The whole app with the in-memory uplink; the test says when the broker answers."""

    def __init__(self, tmp_path: Path) -> None:
        cfg = config_mod.from_dict(
            {
                "device": {"thing_name": THING, "set_clock": False},
                "aws": {"endpoint": "localhost", "cert": "c", "key": "k", "ca": "a"},
                "gps": {"url": "/dev/null"},
                "spool": {"path": str(tmp_path / "spool.db")},
                # each fix goes at once, and low power closes the link: what these tests pin
                "policy": {"max_delay_s": 0},
                "power": {"gps": "sim://", "close_link": True},
                "sensors": {"battery": "sim://?percent=80", "temperature": "sim://?temp=20"},
            }
        )
        self.app = App(cfg, clock=FakeClock())
        self.clock: FakeClock = self.app.clock  # type: ignore[assignment]
        self.uplink = FakeUplink(self.app.post)
        self.app.attach(
            Parts(
                uplink=self.uplink,
                gps=None,
                power=open_power("sim://"),
                battery=open_battery(cfg.sensors.battery, clock=self.clock),
                temperature=open_temperature(cfg.sensors.temperature),
                motion=open_motion("none://", lambda: None),
            )
        )
        self.n = 0

    def drain(self) -> None:
        while True:
            try:
                event = self.app.events.get_nowait()
            except queue.Empty:
                return
            self.app.handle(event)

    def event(self, event: Event) -> None:
        self.app.handle(event)
        self.drain()

    def record(self, n: int = 1) -> None:
        for _ in range(n):
            self.n += 1
            self.app.record(synthetic_fix(self.n), "interval")
        self.drain()

    def advance(self, seconds: float) -> None:
        """Move simulated time on, firing timers as the loop would; no other event comes."""
        end = self.clock.monotonic() + seconds
        while (d := self.app.next_deadline()) is not None and d <= end:
            self.clock.set(max(d, self.clock.monotonic()))
            self.app.run_due()
            self.drain()
        self.clock.set(end)
        self.app.run_due()
        self.drain()

    def location_seqs(self) -> list[int]:
        return [r.seq for p in self.uplink.on("/location") for r in codec.decode(p.payload)]

    def unanswered(self) -> list[int]:
        """Tokens the broker has neither acknowledged nor failed yet."""
        return [p.token for p in self.uplink.sent if not p.acked]

    def fail(self, tokens: list[int], reason: str = "timeout") -> None:
        for token in tokens:
            for p in self.uplink.sent:
                if p.token == token:
                    p.acked = True  # answered: no PUBACK will follow
            self.app.post(PubFailed(token, reason))
        self.drain()

    def close(self) -> None:
        self.app.shutdown()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[AppRig]:
    r = AppRig(tmp_path)
    yield r
    r.close()


def test_a_failed_publish_goes_again_after_the_pause_without_another_event(rig: AppRig) -> None:
    # Parked or between reports: after a failure no new fix, PUBACK or LinkUp comes to pump.
    rig.event(LinkUp())
    rig.record(1)
    assert rig.location_seqs() == [1]
    rig.fail(rig.unanswered())
    assert rig.app.spool.stats().in_flight == 0
    rig.advance(120.0)
    assert rig.location_seqs() == [1, 1]
    rig.uplink.ack_all()
    rig.drain()
    rig.app.spool.flush()
    assert rig.app.spool.stats().backlog == 0


def test_low_power_closes_with_messages_in_flight_and_late_answers_lose_nothing(
    rig: AppRig,
) -> None:
    rig.event(LinkUp())
    rig.record(20)
    old = rig.unanswered()
    assert old
    rig.app.link(False)  # low power: the broker never answers, so the grace period runs out
    rig.advance(60.0)
    assert rig.app.link_closed and rig.uplink.stopped
    rig.record(5)  # fixes recorded while the link is closed
    rig.app.link(True)  # waking reopens: the fake posts LinkUp at once
    rig.drain()
    assert rig.app.link_up
    # the old client's answers trail the new connection: one late PUBACK, the rest failed
    rig.app.post(PubAck(old[0]))
    for p in rig.uplink.sent:
        if p.token == old[0]:
            p.acked = True
    rig.fail(old[1:], "stopped")
    for _ in range(50):
        if not rig.uplink.ack_all():
            break
        rig.drain()
    rig.advance(1.0)
    fw = rig.app.forwarder
    assert fw is not None and fw.stats().orphaned == 0 and fw.stats().in_flight == 0
    assert rig.app.spool.stats().backlog == 0
    assert set(rig.location_seqs()) == set(range(1, 26))


def test_a_link_lost_and_back_before_the_failures_arrive_keeps_the_window_open(
    rig: AppRig,
) -> None:
    rig.event(LinkUp())
    rig.record(30)
    old = rig.unanswered()
    rig.event(LinkDown("connection lost"))
    rig.event(LinkUp())
    rig.fail(old, "connection lost")  # failures for the old messages come after the new LinkUp
    rig.record(1)
    for _ in range(50):
        if not rig.uplink.ack_all():
            break
        rig.drain()
    rig.advance(120.0)
    for _ in range(50):
        if not rig.uplink.ack_all():
            break
        rig.drain()
    assert rig.app.spool.stats().backlog == 0
    assert set(rig.location_seqs()) == set(range(1, 32))


def test_low_power_keeps_the_link_until_a_failed_publish_is_sent_again(rig: AppRig) -> None:
    # Parked: the last fixes failed once; closing now would hold them back until it wakes.
    rig.event(LinkUp())
    rig.record(3)
    rig.fail(rig.unanswered())
    rig.app.link(False)
    rig.advance(0.5)
    assert not rig.app.link_closed  # still within the pause: nothing in flight, but not sent
    rig.advance(5.0)
    assert sorted(rig.location_seqs()) == [1, 1, 2, 2, 3, 3]  # sent again before closing
    rig.uplink.ack_all()
    rig.drain()
    rig.advance(1.0)
    assert rig.app.link_closed
    assert rig.app.spool.stats().backlog == 0


def test_the_acknowledgement_that_leaves_the_link_idle_closes_it_without_polling(
    rig: AppRig,
) -> None:
    rig.event(LinkUp())
    rig.record(3)
    rig.app.link(False)  # low power: close once the broker has everything
    rig.app.run_due()
    assert not rig.app.link_closed and rig.unanswered()
    grace = rig.app.next_deadline()
    assert grace is not None and grace > rig.clock.monotonic()  # nothing to look at till then
    rig.uplink.ack_all()
    rig.drain()
    assert rig.app.next_deadline() == rig.clock.monotonic()  # the last PUBACK booked the close
    rig.app.run_due()
    assert rig.app.link_closed and rig.uplink.stopped
    assert rig.app.spool.stats().backlog == 0


def test_sigterm_with_messages_in_flight_keeps_every_unacknowledged_fix(
    rig: AppRig, tmp_path: Path
) -> None:
    rig.event(LinkUp())
    rig.record(12)
    first = rig.uplink.on("/location")[0]
    acked = {r.seq for r in codec.decode(first.payload)}
    rig.app.post(PubAck(first.token))  # already queued when the signal comes
    rig.app.post(SignalReceived(signal.SIGTERM))
    rig.app.step(max_wait=0)
    assert not rig.app.running
    rig.app.shutdown()
    with Spool(tmp_path / "spool.db") as spool:
        left = {r.seq for r in spool.take_oldest(100)}
    assert left == set(range(1, 13)) - acked


# ---- the real SDK: closing the link with publishes unanswered, then opening it again ------------


def test_closing_the_real_link_with_unanswered_publishes_fails_them_and_tokens_stay_unique(
    broker: Broker, tmp_path: Path
) -> None:
    aws = broker.aws_config()
    events: queue.Queue[Event] = queue.Queue()
    up = Uplink(aws, THING, events.put, reconnect_min_s=0.05, reconnect_max_s=0.5)
    spool = Spool(tmp_path / "spool.db")
    fw = Forwarder(spool, up, aws.topic(THING, "location"), window=4, batch_bytes=512)
    answered: dict[int, str] = {}

    def handle(e: Event) -> None:
        if isinstance(e, LinkUp):
            fw.link_up()
        elif isinstance(e, LinkDown):
            fw.link_down()
        elif isinstance(e, PubAck):
            answered[e.token] = "ack" if e.token not in answered else "twice"
            fw.on_puback(e.token)
        elif isinstance(e, PubFailed):
            answered[e.token] = "failed" if e.token not in answered else "twice"
            fw.on_failed(e.token)
        fw.pump()

    def run_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 15.0
        while not done():
            assert time.monotonic() < deadline, "timed out"
            with contextlib.suppress(queue.Empty):
                handle(events.get(timeout=0.05))

    try:
        up.start()
        run_until(lambda: fw.linked)
        broker.pause()  # the broker holds its PUBACKs
        fill(spool, 400)
        fw.pump()
        first = fw.stats()
        assert first.in_flight == 4
        fw.link_down()  # as Session.close does: link down, in flight -> ready, stop the client
        assert spool.stats().in_flight == first.in_flight_fixes  # a lost link keeps them
        fw.release_in_flight()
        assert spool.stats().in_flight == 0 and fw.stats().orphaned == 4
        up.stop(timeout=3.0)
        run_until(lambda: fw.stats().orphaned == 0)  # every orphan answered (failed)
        assert set(answered.values()) == {"failed"}
        broker.resume()
        up.start()
        run_until(lambda: spool.stats().backlog == 0 and fw.stats().in_flight == 0)
        assert "twice" not in answered.values()  # no token was handed out twice
        assert fw.stats().fixes_acked >= 400
    finally:
        broker.resume()
        up.stop()
        spool.close()


def test_a_stopped_clients_late_link_events_do_not_describe_its_successor(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Low power stops the client, waking starts another. Should the old one's LinkDown come
    # after the new one's LinkUp (its stop timed out), the loop would think the link down while
    # it is up, and send nothing until the next reconnect.
    built: list[dict[str, Any]] = []
    real = mqtt5_client_builder.mtls_from_path

    def recording(**kw: Any) -> Any:
        built.append(kw)
        return real(**kw)

    monkeypatch.setattr(mqtt5_client_builder, "mtls_from_path", recording)
    events: queue.Queue[Event] = queue.Queue()
    up = Uplink(broker.aws_config(), THING, events.put, reconnect_min_s=0.05)
    try:
        up.start()
        assert isinstance(events.get(timeout=10), LinkUp)
        up.stop()
        assert events.get(timeout=10) == LinkDown("stopped")
        up.start()
        assert isinstance(events.get(timeout=10), LinkUp)
        old, new = built
        late_stop = SimpleNamespace(
            disconnect_packet=None,
            exception=SimpleNamespace(name="AWS_ERROR_MQTT5_USER_REQUESTED_STOP"),
        )
        success = SimpleNamespace(connack_packet=SimpleNamespace(session_present=False))
        old["on_lifecycle_disconnection"](late_stop)
        old["on_lifecycle_connection_success"](success)
        assert events.empty()  # the old client's news is about nothing current
        new["on_lifecycle_disconnection"](late_stop)
        assert events.get(timeout=1) == LinkDown("stopped")
    finally:
        up.stop()


# ---- the spool: every ready record is served, once at a time ------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "newest", "oldest", "release", "release_all", "ack", "late_ack"]),
        st.integers(1, 6),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_live_and_backlog_never_share_a_record_and_released_ones_are_served_again(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    path = tmp_path_factory.mktemp("spool") / "spool.db"
    stored: set[int] = set()  # on disk, not acknowledged, not dropped
    flying: set[int] = set()
    with Spool(path, max_fixes=12, ack_batch=3) as spool:
        spool._db.execute("PRAGMA synchronous = OFF")  # type: ignore[union-attr]
        for op, k in ops:
            if op == "put":
                for _ in range(k):
                    before = spool.stats().dropped.get("full_oldest", 0)
                    rec = spool.put(synthetic_fix(spool.stats().next_seq), "t")
                    assert rec is not None
                    if spool.stats().dropped.get("full_oldest", 0) > before:
                        gone = sorted(stored)[: spool.stats().dropped["full_oldest"] - before]
                        stored -= set(gone)
                        flying -= set(gone)
                    stored.add(rec.seq)
            elif op in ("newest", "oldest"):
                got = [spool.take_newest()] if op == "newest" else spool.take_oldest(k)
                seqs = {r.seq for r in got if r is not None}
                assert not seqs & flying, "a record in flight was handed out again"
                assert seqs <= stored
                flying |= seqs
            elif op == "release":
                spool.release(sorted(flying)[:k])
                flying -= set(sorted(flying)[:k])
            elif op == "release_all":
                spool.release_all()
                flying.clear()
            elif op == "ack":
                done = set(sorted(flying)[-k:])
                spool.ack(done)
                flying -= done
                stored -= done
            else:  # a late PUBACK for records already released (and maybe taken again)
                done = set(sorted(stored - flying)[:k])
                spool.ack(done)
                stored -= done
                flying -= done
            assert spool.stats().backlog == len(stored)
        spool.release_all()
        served = {r.seq for r in spool.take_oldest(1000)}
        assert served == stored  # nothing ready is skipped by the high-water mark
    with Spool(path) as again:
        assert {r.seq for r in again.take_oldest(1000)} >= stored


def test_a_puback_for_records_the_drop_policy_removed_leaves_the_rest_alone(
    tmp_path: Path,
) -> None:
    with Spool(tmp_path / "spool.db", max_fixes=5, ack_batch=1) as spool:
        fill(spool, 5)
        flying = [r.seq for r in spool.take_oldest(3)]  # 1, 2, 3 in flight
        fill(spool, 2)  # full: 1 and 2 are dropped while in flight
        assert spool.stats().dropped == {"full_oldest": 2}
        spool.ack(flying)  # their PUBACK arrives: 3 leaves, 1 and 2 are already gone
        assert spool.stats().backlog == 4
        spool.release_all()
        assert [r.seq for r in spool.take_oldest(10)] == [4, 5, 6, 7]
    with Spool(tmp_path / "spool.db") as again:
        assert [r.seq for r in again.take_oldest(10)] == [4, 5, 6, 7]


# ---- the codec: what the cloud decodes is what was recorded -------------------------------------

T_MIN = datetime(1999, 8, 22, tzinfo=timezone.utc)


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


FIXES = st.builds(
    Fix,
    time=st.datetimes(
        min_value=T_MIN.replace(tzinfo=None),
        max_value=datetime(2099, 12, 31, 23, 59, 59),  # tracker.core.fix.TIME_LIMITS
        timezones=st.just(timezone.utc),
    ),
    lat=st.sampled_from([-90.0, 90.0, 0.0]) | finite(-90.0, 90.0),
    lon=st.sampled_from([-180.0, 180.0, 179.99999999]) | finite(-180.0, 180.0),
    alt=st.none() | finite(-1000.0, 20000.0),
    speed=st.none() | finite(0.0, 500.0),
    course=st.none() | st.sampled_from([0.0, 359.94, 359.95, 359.99]) | st.floats(0.0, 359.999),
    mode=st.sampled_from([2, 3]),
    sats=st.none() | st.integers(0, 99),
    hdop=st.none() | finite(0.0, 99.99),
)


@settings(max_examples=150, deadline=None)
@given(
    fixes=st.lists(FIXES, min_size=1, max_size=60),
    first=st.integers(1, 10**12),
    steps=st.lists(st.integers(1, 1000), min_size=60, max_size=60),
    triggers=st.lists(st.sampled_from(["", "interval", "distance", "ünïcode", '"q"']), min_size=60),
    max_bytes=st.integers(64, 2048),
)
def test_every_batched_and_live_fix_decodes_to_what_was_recorded(
    fixes: list[Fix], first: int, steps: list[int], triggers: list[str], max_bytes: int
) -> None:
    seq, records = first, []
    for fix, step, trigger in zip(fixes, steps, triggers, strict=False):
        records.append(Record(seq, fix, trigger))
        seq += step
    decoded: list[Record] = []
    rest = records
    while rest:
        payload, n = codec.encode_batch(rest, max_bytes)
        assert n >= 1 and (n == 1 or len(payload) <= max_bytes)
        decoded += codec.decode(payload)
        rest = rest[n:]
    assert [r.seq for r in decoded] == [r.seq for r in records]
    assert [r.trigger for r in decoded] == [r.trigger for r in records]
    assert [r.fix for r in decoded] == [codec.quantize(r.fix) for r in records]
    for rec, got in zip(records, decoded, strict=True):
        assert abs((got.fix.time - rec.fix.time).total_seconds()) < 0.001
        assert got.fix.course is None or 0.0 <= got.fix.course < 360.0
        live = codec.decode(codec.encode_live(rec))[0]
        assert live.seq == rec.seq and live.trigger == rec.trigger
        assert live.fix.time == rec.fix.time.replace(
            microsecond=rec.fix.time.microsecond // 1000 * 1000
        )
        assert live.fix.lat == rec.fix.lat and live.fix.course == rec.fix.course
