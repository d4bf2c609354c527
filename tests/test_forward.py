"""Forwarder against a real spool file and a scripted publisher (no network)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchkit.fixes import fill, synthetic_fix

from tracker.core.clock import FakeClock
from tracker.core.limits import MAX_PAYLOAD
from tracker.core.scheduler import Scheduler
from tracker.link import codec
from tracker.link.forward import TIMER, Forwarder, publish_packet_bytes
from tracker.spool.store import Spool

TOPIC = "dt/tracker/t1/location"


class ScriptedPublisher:
    """Keeps every publish until the test acks or fails it."""

    def __init__(self) -> None:
        self.next_token = 100
        self.outstanding: dict[int, list[int]] = {}  # token -> seqs, as the SDK would hold them
        self.log: list[tuple[int, list[int], bytes]] = []
        self.most_outstanding = 0

    def publish(self, topic: str, payload: bytes) -> int:
        assert topic == TOPIC
        self.next_token += 1
        seqs = [r.seq for r in codec.decode(payload)]
        self.outstanding[self.next_token] = seqs
        self.log.append((self.next_token, seqs, payload))
        self.most_outstanding = max(self.most_outstanding, len(self.outstanding))
        return self.next_token

    def complete(self, token: int) -> list[int]:
        return self.outstanding.pop(token)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()


def ack_all(fw: Forwarder, pub: ScriptedPublisher) -> None:
    """Acknowledge everything until the spool is empty, pumping as the loop would."""
    fw.pump()
    while pub.outstanding:
        for token in list(pub.outstanding):
            pub.complete(token)
            fw.on_puback(token)
            fw.pump()


def test_sends_nothing_while_the_link_is_down(spool: Spool) -> None:
    fill(spool, 10)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC)
    fw.pump()
    assert pub.log == []
    assert spool.stats().in_flight == 0


def test_newest_fix_goes_live_first_then_backlog_oldest_first(spool: Spool) -> None:
    fill(spool, 1000)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=4, batch_bytes=1024)
    fw.link_up()
    fw.pump()
    _, first_seqs, first_payload = pub.log[0]
    assert first_seqs == [1000]
    assert codec.decode(first_payload)[0].fix == synthetic_fix(1000)
    batches = [seqs for _, seqs, _ in pub.log[1:]]
    assert len(pub.log) == 4  # the window
    assert [s for b in batches for s in b] == list(range(1, 1 + sum(map(len, batches))))
    assert all(len(b) > 1 for b in batches)


def test_drains_everything_once_in_batches_within_the_size_limit(spool: Spool) -> None:
    fill(spool, 3000)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=8, batch_bytes=2048)
    fw.link_up()
    ack_all(fw, pub)
    sent = [s for _, seqs, _ in pub.log for s in seqs]
    assert sorted(sent) == list(range(1, 3001))
    assert all(len(p) <= 2048 for _, _, p in pub.log)
    st = fw.stats()
    assert st.messages_sent == len(pub.log) < 3000 // 20
    assert st.fixes_acked == 3000 and st.in_flight == 0
    assert st.wire_bytes == sum(publish_packet_bytes(TOPIC, len(p)) for _, _, p in pub.log)
    assert spool.stats().backlog == 0
    assert pub.most_outstanding <= 8


def test_a_fix_arriving_during_a_drain_goes_next_as_live(spool: Spool) -> None:
    fill(spool, 500)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=2, batch_bytes=512)
    fw.link_up()
    fw.pump()
    spool.put(synthetic_fix(501))
    token = pub.log[-1][0]
    pub.complete(token)
    fw.on_puback(token)
    fw.pump()
    assert pub.log[-1][1] == [501]
    assert fw.stats().live_sent == 2


def test_link_down_leaves_in_flight_records_to_the_sdk_and_sends_them_once(spool: Spool) -> None:
    fill(spool, 200)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=3, batch_bytes=512)
    fw.link_up()
    fw.pump()
    first = {s for _, seqs, _ in pub.log for s in seqs}
    fw.link_down()
    assert spool.stats().in_flight == len(first)  # the SDK sends them again after reconnecting
    assert fw.stats().in_flight == 3 and fw.stats().orphaned == 0
    fw.link_up()
    fw.pump()
    assert len(pub.log) == 3  # the window is still full: nothing new, nothing twice
    ack_all(fw, pub)  # the SDK's copies are acknowledged after the reconnect
    sent = [s for _, seqs, _ in pub.log for s in seqs]
    assert sorted(sent) == list(range(1, 201))  # every fix sent exactly once
    assert fw.stats().resent_fixes == 0 and spool.stats().backlog == 0


def test_a_puback_overdue_in_connected_time_is_given_up_and_a_late_one_is_harmless(
    spool: Spool,
) -> None:
    fill(spool, 400)
    clock = FakeClock()
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=4, batch_bytes=512, clock=clock, ack_give_up_s=10)
    fw.link_up()
    fw.pump()
    old = list(pub.outstanding)
    assert fw.wake_at() == clock.monotonic() + 10
    clock.advance(6)
    fw.link_down()
    assert fw.wake_at() is None
    clock.advance(1000)  # time offline does not count: the SDK cannot have sent them
    fw.link_up()
    assert fw.wake_at() == clock.monotonic() + 4
    clock.advance(3.9)
    fw.pump()
    assert fw.stats().gave_up == 0 and len(pub.log) == 4
    clock.advance(0.1)
    fw.pump()  # given up on: their records go out again in new messages
    st = fw.stats()
    assert st.gave_up == 4 and st.orphaned == 4 and st.in_flight == 4
    assert len(pub.outstanding) == 8  # 2 x window inside the SDK at most
    fw.link_down()
    fw.link_up()
    fw.pump()
    assert len(pub.outstanding) == 8
    for token in old:  # the SDK delivers its old copies after all
        pub.complete(token)
        fw.on_puback(token)
    assert fw.stats().late_acks == 4 and fw.stats().orphaned == 0
    ack_all(fw, pub)
    assert spool.stats().backlog == 0
    assert {s for _, seqs, _ in pub.log for s in seqs} == set(range(1, 401))


class SdkModel(ScriptedPublisher):
    """The SDK as measured: QoS 1 publishes survive a lost connection and are sent again after
    reconnecting. A drop may come after the broker took a message but before its PUBACK came
    back: that message reaches the cloud twice."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: dict[int, int] = {}  # seq -> times the broker took it

    def broker_takes(self, token: int) -> None:
        for seq in self.outstanding[token]:
            self.delivered[seq] = self.delivered.get(seq, 0) + 1


def test_a_flapping_link_sends_each_fix_once_and_repeats_only_unacknowledged_ones(
    spool: Spool,
) -> None:
    rng = random.Random(11)
    clock = FakeClock()
    sdk = SdkModel()
    fw = Forwarder(spool, sdk, TOPIC, window=4, batch_bytes=600, clock=clock, retry_s=0)
    taken: set[int] = set()  # tokens the broker took but has not acknowledged yet
    at_risk = 0  # fixes the broker took whose PUBACK a drop then lost
    fill(spool, 300)
    fw.link_up()
    for _ in range(60):  # 60 outages
        for _ in range(rng.randrange(1, 12)):  # connected: fixes come, the broker answers
            clock.advance(1.0)
            spool.put(synthetic_fix(spool.stats().next_seq))
            fw.pump()
            for token in list(sdk.outstanding):
                if token in taken or rng.random() < 0.7:
                    if token not in taken:
                        sdk.broker_takes(token)
                    taken.discard(token)
                    sdk.complete(token)
                    fw.on_puback(token)
                    fw.pump()
        for token in sdk.outstanding:  # the drop: some messages reached the broker unanswered
            if token not in taken and rng.random() < 0.3:
                sdk.broker_takes(token)
                taken.add(token)
                at_risk += len(sdk.outstanding[token])
        fw.link_down()
        clock.advance(rng.uniform(1, 60))
        spool.put(synthetic_fix(spool.stats().next_seq))
        fw.pump()
        assert len(sdk.outstanding) <= 4
        fw.link_up()  # the SDK sends what it holds again; the broker takes it again
        for token in sdk.outstanding:
            sdk.broker_takes(token)
            taken.add(token)
        fw.pump()
    while sdk.outstanding:
        for token in list(sdk.outstanding):
            if token not in taken:
                sdk.broker_takes(token)
            taken.discard(token)
            sdk.complete(token)
            fw.on_puback(token)
            fw.pump()
    last = spool.stats().next_seq - 1
    assert set(sdk.delivered) == set(range(1, last + 1))  # nothing lost
    sent = [s for _, seqs, _ in sdk.log for s in seqs]
    assert len(sent) == len(set(sent)) == last  # the forwarder sent each fix once
    duplicates = sum(n - 1 for n in sdk.delivered.values())
    assert duplicates == at_risk  # only what a drop caught unacknowledged arrived twice
    st = fw.stats()
    assert st.resent_fixes == st.gave_up == st.late_acks == 0
    assert spool.stats().backlog == 0


def test_failure_releases_and_pauses_until_the_clock_allows(spool: Spool) -> None:
    fill(spool, 50)
    clock = FakeClock()
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=1, clock=clock, retry_s=2.0)
    fw.link_up()
    fw.pump()
    token = pub.log[-1][0]
    pub.complete(token)
    fw.on_failed(token)
    assert spool.stats().in_flight == 0
    assert fw.wake_at() == clock.monotonic() + 2.0
    fw.pump()
    assert len(pub.log) == 1
    clock.advance(2.0)
    fw.pump()
    assert len(pub.log) == 2
    token2 = pub.log[-1][0]
    pub.complete(token2)
    fw.on_failed(token2)
    assert fw.wake_at() == clock.monotonic() + 4.0  # doubling
    fw.link_up()  # a new connection starts afresh
    assert fw.wake_at() is None
    assert fw.stats().failed == 2


def test_the_forwarder_keeps_its_wake_up_booked_with_the_loops_scheduler(spool: Spool) -> None:
    fill(spool, 50)
    clock, timers = FakeClock(), Scheduler()
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=1, clock=clock, retry_s=2.0, timers=timers)
    fw.link_up()
    fw.pump()
    assert timers.due(TIMER) == fw.wake_at()  # the PUBACK's give-up time
    token = pub.log[-1][0]
    pub.complete(token)
    fw.on_failed(token)
    assert timers.due(TIMER) == fw.wake_at() == clock.monotonic() + 2.0
    timers.run_due(clock.monotonic())
    assert len(pub.log) == 1  # not due yet: nothing ran
    clock.advance(2.0)
    timers.run_due(clock.monotonic())  # the pause is over: the scheduler pumps, nobody else
    assert len(pub.log) == 2
    assert timers.due(TIMER) == fw.wake_at() is not None
    fw.link_down()
    assert timers.due(TIMER) is None and timers.next_due() is None


def test_batch_size_can_change_at_run_time(spool: Spool) -> None:
    fill(spool, 2000)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=1, batch_bytes=4096)
    fw.link_up()
    fw.pump()  # the live fix
    fw.batch_bytes = 1024
    assert fw.batch_bytes == 1024
    ack_all(fw, pub)
    assert all(len(p) <= 1024 for _, _, p in pub.log)
    fw.batch_bytes = 10**9
    assert fw.batch_bytes == MAX_PAYLOAD


def test_unknown_tokens_are_ignored(spool: Spool) -> None:
    fill(spool, 5)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC)
    fw.on_puback(12345)
    fw.on_failed(12345)
    assert spool.stats().backlog == 5
    assert fw.stats().messages_acked == 0


def test_random_event_orders_never_lose_a_fix(spool: Spool) -> None:
    rng = random.Random(7)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=3, batch_bytes=700, clock=FakeClock(), retry_s=0)
    for _ in range(3000):
        r = rng.random()
        if r < 0.2:
            spool.put(synthetic_fix(spool.stats().next_seq))
        elif r < 0.25:
            fw.link_down() if fw.linked else fw.link_up()
        elif pub.outstanding and r < 0.9:
            token = rng.choice(list(pub.outstanding))
            pub.complete(token)
            if r < 0.85:
                fw.on_puback(token)
            else:
                fw.on_failed(token)
        fw.pump()
        assert len(pub.outstanding) <= 6
    fw.link_up()
    ack_all(fw, pub)
    last = spool.stats().next_seq - 1
    delivered = {s for _, seqs, _ in pub.log for s in seqs}
    assert delivered == set(range(1, last + 1))
    assert spool.stats().backlog == 0


def test_rejects_a_wildcard_topic(spool: Spool) -> None:
    with pytest.raises(ValueError, match="invalid topic"):
        Forwarder(spool, ScriptedPublisher(), "dt/tracker/+/location")
