"""Command-line entry point: parses arguments and dispatches to subcommands, importing lazily.

`tracker replay` must not pay for importing the AWS SDK, so each subcommand imports its module only
when chosen. User mistakes end as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tracker import __version__
from tracker.errors import TrackerError

# subcommand -> module whose `main(args) -> int` runs it
COMMANDS = {
    "replay": "tracker.replay",
    "decode": "tracker.decode",
    "run": "tracker.daemon",
    "check": "tracker.check",
    "set-clock": "tracker.setclock",
    "collect": "tracker.collect",
    "export": "tracker.export",
    "gaps": "tracker.gaps",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="tracker", description="GPS asset tracker for AWS IoT Core")
    p.add_argument("--version", action="version", version=f"tracker {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("replay", help="decode an NMEA recording and print its fixes")
    r.add_argument("file", help="NMEA recording, or - for stdin")
    r.add_argument("--format", choices=("jsonl", "gpx"), default="jsonl")
    r.add_argument(
        "--allow-no-checksum",
        action="store_true",
        help="accept sentences without a checksum (some old receivers send none)",
    )
    r.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")

    d = sub.add_parser("decode", help="expand message payloads into one JSON object per fix")
    d.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="payload files, or captured mosquitto_sub output (plain, -v, -F %%j, -F %%x), "
        "or - for stdin",
    )

    run = sub.add_parser("run", help="run the tracker daemon")
    run.add_argument(
        "--config",
        "-c",
        default=os.environ.get("TRACKER_CONFIG"),
        help="TOML config file (env TRACKER_CONFIG; default /etc/tracker/tracker.toml)",
    )
    run.add_argument("--gps-url", help="override [gps] url")
    run.add_argument("--log-level", help="override [log] level (debug, info, warning, error)")

    c = sub.add_parser("check", help="check a board's setup before starting the service")
    c.add_argument("--config", "-c", default=os.environ.get("TRACKER_CONFIG"))
    c.add_argument("--online", action="store_true", help="also connect to the endpoint")
    sc = sub.add_parser(
        "set-clock",
        help="set an unset system clock from the tracker's GPS time (tracker-clock.service)",
        description="Read the clock request the daemon writes to its runtime directory when the"
        " system clock is unset (a board without an RTC) and set the clock from it. Needs"
        " CAP_SYS_TIME; does nothing when the clock is already set.",
    )
    sc.add_argument(
        "request", nargs="?", default="/run/tracker/clock-request", help="the clock request file"
    )
    col = sub.add_parser("collect", help="store every tracker's messages in a local lake")
    col.add_argument("--config", "-c", help="TOML file with [aws] and [collect]")
    col.add_argument("--stats", metavar="FILE", help="keep this run's counters in FILE (JSON)")
    col.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    e = sub.add_parser("export", help="one device's track from the lake")
    e.add_argument("lake", metavar="LAKE", help="the lake folder (tracker collect, or S3 synced)")
    e.add_argument("--thing", required=True, help="the device's thing name")
    e.add_argument("--day", help="one day, YYYY-MM-DD (UTC unless --tz)")
    e.add_argument("--tz", help="time zone of --day, e.g. Europe/Amsterdam")
    e.add_argument("--from", dest="start", metavar="ISO", help="fixes at or after this time")
    e.add_argument("--to", dest="end", metavar="ISO", help="fixes before this time")
    e.add_argument("--format", choices=("gpx", "geojson", "csv", "jsonl"), default="jsonl")
    e.add_argument("--out", "-o", help="output file (default stdout)")

    g = sub.add_parser("gaps", help="missing seq ranges and silence per device in the lake")
    g.add_argument("lake", metavar="LAKE")
    g.add_argument("--thing", help="only this device")
    g.add_argument("--json", action="store_true", help="one JSON object per device")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tracker` command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(COMMANDS[args.command])
        status: int = module.main(args)
        return status
    except TrackerError as exc:
        print(f"tracker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`tracker replay FILE | head`): not an error for the user
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
