"""Store and forward end to end: spool -> forwarder -> uplink -> Mosquitto -> a cloud subscriber.

Every scenario asserts on what the subscriber received: every seq, none missing. Duplicates are
allowed (and counted); losses are not.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.fixes import fill
from benchkit.pki import Identity, Pki
from benchkit.subscriber import Subscriber
from support.sender import ForwardLoop, child_config, start_child

from tracker.core.config import AwsConfig
from tracker.core.errors import UplinkError
from tracker.core.events import LinkDown, LinkUp
from tracker.spool.store import Spool

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

THING = "tracker-test-1"
TESTS = Path(__file__).resolve().parent
MakeLoop = Callable[..., ForwardLoop]


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[MakeLoop]:
    loops: list[ForwardLoop] = []

    def make(aws: AwsConfig, **kw: object) -> ForwardLoop:
        loop = ForwardLoop(aws, THING, tmp_path / "spool.db", **kw)  # type: ignore[arg-type]
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


def linked(loop: ForwardLoop) -> Callable[[], bool]:
    return lambda: bool(loop.links) and isinstance(loop.links[-1], LinkUp)


def unlinked(loop: ForwardLoop) -> Callable[[], bool]:
    return lambda: bool(loop.links) and isinstance(loop.links[-1], LinkDown)


def last_seq(loop: ForwardLoop) -> int:
    return loop.spool.stats().next_seq - 1


def stream(loop: ForwardLoop, n: int) -> None:
    """n fixes, handling whatever events arrive in between (a busy tracker)."""
    for _ in range(n):
        loop.put()
        while loop.step(0):
            pass


def test_normal_flow_delivers_each_fix_exactly_once(
    broker: Broker, subscriber: Subscriber, make_loop: MakeLoop
) -> None:
    loop = make_loop(broker.aws_config()).start()
    assert loop.run_until(linked(loop))
    stream(loop, 150)
    assert loop.run_until(loop.drained)
    assert subscriber.wait_seqs(set(range(1, 151))) == set()
    assert set(subscriber.seqs().values()) == {1}  # no duplicates without a failure
    assert loop.forwarder.stats().fixes_acked == 150
    assert loop.max_outstanding <= 8


def test_broker_down_at_start_then_newest_first_and_backlog_in_one_batch(
    pki: Pki, tmp_path: Path, make_loop: MakeLoop
) -> None:
    b = Broker(pki, tmp_path / "broker")
    sub: list[Subscriber] = []
    try:
        loop = make_loop(b.aws_config(), gate=lambda: sub[0].wait_subscribed()).start()
        assert loop.run_until(unlinked(loop))
        down = loop.links[0]
        assert isinstance(down, LinkDown) and not down.fatal
        stream(loop, 60)
        assert loop.spool.stats().backlog == 60
        b.start()
        sub.append(Subscriber(b).start())
        assert loop.run_until(loop.drained)
        assert sub[0].wait_seqs(set(range(1, 61))) == set()
        recs = sub[0].records()
        assert recs[0].seq == 60  # the current position first
        assert [r.seq for r in recs[1:]] == list(range(1, 60))  # then the backlog, in order
        assert sub[0].count() == 2
    finally:
        for s in sub:
            s.stop()
        b.close()


@pytest.mark.parametrize("persistence", [False, True], ids=["no-persistence", "persistence"])
def test_broker_killed_and_restarted_mid_stream(
    pki: Pki, tmp_path: Path, make_loop: MakeLoop, persistence: bool
) -> None:
    b = Broker(pki, tmp_path / "broker", persistence=persistence, save_every_change=True)
    b.start()
    sub = Subscriber(b)
    try:
        sub.start()
        loop = make_loop(b.aws_config(), gate=sub.wait_subscribed).start()
        assert loop.run_until(linked(loop))
        stream(loop, 80)  # Mosquitto saves its sessions (autosave_on_changes) meanwhile
        # Freeze the broker so that what it acknowledged reaches the subscriber before the crash
        # (AWS IoT Core never loses an acknowledged message; a killed Mosquitto may).
        b.pause()
        stream(loop, 40)
        in_flight = loop.forwarder.stats().in_flight
        assert in_flight > 0
        assert sub.wait_seqs(set(loop.acked)) == set()
        b.kill()
        assert loop.run_until(unlinked(loop))
        # the SDK keeps what is in flight and sends it again after reconnecting
        assert loop.forwarder.stats().in_flight == in_flight
        held = {seq for seqs in loop.recorder.sent.values() for seq in seqs}
        stream(loop, 40)
        b.start()
        assert loop.run_until(linked(loop))
        stream(loop, 40)
        assert loop.run_until(loop.drained)
        missing = sub.wait_seqs(set(range(1, last_seq(loop) + 1)), 20 if persistence else 5)
        if persistence:
            assert missing == set()
        else:
            # the SDK sends what it held again as soon as it reconnects, and a broker that forgot
            # its subscribers acknowledges it before the cloud subscriber is back: the broker's
            # loss, never the tracker's (only what was in flight at the kill may be missing)
            assert missing <= held
        up = loop.links[-1]
        assert isinstance(up, LinkUp) and up.session_present is persistence
    finally:
        sub.stop()
        b.close()


def test_long_outage_backlog_of_thousands_drains_in_batches(
    broker: Broker, subscriber: Subscriber, make_loop: MakeLoop
) -> None:
    loop = make_loop(broker.aws_config(), gate=subscriber.wait_subscribed).start()
    assert loop.run_until(linked(loop))
    broker.stop()
    assert loop.run_until(unlinked(loop))
    fill(loop.spool, 6000)
    broker.start()
    assert loop.run_until(loop.drained, timeout=30)
    assert subscriber.wait_seqs(set(range(1, 6001))) == set()
    st = loop.forwarder.stats()
    assert st.messages_sent < 6000 / 100  # packed: over 100 fixes per message
    assert loop.max_outstanding <= 16


@pytest.mark.slow
def test_tracker_killed_at_random_moments_loses_nothing(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    cfg = child_config(broker.aws_config(), THING, tmp_path / "spool.db", period_s=0.004)
    rng = random.Random(20261126)
    kills = mid_stream = 0
    for i in range(24):
        before = subscriber.count()
        child = start_child(cfg)
        try:
            if i % 2:
                # mid-stream: once this child's first fixes reached the broker, however long a
                # slow (or emulated) machine takes to start it, then a random moment later
                deadline = time.monotonic() + 60
                while subscriber.count() <= before and time.monotonic() < deadline:
                    if child.poll() is not None:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                time.sleep(rng.uniform(0.05, 0.9))  # anywhere from start-up on
        finally:
            child.kill()
            child.wait()
        kills += 1
        mid_stream += subscriber.count() > before
    child = start_child({**cfg, "drain": True, "max_s": 30}, subprocess.PIPE)
    try:
        _, err = child.communicate(timeout=40)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err.decode()[-2000:]
    with Spool(tmp_path / "spool.db") as spool:
        last = spool.stats().next_seq - 1
        assert spool.stats().backlog == 0
    assert kills >= 20 and mid_stream >= 10 and last > 100
    assert subscriber.wait_seqs(set(range(1, last + 1))) == set()
    counts = subscriber.seqs()
    assert max(counts) == last  # nothing beyond what the spool handed out
    duplicates = sum(counts.values()) - len(counts)
    print(f"{kills} kills ({mid_stream} while sending), {last} fixes, {duplicates} duplicates")


def _credential_case(pki: Pki, broker: Broker, which: str) -> AwsConfig:
    if which == "missing-key":
        return broker.aws_config(key=str(pki.dir / "missing.key"))
    if which == "rejected-cert":
        return broker.aws_config(pki.foreign_client())
    if which == "expired-cert":
        return broker.aws_config(pki.expired_client())
    return broker.aws_config(ca=pki.other_ca)  # the tracker cannot verify the broker


@pytest.mark.parametrize(
    "which",
    [
        "missing-key",
        "rejected-cert",
        "expired-cert",
        pytest.param("wrong-ca", marks=pytest.mark.slow),
    ],
)
def test_bad_credentials_give_one_line_and_leave_the_spool_alone(
    broker: Broker, pki: Pki, tmp_path: Path, make_loop: MakeLoop, which: str
) -> None:
    loop = make_loop(_credential_case(pki, broker, which))
    fill(loop.spool, 25)
    before = loop.spool.stats()
    if which == "missing-key":
        with pytest.raises(UplinkError) as exc:
            loop.start()
        reason = str(exc.value)
        assert "[aws] key" in reason
    else:
        loop.start()
        assert loop.run_until(unlinked(loop), timeout=40)
        down = loop.links[0]
        assert isinstance(down, LinkDown) and down.fatal
        reason = down.reason
        assert "TLS handshake" in reason
    assert "\n" not in reason
    after = loop.spool.stats()
    assert (after.backlog, after.in_flight, after.next_seq) == (25, 0, before.next_seq)
    assert loop.forwarder.stats().messages_sent == 0


def test_identity_helpers_are_distinct(pki: Pki) -> None:
    ids = {pki.client.cert, pki.cloud.cert, pki.foreign_client().cert, pki.expired_client().cert}
    assert len(ids) == 4
    assert all(isinstance(i, Path) for i in ids)
    assert oct(pki.client.key.stat().st_mode & 0o777) == "0o600"
    assert isinstance(pki.client, Identity)
