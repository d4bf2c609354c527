"""Events posted to the one loop that owns the state (`tracker.daemon.app`).

Producers (the GPS reader thread, SDK callbacks, signal handlers, timers) only build one of these
and `put` it on the loop's `queue.SimpleQueue`; they never touch state. Pure data, standard
library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True, slots=True)
class GpsEpoch:
    """One receiver cycle was decoded; `epoch` is a `tracker.receiver.epoch.Epoch` (fix or not)."""

    epoch: Any


@dataclass(frozen=True, slots=True)
class GpsPort:
    """The GPS port opened (`up=True`) or was lost (`up=False`, `detail` says why)."""

    up: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The MQTT connection is established; `session_present` as the broker said."""

    session_present: bool = False


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The MQTT connection was lost or could not be made."""

    reason: str = ""
    fatal: bool = False  # True when retrying cannot help (certificate rejected, bad key)


@dataclass(frozen=True, slots=True)
class SubscribeRefused:
    """The broker refused a subscription (SUBACK reason code 0x80 or above)."""

    topic: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PubAck:
    """The broker acknowledged the publish identified by `token`."""

    token: int


@dataclass(frozen=True, slots=True)
class PubFailed:
    """The SDK gave up on the publish identified by `token`; its data must be sent again."""

    token: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message arrived on a subscribed topic (shadow, provisioning)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A POSIX signal arrived (SIGTERM, SIGINT, SIGHUP, SIGUSR1)."""

    signum: int


@dataclass(frozen=True, slots=True)
class Motion:
    """The motion sensor reported movement."""


@dataclass(frozen=True, slots=True)
class ExternalPower:
    """External power was connected (`on=True`) or removed."""

    on: bool


Event = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    GpsEpoch,
    GpsPort,
    LinkUp,
    LinkDown,
    PubAck,
    PubFailed,
    SubscribeRefused,
    Inbound,
    SignalReceived,
    Motion,
    ExternalPower,
]

Post = Callable[[Event], None]
