"""The bench's plan: its command line (checked), the recording's schedule, when the faults strike
and the daemon's config. Pure but for reading the recording.

Standard library, `hw.protocol_replay` and `tracker.core.fix` only (scripts/bench.py puts the
repository on sys.path); never the daemon nor tests/support.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hw.protocol_replay import line_time, pacing, recorded_gap, split_recording
from tracker.core.fix import Fix

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RECORDING = REPO / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"
DEFAULT_OUTAGE = "15m@40m"
DEFAULT_KILLS = 2
DEFAULT_RECORDING_S = 8914.0  # the bundled drive the default outage was chosen for
MOSQUITTO = "/usr/sbin/mosquitto"
THING = "bench-tracker-1"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?")
_UNIT = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `1.5m`, `2h` -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 2m or 1h")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclasses.dataclass(frozen=True)
class Outage:
    """The broker is down from recording second `at` for `length` recording seconds."""

    at: float
    length: float


def parse_outage(text: str) -> Outage:
    """`60s@120s`: a 60-second outage starting at recording second 120."""
    length, sep, at = text.partition("@")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not LENGTH@START, e.g. 60s@120s")
    out = Outage(at=parse_duration(at), length=parse_duration(length))
    if out.length <= 0:
        raise argparse.ArgumentTypeError(f"outage {text!r} must last more than 0 s")
    return out


OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("recording",), {"nargs": "?", "default": str(DEFAULT_RECORDING),
                      "help": "NMEA recording (default: the bundled 2.5-hour drive)"}),
    (("--speed",), {"type": float, "default": 75.0,
                    "help": "replay this many times faster than recorded, 1-1000 (default 75)"}),
    (("--duration",), {"type": parse_duration,
                       "help": "choose the speed so the replay takes about this long (90s)"}),
    (("--outage",), {"type": parse_outage, "action": "append", "default": [],
                     "metavar": "LEN@AT",
                     "help": "stop the broker when the recording reaches AT, for LEN of "
                             "recording time (60s@120s); repeatable"}),
    (("--kill",), {"type": int, "default": 0, "metavar": "N",
                   "help": "SIGKILL the tracker N times, spread out, and restart it"}),
    (("--no-faults",), {"action": "store_true",
                        "help": "no outage and no kill (the default run has "
                                f"--outage {DEFAULT_OUTAGE} --kill {DEFAULT_KILLS})"}),
    (("--out",), {"type": Path, "help": "output folder (default bench-out/<timestamp>)"}),
    (("--drain-timeout",), {"type": parse_duration, "default": 30.0, "metavar": "T",
                            "help": "wait at most this long for the backlog to drain (30s)"}),
    (("--log-level",), {"default": "info", "choices": ("debug", "info", "warning", "error"),
                        "help": "the tracker's log level (its log: OUT/tracker.log)"}),
    (("--keep",), {"action": "store_true",
                   "help": "keep the working folder (certificates, spool, broker files)"}),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Replay a recorded drive through the real tracker daemon into a local "
        "Mosquitto with mutual TLS, inject faults, and report what the cloud side received.",
    )
    for flags, kw in OPTIONS:
        p.add_argument(*flags, **kw)
    return p


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Each line of a recording: its UTC time of day, its recording second (from the first timed
    line), where it ends in the byte stream, and when FakeGps.play sends it."""

    tod: list[float | None]
    rec: list[float]
    ends: list[int]
    play: list[float]

    @property
    def length(self) -> float:
        return self.rec[-1] if self.rec else 0.0

    def rec_at_byte(self, written: int) -> float:
        """Recording second reached once `written` bytes of the recording are sent."""
        i = bisect.bisect_right(self.ends, written)
        return self.rec[i - 1] if i else 0.0

    def origin(self, fix: Fix) -> float | None:
        """GPS time (POSIX) of recording second 0, from a fix whose time of day is recorded."""
        t = fix.time
        tod = t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
        return next(
            (
                t.timestamp() - r
                for d, r in zip(self.tod, self.rec, strict=True)
                if d is not None and abs(d - tod) < 1e-3
            ),
            None,
        )


def schedule(data: bytes, speed: float) -> Schedule:
    """The recording's schedule at `speed` (recorded gaps capped as FakeGps.play caps them)."""
    lines = split_recording(data)
    times = [line_time(line) for line in lines]
    rec: list[float] = []
    now, last = 0.0, None
    for t in times:
        if t is not None:
            if last is not None:
                now += recorded_gap(last, t)
            last = t
        rec.append(now)
    return Schedule(
        times, rec, list(itertools.accumulate(len(x) for x in lines)), pacing(times, speed=speed)
    )


def kill_moments(n: int, rec: Sequence[float], outages: Sequence[Outage]) -> list[float]:
    """N recording seconds spread evenly over the recorded lines (so never inside a gap in the
    recording), each moved past any outage it falls in."""
    out = []
    for k in range(1, n + 1):
        i = len(rec) * k // (n + 1)
        for o in outages:
            if o.at <= rec[i] <= o.at + o.length:
                i = min(
                    bisect.bisect_right(rec, o.at + o.length) + len(rec) // (10 * n + 10),
                    len(rec) - 1,
                )
        out.append(rec[i])
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked; without a fault option, the default outage and kills."""
    parser = build_parser()
    args = parser.parse_args(argv)
    recording = Path(args.recording)
    if recording.is_dir():
        parser.error(f"recording {recording} is a directory; pass an NMEA file")
    try:
        length = schedule(recording.read_bytes(), 1.0).length
    except FileNotFoundError:
        parser.error(f"recording {recording} not found")
    except OSError as exc:
        parser.error(f"recording {recording} cannot be read: {exc.strerror or exc}")
    if length <= 0:
        parser.error(
            f"recording {recording} has no two timed NMEA sentences (RMC, GGA, GLL, GNS, ZDA) "
            "to replay: pass an NMEA log"
        )
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be more than 0 s")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; pass a folder for the report")
    if args.kill < 0:
        parser.error("--kill must be 0 or more")
    if not args.outage and not args.kill and not args.no_faults:
        # by default show store and forward at work: one broker outage, two crashes; on a
        # recording shorter than the default outage's start, at the same share of it
        outage = parse_outage(DEFAULT_OUTAGE)
        if outage.at + outage.length >= length:
            share = length / DEFAULT_RECORDING_S
            outage = Outage(at=outage.at * share, length=outage.length * share)
        args.outage, args.kill = [outage], DEFAULT_KILLS
    if not 1 <= args.speed <= 1000:
        parser.error("--speed must be between 1 and 1000")
    if not Path(MOSQUITTO).exists():
        parser.error(
            f"{MOSQUITTO} is missing: run scripts/setup as root, or "
            "'sudo apt-get install -y mosquitto'"
        )
    for o in args.outage:
        if o.at >= length:
            parser.error(
                f"the outage at {o.at:g} s starts after the recording ends ({length:.0f} s)"
            )
    return args


def bench_config(work: Path, gps_path: str, port: int, pki: Any, speed: float, level: str) -> str:
    """The daemon's TOML config for this run (JSON strings and numbers are valid TOML)."""
    sections: dict[str, dict[str, Any]] = {
        # a recording is old GPS time: keep its dates, and never set this machine's clock
        "device": {"thing_name": THING, "set_clock": False},
        "aws": {"endpoint": "localhost", "port": port, "cert": str(pki.client.cert),
                "key": str(pki.client.key), "ca": str(pki.ca), "keepalive_s": 30},
        "gps": {"url": gps_path, "detect_baud": False, "date_floor": "1999-08-22"},
        "spool": {"path": str(work / "spool.db")},
        "power": {"gps": "sim://"},
        "sensors": {"battery": "sim://?percent=80"},
        "log": {"level": level},
        "debug": {"clock_speed": min(max(speed, 1.0), 1000.0)},
    }  # fmt: skip
    return "# written by scripts/bench for one run\n" + "".join(
        f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )
