"""Time sources: the monotonic clock for intervals, injected so tests run in simulated time.

Wall-clock time is never used for decisions: boards without an RTC boot in 1970. Fix timestamps come
from GPS time (see `tracker.core.fix`).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds; the only time source the app's logic may read."""

    def monotonic(self) -> float: ...


class SystemClock:
    """The real monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to: `advance(seconds)` or `set(t)`."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("a monotonic clock cannot go back")
        self._now = now


class ScaledClock:
    """The monotonic clock running `speed` times faster, for bench replays of accelerated
    recordings: timers (fix timeout, still timeout, heartbeat) keep pace with the recording."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._origin = time.monotonic()

    def monotonic(self) -> float:
        return self._origin + (time.monotonic() - self._origin) * self.speed
