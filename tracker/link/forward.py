"""Store and forward: moves records from the spool to the connection, a bounded window at a time.

Owns the in-flight bookkeeping (publish token -> seqs). Pure with respect to the SDK: it talks to a
`Publisher` (`tracker.link.uplink.Uplink` in the daemon) and must not import awsiot, awscrt or
sqlite3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tracker.core.clock import Clock, SystemClock
from tracker.core.fix import Record
from tracker.core.limits import MAX_PAYLOAD
from tracker.core.scheduler import Scheduler
from tracker.device.budget import MESSAGE_OVERHEAD, Budget, blocks, message_cost
from tracker.link import codec

if TYPE_CHECKING:  # the spool module is the only SQLite user; only its type is needed here
    from tracker.spool.store import Spool

log = logging.getLogger(__name__)

MIN_BATCH = 512  # the smallest [aws] batch_bytes allows
# A PUBACK still missing after this much *connected* time: the publish is given up on and its
# fixes go out again. A safety net behind the SDK's own ack timeout (60 s), which fails it first.
ACK_GIVE_UP_S = 180.0
MAX_TAKE = 2000  # records read for one batch at most
RELEASED_MEMORY = 100_000  # seqs remembered to count re-sends (bounded; an undercount beyond)
# Triggers that go at once even when fixes are held to share a message (`max_delay_s`): the map
# must show a wake, a start and a stop when they happen.
URGENT_TRIGGERS = frozenset({"first", "start", "stop", "heartbeat"})
TIMER = "forward"  # the name of the forwarder's deadline in the loop's scheduler


class Publisher(Protocol):
    """Anything that can hand a QoS 1 publish to the network and report its outcome later."""

    def publish(self, topic: str, payload: bytes) -> int: ...


@dataclass(frozen=True, slots=True)
class ForwardStats:
    """Counters since start; `wire_bytes` counts MQTT PUBLISH packets (TLS/TCP not included)."""

    messages_sent: int = 0
    fixes_sent: int = 0
    live_sent: int = 0  # messages carrying the newest fix alone
    messages_acked: int = 0
    fixes_acked: int = 0
    in_flight: int = 0  # messages awaiting their PUBACK
    in_flight_fixes: int = 0
    orphaned: int = 0  # given up on (no PUBACK in time); the SDK may still deliver them
    late_acks: int = 0  # orphaned messages acknowledged after all
    gave_up: int = 0  # messages whose PUBACK did not come within ACK_GIVE_UP_S connected
    failed: int = 0  # PubFailed for messages in flight
    resent_fixes: int = 0  # fixes sent again after a release: the cloud may see them twice
    wire_bytes: int = 0
    payload_bytes: int = 0
    held: int = 0  # records set aside because the codec cannot carry them
    budget_waits: int = 0  # times a message waited for the day's allowance


def publish_packet_bytes(topic: str, payload_len: int) -> int:
    """Size of an MQTT 5 QoS 1 PUBLISH without properties: header, topic, packet id, payload."""
    rest = 2 + len(topic.encode()) + 2 + 1 + payload_len
    varint = 1 if rest < 128 else 2 if rest < 16_384 else 3 if rest < 2_097_152 else 4
    return 1 + varint + rest


@dataclass(slots=True)
class _Message:
    seqs: tuple[int, ...]
    wire: int
    due: float  # connected time by which its PUBACK must have come


class Forwarder:
    """Sends the newest fix first (live), then the backlog oldest first in packed batches.

    A record leaves the spool only on the PUBACK of the message carrying it, and is sent again
    only when that message can no longer be delivered: the SDK failed it (PubFailed), or no PUBACK
    came within `ack_give_up_s` of connected time. A lost link releases nothing: the SDK keeps
    QoS 1 publishes across a reconnect and sends them again itself (its offline queue policy
    FAIL_QOS0_PUBLISH_ON_DISCONNECT), so sending their records too would deliver them twice.

    At most `window` messages await a PUBACK, and at most `2 * window` are inside the SDK counting
    the ones given up on, so memory stays flat whatever the backlog on disk. Call `pump()` after
    every event (a new fix, LinkUp, PubAck, PubFailed) and at `wake_at()`: given the loop's
    scheduler (`timers`), the forwarder keeps `wake_at()` booked there itself, and the scheduler
    calls `on_wake` (by default `pump`) when it comes.
    """

    def __init__(
        self,
        spool: Spool,
        publisher: Publisher,
        topic: str,
        *,
        window: int = 8,
        batch_bytes: int = 5120,
        clock: Clock | None = None,
        retry_s: float = 1.0,
        retry_max_s: float = 60.0,
        ack_give_up_s: float = ACK_GIVE_UP_S,
        max_delay_s: float = 0.0,
        batch_version: int = 1,
        budget: Budget | None = None,
        timers: Scheduler | None = None,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        if not topic or any(c in topic for c in "+#\0"):
            raise ValueError(f"invalid topic {topic!r}")
        if window < 1:
            raise ValueError(f"window {window} must be at least 1")
        self._spool = spool
        self._pub = publisher
        self._topic = topic
        self._window = window
        self._batch_bytes = max(MIN_BATCH, min(batch_bytes, MAX_PAYLOAD))
        self._clock = clock or SystemClock()
        self._retry = (retry_s, retry_max_s)
        self._linked = False
        self._give_up = ack_give_up_s
        self._connected = 0.0  # connected time before the current connection
        self._up_since = 0.0  # monotonic time of the last link_up
        self._inflight: dict[int, _Message] = {}
        self._orphans: dict[int, tuple[int, ...]] = {}
        self._released: set[int] = set()
        self._top = 0  # highest seq considered for the live slot
        # records to read for the next batch; adapts to what fits (a packed row takes ~15 bytes)
        self._take = max(8, self._batch_bytes // 10)
        self._failures = 0
        self._hold_until: float | None = None  # paused after a failure; cleared by `pump()`
        self.max_delay_s = max_delay_s
        self.batch_version = batch_version
        self._budget = budget
        self._timers = timers
        self._on_wake = on_wake or self.pump
        # Fixes recorded but held to share a message go by this monotonic time (None: nothing
        # held, or a backlog from before the start, which is due at once)
        self._due: float | None = None
        self._budget_hold = False  # the fixes held wait for the day's allowance
        self._reconnected = False  # the link came (back) up: a backlog starts with the newest
        self._n = dict.fromkeys(
            (
                "messages_sent",
                "fixes_sent",
                "live_sent",
                "messages_acked",
                "fixes_acked",
                "late_acks",
                "gave_up",
                "failed",
                "resent_fixes",
                "wire_bytes",
                "payload_bytes",
                "held",
                "budget_waits",
            ),
            0,
        )

    @property
    def linked(self) -> bool:
        return self._linked

    @property
    def batch_bytes(self) -> int:
        """Largest backlog payload; may change at run time (a remote setting)."""
        return self._batch_bytes

    @batch_bytes.setter
    def batch_bytes(self, value: int) -> None:
        self._batch_bytes = max(MIN_BATCH, min(int(value), MAX_PAYLOAD))
        self._take = max(8, self._batch_bytes // 10)

    def link_up(self) -> None:
        """The connection is up: sending may start (call `pump()`)."""
        if not self._linked:
            self._up_since = self._clock.monotonic()
            self._reconnected = True
        self._linked = True
        self._failures = 0
        self._hold_until = None
        self._book()

    def recorded(self, trigger: str) -> None:
        """A fix went into the spool: it waits up to `max_delay_s` to share a message with the
        next ones, unless its trigger is urgent (or `max_delay_s` is 0). Call `pump()` next."""
        now = self._clock.monotonic()
        if self.max_delay_s <= 0 or trigger in URGENT_TRIGGERS:
            if not self._budget_hold:
                self._due = now
        elif self._due is None:
            self._due = now + self.max_delay_s
        self._book()

    def flush(self) -> None:
        """Send what is held now (going to low power; shutting down), budget permitting."""
        if not self._budget_hold:
            self._due = self._clock.monotonic()
        self._book()

    def holding(self) -> bool:
        """Fixes are held on purpose (to share a message, or for the day's allowance)."""
        return self._due is not None and self._clock.monotonic() < self._due

    def budget_holding(self) -> bool:
        return self._budget_hold and self.holding()

    def link_down(self) -> None:
        """The connection is lost. What is in flight stays with the SDK, which sends it again
        after reconnecting; its PUBACK timeout stops counting until then. Before stopping the
        client, call `release_in_flight()`."""
        if self._linked:
            self._connected += self._clock.monotonic() - self._up_since
        self._linked = False
        self._book()

    def release_in_flight(self) -> None:
        """The client is about to be stopped (low power, shutdown): it will fail what it holds.
        Its records are ready again now; the failures that follow change nothing, and a PUBACK
        that slips through first is counted (`late_acks`): the records may go twice."""
        for token, msg in self._inflight.items():
            self._spool.release(msg.seqs)
            self._orphans[token] = msg.seqs
            self._remember_released(msg.seqs)
        self._inflight.clear()
        self._book()

    def on_puback(self, token: int) -> None:
        """The broker has the message: its records leave the spool."""
        msg = self._inflight.pop(token, None)
        log.debug("puback %d: %s", token, "in flight" if msg else "not in flight")
        if msg is not None:
            self._spool.ack(msg.seqs)
            self._n["messages_acked"] += 1
            self._n["fixes_acked"] += len(msg.seqs)
            self._failures = 0
            self._book()
        elif self._orphans.pop(token, None) is not None:
            # Delivered after all, once given up on. Its records were released and go again (a
            # duplicate, never a loss): they may already be in a newer message in flight.
            self._n["late_acks"] += 1

    def on_failed(self, token: int) -> None:
        """The SDK gave up on the message: its records are ready again; sending pauses a while."""
        msg = self._inflight.pop(token, None)
        if msg is None:
            self._orphans.pop(token, None)
            return
        self._spool.release(msg.seqs)
        self._remember_released(msg.seqs)
        self._n["failed"] += 1
        self._failures += 1
        base, cap = self._retry
        delay = min(cap, base * 2 ** min(self._failures - 1, 30))
        self._hold_until = self._clock.monotonic() + delay
        self._book()

    def wake_at(self) -> float | None:
        """When `pump()` must run (monotonic time): to resend after a failure pause, or to give
        up on a publish whose PUBACK is overdue. None while the link is down.

        Stays set, even once due, until a `pump()` handles it: nothing else may come to pump
        (no new fix, no PUBACK) and the released records must not wait for it."""
        if not self._linked:
            return None
        due = min((m.due for m in self._inflight.values()), default=None)
        give_up = None if due is None else self._clock.monotonic() + due - self._connected_now()
        due = self._due
        if due is not None and self._hold_until is not None:
            due = max(due, self._hold_until)  # held fixes wait out a failure pause too
        times = [t for t in (self._hold_until, give_up, due) if t is not None]
        return min(times, default=None)

    def pump(self) -> None:
        """Fill the window: the newest unsent fix first as a live message, then the backlog."""
        if self._linked:
            self._fill()
            self._book()

    def _fill(self) -> None:
        self._give_up_overdue()
        if self._hold_until is not None:
            if self._clock.monotonic() < self._hold_until:
                return
            self._hold_until = None
        if self._due is not None:
            if self._clock.monotonic() < self._due:
                return  # held to share a message, or waiting for the allowance
            self._budget_hold = False
        if self._room() > 0 and self._live_first():
            self._send_live()
        while self._room() > 0 and self._send_batch():
            pass
        if not self._budget_hold:
            self._due = None  # sent, or in line behind a full window (a PUBACK pumps again)

    def stats(self) -> ForwardStats:
        return ForwardStats(
            in_flight=len(self._inflight),
            in_flight_fixes=sum(len(m.seqs) for m in self._inflight.values()),
            orphaned=len(self._orphans),
            **self._n,
        )

    # --- internals ------------------------------------------------------------------------------

    def _book(self) -> None:
        """Keep the loop's scheduler (if any) booked for `wake_at()`."""
        if self._timers is None:
            return
        wake = self.wake_at()
        if wake is None:
            self._timers.cancel(TIMER)
        else:
            self._timers.set(TIMER, wake, self._on_wake)

    def _connected_now(self) -> float:
        """Seconds spent connected since start: the clock PUBACK deadlines run on."""
        up = self._clock.monotonic() - self._up_since if self._linked else 0.0
        return self._connected + up

    def _give_up_overdue(self) -> None:
        """Release the records of publishes whose PUBACK is overdue; a late PUBACK for one is
        counted (`late_acks`) and changes nothing: its records already went out again."""
        now = self._connected_now()
        overdue = [t for t, m in self._inflight.items() if m.due <= now]
        for token in overdue:
            msg = self._inflight.pop(token)
            self._spool.release(msg.seqs)
            self._remember_released(msg.seqs)
            self._orphans[token] = msg.seqs
            self._n["gave_up"] += 1

    def _room(self) -> int:
        own = self._window - len(self._inflight)
        sdk = 2 * self._window - len(self._inflight) - len(self._orphans)
        return min(own, sdk)

    def _live_first(self) -> bool:
        """The newest fix goes alone first unless what is ready fits one batch message anyway."""
        st = self._spool.stats()
        ready = st.backlog - st.in_flight
        if self._budget is not None and self._budget.limited and ready > 1:
            # under a budget a small newest-first message would take the allowance a batch
            # waits for, again and again: everything goes oldest first
            self._top = max(self._top, st.next_seq - 1)
            return False
        if self.max_delay_s <= 0:
            return True
        reconnected, self._reconnected = self._reconnected, False
        if ready <= 1 or (not reconnected and ready <= self._take // 2):
            self._top = max(self._top, st.next_seq - 1)  # the batch carries the newest too
            return False
        return True

    def _encode_one(self, rec: Record) -> bytes:
        if self.batch_version == 2:
            return codec.encode_batch([rec], MAX_PAYLOAD, version=2)[0]
        return codec.encode_live(rec)

    def _send_live(self) -> None:
        newest = self._spool.stats().next_seq - 1
        if newest <= self._top:
            return
        self._top = newest
        rec = self._spool.take_newest()
        if rec is None:
            return
        try:
            payload = self._encode_one(rec)
        except Exception as exc:
            self._set_aside(rec, exc)
            return
        if self._over_budget(payload):
            self._spool.release([rec.seq])
            self._top = rec.seq - 1
            return
        self._publish((rec,), payload)
        self._n["live_sent"] += 1

    def _send_batch(self) -> bool:
        recs = self._spool.take_oldest(self._take)
        if not recs:
            return False
        try:
            payload, n = codec.encode_batch(recs, self._affordable(), version=self.batch_version)
        except Exception:
            good = []
            for rec in recs:
                try:
                    codec.encode_live(rec)
                    good.append(rec)
                except Exception as exc:
                    self._set_aside(rec, exc)
            self._spool.release([r.seq for r in good])
            return True
        if n < len(recs):
            self._spool.release([r.seq for r in recs[n:]])
            self._take = max(1, n + max(2, n // 8))
        elif len(recs) == self._take:
            self._take = min(MAX_TAKE, self._take * 2)
        if self._over_budget(payload):
            self._spool.release([r.seq for r in recs[:n]])
            return False
        self._publish(recs[:n], payload)
        return True

    def _affordable(self) -> int:
        """The batch size limit: `batch_bytes`, or less when the day's allowance is short (a
        smaller message now rather than a full one never)."""
        room = None if self._budget is None else self._budget.room_bytes()
        if room is None:
            return self._batch_bytes
        payload_room = room - MESSAGE_OVERHEAD - len(self._topic) - 8
        return max(MIN_BATCH, min(self._batch_bytes, payload_room))

    def _over_budget(self, payload: bytes) -> bool:
        """True (and the fixes held until the allowance covers them) when the day's budget
        cannot pay for this message yet. Held fixes wait in the spool; the next message
        carries more of them, so a short budget coalesces more instead of dropping fixes."""
        if self._budget is None:
            return False
        wire = publish_packet_bytes(self._topic, len(payload))
        wait = self._budget.wait_s(message_cost(wire), blocks(len(payload)))
        if wait <= 0:
            return False
        if not self._budget_hold:
            self._n["budget_waits"] += 1
            self._budget.note_deferred()
            log.info("budget: %d bytes used today; fixes wait %.0f s", self._budget.state.bytes,
                     wait)  # fmt: skip
        self._budget_hold = True
        self._due = self._clock.monotonic() + min(wait, 3600.0)  # look again within the hour
        return True

    def _publish(self, recs: Sequence[Record], payload: bytes) -> None:
        seqs = tuple(r.seq for r in recs)
        try:
            token = self._pub.publish(self._topic, payload)
        except BaseException:
            self._spool.release(seqs)
            raise
        wire = publish_packet_bytes(self._topic, len(payload))
        log.debug("sent %d fixes %d..%d as %d", len(seqs), seqs[0], seqs[-1], token)
        self._inflight[token] = _Message(seqs, wire, self._connected_now() + self._give_up)
        n = self._n
        n["messages_sent"] += 1
        n["fixes_sent"] += len(seqs)
        n["wire_bytes"] += wire
        n["payload_bytes"] += len(payload)
        if self._budget is not None:
            self._budget.spend(message_cost(wire), blocks(len(payload)))
        if self._released:
            again = self._released.intersection(seqs)
            if again:
                n["resent_fixes"] += len(again)
                self._released.difference_update(again)

    def _set_aside(self, rec: Record, exc: Exception) -> None:
        """A record the codec cannot carry goes to the spool's held table, never deleted, so a
        bad record can neither stop the queue nor loop the daemon through restarts."""
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        self._spool.set_aside(rec.seq, reason)
        self._n["held"] += 1
        log.error("fix %d set aside, it cannot be sent: %s", rec.seq, reason)

    def _remember_released(self, seqs: Sequence[int]) -> None:
        if len(self._released) > RELEASED_MEMORY:
            self._released.clear()
        self._released.update(seqs)
