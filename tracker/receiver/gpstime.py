"""GPS time keeping for the daemon: the last receiver time carried forward on the monotonic clock,
and a plainly unset system clock set from it. Must not import serial, awsiot, awscrt or hw.

Under systemd the daemon has no privilege to set the clock (the unit sets ProtectClock): it
writes a clock request into its runtime directory instead, and tracker-clock.path starts
tracker-clock.service, which holds CAP_SYS_TIME and nothing else, to run `tracker set-clock`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

from tracker.core.clock import Clock
from tracker.core.fix import format_time
from tracker.receiver.epoch import DEFAULT_DATE_FLOOR

log = logging.getLogger(__name__)

CLOCK_REQUEST = "clock-request"  # file name in the runtime directory (/run/tracker)
REQUEST_EVERY_S = 60.0  # a request at most this often while the clock stays unset
FLOOR_TS = datetime.combine(DEFAULT_DATE_FLOOR, datetime.min.time()).timestamp()


def clock_unset() -> bool:
    """The system clock is plainly unset: before the release date (a board without an RTC)."""
    return time.time() < FLOOR_TS


def set_system_clock(gps_time: datetime) -> bool:
    """Set the clock from GPS time when it is plainly unset and GPS time is after the release
    date; False when there was nothing to do. Raises OSError (EPERM) without CAP_SYS_TIME."""
    if not clock_unset() or gps_time.timestamp() < FLOOR_TS:
        return False
    time.clock_settime(time.CLOCK_REALTIME, gps_time.timestamp())
    return True


def write_clock_request(path: Path, gps_time: datetime, monotonic: float) -> None:
    """Ask tracker-clock.service to set the clock: GPS time and the monotonic clock then."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"gps_time": format_time(gps_time), "monotonic": monotonic}))
    os.replace(tmp, path)  # the path unit sees a complete file


class GpsTime:
    """GPS time now, from the last epoch's time and the monotonic clock; sets the system clock
    from a fix when `set_clock` and the system clock is plainly unset."""

    def __init__(self, clock: Clock, set_clock: bool, runtime_dir: str | None = None) -> None:
        self.clock = clock
        self.set_clock = set_clock
        self.last: tuple[datetime, float] | None = None  # (GPS time, monotonic then)
        self._clock_warned = False
        self._requested_at: float | None = None
        rd = runtime_dir if runtime_dir is not None else os.environ.get("RUNTIME_DIRECTORY", "")
        self.request_path = Path(rd.split(":")[0]) / CLOCK_REQUEST if rd else None

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
        if not clock_unset() or gps_time.timestamp() < FLOOR_TS:
            return
        try:
            set_system_clock(gps_time)
            log.warning("system clock was unset; set from GPS time to %s", format_time(gps_time))
            return
        except OSError as exc:
            if self.request_path is None:
                self._warn_once(
                    f"system clock is unset and cannot be set from GPS ({exc}): TLS will fail"
                    " until NTP sets it; run tracker-clock.service or give the tracker"
                    " CAP_SYS_TIME"
                )
                return
        now = time.monotonic()  # the helper compares it with its own: the system's clock
        if self._requested_at is not None and now - self._requested_at < REQUEST_EVERY_S:
            return
        try:
            write_clock_request(self.request_path, gps_time, now)
            self._requested_at = now
            log.warning(
                "system clock is unset: asked tracker-clock.service to set it from GPS time %s",
                format_time(gps_time),
            )
        except OSError as exc:
            self._warn_once(f"cannot write the clock request {self.request_path}: {exc}")

    def _warn_once(self, text: str) -> None:
        if not self._clock_warned:
            self._clock_warned = True
            log.warning("%s", text)
