"""The reporting policy: which fixes to report and why, decided on GPS time (`Fix.time`) only.

Pure: no I/O, no clock reads, no threads. Must not import serial, awsiot, awscrt or hw.

Motion model. The policy keeps an *anchor*: the fix where the asset was last seen at rest (or,
while moving, the last fix that showed progress). Parked, a receiver wanders by metres; any fix
within `still_radius_m` of the anchor is jitter, whatever its speed field says. Motion starts
when a fix leaves that circle while going at least `moving_speed_mps` (when the receiver gives a
speed; a displacement alone counts when it does not). A fix outside the circle but slow means
the asset was moved while nobody looked: the anchor moves there. Moving, every fast fix or fix
outside the circle renews the anchor; motion stops once the asset has stayed slow inside the
circle for `stop_after_s` = min(max_interval_s, still_timeout_s), so a stop replaces the next
interval report and always comes before low power.
"""

from __future__ import annotations

from datetime import datetime

from tracker.core.config import PolicyConfig
from tracker.core.fix import Fix, distance_m

TRIGGERS = ("first", "start", "stop", "distance", "heading", "interval", "heartbeat")
PARKED_FAST_FIXES = 3  # fixes in a row above moving speed that wake a parked device


def heading_change(a: float, b: float) -> float:
    """Smallest angle between two courses in degrees, 0 to 180."""
    return abs((b - a + 180.0) % 360.0 - 180.0)


class ReportPolicy:
    """Decides, fix by fix, whether a fix is reported and names the trigger."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.moving = False
        self.pending: str | None = None  # a start/stop not yet reported (min interval)
        self._anchor: Fix | None = None
        self._last: Fix | None = None  # last fix considered
        self._reported: Fix | None = None  # last fix reported
        self._heading_ref: float | None = None
        # >= 1: the data plan governor widens the moving intervals (min and max interval,
        # distance, heading change) by this factor while the day's allowance runs short
        self.stretch = 1.0

    @property
    def stop_after_s(self) -> float:
        """Seconds slow inside the still radius after which motion counts as stopped."""
        return min(self.cfg.max_interval_s, self.cfg.still_timeout_s)

    @property
    def last_reported(self) -> Fix | None:
        return self._reported

    def reconfigure(self, cfg: PolicyConfig) -> None:
        """New settings; the motion estimate and the last report are kept."""
        self.cfg = cfg

    def reset(self) -> None:
        """Forget everything (GPS time went back too far to trust what we knew)."""
        self.moving = False
        self.pending = None
        self._anchor = self._last = self._reported = None
        self._heading_ref = None

    def still_for(self, fix: Fix) -> float:
        """Seconds of GPS time the asset has been still as of `fix` (0 while moving)."""
        if self.moving or self._anchor is None:
            return 0.0
        return max(0.0, _seconds(fix.time, self._anchor.time))

    def consider(self, fix: Fix, *, force: str | None = None) -> str | None:
        """The trigger if `fix` should be reported, else None; `force` names a forced report.

        Never reports twice within `min_interval_s` of GPS time, except for a forced report.
        """
        last = self._last
        if last is not None and fix.time <= last.time:
            if _seconds(last.time, fix.time) > self.cfg.max_interval_s:
                self.reset()  # a receiver date jump backwards: start over
            elif force is None:
                return None  # a repeated or out-of-order fix
        self._last = fix
        self._update_motion(fix)
        trigger = self._decide(fix)
        if force is not None:
            trigger = force  # the wake-up (heartbeat, SIGUSR1) is why this report goes out
        if trigger is not None:
            self._mark_reported(fix, trigger)
        return trigger

    # ---- internals -----------------------------------------------------------------------------
    def _fast(self, fix: Fix) -> bool:
        return fix.speed is None or fix.speed >= self.cfg.moving_speed_mps

    def _update_motion(self, fix: Fix) -> None:
        anchor = self._anchor
        if anchor is None:
            self._anchor = fix
            return
        away = distance_m(anchor.lat, anchor.lon, fix.lat, fix.lon) > self.cfg.still_radius_m
        known_fast = fix.speed is not None and fix.speed >= self.cfg.moving_speed_mps
        if not self.moving:
            if away:
                self._anchor = fix
                if self._fast(fix):
                    self.moving = True
                    self.pending = "start"
        elif away or known_fast:
            self._anchor = fix
        elif _seconds(fix.time, anchor.time) >= self.stop_after_s:
            self.moving = False
            self.pending = "stop"

    def _decide(self, fix: Fix) -> str | None:
        cfg = self.cfg
        rep = self._reported
        if rep is None:
            return "first"
        if self._heading_ref is None and self.moving and self._has_course(fix):
            self._heading_ref = fix.course
        wide = max(1.0, self.stretch)
        min_interval = min(cfg.min_interval_s * wide, cfg.max_interval_s)
        if _seconds(fix.time, rep.time) < min_interval:
            return None
        if self.pending is not None:
            return self.pending
        moved = distance_m(rep.lat, rep.lon, fix.lat, fix.lon)
        if moved >= cfg.distance_m * wide and (self.moving or moved > cfg.still_radius_m):
            return "distance"
        if (
            self.moving
            and self._heading_ref is not None
            and self._has_course(fix)
            and fix.course is not None
            and heading_change(self._heading_ref, fix.course) >= min(cfg.heading_deg * wide, 180)
        ):
            return "heading"
        elapsed = _seconds(fix.time, rep.time)
        if self.moving:
            halted = self._anchor is not None and _seconds(fix.time, self._anchor.time) >= (
                cfg.still_radius_m / cfg.moving_speed_mps
            )
            # a halt becomes a "stop" report within max_interval_s: no interval report before it
            if elapsed >= cfg.max_interval_s * wide and not halted:
                return "interval"
        elif elapsed >= cfg.heartbeat_s:
            return "heartbeat"
        return None

    def _has_course(self, fix: Fix) -> bool:
        return (
            fix.course is not None
            and fix.speed is not None
            and fix.speed >= self.cfg.moving_speed_mps
        )

    def _mark_reported(self, fix: Fix, trigger: str) -> None:
        self._reported = fix
        if trigger == self.pending:
            self.pending = None
        self._heading_ref = fix.course if self._has_course(fix) else None


class ParkedWatch:
    """GPS as the motion sensor in low power: a receiver that keeps sending fixes (no power
    control, or one that ignores standby) wakes the device when it leaves the parked circle."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.parked_at: Fix | None = None  # first fix seen in low power
        self.fast = 0  # fixes in a row faster than moving_speed_mps while parked
        self.moved_m = 0.0  # distance from where it parked, as of the last fix fed

    def reconfigure(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        """Forget where it parked (awake, or too low on battery to watch)."""
        self.parked_at = None

    def feed(self, fix: Fix | None) -> bool:
        """True when `fix` shows the parked asset moving: wake the device."""
        p = self.cfg
        if fix is None or (fix.hdop is not None and fix.hdop > p.max_hdop):
            return False
        if self.parked_at is None:
            self.parked_at, self.fast = fix, 0
            return False
        self.moved_m = distance_m(self.parked_at.lat, self.parked_at.lon, fix.lat, fix.lon)
        # a parked receiver's speed jitters past the threshold now and then: want it sustained
        self.fast = self.fast + 1 if (fix.speed or 0.0) > p.moving_speed_mps else 0
        if self.moved_m > p.still_radius_m or self.fast >= PARKED_FAST_FIXES:
            self.parked_at = None
            return True
        return False


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()
