"""The daemon's event loop: one owner of the device machine, the spool, the MQTT link and the
hardware handles. Must not import awsiot, awscrt, serial or hw (`tracker.daemon.main` builds the
parts).

The GPS reader thread, SDK callbacks and signal handlers only post events to the loop's queue;
nothing else touches state. The loop sleeps until the next event or the next deadline of its one
scheduler, where the device, the link and the forwarder book their own: no polling.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from tracker import __version__
from tracker.core import config as config_mod
from tracker.core import events as ev
from tracker.core.clock import Clock, ScaledClock, SystemClock
from tracker.core.config import Config
from tracker.core.errors import TrackerError
from tracker.core.fix import Fix, format_time
from tracker.core.scheduler import Scheduler
from tracker.daemon.systemd import Notifier, set_log_level
from tracker.device.budget import Budget
from tracker.device.budget import default_path as budget_path
from tracker.device.machine import Device, State
from tracker.device.policy import ParkedWatch
from tracker.link.forward import Forwarder
from tracker.link.remote_settings import default_store_path
from tracker.link.session import Client, Session
from tracker.link.shadow import ShadowSync
from tracker.receiver.epoch import DEFAULT_DATE_FLOOR, RECORDING_DATE_FLOOR, Decoder, Epoch
from tracker.receiver.gpstime import GpsTime
from tracker.spool.store import Spool

log = logging.getLogger("tracker.daemon.app")

SENSOR_PERIOD_S = 300.0  # battery and temperature readings; slow enough to let low power sleep
STOP_FLUSH_S = 2.0  # real seconds SIGTERM waits for held fixes to be acknowledged
MAX_LOGGED_BUGS = 5  # tracebacks logged for internal errors; the rest are only counted


class GpsSource(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def write(self, data: bytes) -> None: ...


@dataclass
class Parts:
    """What the app drives; built from the config by `build_parts`, replaced by fakes in tests."""

    uplink: Client
    gps: GpsSource | None
    power: Any  # hw.power.GpsPower
    battery: Any  # hw.sensors battery backend
    temperature: Any
    motion: Any


def make_decoder(cfg: Config) -> Decoder:
    """The NMEA decoder for this config; old recordings replay with an old date floor."""
    floor = DEFAULT_DATE_FLOOR
    if cfg.gps.date_floor:
        floor = date.fromisoformat(cfg.gps.date_floor)
    elif cfg.gps.url.startswith("replay://"):
        floor = RECORDING_DATE_FLOOR
    return Decoder(allow_no_checksum=cfg.gps.allow_no_checksum, date_floor=floor)


class App:
    """Owns every piece of state; `handle` one event, `run_due` what is due, `run` the loop."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        events: queue.SimpleQueue[ev.Event] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config_path = config_path
        shadow = ShadowSync(cfg.device.thing_name, cfg, default_store_path(cfg))
        cfg = self.cfg = shadow.config  # remote settings saved earlier sit on the file's
        if clock is None:
            speed = cfg.debug.clock_speed
            clock = SystemClock() if speed == 1 else ScaledClock(speed)
        self.clock = clock
        self.events: queue.SimpleQueue[ev.Event] = events or queue.SimpleQueue()
        self.started_at = self.clock.monotonic()
        self.running = False
        self.notifier = Notifier()
        self.spool = Spool(
            cfg.spool.path, max_fixes=cfg.spool.max_fixes, drop_policy=cfg.spool.drop_policy
        )
        self.thing = cfg.device.thing_name
        self.decoder = make_decoder(cfg)
        self.timers = Scheduler()
        self.device = Device(cfg.policy, self, self.clock, self.timers)
        self.parts: Parts | None = None
        self.budget = Budget(
            cfg.budget,
            lambda: self.gps_time.now(),
            self.clock.monotonic,
            budget_path(cfg.spool.path),
            keepalive_s=cfg.aws.keepalive_s,
        )
        self.session = Session(
            cfg, self.thing, shadow, self.spool, self.clock, self.timers, self.budget
        )
        self.gps_wanted_on = True
        self.gps_port_up = False
        self.last_epoch: Epoch | None = None
        self.parked = ParkedWatch(cfg.policy)
        self.gps_time = GpsTime(self.clock, cfg.device.set_clock)
        self.battery: dict[str, Any] = {}
        self.temperature_c: float | None = None
        self.stop_reason = ""
        self.fixes_seen = 0  # epochs with a valid fix
        self.internal_errors = 0  # bugs caught by `handle`
        self._rollover_said = False  # a date moved by the week-rollover rule was logged
        self.reports = 0  # fixes recorded into the spool
        self._status_sent = ("", 0.0)  # (text, real monotonic time) of the last STATUS
        self._condition_at: float | None = None  # monotonic time of the last condition sent
        self._condition_owed = False  # a periodic report fell due in low power: sent on waking
        self._stop_by: float | None = None  # real monotonic time: stopping, held fixes sent

    # ---- wiring -------------------------------------------------------------------------------
    def post(self, event: ev.Event) -> None:
        """Thread-safe and reentrant (SimpleQueue.put may be called from signal handlers)."""
        self.events.put(event)

    def on_gps_bytes(self, data: bytes) -> None:
        """Runs on the GPS reader thread: decode there, post whole epochs to the loop."""
        for epoch in self.decoder.feed(data):
            self.post(ev.GpsEpoch(epoch))

    def attach(self, parts: Parts) -> None:
        """Connect the hardware and the uplink; start them."""
        self.parts = parts
        now = self.clock.monotonic()
        self.timers.set("condition", now + self.cfg.policy.condition_interval_s, self._condition)
        self.timers.set("sensors", now, self._read_sensors)
        if self.notifier.watchdog_interval:
            self.timers.set("watchdog", now, self._watchdog)
        self.session.attach(parts.uplink)
        if parts.gps is not None:
            parts.gps.start()
        self.device.start()

    # ---- the link's state, as the loop and tests read it -----------------------------------------
    @property
    def shadow(self) -> ShadowSync:
        return self.session.shadow

    @property
    def forwarder(self) -> Forwarder | None:
        return self.session.forwarder

    @property
    def link_up(self) -> bool:
        return self.session.up

    @property
    def link_closed(self) -> bool:
        return self.session.closed

    # ---- Effects (called by the machine) -------------------------------------------------------
    def gps_power(self, on: bool) -> None:
        self.gps_wanted_on = on
        self._apply_gps_power()

    def _apply_gps_power(self) -> None:
        """Power the receiver as the machine wants; a command that cannot be sent now (port not
        open yet, receiver unplugged) is sent again when the port comes back."""
        if self.parts is None:
            return
        try:
            self.parts.power.set(self.gps_wanted_on)
        except (OSError, TrackerError) as exc:
            log.warning("GPS power: %s; retried when the port is back", exc)

    def record(self, fix: Fix, trigger: str) -> None:
        rec = self.spool.put(fix, trigger)
        self.reports += 1
        log.debug("fix %s %s", rec.seq if rec else "dropped", trigger)
        self.session.recorded(trigger)

    def condition(self, reason: str) -> None:
        """Send a condition message. One that goes out (any reason) restarts the periodic
        clock: the next periodic report is a whole period after it, at the period of the state
        the device is in (so the report made on entering low power is the first of that
        state's, not followed minutes later by a periodic one booked while awake)."""
        self.session.condition(self.condition_fields(reason))
        self._condition_owed = False  # sent, or kept by the session for the next connection
        if self.link_up:
            self._condition_at = self.clock.monotonic()
            self._book_condition()

    def _book_condition(self) -> None:
        """The next periodic report, a whole period of the present state from now."""
        now = self.clock.monotonic()
        self.timers.set("condition", now + self._condition_period(), self._condition)

    def _send_owed_condition(self) -> None:
        """Back in low power with a periodic report owed: it goes as soon as the heartbeat
        report just sent is acknowledged (so its backlog reads 0, not the report in flight),
        or with the next connection when the link is down."""
        if not self._condition_owed or self.device.state is not State.LOW_POWER:
            return
        if self.link_up and not self.session.settled():
            return  # this is called again with the acknowledgement
        self.condition("periodic")

    def _condition_period(self) -> float:
        p = self.cfg.policy
        quiet = self.device.state is State.LOW_POWER or self.device.heartbeat_wake
        return p.low_power_condition_s if quiet else p.condition_interval_s

    def _condition_rides_heartbeat(self) -> bool:
        """In low power a periodic report that falls due waits for the next heartbeat report
        and goes out with it (one wake-up of the link instead of two, and no keep-alive ping
        pushed later by an odd-timed message), unless heartbeats are further apart than the
        condition period: then it goes when due."""
        return self.cfg.policy.heartbeat_s <= self.cfg.policy.low_power_condition_s

    def link(self, wanted: bool) -> None:
        """Asked for exactly when the device goes to low power (False) and leaves it (True)."""
        self.session.want(wanted)
        # the rest of the change waits for the events already queued (acknowledgements)
        self.timers.set("low_power", self.clock.monotonic(), self._low_power_changed)

    def _low_power_changed(self) -> None:
        now = self.clock.monotonic()
        if self.device.state is State.LOW_POWER:  # acknowledged rows leave the disk before sleeping
            self.spool.flush()
            self.budget.save_if_due(force=True)
            self._send_owed_condition()
            if "condition" not in self.timers:
                self._book_condition()
        elif "condition" not in self.timers and not self.device.heartbeat_wake:
            # woken for real (moving, motion, battery): an owed report goes now
            last = self._condition_at
            due = now if last is None else last + self.cfg.policy.low_power_condition_s
            self.timers.set("condition", max(now, due), self._condition)

    # ---- the loop -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self.timers.next_due()

    def run_due(self) -> None:
        """Call back every deadline whose time has come."""
        self.timers.run_due(self.clock.monotonic())

    def handle(self, event: ev.Event) -> None:
        """Apply one event to the state; the only place events are consumed.

        A hardware or I/O failure while handling it is logged and the loop goes on: the spool
        keeps every fix, and the next event retries. So does a bug: it is logged with its
        traceback (the first few times) and counted in condition messages, because a restart
        would meet the same input again and loop; every fix stays in the spool."""
        try:
            self._dispatch(event)
        except (OSError, TrackerError) as exc:
            log.error("%s while handling %s", exc, type(event).__name__)
        except Exception:
            self.internal_errors += 1
            if self.internal_errors <= MAX_LOGGED_BUGS:
                log.exception(
                    "internal error while handling %s (the loop goes on; please report it)",
                    type(event).__name__,
                )

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.GpsEpoch):
            self._on_epoch(event.epoch)
        elif isinstance(event, ev.PubAck):
            self.session.on_puback(event.token)
            self._send_owed_condition()
        elif isinstance(event, ev.PubFailed):
            self.session.on_failed(event.token, event.reason)
        elif isinstance(event, ev.LinkUp):
            self.session.on_link(True, "connected")
        elif isinstance(event, ev.LinkDown):
            self.session.on_link(False, event.reason, fatal=event.fatal)
        elif isinstance(event, ev.GpsPort):
            self.gps_port_up = event.up
            if event.up:
                self._apply_gps_power()
            level = logging.INFO if event.up else logging.WARNING
            log.log(level, "GPS port %s: %s", "up" if event.up else "down", event.detail)
        elif isinstance(event, ev.Motion):
            self.device.on_motion()
        elif isinstance(event, ev.ExternalPower):
            self.device.on_external_power(event.on)
        elif isinstance(event, ev.SignalReceived):
            self._on_signal(event.signum)
        elif isinstance(event, ev.SubscribeRefused):
            self.session.on_subscribe_refused(event.topic, event.reason)
        elif isinstance(event, ev.Inbound):
            new = self.session.on_inbound(event.topic, event.payload)
            if new is not None:  # remote settings (the shadow has logged them)
                self.apply_config(new)

    def step(self, max_wait: float | None = None) -> None:
        """Wait for one event or the next timer, handle it, fire due timers."""
        deadline = self.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            pass
        else:
            self.handle(event)
            while True:  # drain what is already there before looking at timers
                try:
                    self.handle(self.events.get_nowait())
                except queue.Empty:
                    break
        self.run_due()
        self.publish_status()

    def publish_status(self, force: bool = False) -> None:
        """STATUS= for systemctl status (and the bench): on a state change, else every 2 s."""
        if not self.notifier.enabled:
            return
        state = self.device.state.value
        gps_time = self.gps_now()
        st = self.spool.stats()
        text = (
            f"state={state} gps_time={format_time(gps_time) if gps_time else '-'} "
            f"fixes={self.fixes_seen} reports={self.reports} backlog={st.backlog} "
            f"link={'up' if self.link_up else 'down'}"
        )
        last_text, last_at = self._status_sent
        real_now = time.monotonic()
        changed_state = not last_text.startswith(f"state={state} ")
        if force or changed_state or (text != last_text and real_now - last_at >= 2.0):
            self.notifier.status(text)
            self._status_sent = (text, real_now)
            self.timers.cancel("status")
        elif text != last_text and "status" not in self.timers:
            # held back by the rate limit: make sure it goes out even if nothing else happens
            wait = (2.0 - (real_now - last_at)) * self.cfg.debug.clock_speed
            due = self.clock.monotonic() + max(wait, 0.0)
            self.timers.set("status", due, lambda: self.publish_status(force=True))

    def run(self) -> None:
        """The blocking loop, until SIGTERM/SIGINT."""
        self.running = True
        self.notifier.ready()
        log.info("tracker %s running as %s", __version__, self.thing)
        while self.running:
            self.step(max_wait=0.1 if self._stop_by is not None else None)
            if self._stop_by is not None and (
                self.session.settled() or time.monotonic() >= self._stop_by
            ):
                self.running = False
        self.publish_status(force=True)

    def shutdown(self, *, quiet: bool = False) -> None:
        """Stop cleanly: GPS to standby, in-flight fixes back to ready, link and spool closed.

        `quiet` when start-up failed: the error that follows is the one line the user needs."""
        self.notifier.stopping()
        parts = self.parts
        if parts is not None:
            try:  # standby first: a serial command needs the port still open
                parts.power.set(False)
            except (OSError, TrackerError) as exc:
                log.warning("GPS standby failed: %s", exc)
            if parts.gps is not None:
                parts.gps.stop()
            if parts.motion is not None and hasattr(parts.motion, "close"):
                parts.motion.close()
        self.session.shutdown()
        self.budget.save_if_due(force=True)
        self.spool.close()
        log.log(logging.DEBUG if quiet else logging.INFO, "stopped (%s)", self.stop_reason or "end")

    # ---- internals ----------------------------------------------------------------------------
    def _on_epoch(self, epoch: Epoch) -> None:
        self.last_epoch = epoch
        if not self._rollover_said and self.decoder.stats.first_rollover is not None:
            self._rollover_said = True
            sent, used = self.decoder.stats.first_rollover
            log.warning(
                "GPS date %s taken as %s by the week-rollover rule: dates before [gps]"
                " date_floor (%s) are moved on by 1024 weeks; to replay an old recording set"
                " [gps] date_floor = 1999-08-22",
                sent,
                used,
                self.decoder.date_floor,
            )
        if epoch.fix is not None:
            self.fixes_seen += 1
        if epoch.time is not None:
            self.gps_time.seen(epoch.time, epoch.fix is not None)
        if self.device.state is State.LOW_POWER and not self.device.battery_is_low():
            # a receiver still sending fixes in low power is the motion sensor
            if self.parked.feed(epoch.fix):
                log.info(
                    "moving in low power (%.0f m from where it parked): waking",
                    self.parked.moved_m,
                )
                self.device.on_motion()
        else:
            self.parked.reset()
        self.device.policy.stretch = self.budget.stretch()  # short allowance: wider intervals
        self.device.on_epoch(epoch)

    def apply_config(self, new: Config) -> None:
        """Settings that apply without a restart: the reporting policy and batch size."""
        old = self.cfg
        self.cfg = new
        self.gps_time.set_clock = new.device.set_clock
        if new.log.level != old.log.level:
            set_log_level(new.log.level)
            log.info("log level now %s", new.log.level)
        if new.policy != old.policy:
            self.device.reconfigure(new.policy)
            self.parked.reconfigure(new.policy)
            interval = new.policy.condition_interval_s
            if interval != old.policy.condition_interval_s and "condition" in self.timers:
                self.timers.set("condition", self.clock.monotonic() + interval, self._condition)
        self.session.reconfigure(new)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_reason = signal.Signals(signum).name
            in_flight = self.session.flush()
            if self.running and self._stop_by is None and in_flight:
                # fixes held to share a message go now; stop once what is in flight is
                # acknowledged (2 s at most), so the spool does not send them again
                self._stop_by = time.monotonic() + STOP_FLUSH_S
            else:
                self.running = False
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGUSR1:
            self.device.on_wake()

    def reload(self) -> None:
        """SIGHUP: read the config again; policy changes apply now, others at the next restart."""
        self.notifier.reloading()
        try:
            from_file = config_mod.load(self.config_path)
        except TrackerError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
        else:
            shadow = ShadowSync(self.thing, from_file, default_store_path(from_file))
            new = shadow.config
            changed = [
                s
                for s in ("device", "gps", "spool", "power", "sensors")
                if getattr(new, s) != getattr(self.cfg, s)
            ]
            # of [aws], only batch_bytes applies at once (the shadow may set it too)
            same_batch = dataclasses.replace(new.aws, batch_bytes=self.cfg.aws.batch_bytes)
            if same_batch != self.cfg.aws:
                changed.insert(0, "aws")
            if changed:
                log.warning("reload: changes to [%s] apply after a restart", "], [".join(changed))
            self.apply_config(new)
            self.session.replace_shadow(shadow)
            log.info("configuration reloaded")
        self.notifier.ready()

    def _condition(self) -> None:
        """The periodic condition message (its timer ran out)."""
        asleep = self.device.state is State.LOW_POWER
        if asleep and (not self.link_up or self._condition_rides_heartbeat()):
            # no link wake-up just for this: it goes with the next heartbeat report, or when
            # the device wakes
            self._condition_owed = True
            return
        if self.device.heartbeat_wake and self._condition_rides_heartbeat():
            self._condition_owed = True  # sent as the wake ends, behind its report
            return
        self.spool.flush()
        self.condition("periodic")
        if "condition" not in self.timers:  # the link is down: the session keeps the report
            self._book_condition()

    def _read_sensors(self) -> None:
        self.timers.set("sensors", self.clock.monotonic() + SENSOR_PERIOD_S, self._read_sensors)
        if self.parts is None:
            return
        b = self.parts.battery.read()
        was_external = self.battery.get("external_power")
        self.battery = dict(b.as_dict()) if b is not None else {}
        self.temperature_c = self.parts.temperature.read()
        if b is not None:
            self.device.on_battery(b.percent, b.charging)
            if b.external_power is not None and b.external_power != was_external:
                self.device.on_external_power(b.external_power)

    def _watchdog(self) -> None:
        assert self.notifier.watchdog_interval is not None
        due = self.clock.monotonic() + self.notifier.watchdog_interval
        self.timers.set("watchdog", due, self._watchdog)
        self.notifier.watchdog()

    def gps_now(self) -> datetime | None:
        """GPS time now: the last receiver time carried forward on the monotonic clock."""
        return self.gps_time.now()

    def condition_fields(self, reason: str) -> dict[str, Any]:
        """The condition message: battery, temperature, GPS health, backlog, link, state."""
        now = self.clock.monotonic()
        st = self.spool.stats()
        gps_time = self.gps_now()
        e = self.last_epoch
        dstats = self.device.stats()
        return {
            "reason": reason,
            "time": format_time(gps_time) if gps_time else None,
            "state": self.device.state.value,
            "uptime_s": round(now - self.started_at),
            "version": __version__,
            "battery": self.battery or None,
            "temperature_c": self.temperature_c,
            "gps": {
                "port": "up" if self.gps_port_up else "down",
                "sats_used": e.sats_used if e else None,
                "sats_in_view": e.sats_in_view if e else None,
                "hdop": e.hdop if e else None,
                "last_fix_age_s": dstats.get("last_fix_age_s"),
                "fix_timeouts": dstats.get("fix_timeouts", 0),
                "dropped": dict(self.decoder.stats.dropped),
                "dates_rolled_over": self.decoder.stats.rolled_over,
            },
            "spool": {
                "backlog": st.backlog,
                "dropped": st.dropped,
                "recovered_corrupt": st.recovered_corrupt,
                "lost": st.lost,
                "lost_ranges": [list(r) for r in st.lost_ranges],
                "held": st.held,
                "held_seqs": list(st.held_seqs),
            },
            "link": {"up": self.link_up, "drops": self.session.drops},
            "budget": {
                **self.budget.report(),
                "conditions_skipped": self.session.skipped_conditions,
            },
            "internal_errors": self.internal_errors,
        }
