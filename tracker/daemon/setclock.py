"""`tracker set-clock REQUEST`: set a plainly unset system clock from the tracker's GPS time.

Run by tracker-clock.service (CAP_SYS_TIME and nothing else) when the daemon, which has no
privilege over the clock, writes a clock request. Standard library and `tracker.receiver.gpstime`
only.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

from tracker.core.errors import TrackerError
from tracker.core.fix import format_time, parse_time
from tracker.receiver.gpstime import FLOOR_TS, clock_unset, set_system_clock

MAX_AGE_S = 300.0  # an older request is stale: the tracker writes a new one every minute


def main(args: argparse.Namespace) -> int:
    """Set the clock from the request; 0 when set or already set, TrackerError otherwise."""
    try:
        with open(args.request, encoding="utf-8") as f:
            doc = json.loads(f.read(4096))
        gps_time = parse_time(str(doc["gps_time"]))
        then = float(doc["monotonic"])
    except OSError as exc:
        raise TrackerError(f"cannot read the clock request {args.request}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise TrackerError(
            f"clock request {args.request} is malformed ({exc}); the tracker writes a new one"
        ) from exc
    if not clock_unset():
        print("tracker set-clock: the system clock is already set; nothing to do")
        return 0
    age = time.monotonic() - then
    if not 0.0 <= age <= MAX_AGE_S:
        raise TrackerError(
            f"clock request {args.request} is {age:.0f} s old (at most {MAX_AGE_S:.0f});"
            " the tracker writes a new one while the clock stays unset"
        )
    target = gps_time + timedelta(seconds=age)
    if target.timestamp() < FLOOR_TS:
        raise TrackerError(f"GPS time {format_time(target)} is before the release date: not used")
    try:
        set_system_clock(target)
    except OSError as exc:
        raise TrackerError(
            f"cannot set the clock: {exc.strerror}; run as tracker-clock.service (CAP_SYS_TIME)"
        ) from exc
    print(f"tracker set-clock: system clock set from GPS time to {format_time(target)}")
    return 0
