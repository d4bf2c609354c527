"""`tracker check`: every setup mistake on a board, found before the service starts, as a table.

Owns the checks (config, files, permissions, credentials, clock, GPS, spool, endpoint).
`--online` connects with the daemon's own client (`tracker.link.uplink`, imported only then), so
that what passes here connects in the daemon too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import pwd
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.core import config as tconfig
from tracker.core.errors import ConfigError, GpsError, TrackerError
from tracker.daemon.instance import running_pid
from tracker.setup import credentials as cred
from tracker.setup.credentials import FAIL, OK, WARN

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass  # type: ignore[import-not-found,no-redef,unused-ignore]

SERVICE_USER = "tracker"
STATE_DIRECTORY = "/var/lib/tracker"  # systemd creates and chowns it (StateDirectory=tracker)
SKIP = "SKIP"  # not checked here (a staged image has no GPS port)
EXIT = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Result:
    """One line of the table."""

    level: str
    name: str
    detail: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Probe:
    """What the checks read from the world; tests replace the parts this machine lacks."""

    now: Callable[[], dt.datetime] = _now
    user: cred.ServiceUser | str | None = "lookup"
    gps_window_s: float = 3.0
    gps_read_s: float = 0.5
    min_free_bytes: int = 20 * 1024 * 1024
    min_free_ratio: float = 0.05
    connect_timeout_s: float = 40.0  # a server the client does not trust fails after 12-29 s
    open_port: Callable[..., Any] | None = None  # default hw.gps.open_gps
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def service_user(self) -> cred.ServiceUser | None:
        if self.user == "lookup":
            self.user = cred.lookup_user(SERVICE_USER)
        assert not isinstance(self.user, str)
        return self.user


# ------------------------------------------------------------------------------ config


def check_config(path: Path, environ: dict[str, str]) -> tuple[list[Result], dict[str, Any]]:
    """Each config mistake as its own FAIL line; returns the values that passed, by section."""
    try:
        doc = tconfig.read_toml(path, missing="provision the board", unreadable="run as root")
    except ConfigError as exc:
        return [Result(FAIL, "config", str(exc))], {}
    doc = tconfig.merge(doc, tconfig.env_overrides(environ))
    errors: list[str] = []
    good: dict[str, Any] = {}
    for section in sorted(set(doc) - set(tconfig.SECTION_TYPES)):
        errors.append(f"unknown section [{section}]; allowed: {', '.join(tconfig.SECTION_TYPES)}")
    for section, cls in tconfig.SECTION_TYPES.items():
        raw = doc.get(section, {})
        if not isinstance(raw, dict):
            errors.append(f"[{section}] must be a table")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key in sorted(set(raw) - set(fields)):
            errors.append(f"unknown key [{section}] {key}; allowed: {', '.join(fields)}")
        for name, f in fields.items():
            if name in raw:
                try:
                    values[name] = tconfig.check_value(section, f, raw[name])
                except ConfigError as exc:
                    errors.append(str(exc))
            elif f.default is tconfig.REQUIRED:
                errors.append(f"missing key [{section}] {name}: {f.metadata['doc']}")
            else:
                values[name] = f.default
        good[section] = values
    if not errors:
        try:
            tconfig.from_dict(doc)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        return [Result(FAIL, "config", e) for e in errors], good
    return [Result(OK, "config", str(path))], good


# ------------------------------------------------------------------------------ GPS and spool


def check_gps(gps: dict[str, Any], probe: Probe) -> Result:
    """The port opens and shows checksum-valid NMEA within the window."""
    from hw.baud import BAUD_RATES, detect_baudrate
    from hw.gps import is_device_path, open_gps
    from tracker.receiver.nmea import count_valid_sentences

    url, baud = gps.get("url"), gps.get("baudrate")
    if not isinstance(url, str) or not isinstance(baud, int):
        return Result(FAIL, "gps", "no usable [gps] url / baudrate (see the config lines)")
    opener = probe.open_port or open_gps
    try:
        port = opener(url, baudrate=baud, timeout=probe.gps_read_s)
    except GpsError as exc:
        return Result(FAIL, "gps", str(exc))
    data = bytearray()
    start = time.monotonic()
    try:
        while time.monotonic() - start < probe.gps_window_s:
            data += port.read(1024)
            valid = count_valid_sentences(bytes(data))
            if valid >= 2:
                return Result(OK, "gps", f"{valid} valid NMEA sentences from {url} at {baud} baud")
        if data and is_device_path(url):  # bytes but no NMEA: most often the wrong baud rate
            port.close()
            reads = max(2, int(probe.gps_window_s / probe.gps_read_s))
            print(
                f"tracker check: bytes but no NMEA from {url} at {baud} baud; trying the other"
                f" rates ({len(BAUD_RATES) - 1} x {reads * probe.gps_read_s:g} s at most)...",
                file=sys.stderr,
                flush=True,
            )
            found = detect_baudrate(
                url, baud, open_port=opener, timeout=probe.gps_read_s, reads=reads
            )
            if found is not None:
                found.port.close()
                return _baud_verdict(url, baud, found.baudrate, bool(gps.get("detect_baud")))
    except (GpsError, OSError) as exc:  # a port that vanishes while read
        return Result(FAIL, "gps", f"reading {url} failed: {' '.join(str(exc).split())}")
    finally:
        port.close()
    window = f"{probe.gps_window_s:g} s"
    if not is_device_path(url):
        return Result(FAIL, "gps", f"no valid NMEA from {url} within {window}")
    others = "/".join(str(r) for r in BAUD_RATES if r != baud)
    if data:
        return Result(
            FAIL,
            "gps",
            f"{len(data)} bytes but no valid NMEA from {url} within {window} at {baud} baud, "
            f"nor at {others}: check the receiver's protocol setting (NMEA output on)",
        )
    return Result(
        FAIL,
        "gps",
        f"nothing received from {url} within {window} at {baud} baud: "
        "check wiring (GPS TX to board RX), power and antenna, that the "
        f"serial console is off, or the baud rate ({others})",
    )


def _baud_verdict(url: str, configured: int, found: int, detect: bool) -> Result:
    if found == configured:
        return Result(OK, "gps", f"valid NMEA from {url} at {found} baud (after a slow start)")
    if detect:
        return Result(
            WARN,
            "gps",
            f"{url} sends NMEA at {found} baud, not {configured}: the tracker detects it at "
            f"start (detect_baud); set [gps] baudrate = {found} to start faster",
        )
    return Result(
        FAIL,
        "gps",
        f"{url} sends NMEA at {found} baud, not {configured}: set [gps] baudrate = {found}",
    )


def check_spool(spool: dict[str, Any], probe: Probe, root: Path | None = None) -> Iterator[Result]:
    """The spool directory exists (or the tracker can create it), is writable by the service,
    and its disk has room."""
    value = spool.get("path")
    if not isinstance(value, str):
        return
    path = Path(value)
    state_directory = STATE_DIRECTORY if root is None else str(_board(root, STATE_DIRECTORY))
    if path.is_dir():
        yield Result(
            FAIL, "spool dir", f"[spool] path {path} is a directory: name a file in it,"
            f" e.g. {path / 'spool.db'}",
        )  # fmt: skip
        return
    directory = path.parent
    user = probe.service_user()
    write = (stat.S_IWUSR | stat.S_IXUSR, stat.S_IWGRP | stat.S_IXGRP, stat.S_IWOTH | stat.S_IXOTH)

    def writable(d: Path) -> bool:
        if user:
            return cred.user_may(user, d.stat(), write)
        return os.access(d, os.W_OK | os.X_OK)

    who = f"the service user {user.name}" if user else "this user"
    if not directory.is_dir():
        parent = Path(directory.anchor or "/")
        for d in (directory, *directory.parents):
            if d.exists():
                parent = d
                break
        if not parent.is_dir():
            yield Result(
                FAIL, "spool dir", f"{parent} is a file, not a directory: fix [spool] path"
            )
            return
        if str(directory) == state_directory:
            yield Result(
                WARN,
                "spool dir",
                f"{directory} does not exist yet; systemd creates it at start (StateDirectory)",
            )
        elif writable(parent):
            yield Result(
                OK, "spool dir", f"{directory} does not exist yet; the tracker creates it at start"
            )
        else:
            owner = f" && chown {user.name}: {directory}" if user else ""
            yield Result(
                FAIL,
                "spool dir",
                f"{directory} does not exist and {who} cannot create it in {parent}:"
                f" mkdir -p {directory}{owner}, or fix [spool] path",
            )
        directory = parent
    elif user and str(directory) != state_directory and not writable(directory):
        yield Result(
            FAIL,
            "spool dir",
            f"{directory} is not writable by the service user "
            f"{user.name}: chown {user.name}: {directory}",
        )
    elif not os.access(directory, os.W_OK | os.X_OK):
        yield Result(FAIL, "spool dir", f"{directory} is not writable; fix its owner or mode")
    else:
        yield Result(OK, "spool dir", f"{directory} is writable")
    usage = shutil.disk_usage(directory)
    free_mb = usage.free / 1e6
    if usage.free < probe.min_free_bytes:
        yield Result(
            FAIL,
            "disk",
            f"only {free_mb:.0f} MB free under {directory}: free some "
            "space; the spool needs room while offline",
        )
    elif usage.free < usage.total * probe.min_free_ratio:
        yield Result(WARN, "disk", f"{directory}'s disk is nearly full ({free_mb:.0f} MB free)")
    else:
        yield Result(OK, "disk", f"{free_mb:.0f} MB free under {directory}")


# ------------------------------------------------------------------------------ online


def check_online(aws: dict[str, Any], thing: str, probe: Probe) -> Iterator[Result]:
    """Connect as the daemon does, with its own client (MQTT 5, mutual TLS, awscrt), then leave.

    What passes here connects in the daemon too; a failure says what the daemon would say."""
    import queue

    from tracker.core import events as ev
    from tracker.link.uplink import Uplink

    try:
        cfg = tconfig.AwsConfig(**aws)
    except TypeError:
        yield Result(FAIL, "online", "no usable [aws] section (see the config lines)")
        return
    got: queue.Queue[ev.Event] = queue.Queue()
    uplink = Uplink(cfg, thing, got.put, reconnect_min_s=1.0, reconnect_max_s=2.0)
    server = f"{cfg.endpoint}:{cfg.port}"
    try:
        uplink.start()
        deadline = time.monotonic() + probe.connect_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                yield Result(
                    FAIL,
                    "online",
                    f"no MQTT answer from {server} within {probe.connect_timeout_s:.0f} s:"
                    " a firewall or the network drops the connection",
                )
                return
            try:
                event = got.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(event, ev.LinkUp):
                yield Result(OK, "online", f"connected to {server} as {thing} (MQTT 5, mutual TLS)")
                return
            if isinstance(event, ev.LinkDown):
                yield Result(FAIL, "online", event.reason)
                return
    except TrackerError as exc:
        yield Result(FAIL, "online", str(exc))
    finally:
        uplink.stop()


# ------------------------------------------------------------------------------ command


def run_checks(
    path: Path, online: bool = False, probe: Probe | None = None, root: Path | None = None
) -> list[Result]:
    """Every check, in the order a person would fix them; `root` checks a staged image."""
    probe = probe or Probe()
    results, good = check_config(path, probe.environ)
    if not good:  # no config to check the rest against: its line says why
        return results
    if root is not None:
        good = _under_root(good, root)
        probe.user = user_in_root(root)
    aws = good.get("aws", {})
    results += _guarded(
        "credentials",
        lambda: [
            Result(v.level, name, v.detail)
            for name, v in cred.check_files(aws, probe.service_user(), probe.now(), root)
        ],
    )
    if root is None:
        results += _guarded("gps", lambda: [check_gps(good.get("gps", {}), probe)])
    else:
        results.append(Result(SKIP, "gps", "a staged image has no GPS port: check it on the board"))
    results += _guarded("spool", lambda: list(check_spool(good.get("spool", {}), probe, root)))
    if online:
        pid = running_pid(good.get("spool", {}).get("path", tconfig.SpoolConfig().path))
        if pid is not None:
            results.append(
                Result(
                    WARN,
                    "online",
                    f"the tracker is running (pid {pid or '?'}): not connecting with its"
                    " client id, which would disconnect it; `systemctl status tracker` shows"
                    " its link, or stop it to test the connection",
                )
            )
        else:
            results += check_online(aws, good.get("device", {}).get("thing_name", ""), probe)
    return results


def _board(root: Path, board_path: str) -> Path:
    return root / Path(board_path).relative_to("/") if board_path.startswith("/") else root


def _under_root(good: dict[str, Any], root: Path) -> dict[str, Any]:
    """The config's board paths (credentials, spool) as they lie in the staged image."""
    out = {section: dict(values) for section, values in good.items()}
    for section, key in (("aws", "cert"), ("aws", "key"), ("aws", "ca"), ("spool", "path")):
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and value.startswith("/"):
            out[section][key] = str(_board(root, value))
    return out


def user_in_root(root: Path, name: str = SERVICE_USER) -> cred.ServiceUser | None:
    """The service user as the image's /etc/passwd and /etc/group define it, or None."""
    try:
        passwd = (root / "etc/passwd").read_text().splitlines()
        groups = (root / "etc/group").read_text().splitlines()
    except OSError:
        return None
    for line in passwd:
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == name and parts[2].isdigit() and parts[3].isdigit():
            gids = {int(parts[3])}
            for g in groups:
                f = g.split(":")
                if len(f) >= 4 and f[2].isdigit() and name in f[3].split(","):
                    gids.add(int(f[2]))
            return cred.ServiceUser(name, int(parts[2]), frozenset(gids))
    return None


def _guarded(name: str, check: Callable[[], list[Result]]) -> list[Result]:
    """A check's lines, or one FAIL line when this user may not look (not root)."""
    try:
        return check()
    except PermissionError as exc:
        what = exc.filename or "a file"
        return [
            Result(
                FAIL,
                name,
                f"{what} cannot be read as user {_whoami()}: run it as root (sudo tracker check)",
            )
        ]


def _whoami() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def table(results: list[Result]) -> str:
    """One line per check: level, name, detail; then a count."""
    width = max((len(r.name) for r in results), default=4)
    lines = [f"{r.level:<4}  {r.name:<{width}}  {r.detail}" for r in results]
    levels = (FAIL, WARN, OK, SKIP) if any(r.level == SKIP for r in results) else (FAIL, WARN, OK)
    counts = {level: sum(r.level == level for r in results) for level in levels}
    lines.append(", ".join(f"{n} {level}" for level, n in counts.items()))
    return "\n".join(lines)


def exit_status(results: list[Result]) -> int:
    """0 all OK, 1 warnings only, 2 at least one FAIL."""
    return max((EXIT[r.level] for r in results), default=0)


def main(args: argparse.Namespace) -> int:
    """`tracker check [--config FILE] [--online]`."""
    root: Path | None = getattr(args, "root", None)
    if root is not None:
        if args.online:
            raise TrackerError("--online cannot check a staged image (--root); run it on the board")
        if not root.is_dir():
            raise TrackerError(f"--root {root} is not a directory: pass the image's root folder")
        path = Path(args.config) if args.config else _board(root, tconfig.DEFAULT_CONFIG)
    else:
        path = Path(args.config or os.environ.get("TRACKER_CONFIG") or tconfig.DEFAULT_CONFIG)
    results = run_checks(path, online=args.online, root=root)
    print(table(results))
    return exit_status(results)
