"""GPS time keeping for the daemon: the last receiver time carried forward on the monotonic clock,
and a plainly unset system clock set from it. Must not import serial, awsiot, awscrt or hw.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from tracker.clock import Clock
from tracker.epoch import DEFAULT_DATE_FLOOR
from tracker.fix import format_time

log = logging.getLogger(__name__)


class GpsTime:
    """GPS time now, from the last epoch's time and the monotonic clock; sets the system clock
    from a fix when `set_clock` and the system clock is plainly unset."""

    def __init__(self, clock: Clock, set_clock: bool) -> None:
        self.clock = clock
        self.set_clock = set_clock
        self.last: tuple[datetime, float] | None = None  # (GPS time, monotonic then)
        self._clock_warned = False

    def seen(self, epoch_time: datetime, has_fix: bool) -> None:
        """A receiver epoch carried this time (a fix's time when `has_fix`)."""
        self.last = (epoch_time, self.clock.monotonic())
        if has_fix and self.set_clock:
            self._set_system_clock(epoch_time)

    def now(self) -> datetime | None:
        """GPS time now: the last receiver time carried forward on the monotonic clock."""
        if self.last is None:
            return None
        t, at = self.last
        return t + timedelta(seconds=self.clock.monotonic() - at)

    def _set_system_clock(self, gps_time: datetime) -> None:
        """Boards without an RTC boot in 1970, and TLS then refuses every certificate: set the
        system clock from GPS time, but only from a clock that is plainly unset (before the
        release date) to a GPS time after it, so replayed old recordings never move it."""
        floor = datetime.combine(DEFAULT_DATE_FLOOR, datetime.min.time()).timestamp()
        if time.time() >= floor or gps_time.timestamp() < floor:
            return
        try:
            time.clock_settime(time.CLOCK_REALTIME, gps_time.timestamp())
            log.warning("system clock was unset; set from GPS time to %s", format_time(gps_time))
        except OSError as exc:
            if not self._clock_warned:
                self._clock_warned = True
                log.warning(
                    "system clock is unset and cannot be set from GPS (%s): TLS will "
                    "fail until NTP sets it; give the service CAP_SYS_TIME",
                    exc,
                )
