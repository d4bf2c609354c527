"""Forwarder against a real spool file and a scripted publisher (no network)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.sender import fill, synthetic_fix

from tracker import codec
from tracker.clock import FakeClock
from tracker.forward import Forwarder, publish_packet_bytes
from tracker.spool import Spool

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


def test_link_down_releases_in_flight_records_and_they_go_again(spool: Spool) -> None:
    fill(spool, 200)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=3, batch_bytes=512)
    fw.link_up()
    fw.pump()
    first = {s for _, seqs, _ in pub.log for s in seqs}
    assert spool.stats().in_flight == len(first)
    fw.link_down()
    assert spool.stats().in_flight == 0
    assert fw.stats().orphaned == 3
    fw.pump()
    assert len(pub.log) == 3  # nothing while down
    fw.link_up()
    fw.pump()
    again = {s for _, seqs, _ in pub.log[3:] for s in seqs}
    assert first - {200} <= again  # the backlog restarts from the oldest
    assert fw.stats().resent_fixes == len(first & again)


def test_orphans_bound_what_the_sdk_holds_and_late_acks_cause_no_loss(spool: Spool) -> None:
    fill(spool, 400)
    pub = ScriptedPublisher()
    fw = Forwarder(spool, pub, TOPIC, window=4, batch_bytes=512)
    for _ in range(5):  # a flapping link: nothing is ever acknowledged
        fw.link_up()
        fw.pump()
        fw.link_down()
    assert len(pub.outstanding) == 8  # 2 x window, however often the link flaps
    orphans = list(pub.outstanding)
    fw.link_up()
    for token in orphans:  # the SDK delivers its old copies after reconnecting
        pub.complete(token)
        fw.on_puback(token)
    assert fw.stats().late_acks == 8
    ack_all(fw, pub)
    assert spool.stats().backlog == 0
    assert {s for _, seqs, _ in pub.log for s in seqs} == set(range(1, 401))


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
    assert fw.batch_bytes == codec.MAX_PAYLOAD


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
