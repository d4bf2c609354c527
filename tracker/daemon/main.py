"""The process entry for `tracker run`: builds the real parts named by the config, turns signals
into events and runs the loop (`tracker.daemon.app`). Imports hw and `tracker.link.uplink` only when
building.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Any

from tracker.core import config as config_mod
from tracker.core import events as ev
from tracker.daemon.app import App, Parts
from tracker.daemon.exposure import exposure_warnings
from tracker.daemon.instance import InstanceLock
from tracker.daemon.systemd import setup_logging

log = logging.getLogger(__package__)  # logs as "daemon", the package's main module


def build_parts(app: App) -> Parts:
    """The real parts named by the config; each imported only when chosen."""
    from hw.gps import GpsReader
    from hw.power import open_power
    from hw.sensors import open_battery, open_motion, open_temperature
    from tracker.link.uplink import Uplink

    cfg = app.cfg
    # an accelerated bench replay ([debug] clock_speed) scales the SDK's reconnect backoff and
    # the GPS port's reopen backoff too, so they take as long in replayed time as on a board
    speed = cfg.debug.clock_speed
    uplink = Uplink(
        cfg.aws, cfg.device.thing_name, app.post,
        reconnect_min_s=1.0 / speed, reconnect_max_s=120.0 / speed,
    )  # fmt: skip
    gps = GpsReader(
        cfg.gps.url,
        on_data=app.on_gps_bytes,
        on_status=lambda up, detail: app.post(ev.GpsPort(up, detail)),
        baudrate=cfg.gps.baudrate,
        detect_baud=cfg.gps.detect_baud,
        timeout=None,  # block until bytes come: a receiver in standby costs no wake-ups
        backoff_first=0.5 / speed,
        backoff_cap=30.0 / speed,
    )
    power = open_power(cfg.power.gps, write=gps.write)
    motion = open_motion(cfg.sensors.motion, lambda: app.post(ev.Motion()))
    return Parts(
        uplink=uplink,
        gps=gps,
        power=power,
        battery=open_battery(cfg.sensors.battery, clock=app.clock),
        temperature=open_temperature(cfg.sensors.temperature),
        motion=motion,
    )


def install_signals(post: ev.Post) -> None:
    """Signals become events; the handler only posts (SimpleQueue.put is reentrant)."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, lambda s, _f: post(ev.SignalReceived(s)))


def main(args: argparse.Namespace) -> int:
    """`tracker run --config FILE`."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.gps_url:
        overrides["gps"] = {"url": args.gps_url}
    if args.log_level:
        overrides["log"] = {"level": args.log_level}
    cfg = config_mod.load(args.config, overrides=overrides)
    setup_logging(cfg.log.level)
    os.umask(0o077)  # the spool, its WAL and the settings hold location history: owner only
    for warning in exposure_warnings(cfg.aws.key, args.config or config_mod.DEFAULT_CONFIG):
        log.warning("%s", warning)
    InstanceLock(cfg.spool.path).acquire()  # held until the process ends
    app = App(cfg, config_path=args.config)
    install_signals(app.post)
    try:
        app.attach(build_parts(app))
    except BaseException:
        app.stop_reason = "start-up failed"
        app.shutdown(quiet=True)
        raise
    try:
        app.run()
    finally:
        started = time.monotonic()
        app.shutdown()
        log.debug("shutdown took %.2f s", time.monotonic() - started)
    return 0
