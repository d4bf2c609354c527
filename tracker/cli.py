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
from pathlib import Path

from tracker import __version__
from tracker.core.errors import TrackerError

# subcommand -> module whose `main(args) -> int` runs it
COMMANDS = {
    "replay": "tracker.receiver.replay",
    "decode": "tracker.twin.decode",
    "run": "tracker.daemon.main",
    "check": "tracker.setup.check",
    "set-clock": "tracker.daemon.setclock",
    "collect": "tracker.twin.collect",
    "export": "tracker.twin.export",
    "gaps": "tracker.twin.gaps",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="tracker", description="GPS asset tracker for AWS IoT Core")
    p.add_argument("--version", action="version", version=f"tracker {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=description,
            epilog="examples:\n" + examples,
            formatter_class=_Formatter,
        )

    r = command(
        "replay",
        "decode an NMEA recording and print its fixes",
        "Decode an NMEA 0183 recording (any receiver, any talker) exactly as the daemon does and"
        " print one fix per line (JSON) or a GPX track; a summary of sentences, epochs and what"
        " was dropped goes to stderr. Old recordings keep their dates.",
        "  tracker replay drive.nmea > fixes.jsonl\n"
        "  tracker replay --format gpx drive.nmea > drive.gpx\n"
        "  cat /dev/ttyUSB0 | tracker replay -",
    )
    r.add_argument("file", help="NMEA recording, or - for stdin")
    r.add_argument("--format", choices=("jsonl", "gpx"), default="jsonl", help="output format")
    r.add_argument(
        "--allow-no-checksum",
        action="store_true",
        help="accept sentences without a checksum (some old receivers send none)",
    )
    r.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")

    d = command(
        "decode",
        "expand message payloads into one JSON object per fix",
        "Expand location messages, live fixes or packed backlog batches, into one JSON line per"
        " fix (seq, trigger, time, position...). A FILE holds either one message payload as the"
        " tracker published it, or captured mosquitto_sub output with one message per line;"
        " lines that carry their topic add the thing name. Exit status 2 when a file or line"
        " could not be decoded (one line on stderr each).",
        "  tracker decode payload.json\n"
        "  mosquitto_sub ... -t 'dt/tracker/+/location' -F %j > cap.txt; tracker decode cap.txt",
    )
    d.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="payload files, or captured mosquitto_sub output (plain, -v, -F %%j, -F %%J, -F %%x), "
        "or - for stdin",
    )

    run = command(
        "run",
        "run the tracker daemon",
        "The tracker itself: reads the GPS, decides what to report, keeps every fix on disk"
        " until the broker acknowledges it. Normally started by systemd (tracker.service).",
        "  tracker run --config /etc/tracker/tracker.toml\n"
        "  tracker run -c tracker.toml --gps-url replay://drive.nmea?speed=10 --log-level debug",
    )
    run.add_argument(
        "--config",
        "-c",
        default=os.environ.get("TRACKER_CONFIG"),
        help="TOML config file (env TRACKER_CONFIG; default /etc/tracker/tracker.toml)",
    )
    run.add_argument("--gps-url", help="override [gps] url")
    run.add_argument("--log-level", help="override [log] level (debug, info, warning, error)")

    c = command(
        "check",
        "check a board's setup before starting the service",
        "One line per check (config, credentials, clock, GPS port, spool directory, disk;"
        " with --online the endpoint): OK, WARN or FAIL with what to do. Exit status 0 all OK,"
        " 1 warnings only, 2 at least one FAIL. Run it as root to check the service's files.",
        "  sudo tracker check\n  sudo tracker check --online --config /etc/tracker/tracker.toml\n"
        "  tracker check --root build/rootfs",
    )
    c.add_argument(
        "--config",
        "-c",
        default=os.environ.get("TRACKER_CONFIG"),
        help="TOML config file (env TRACKER_CONFIG; default /etc/tracker/tracker.toml)",
    )
    c.add_argument(
        "--online",
        action="store_true",
        help="also connect to the endpoint with the board's credentials (not while it runs)",
    )
    c.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="check a staged image: its config and the paths in it are taken under DIR",
    )
    sc = command(
        "set-clock",
        "set an unset system clock from the tracker's GPS time (tracker-clock.service)",
        "Read the clock request the daemon writes to its runtime directory when the system"
        " clock is unset (a board without an RTC) and set the clock from it. Needs"
        " CAP_SYS_TIME; does nothing when the clock is already set.",
        "  tracker set-clock /run/tracker/clock-request",
    )
    sc.add_argument(
        "request", nargs="?", default="/run/tracker/clock-request", help="the clock request file"
    )
    col = command(
        "collect",
        "store every tracker's messages in a local lake",
        "Subscribe (QoS 1, persistent session, mutual TLS) to every tracker's location and"
        " condition topics on a broker and write each fix once, fsynced before it is"
        " acknowledged, to a folder laid out like the cloud's S3 lake. FILE has the daemon's"
        " [aws] keys and a [collect] section (client_id, lake, topic_prefix).",
        "  tracker collect --config collect.toml",
    )
    col.add_argument("--config", "-c", help="TOML file with [aws] and [collect]")
    col.add_argument("--stats", metavar="FILE", help="keep this run's counters in FILE (JSON)")
    col.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    e = command(
        "export",
        "one device's track from the lake",
        "One device's fixes from a lake (tracker collect's, or an S3 lake copied down with aws"
        " s3 sync), once per seq and in seq order, for a day or a time window.",
        "  tracker export LAKE --thing truck-42 --day 2026-11-30 --tz Europe/Amsterdam"
        " --format gpx -o day.gpx\n"
        "  tracker export LAKE --thing truck-42 --from 2026-11-30T06:00Z --to 2026-11-30T18:00Z"
        " --format csv",
    )
    e.add_argument("lake", metavar="LAKE", help="the lake folder (tracker collect, or S3 synced)")
    e.add_argument("--thing", required=True, help="the device's thing name")
    e.add_argument("--day", help="one day, YYYY-MM-DD (UTC unless --tz)")
    e.add_argument("--tz", help="time zone of --day, e.g. Europe/Amsterdam")
    e.add_argument("--from", dest="start", metavar="ISO", help="fixes at or after this time")
    e.add_argument("--to", dest="end", metavar="ISO", help="fixes before this time")
    e.add_argument(
        "--format", choices=("gpx", "geojson", "csv", "jsonl"), default="jsonl", help="output"
    )
    e.add_argument("--out", "-o", help="output file (default stdout)")

    g = command(
        "gaps",
        "missing seq ranges and silence per device in the lake",
        "Per device: the seq range stored, the ranges missing and how long it has been silent."
        " Exit status 1 when a seq is missing: the operator's check that nothing was lost.",
        "  tracker gaps LAKE\n  tracker gaps LAKE --thing truck-42 --json",
    )
    g.add_argument("lake", metavar="LAKE")
    g.add_argument("--thing", help="only this device")
    g.add_argument("--json", action="store_true", help="one JSON object per device")
    return p


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped, examples kept as written, defaults shown where there is one."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text
        if shown and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


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
