"""The data plan governor: what the link has cost today and when the next message may go.

Days are GPS-time days (UTC), taken from the caller's GPS clock (the board clock is not trusted);
waits are seconds on the monotonic clock. The day's allowance is spread over the day: at a
fraction f of the day, `RESERVE + (1 - RESERVE) * f` of it may be spent, so a morning burst has
room and a bad afternoon cannot spend tomorrow's share. Pure: no I/O but `load`/`save` of its
small state file (through `tracker.core.files.atomic_write`); must not import awsiot,
awscrt, serial or sqlite3.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tracker.core.config import BudgetConfig
from tracker.core.files import atomic_write

log = logging.getLogger(__name__)

STATE_NAME = "budget.json"
RESERVE = 0.1  # share of the day's allowance available from midnight on
DAY_S = 86_400.0
AWS_BLOCK = 5 * 1024  # AWS IoT Core meters messages in 5 KB blocks
SAVE_EVERY_S = 600.0  # at most one write of the state file per this long (flash wear)
MIN_WAIT_S = 10.0  # the shortest wait the governor asks for
# Link cost estimates (bytes on the wire, both directions), from scripts/bench_link.py against
# Mosquitto with mutual TLS: per message (TLS record, TCP/IP headers, the PUBACK and the bare
# ACKs around them) on top of the MQTT packet; per TLS+MQTT connect (measured 4.4 KB with an EC
# P-256 chain: ClientHello 0.26 KB, the server's flight 1.3 KB, the client certificate's 0.65
# KB, session tickets and CONNACK 1.3 KB, SUBSCRIBE and SUBACK 0.3 KB, with TCP/IP headers; an
# RSA chain like AWS IoT Core's costs more); per keep-alive ping (PINGREQ, PINGRESP, ACK).
MESSAGE_OVERHEAD = 190
SEGMENT_PAYLOAD = 1360  # data per TCP segment on a cellular link (MTU 1400..1500)
CONNECT_COST = 4_500
PING_COST = 170
CONTROL_RESERVE = 2_000  # room kept for the day's event reports, which are never held back
# Widening: spending above WIDEN_FROM of the allowance so far widens the reporting intervals, up
# to MAX_STRETCH times at the full allowance (or while a message waits for it)
WIDEN_FROM = 0.75
MAX_STRETCH = 8.0


def message_cost(mqtt_bytes: int) -> int:
    """Estimated link bytes for one QoS 1 publish of `mqtt_bytes` (PUBLISH packet)."""
    extra_segments = max(0, math.ceil(mqtt_bytes / SEGMENT_PAYLOAD) - 1)
    return mqtt_bytes + MESSAGE_OVERHEAD + 62 * extra_segments


def blocks(payload_len: int) -> int:
    """AWS IoT messages billed for one publish of this payload."""
    return max(1, math.ceil(payload_len / AWS_BLOCK))


@dataclass
class BudgetState:
    """What one GPS day has used; persisted beside the spool."""

    day: str = ""  # YYYY-MM-DD (GPS time, UTC); "" before the first fix
    bytes: int = 0
    messages: int = 0  # 5 KB blocks
    deferred: int = 0  # times a message waited for the allowance


class Budget:
    """Counts what the link costs per GPS day and says how long a message must wait."""

    def __init__(
        self,
        cfg: BudgetConfig,
        gps_now: Callable[[], datetime | None],
        monotonic: Callable[[], float],
        path: str | os.PathLike[str] | None = None,
        keepalive_s: float = 120.0,
    ) -> None:
        self.cfg = cfg
        self.keepalive_s = keepalive_s
        self._quiet_since: float | None = None  # connected and silent since (monotonic)
        self._gps_now = gps_now
        self._monotonic = monotonic
        self.path = Path(path) if path is not None else None
        self.state = load(self.path) if self.path is not None else BudgetState()
        self.waiting_until: float | None = None  # monotonic: a message is held until then
        self._saved_at: float | None = None
        self._dirty = False
        self._widened = False  # the last stretch() was above 1 (logged when that changes)

    @property
    def limited(self) -> bool:
        return self.cfg.bytes_per_day > 0 or self.cfg.messages_per_day > 0

    def reconfigure(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg

    def link(self, up: bool) -> None:
        """The connection came up (a TLS handshake and CONNECT paid) or went down."""
        if up:
            self.spend(CONNECT_COST)
            self._quiet_since = self._monotonic()
        else:
            self._count_pings()
            self._quiet_since = None

    def spend(self, link_bytes: int, messages: int = 0) -> None:
        """Count link bytes and AWS messages (5 KB blocks) as they are sent."""
        self._roll()
        self._count_pings()
        if self._quiet_since is not None:
            self._quiet_since = self._monotonic()
        self.state.bytes += link_bytes
        self.state.messages += messages
        self._dirty = True
        self.save_if_due()

    def wait_s(self, link_bytes: int, messages: int = 1) -> float:
        """Seconds until a message of this cost fits today's allowance so far; 0: send now.

        Without GPS time (no fix yet since boot) there is no day to count against: 0."""
        wait = self.would_wait_s(link_bytes, messages)
        if wait > 0:
            wait = max(wait, MIN_WAIT_S)  # whole steps: rounding must not spin the loop
        self.waiting_until = self._monotonic() + wait if wait > 0 else None
        return wait

    def would_wait_s(self, link_bytes: int, messages: int = 1) -> float:
        """`wait_s` without noting the wait (for what is skipped, not held)."""
        if not self.limited:
            return 0.0
        now = self._gps_now()
        if now is None:
            return 0.0
        self._roll()
        into_day = _seconds_into_day(now)
        waits = [0.0]
        for limit, spent, cost in (
            (self.cfg.bytes_per_day, self.state.bytes, link_bytes),
            (self.cfg.messages_per_day, self.state.messages, messages),
        ):
            if limit <= 0:
                continue
            need = spent + cost
            if need > limit:  # not today any more: at midnight (GPS time) the day starts over
                waits.append(DAY_S - into_day + 1.0)
                continue
            share = (need / limit - RESERVE) / (1.0 - RESERVE)  # of the day that must be over
            waits.append(max(0.0, share * DAY_S - into_day))
        if self.cfg.bytes_per_day > 0:
            waits.append(self._fixed_costs_wait(link_bytes, into_day))
        return max(waits)

    def stretch(self) -> float:
        """How much wider the reporting intervals should be (1: as set): 1 while today's
        spending stays under WIDEN_FROM of the allowance so far, rising geometrically to
        MAX_STRETCH at the allowance, and MAX_STRETCH while a message waits for it. Fewer fixes
        are taken rather than more of them queued; back to 1 once the allowance catches up
        (the day goes on, or a new GPS day starts)."""
        wide = self._stretch()
        if (wide > 1.0) != self._widened:
            self._widened = wide > 1.0
            if self._widened:
                log.info(
                    "budget: %d bytes used today: reporting intervals widened", self.state.bytes
                )
            else:
                log.info("budget: allowance back: reporting intervals as set")
        return wide

    def _stretch(self) -> float:
        now = self._gps_now()
        if not self.limited or now is None:
            return 1.0
        self._roll()
        if self.waiting_until is not None and self.waiting_until > self._monotonic():
            return MAX_STRETCH
        share = RESERVE + (1.0 - RESERVE) * _seconds_into_day(now) / DAY_S
        used = 0.0
        for limit, spent in (
            (self.cfg.bytes_per_day, self.state.bytes),
            (self.cfg.messages_per_day, self.state.messages),
        ):
            if limit > 0:
                used = max(used, spent / (limit * share))
        if used <= WIDEN_FROM:
            return 1.0
        return float(MAX_STRETCH ** min(1.0, (used - WIDEN_FROM) / (1.0 - WIDEN_FROM)))

    def room_bytes(self) -> int | None:
        """Link bytes one message may cost now without waiting; None: no byte limit."""
        now = self._gps_now()
        if self.cfg.bytes_per_day <= 0 or now is None:
            return None
        self._roll()
        into_day = _seconds_into_day(now)
        limit, spent = self.cfg.bytes_per_day, self.state.bytes
        spread = limit * (RESERVE + (1.0 - RESERVE) * into_day / DAY_S) - spent
        per_s = PING_COST / self.keepalive_s if self._quiet_since is not None else 0.0
        fixed = limit - spent - CONTROL_RESERVE - (DAY_S - into_day) * per_s
        return max(0, int(min(spread, fixed)))

    def _fixed_costs_wait(self, link_bytes: int, into_day: float) -> float:
        """Room for what the rest of the day costs anyway (keep-alive pings while connected,
        event reports): a message waits until that room is left after it."""
        rest = DAY_S - into_day
        per_s = PING_COST / self.keepalive_s if self._quiet_since is not None else 0.0
        over = self.state.bytes + link_bytes + CONTROL_RESERVE + rest * per_s
        over -= self.cfg.bytes_per_day
        if over <= 0:
            return 0.0
        if per_s > 0 and over / per_s < rest:
            return over / per_s  # the pings still to come shrink as the day goes on
        return rest + 1.0

    def note_deferred(self) -> None:
        self.state.deferred += 1
        self._dirty = True

    def report(self) -> dict[str, Any]:
        """The budget for condition messages and the shadow's reported state."""
        self._roll()
        now = self._monotonic()
        waiting = self.waiting_until is not None and self.waiting_until > now
        return {
            "day": self.state.day or None,
            "bytes": self.state.bytes,
            "messages": self.state.messages,
            "bytes_per_day": self.cfg.bytes_per_day,
            "messages_per_day": self.cfg.messages_per_day,
            "deferred": self.state.deferred,
            "waiting_s": round(self.waiting_until - now) if waiting and self.waiting_until else 0,
        }

    def save_if_due(self, force: bool = False) -> None:
        """Write the state file when it changed, at most every SAVE_EVERY_S (or now if `force`)."""
        if self.path is None or not self._dirty:
            return
        now = self._monotonic()
        if not force and self._saved_at is not None and now - self._saved_at < SAVE_EVERY_S:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, (json.dumps(asdict(self.state)) + "\n").encode())
        except OSError as exc:
            log.warning("budget: cannot write %s: %s", self.path, exc)
            return
        self._saved_at = now
        self._dirty = False

    def _count_pings(self) -> None:
        """Keep-alive pings the client sent while the connection was silent."""
        if self._quiet_since is None:
            return
        pings = int((self._monotonic() - self._quiet_since) // self.keepalive_s)
        if pings > 0:
            self.state.bytes += pings * PING_COST
            self._quiet_since += pings * self.keepalive_s
            self._dirty = True

    def _roll(self) -> None:
        """A new GPS day starts over (a day going back, a receiver's date jump, too)."""
        now = self._gps_now()
        if now is None:
            return
        day = now.astimezone(timezone.utc).date().isoformat()
        if day != self.state.day:
            if self.state.day:
                log.info(
                    "%s used %d bytes, %d messages", self.state.day, self.state.bytes,
                    self.state.messages,
                )  # fmt: skip
            self.state = BudgetState(day=day)
            self._dirty = True
            self.save_if_due(force=True)


def _seconds_into_day(t: datetime) -> float:
    t = t.astimezone(timezone.utc)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return (t - midnight) / timedelta(seconds=1)


def default_path(spool_path: str | os.PathLike[str]) -> Path:
    """Beside the spool, on the same persistent filesystem."""
    return Path(spool_path).parent / STATE_NAME


def load(path: Path) -> BudgetState:
    """The saved state; a missing or unreadable file starts from zero (logged)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return BudgetState()
    except (OSError, ValueError) as exc:
        log.warning("budget: %s unreadable, counting from zero: %s", path, exc)
        return BudgetState()
    if not isinstance(doc, dict):
        return BudgetState()
    day = doc.get("day")
    nums = [doc.get(k) for k in ("bytes", "messages", "deferred")]
    if not isinstance(day, str) or not all(type(n) is int and n >= 0 for n in nums):
        log.warning("budget: %s malformed, counting from zero", path)
        return BudgetState()
    return BudgetState(day, *(int(n) for n in nums if n is not None))
