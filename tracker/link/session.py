"""Everything the daemon's loop sends and receives over MQTT: the forwarder, control messages
(conditions, shadow), link up/down and closing the link in low power. Its deadlines (closing,
reopening, the forwarder's) are booked with the loop's scheduler. Must not import awsiot or
awscrt (the uplink is passed in), serial or hw.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tracker.core.clock import Clock
from tracker.core.config import Config
from tracker.core.errors import TrackerError
from tracker.core.scheduler import Scheduler
from tracker.device.budget import CONNECT_COST, Budget, blocks, message_cost
from tracker.link import codec
from tracker.link.forward import Forwarder, Publisher, publish_packet_bytes
from tracker.link.shadow import ShadowSync
from tracker.spool.store import Spool

log = logging.getLogger(__package__)  # logs as "link", the package's main module

LINK_CLOSE_GRACE_S = 30.0  # low power closes the link at the latest this long after asking
LINK_REOPEN_S = 60.0  # retry period when reopening the link fails
REPEAT_FAILURE_S = 600.0  # the same connection failure is said again at most this often
RECONNECT_MAX_S = 120.0  # the uplink's longest backoff between attempts
# A link still connecting when it is due to close (a slow cell, a wake's fresh connect) gets
# LINK_CLOSE_GRACE_S once it is up to deliver what waits, but is not kept trying for longer.
LINK_CONNECT_WAIT_S = 600.0
WAKE_CONTROL_BYTES = 2_500  # shadow report + get + a condition message, with their overheads
LINK_BUDGET_RECHECK_S = 3600.0  # a link kept closed by the budget looks again this often
ACK_TIMEOUT_ERROR = "AWS_ERROR_MQTT_TIMEOUT"  # the SDK failed a publish: no PUBACK in time
LINK_RESTART_MIN_S = 60.0  # a link taken as dead (no PUBACK) is restarted at most this often
# the link's deadlines in the loop's scheduler
CLOSE, CLOSE_IDLE, REOPEN = "link_close", "link_close_idle", "link_open"


class Client(Publisher, Protocol):
    """The MQTT client the session drives (`tracker.link.uplink.Uplink` in the daemon): a
    `Publisher` that can also be started, subscribe and be stopped."""

    def start(self) -> None: ...
    def subscribe(self, topic: str) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...


class Session:
    """The tracker's side of its MQTT session: what goes out (forwarder, conditions, shadow) and
    when the connection is open (low power, budget). Every method runs on the loop, and so do the
    callbacks it books with the loop's scheduler (`timers`); the SDK lives in `Client`."""

    def __init__(
        self,
        cfg: Config,
        thing: str,
        shadow: ShadowSync,
        spool: Spool,
        clock: Clock,
        timers: Scheduler,
        budget: Budget | None = None,
    ) -> None:
        self.cfg = cfg
        self.budget = budget
        self.thing = thing
        self.shadow = shadow
        self.spool = spool
        self.clock = clock
        self.timers = timers
        self.uplink: Client | None = None
        self.forwarder: Forwarder | None = None
        self.up = False
        self.closed = False  # closed for low power
        self.wanted = True
        self.drops = 0
        self.pending_condition: bytes | None = None
        self.control_tokens: set[int] = set()
        self._failures = 0  # failed connection attempts since the link was last up
        self._said: tuple[str, float] = ("", 0.0)  # last failure logged, and when
        self._said_not_authorized = False
        self.close_when_up: float | None = None  # monotonic: give up waiting for it then
        self.skipped_conditions = 0  # condition reports the budget could not pay for
        self.held_condition: bytes | None = None  # an event report waiting for the allowance
        self._restarted_at: float | None = None  # last reconnect for a missing PUBACK

    def attach(self, uplink: Client) -> None:
        """Start sending the spool through `uplink`; subscribe to the shadow and connect."""
        self.uplink = uplink
        self.forwarder = Forwarder(
            self.spool,
            uplink,
            self.cfg.aws.topic(self.thing, "location"),
            window=self.cfg.aws.window,
            batch_bytes=self.cfg.aws.batch_bytes,
            clock=self.clock,
            max_delay_s=self.cfg.policy.max_delay_s,
            batch_version=2 if self.cfg.aws.compress else 1,
            budget=self.budget,
            timers=self.timers,
            on_wake=self.pump,
        )
        for topic in self.shadow.topics():
            uplink.subscribe(topic)
        uplink.start()

    def reconfigure(self, new: Config) -> None:
        """Settings that apply without a restart: the batch size, the delay bound, the budget."""
        old = self.cfg
        self.cfg = new
        if self.forwarder is not None and new.aws.batch_bytes != old.aws.batch_bytes:
            self.forwarder.batch_bytes = new.aws.batch_bytes
        if self.forwarder is not None:
            self.forwarder.max_delay_s = new.policy.max_delay_s
        if self.budget is not None:
            self.budget.reconfigure(new.budget)

    def replace_shadow(self, shadow: ShadowSync) -> None:
        """A reloaded config comes with its own shadow state; report it at once when up."""
        self.shadow = shadow
        if self.up:
            self.publish(shadow.on_connected())

    # ---- sending ------------------------------------------------------------------------------
    def condition(self, fields: dict[str, Any]) -> None:
        """Send a condition message and the shadow's status summary, or keep it for the link.

        In low power it goes sparse (no nulls, zero counters or empty lists): a parked day's
        bytes are mostly keep-alives and these."""
        sparse = fields.get("state") == "low_power"
        payload = codec.encode_condition(fields, sparse=sparse)
        if not self.up:
            self.pending_condition = payload  # only the latest matters; sent on reconnect
            return
        if self.budget is not None:
            # with the day's allowance short a periodic report waits for the next period and
            # an event report is kept (the latest only) for the next one that fits
            cost = 2 * message_cost(publish_packet_bytes("x" * 64, len(payload)))
            if self.budget.would_wait_s(cost, 2) > 0:
                self.skipped_conditions += 1
                if fields.get("reason") != "periodic":
                    self.held_condition = payload
                return
        topic = self.cfg.aws.topic(self.thing, "condition")
        if self.held_condition is not None and fields.get("reason") == "periodic":
            payload, self.held_condition = self.held_condition, None  # the event goes first
            self.publish([(topic, payload)])
            payload = codec.encode_condition(fields, sparse=sparse)
        self.held_condition = None
        self.publish([(topic, payload)])
        battery = fields["battery"] or {}
        summary = {
            "state": fields["state"],
            "backlog": fields["spool"]["backlog"],
            "battery_pct": battery.get("percent"),
            "last_fix_age_s": fields["gps"]["last_fix_age_s"],
        }
        if "budget" in fields:
            summary["budget_bytes"] = fields["budget"]["bytes"]
            summary["budget_messages"] = fields["budget"]["messages"]
            summary["budget_waiting_s"] = fields["budget"]["waiting_s"]
        self.publish(self.shadow.report_status(summary))

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Control messages (conditions, shadow): QoS 1 while the link is up, not spooled."""
        if self.uplink is None or not self.up:
            return
        for topic, payload in messages:
            self.control_tokens.add(self.uplink.publish(topic, payload))
            if self.budget is not None:
                wire = publish_packet_bytes(topic, len(payload))
                self.budget.spend(message_cost(wire), blocks(len(payload)))

    def recorded(self, trigger: str) -> None:
        """A fix went into the spool: it goes now or shares a later message (`max_delay_s`)."""
        if self.forwarder is not None:
            self.forwarder.recorded(trigger)
        self.pump()

    def pump(self) -> None:
        """Let the forwarder send what may go now (also its scheduled wake-up)."""
        if self.up and self.forwarder is not None:
            self.forwarder.pump()
        self._close_once_idle()

    # ---- events -------------------------------------------------------------------------------
    def on_puback(self, token: int) -> None:
        if token in self.control_tokens:
            self.control_tokens.discard(token)
        elif self.forwarder:
            self.forwarder.on_puback(token)
        self.pump()

    def on_failed(self, token: int, reason: str) -> None:
        if "NOT_AUTHORIZED" in reason and not self._said_not_authorized:
            self._said_not_authorized = True
            log.error(
                "the broker refuses what %s publishes (%s): the certificate's policy does not"
                " allow this thing; check that [device] thing_name is the thing the"
                " certificate is attached to (its CN is usually the thing name) and that the"
                " policy allows client id %s and topics %s",
                self.thing,
                reason,
                self.thing,
                self.cfg.aws.topic(self.thing, "*"),
            )
        if token in self.control_tokens:
            self.control_tokens.discard(token)
        elif self.forwarder:
            log.warning("publish failed, will resend: %s", reason)
            self.forwarder.on_failed(token)
        if reason.startswith(ACK_TIMEOUT_ERROR):
            self._restart_dead_link()
        self._close_once_idle()

    def _restart_dead_link(self) -> None:
        """A PUBACK that never came on a link that looks up: with a long keep-alive the link
        may be dead without the client knowing (a cell handover, a NAT timeout): reconnect
        now rather than after 1.5 keep-alives, at most once per LINK_RESTART_MIN_S."""
        now = self.clock.monotonic()
        if self.uplink is None or not self.up or self.closed:
            return
        if self._restarted_at is not None and now - self._restarted_at < LINK_RESTART_MIN_S:
            return
        self._restarted_at = now
        log.warning("no PUBACK in time: taking the connection as dead and reconnecting")
        self.on_link(False, "no PUBACK in time")
        if self.forwarder is not None:
            self.forwarder.release_in_flight()
        self.uplink.stop(timeout=3.0)
        try:
            self.uplink.start()
        except TrackerError as exc:
            log.error("cannot open the link: %s; trying again in %.0f s", exc, LINK_REOPEN_S)
            self.closed = True
            self.timers.set(REOPEN, now + LINK_REOPEN_S, self.reopen)

    def on_subscribe_refused(self, topic: str, reason: str) -> None:
        log.error(
            "the broker refused the subscription to %s (%s): remote settings through the"
            " shadow stay off; the certificate's policy must allow subscribing to it",
            topic,
            reason,
        )

    def on_link(self, up: bool, reason: str, *, fatal: bool = False) -> None:
        if not up and not self.up:
            self._still_down(reason, fatal)
            return
        if up == self.up:
            return
        self.up = up
        self._failures = 0
        self._said = ("", 0.0)
        level = logging.ERROR if fatal else logging.INFO
        log.log(
            level, "link %s%s", "up" if up else "down", f": {reason}" if reason and not up else ""
        )
        if not up:
            self._said = (reason, self.clock.monotonic())
        if self.forwarder is None:
            return
        if self.budget is not None:
            self.budget.link(up)
        if up and self.close_when_up is not None:
            self.close_when_up = None
            self.timers.set(CLOSE, self.clock.monotonic() + LINK_CLOSE_GRACE_S, self.close)
        if up:
            self.forwarder.link_up()
            self.publish(self.shadow.on_connected())
            if self.pending_condition is not None:
                topic = self.cfg.aws.topic(self.thing, "condition")
                self.publish([(topic, self.pending_condition)])
                self.pending_condition = None
            self.pump()
        else:
            self.drops += 1
            self.control_tokens.clear()
            self.shadow.on_disconnected()
            self.forwarder.link_down()
            self._close_once_idle()

    def _still_down(self, reason: str, fatal: bool) -> None:
        """Another failed attempt while down: said when the reason changes, else now and then,
        with how soon the next attempt comes (the SDK's backoff doubles to RECONNECT_MAX_S)."""
        if not reason or reason == "stopped":
            return
        self._failures += 1
        last, at = self._said
        now = self.clock.monotonic()
        if reason == last and now - at < REPEAT_FAILURE_S:
            return
        self._said = (reason, now)
        bound = min(RECONNECT_MAX_S, 2.0 ** min(self._failures, 16))
        log.log(
            logging.ERROR if fatal else logging.WARNING,
            "cannot connect (%d attempt%s): %s; next attempt within %.0f s",
            self._failures,
            "" if self._failures == 1 else "s",
            reason,
            bound,
        )

    def on_inbound(self, topic: str, payload: bytes) -> Config | None:
        """A message on a subscribed topic (the shadow's): its replies go out; returns the new
        config to apply, if it brings one (the shadow has logged what it applied and refused)."""
        if self.budget is not None:  # shadow replies cost the link (and AWS) as much as sends
            wire = publish_packet_bytes(topic, len(payload))
            self.budget.spend(message_cost(wire), blocks(len(payload)))
        result = self.shadow.on_message(topic, payload)
        self.publish(result.publish)
        return result.config

    # ---- low power ----------------------------------------------------------------------------
    def want(self, wanted: bool) -> None:
        """Low power may close the link: once what is in flight is acknowledged, or after
        LINK_CLOSE_GRACE_S at the latest; waking opens it again."""
        self.wanted = wanted
        if self.uplink is None or not self.cfg.power.close_link:
            return
        if wanted:
            self.timers.cancel(CLOSE)
            self.timers.cancel(CLOSE_IDLE)
            self.close_when_up = None
            if self.closed:
                self.reopen()
        elif not self.closed:
            if self.forwarder is not None:
                self.forwarder.flush()  # nothing held back for a message that would come later
                self.pump()
            self.timers.set(CLOSE, self.clock.monotonic() + LINK_CLOSE_GRACE_S, self.close)
            self._close_once_idle()

    def reopen(self) -> None:
        """Open the link closed for low power; a failure (a credential file unreadable just
        now) is retried every LINK_REOPEN_S while the device stays awake."""
        self.timers.cancel(REOPEN)
        if self.uplink is None or not self.closed or not self.wanted:
            return
        wait = 0.0 if self.budget is None else self.budget.wait_s(self._wake_cost())
        if wait > 0:  # the day's allowance cannot pay for a connection yet: fixes wait
            log.info("budget: link opens in %.0f s", min(wait, LINK_BUDGET_RECHECK_S))
            retry = self.clock.monotonic() + min(wait, LINK_BUDGET_RECHECK_S)
            self.timers.set(REOPEN, retry, self.reopen)
            return
        log.info("opening the link again")
        try:
            self.uplink.start()
        except TrackerError as exc:
            log.error("cannot open the link: %s; trying again in %.0f s", exc, LINK_REOPEN_S)
            self.timers.set(REOPEN, self.clock.monotonic() + LINK_REOPEN_S, self.reopen)
            return
        self.closed = False

    def flush(self) -> bool:
        """Send the fixes held to share a message now (stopping); True if anything is in
        flight afterwards."""
        fw = self.forwarder
        if fw is None or not self.up:
            return False
        fw.flush()  # held, or due and not yet pumped: either way they go now
        self.pump()
        return fw.stats().in_flight > 0

    def settled(self) -> bool:
        """Nothing in flight: what was sent is acknowledged (or failed)."""
        return self.forwarder is None or self.forwarder.stats().in_flight == 0

    def _wake_cost(self) -> int:
        """What opening the link is expected to cost: the handshake, the shadow and condition
        messages of a connect, and a message of fixes (a full batch when a backlog waits), so
        the allowance a connect uses also pays for moving the backlog."""
        backlog = self.spool.stats().backlog
        fixes = self.cfg.aws.batch_bytes if backlog > 1 else 400
        return CONNECT_COST + WAKE_CONTROL_BYTES + fixes

    def idle(self) -> bool:
        """Nothing the broker still has to acknowledge, nor any fix still to send (a failed
        publish waits out its pause with nothing in flight)."""
        busy = self.forwarder is not None and self.forwarder.stats().in_flight > 0
        # fixes waiting for the day's allowance do not keep the link (and its pings) alive
        waiting = self.forwarder is not None and self.forwarder.budget_holding()
        return not self.control_tokens and not busy and (self.spool.stats().backlog == 0 or waiting)

    def _close_once_idle(self) -> None:
        """While a close waits (`want(False)`), the link closes as soon as it is idle: at once
        when the scheduler runs next, after the events already queued."""
        if CLOSE in self.timers and self.idle():
            self.timers.set(CLOSE_IDLE, self.clock.monotonic(), self._close_if_idle)

    def _close_if_idle(self) -> None:
        if CLOSE in self.timers and self.idle():
            self.close()

    def close(self) -> None:
        """Close the link for low power (booked by `want(False)`)."""
        self.timers.cancel(CLOSE)
        self.timers.cancel(CLOSE_IDLE)
        if self.uplink is None or self.closed:
            return
        now = self.clock.monotonic()
        if not self.up and not self.idle():
            # still connecting with something to deliver: close once it had its chance
            if self.close_when_up is None:
                self.close_when_up = now + LINK_CONNECT_WAIT_S
            if now < self.close_when_up:
                self.timers.set(CLOSE, self.close_when_up, self.close)
                return
        self.close_when_up = None
        self.closed = True
        log.info("closing the link for low power")
        self.on_link(False, "closed for low power")
        if self.forwarder is not None:
            self.forwarder.release_in_flight()  # the stopped client fails them
        self.uplink.stop(timeout=3.0)

    def shutdown(self) -> None:
        """Disconnect; what is in flight goes back to ready in the spool."""
        if self.uplink is not None:
            self.uplink.stop(timeout=3.0)
        if self.forwarder is not None:
            self.forwarder.link_down()
            self.forwarder.release_in_flight()
