"""The daemon (`tracker run`): one event loop that owns the device machine, the spool, the forwarder
and the hardware handles.

The GPS reader thread, SDK callbacks and signal handlers only post events to the loop's queue;
nothing else touches state. The loop sleeps until the next event or timer: no polling. Imports the
SDK only through `tracker.uplink`, chosen at start.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from tracker import __version__, codec
from tracker import config as config_mod
from tracker import events as ev
from tracker.clock import Clock, ScaledClock, SystemClock
from tracker.config import Config
from tracker.epoch import DEFAULT_DATE_FLOOR, RECORDING_DATE_FLOOR, Decoder, Epoch
from tracker.errors import TrackerError
from tracker.fix import Fix, distance_m, format_time
from tracker.forward import Forwarder
from tracker.machine import Device, State
from tracker.settings_store import default_store_path
from tracker.shadow import ShadowSync
from tracker.spool import Spool
from tracker.systemd import Notifier, setup_logging

log = logging.getLogger("tracker.app")

LINK_CLOSE_GRACE_S = 30.0  # low power closes the link at the latest this long after asking
PARKED_FAST_FIXES = 3  # fixes in a row above moving speed that wake a parked device
SENSOR_PERIOD_S = 300.0  # battery and temperature readings; slow enough to let low power sleep


class Publisher(Protocol):
    def start(self) -> None: ...
    def subscribe(self, topic: str) -> None: ...
    def publish(self, topic: str, payload: bytes) -> int: ...
    def stop(self, timeout: float = 5.0) -> None: ...


class GpsSource(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def write(self, data: bytes) -> None: ...


@dataclass
class Parts:
    """What the app drives; built from the config by `build_parts`, replaced by fakes in tests."""

    uplink: Publisher
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
    """Owns every piece of state; `handle` one event, `run_due` timers, `run` the blocking loop."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        events: queue.SimpleQueue[ev.Event] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.shadow = ShadowSync(cfg.device.thing_name, cfg, default_store_path(cfg))
        cfg = self.cfg = self.shadow.config  # remote settings saved earlier sit on the file's
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
        self.device = Device(cfg.policy, self, self.clock)
        self.parts: Parts | None = None
        self.forwarder: Forwarder | None = None
        self.link_up = False
        self.gps_wanted_on = True
        self.link_closed = False
        self.link_wanted = True
        self.link_drops = 0
        self.gps_port_up = False
        self.last_epoch: Epoch | None = None
        self.parked_at: Fix | None = None  # first fix seen in low power
        self.parked_fast = 0  # fixes in a row faster than moving_speed_mps while parked
        self.last_gps_time: tuple[datetime, float] | None = None  # (GPS time, monotonic then)
        self.pending_condition: bytes | None = None
        self.control_tokens: set[int] = set()
        self.battery: dict[str, Any] = {}
        self.temperature_c: float | None = None
        self.timers: dict[str, float] = {}
        self.stop_reason = ""
        self._low_power_flushed = False
        self._clock_warned = False
        self.fixes_seen = 0  # epochs with a valid fix
        self.reports = 0  # fixes recorded into the spool
        self._status_sent = ("", 0.0)  # (text, real monotonic time) of the last STATUS

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
        topic = self.cfg.aws.topic(self.thing, "location")
        self.forwarder = Forwarder(
            self.spool,
            parts.uplink,
            topic,
            window=self.cfg.aws.window,
            batch_bytes=self.cfg.aws.batch_bytes,
            clock=self.clock,
        )
        now = self.clock.monotonic()
        self.timers = {
            "condition": now + self.cfg.policy.condition_interval_s,
            "sensors": now,
        }
        if self.notifier.watchdog_interval:
            self.timers["watchdog"] = now
        for topic in self.shadow.topics():
            parts.uplink.subscribe(topic)
        parts.uplink.start()
        if parts.gps is not None:
            parts.gps.start()
        self.device.start()

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
        self._pump()

    def condition(self, reason: str) -> None:
        fields = self.condition_fields(reason)
        payload = codec.encode_condition(fields)
        if not self.link_up:
            self.pending_condition = payload  # only the latest matters; sent on reconnect
            return
        self._publish([(self.cfg.aws.topic(self.thing, "condition"), payload)])
        battery = fields["battery"] or {}
        summary = {
            "state": fields["state"],
            "backlog": fields["spool"]["backlog"],
            "battery_pct": battery.get("percent"),
            "last_fix_age_s": fields["gps"]["last_fix_age_s"],
        }
        self._publish(self.shadow.report_status(summary))

    def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Control messages (conditions, shadow): QoS 1 while the link is up, not spooled."""
        if self.parts is None or not self.link_up:
            return
        for topic, payload in messages:
            self.control_tokens.add(self.parts.uplink.publish(topic, payload))

    def link(self, wanted: bool) -> None:
        """Low power may close the link: once what is in flight is acknowledged, or after
        LINK_CLOSE_GRACE_S at the latest; waking opens it again."""
        self.link_wanted = wanted
        if self.parts is None or not self.cfg.power.close_link:
            return
        if wanted:
            self.timers.pop("link_close", None)
            if self.link_closed:
                self.link_closed = False
                log.info("opening the link again")
                self.parts.uplink.start()
        elif not self.link_closed:
            self.timers["link_close"] = self.clock.monotonic() + LINK_CLOSE_GRACE_S

    def _close_link(self) -> None:
        self.timers.pop("link_close", None)
        if self.parts is None or self.link_closed:
            return
        self.link_closed = True
        log.info("closing the link for low power")
        self._on_link(False, "closed for low power")
        self.parts.uplink.stop(timeout=3.0)

    def _timer_link_close(self, now: float) -> None:
        self._close_link()

    # ---- the loop -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = list(self.timers.values())
        for d in (
            self.device.next_deadline(),
            self.forwarder.wake_at() if self.forwarder else None,
        ):
            if d is not None:
                deadlines.append(d)
        return min(deadlines) if deadlines else None

    def run_due(self) -> None:
        """Fire every timer whose time has come."""
        now = self.clock.monotonic()
        d = self.device.next_deadline()
        if d is not None and now >= d:
            self.device.on_timer()
        if "link_close" in self.timers and self._link_idle():
            self._close_link()
        wake = self.forwarder.wake_at() if self.forwarder else None
        if wake is not None and now >= wake:
            self._pump()
        if self.device.state is State.LOW_POWER:
            if not self._low_power_flushed:  # acknowledged rows leave the disk before sleeping
                self.spool.flush()
                self._low_power_flushed = True
        else:
            self._low_power_flushed = False
            if "condition" not in self.timers:
                self.timers["condition"] = now  # overdue from low power: send it now
        for name, due in list(self.timers.items()):
            if now >= due:
                getattr(self, f"_timer_{name}")(now)

    def handle(self, event: ev.Event) -> None:
        """Apply one event to the state; the only place events are consumed.

        A hardware or I/O failure while handling it is logged and the loop goes on: the spool
        keeps every fix, and the next event retries. A bug propagates: systemd restarts us."""
        try:
            self._dispatch(event)
        except (OSError, TrackerError) as exc:
            log.error("%s while handling %s", exc, type(event).__name__)

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.GpsEpoch):
            self._on_epoch(event.epoch)
        elif isinstance(event, ev.PubAck):
            if event.token in self.control_tokens:
                self.control_tokens.discard(event.token)
            elif self.forwarder:
                self.forwarder.on_puback(event.token)
            self._pump()
        elif isinstance(event, ev.PubFailed):
            if event.token in self.control_tokens:
                self.control_tokens.discard(event.token)
            elif self.forwarder:
                log.warning("publish failed, will resend: %s", event.reason)
                self.forwarder.on_failed(event.token)
        elif isinstance(event, ev.LinkUp):
            self._on_link(True, "connected")
        elif isinstance(event, ev.LinkDown):
            self._on_link(False, event.reason)
            if event.fatal:
                log.error("link: %s", event.reason)
        elif isinstance(event, ev.GpsPort):
            self.gps_port_up = event.up
            if event.up:
                self._apply_gps_power()
            log.log(
                logging.INFO if event.up else logging.WARNING,
                "GPS port %s %s",
                "up" if event.up else "down",
                event.detail,
            )
        elif isinstance(event, ev.Motion):
            self.device.on_motion()
        elif isinstance(event, ev.ExternalPower):
            self.device.on_external_power(event.on)
        elif isinstance(event, ev.SignalReceived):
            self._on_signal(event.signum)
        elif isinstance(event, ev.Inbound):
            self._on_inbound(event.topic, event.payload)
        elif isinstance(event, ev.Call):
            event.fn()

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
            self.timers.pop("status", None)
        elif text != last_text and "status" not in self.timers:
            # held back by the rate limit: make sure it goes out even if nothing else happens
            wait = (2.0 - (real_now - last_at)) * self.cfg.debug.clock_speed
            self.timers["status"] = self.clock.monotonic() + max(wait, 0.0)

    def run(self) -> None:
        """The blocking loop, until SIGTERM/SIGINT."""
        self.running = True
        self.notifier.ready()
        log.info("tracker %s running as %s", __version__, self.thing)
        while self.running:
            self.step()
        self.publish_status(force=True)

    def shutdown(self) -> None:
        """Stop cleanly: GPS to standby, in-flight fixes back to ready, link and spool closed."""
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
            parts.uplink.stop(timeout=3.0)
        if self.forwarder is not None:
            self.forwarder.link_down()
        self.spool.close()
        log.info("stopped (%s)", self.stop_reason or "end")

    # ---- internals ----------------------------------------------------------------------------
    def _on_epoch(self, epoch: Epoch) -> None:
        self.last_epoch = epoch
        if epoch.fix is not None:
            self.fixes_seen += 1
        if epoch.time is not None:
            self.last_gps_time = (epoch.time, self.clock.monotonic())
            if epoch.fix is not None and self.cfg.device.set_clock:
                self._set_system_clock(epoch.fix.time)
        if self.device.state is State.LOW_POWER and not self.device.battery_is_low():
            self._watch_parked(epoch.fix)
        else:
            self.parked_at = None
        self.device.on_epoch(epoch)

    def _watch_parked(self, fix: Fix | None) -> None:
        """A receiver that keeps sending fixes in low power (no power control, or one that
        ignores standby) is the motion sensor: leaving the parked circle wakes the device."""
        if fix is None or (fix.hdop is not None and fix.hdop > self.cfg.policy.max_hdop):
            return
        if self.parked_at is None:
            self.parked_at, self.parked_fast = fix, 0
            return
        p = self.cfg.policy
        moved = distance_m(self.parked_at.lat, self.parked_at.lon, fix.lat, fix.lon)
        # a parked receiver's speed jitters past the threshold now and then: want it sustained
        self.parked_fast = self.parked_fast + 1 if (fix.speed or 0.0) > p.moving_speed_mps else 0
        if moved > p.still_radius_m or self.parked_fast >= PARKED_FAST_FIXES:
            log.info("moving in low power (%.0f m from where it parked): waking", moved)
            self.parked_at = None
            self.device.on_motion()

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

    def _on_link(self, up: bool, reason: str) -> None:
        if up == self.link_up:
            return
        self.link_up = up
        log.info("link %s%s", "up" if up else "down", f": {reason}" if reason and not up else "")
        if self.forwarder is None:
            return
        if up:
            self.forwarder.link_up()
            self._publish(self.shadow.on_connected())
            if self.pending_condition is not None:
                topic = self.cfg.aws.topic(self.thing, "condition")
                self._publish([(topic, self.pending_condition)])
                self.pending_condition = None
            self._pump()
        else:
            self.link_drops += 1
            self.control_tokens.clear()
            self.shadow.on_disconnected()
            self.forwarder.link_down()

    def _on_inbound(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self.shadow.prefix + "/"):
            log.debug("message on unexpected topic %s ignored", topic)
            return
        result = self.shadow.on_message(topic, payload)
        self._publish(result.publish)
        if result.config is not None:
            self.apply_config(result.config)
            applied = ", ".join(f"{k}={v}" for k, v in result.applied.items())
            log.info("remote settings applied: %s", applied or "none")
        for key, why in result.rejected.items():
            log.warning("remote setting %s refused: %s", key, why)

    def apply_config(self, new: Config) -> None:
        """Settings that apply without a restart: the reporting policy and batch size."""
        old = self.cfg
        self.cfg = new
        if new.policy != old.policy:
            self.device.reconfigure(new.policy)
            interval = new.policy.condition_interval_s
            if interval != old.policy.condition_interval_s and "condition" in self.timers:
                self.timers["condition"] = self.clock.monotonic() + interval
        if self.forwarder is not None and new.aws.batch_bytes != old.aws.batch_bytes:
            self.forwarder.batch_bytes = new.aws.batch_bytes

    def _link_idle(self) -> bool:
        """Nothing the broker still has to acknowledge."""
        busy = self.forwarder is not None and self.forwarder.stats().in_flight > 0
        return not self.control_tokens and not busy

    def _pump(self) -> None:
        if self.link_up and self.forwarder is not None:
            self.forwarder.pump()

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_reason = signal.Signals(signum).name
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
            if changed:
                log.warning("reload: changes to [%s] apply after a restart", "], [".join(changed))
            self.apply_config(new)
            self.shadow = shadow
            if self.link_up:
                self._publish(shadow.on_connected())
            log.info("configuration reloaded")
        self.notifier.ready()

    def _timer_condition(self, now: float) -> None:
        if self.device.state is State.LOW_POWER:
            # no link wake-ups just for this: it goes out, overdue, when the device wakes
            self.timers.pop("condition")
            return
        self.timers["condition"] = now + self.cfg.policy.condition_interval_s
        self.spool.flush()
        self.condition("periodic")

    def _timer_sensors(self, now: float) -> None:
        self.timers["sensors"] = now + SENSOR_PERIOD_S
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

    def _timer_status(self, now: float) -> None:
        self.timers.pop("status", None)
        self.publish_status(force=True)

    def _timer_watchdog(self, now: float) -> None:
        assert self.notifier.watchdog_interval is not None
        self.timers["watchdog"] = now + self.notifier.watchdog_interval
        self.notifier.watchdog()

    def gps_now(self) -> datetime | None:
        """GPS time now: the last receiver time carried forward on the monotonic clock."""
        if self.last_gps_time is None:
            return None
        t, at = self.last_gps_time
        return t + timedelta(seconds=self.clock.monotonic() - at)

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
            },
            "spool": {
                "backlog": st.backlog,
                "dropped": st.dropped,
                "recovered_corrupt": st.recovered_corrupt,
            },
            "link": {"up": self.link_up, "drops": self.link_drops},
        }


def build_parts(app: App) -> Parts:
    """The real parts named by the config; each imported only when chosen."""
    from hw.gps import GpsReader
    from hw.power import open_power
    from hw.sensors import open_battery, open_motion, open_temperature
    from tracker.uplink import Uplink

    cfg = app.cfg
    uplink = Uplink(cfg.aws, cfg.device.thing_name, app.post)
    gps = GpsReader(
        cfg.gps.url,
        on_data=app.on_gps_bytes,
        on_status=lambda up, detail: app.post(ev.GpsPort(up, detail)),
        baudrate=cfg.gps.baudrate,
        detect_baud=cfg.gps.detect_baud,
        timeout=None,  # block until bytes come: a receiver in standby costs no wake-ups
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


def install_signals(post: Callable[[ev.Event], None]) -> None:
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
    app = App(cfg, config_path=args.config)
    install_signals(app.post)
    try:
        app.attach(build_parts(app))
        app.run()
    finally:
        started = time.monotonic()
        app.shutdown()
        log.debug("shutdown took %.2f s", time.monotonic() - started)
    return 0
