"""The device's state machine: when the GPS is on, when fixes are reported, when it sleeps.

Pure: decisions from events, the policy and an injected monotonic clock; every effect goes through
an injected `Effects` object, and the state's timer through the loop's scheduler. Must not import
serial, awsiot, awscrt or hw.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from types import SimpleNamespace
from typing import Any, Protocol

from transitions import Machine

from tracker.core.clock import Clock
from tracker.core.config import PolicyConfig
from tracker.core.fix import Fix
from tracker.core.scheduler import Scheduler
from tracker.device.policy import ReportPolicy
from tracker.receiver.epoch import Epoch


class State(str, Enum):
    IDLE = "idle"
    ACQUIRING_FIX = "acquiring_fix"
    REPORTING = "reporting"
    LOW_POWER = "low_power"


IDLE, ACQUIRING_FIX, REPORTING, LOW_POWER = (
    State.IDLE,
    State.ACQUIRING_FIX,
    State.REPORTING,
    State.LOW_POWER,
)
_ASLEEP = [IDLE, LOW_POWER]
HEARTBEAT_MARGIN_S = 60.0  # heartbeat reports come this much under heartbeat_s apart: a wake
# may take up to a minute longer to a fix than the last one and still beat the keep-alive ping
HEARTBEAT_LEAD_MAX = 0.05  # share of heartbeat_s a wake may come early, at most

# The transition table. A trigger with no row for the current state is ignored.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "boot", "source": IDLE, "dest": ACQUIRING_FIX},
    {"trigger": "retry", "source": IDLE, "dest": ACQUIRING_FIX},
    {"trigger": "fix_accepted", "source": ACQUIRING_FIX, "dest": REPORTING},
    {"trigger": "fix_timeout", "source": ACQUIRING_FIX, "dest": LOW_POWER, "conditions": "dozing"},
    {"trigger": "fix_timeout", "source": ACQUIRING_FIX, "dest": IDLE},
    {"trigger": "fix_lost", "source": REPORTING, "dest": ACQUIRING_FIX},
    {"trigger": "rest", "source": REPORTING, "dest": LOW_POWER, "conditions": "battery_is_low"},
    {"trigger": "rest", "source": REPORTING, "dest": LOW_POWER, "conditions": "settled_still"},
    {"trigger": "battery_low", "source": [IDLE, ACQUIRING_FIX, REPORTING], "dest": LOW_POWER},
    {"trigger": "battery_ok", "source": LOW_POWER, "dest": ACQUIRING_FIX},
    {"trigger": "heartbeat", "source": LOW_POWER, "dest": ACQUIRING_FIX},
    {"trigger": "motion", "source": _ASLEEP, "dest": ACQUIRING_FIX, "unless": "battery_is_low"},
    {"trigger": "external_power", "source": _ASLEEP, "dest": ACQUIRING_FIX},
    {"trigger": "wake", "source": _ASLEEP, "dest": ACQUIRING_FIX},
]

# what fires each trigger (for the README's trigger table)
TRIGGER_CAUSES = {
    "boot": "`start()`",
    "retry": "timer: the fix back-off is over",
    "fix_accepted": "a fix passed the gates (HDOP, satellites, settle time)",
    "fix_timeout": "timer: no accepted fix within fix_timeout_s",
    "fix_lost": "timer: no accepted fix for fix_timeout_s while reporting",
    "rest": "after each fix while reporting",
    "battery_low": "`on_battery`: below battery_low_pct and not charging",
    "battery_ok": "`on_battery`: at battery_ok_pct or charging",
    "heartbeat": "timer: heartbeat_s in low power",
    "motion": "`on_motion` (motion sensor)",
    "external_power": "`on_external_power(True)`",
    "wake": "`on_wake` (SIGUSR1)",
}

TIMER = "device"  # the name of the state's timer in the loop's scheduler
# what each state's timer fires when it runs out
TIMEOUT_TRIGGERS = {
    IDLE: "retry",
    ACQUIRING_FIX: "fix_timeout",
    REPORTING: "fix_lost",
    LOW_POWER: "heartbeat",
}

# the condition message sent when low power is left by this trigger (heartbeat: none)
EXIT_REASONS = {
    "battery_ok": "battery_ok",
    "external_power": "external_power_on",
    "motion": "low_power_exit",
    "wake": "low_power_exit",
}


class Effects(Protocol):
    """What the machine asks the outside world to do; the daemon implements it."""

    def gps_power(self, on: bool) -> None: ...
    def record(self, fix: Fix, trigger: str) -> None: ...
    def condition(self, reason: str) -> None: ...
    def link(self, wanted: bool) -> None: ...


def reject_reason(epoch: Epoch, fix: Fix, cfg: PolicyConfig) -> str | None:
    """Why a fix fails the quality gates (HDOP, satellites), or None when it passes."""
    hdop = fix.hdop if fix.hdop is not None else epoch.hdop
    if hdop is not None and hdop > cfg.max_hdop:
        return "hdop"
    sats = fix.sats if fix.sats is not None else epoch.sats_used
    if sats is not None and sats < cfg.min_sats:
        return "sats"
    return None


class Device:
    """The state machine, driven by the daemon's event loop only; each state's timer is booked
    with the loop's scheduler (`timers`), which calls the device back when it runs out."""

    state: State
    trigger: Callable[..., bool]  # added by transitions.Machine

    def __init__(
        self, cfg: PolicyConfig, effects: Effects, clock: Clock, timers: Scheduler
    ) -> None:
        self.cfg = cfg
        self.effects = effects
        self.clock = clock
        self.timers = timers
        self.policy = ReportPolicy(cfg)
        self._gps_on: bool | None = None
        self._settle_until: float | None = None  # GPS time (POSIX s): ignore fixes until then
        self._last_fix: Fix | None = None
        self._last_fix_mono: float | None = None
        self._battery_low = False
        self._force: str | None = None  # a report owed whatever the policy says
        self._hold_until: float | None = None  # GPS time (POSIX s): stay awake after a wake-up
        self._hold_pending = False
        self._quiet_cycle = False  # inside a heartbeat wake: no enter/exit conditions
        self._low_power_reason: str | None = None
        self._woke_at: float | None = None  # monotonic: this heartbeat wake began
        self._acquiring_at: float | None = None  # monotonic: the receiver was last asked for a fix
        self._acquired_in: float | None = None  # how long the last fix took to come
        self._backoff_s = cfg.fix_backoff_s
        self._entered = clock.monotonic()
        self.counters: dict[str, int] = {}
        self.seconds_in: dict[str, float] = {s.value: 0.0 for s in State}
        self.machine = Machine(
            model=self,
            states=[{"name": s, "on_enter": f"_enter_{s.value}"} for s in State],
            transitions=TRANSITIONS,
            initial=IDLE,
            queued=True,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=True,
            after_state_change="_after_change",
        )
        self.machine.get_state(LOW_POWER).on_exit.append("_exit_low_power")

    # ---- inputs --------------------------------------------------------------------------------
    def start(self) -> None:
        """Power the receiver and look for a fix."""
        self.trigger("boot")

    def reconfigure(self, cfg: PolicyConfig) -> None:
        """Apply new policy settings (SIGHUP, shadow); running timers keep their deadlines."""
        self.cfg = cfg
        self.policy.reconfigure(cfg)

    def on_epoch(self, epoch: Epoch) -> None:
        """One decoded receiver cycle, with or without a fix."""
        self._count("epochs")
        fix = epoch.fix
        if fix is None or self.state not in (ACQUIRING_FIX, REPORTING):
            return
        reason = reject_reason(epoch, fix, self.cfg)
        if reason is None and self._settle_until is None:
            self._settle_until = fix.time.timestamp() + self.cfg.settle_s
        if reason is None and fix.time.timestamp() < (self._settle_until or 0.0):
            reason = "settle"
        if reason is not None:
            self._count(f"rejected_{reason}")
            return
        self._count("fixes_accepted")
        self._last_fix, self._last_fix_mono = fix, self.clock.monotonic()
        if self._hold_pending:
            self._hold_pending = False
            hold = self.cfg.still_radius_m / self.cfg.moving_speed_mps
            self._hold_until = fix.time.timestamp() + hold
        if self.state is ACQUIRING_FIX:
            self.trigger("fix_accepted")
        else:
            self._set_timer(self.cfg.fix_timeout_s)
        self._consider(fix)

    def on_battery(self, percent: float | None, charging: bool | None) -> None:
        """A reading: low below battery_low_pct; fine again at battery_ok_pct or when charging."""
        if percent is None and charging is None:
            return
        low = self._battery_low
        if not low and percent is not None and percent < self.cfg.battery_low_pct and not charging:
            self._battery_low = True
            if self.state is LOW_POWER:
                self.effects.condition("battery_low")
                self._low_power_reason = "battery_low"
            self.trigger("battery_low")
        elif low and (charging or (percent is not None and percent >= self.cfg.battery_ok_pct)):
            self._battery_ok("battery_ok")

    def on_external_power(self, on: bool) -> None:
        """External power came back (wakes from low power) or went away."""
        if not on:
            self.effects.condition("external_power_off")
            return
        if self._battery_low:
            self._battery_low = False
        if self.state is not LOW_POWER:  # leaving low power sends this condition itself
            self.effects.condition("external_power_on")
        self.trigger("external_power")  # from idle too: power to spare, try for a fix now

    def on_motion(self) -> None:
        """The motion sensor fired: leave low power or the fix back-off and look."""
        self._count("motion_events")
        if self.state in _ASLEEP and not self._battery_low:
            self._hold_pending = True
        self.trigger("motion")

    def on_wake(self) -> None:
        """Operator wake-up (SIGUSR1): get a fix and report it, trigger "wake"."""
        self._force = "wake"
        self._hold_pending = True
        self.trigger("wake")

    @property
    def deadline(self) -> float | None:
        """Monotonic time at which the state's timer runs out, or None before `start`."""
        return self.timers.due(TIMER)

    # ---- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for the condition message: fix timeouts, time in each state, last fix age."""
        now = self.clock.monotonic()
        seconds = dict(self.seconds_in)
        seconds[self.state.value] += now - self._entered
        out: dict[str, Any] = {"state": self.state.value, "fix_timeouts": 0, **self.counters}
        out["seconds_in"] = {k: round(v, 3) for k, v in seconds.items()}
        out["last_fix_age_s"] = (
            None if self._last_fix_mono is None else round(now - self._last_fix_mono, 3)
        )
        out["moving"] = self.policy.moving
        return out

    # ---- guards --------------------------------------------------------------------------------
    def battery_is_low(self, event: Any = None) -> bool:
        return self._battery_low

    @property
    def heartbeat_wake(self) -> bool:
        """Awake only for a heartbeat report (back to low power after it)."""
        return self._quiet_cycle

    def dozing(self, event: Any = None) -> bool:
        """Woken only for a heartbeat, or the battery is low: a failed fix goes back to sleep."""
        return self._battery_low or self._quiet_cycle

    def settled_still(self, event: Any = None) -> bool:
        """Still long enough for low power, nothing owed, no motion/wake-up hold running."""
        fix = self._last_fix
        if fix is None or self.policy.pending is not None or self._force is not None:
            return False
        if self._hold_until is not None and fix.time.timestamp() < self._hold_until:
            return False
        return self.policy.still_for(fix) >= self.cfg.still_timeout_s

    # ---- callbacks -----------------------------------------------------------------------------
    def _enter_idle(self, event: Any) -> None:
        self._gps(False)
        self._set_timer(self._backoff_s)
        # each fix timeout in a row doubles the wait, up to the heartbeat interval
        cap = max(self.cfg.fix_backoff_s, self.cfg.heartbeat_s)
        self._backoff_s = min(self._backoff_s * 2, cap)

    def _enter_acquiring_fix(self, event: Any) -> None:
        self._gps(True)
        self._set_timer(self.cfg.fix_timeout_s)
        self._acquiring_at = self.clock.monotonic()
        if event.event.name == "heartbeat":
            self._force = self._force or "heartbeat"

    def _enter_reporting(self, event: Any) -> None:
        if self._acquiring_at is not None:
            self._acquired_in = self.clock.monotonic() - self._acquiring_at
            self._acquiring_at = None
        self._backoff_s = self.cfg.fix_backoff_s
        self._set_timer(self.cfg.fix_timeout_s)

    def _enter_low_power(self, event: Any) -> None:
        self._gps(False)
        now = self.clock.monotonic()
        reported = event.event.name == "rest"  # a wake that ended in a report (not a timeout)
        self._set_timer(self.cfg.heartbeat_s - self._heartbeat_lead(now, reported))
        self._woke_at = None
        self._hold_until = None
        self._hold_pending = False
        reason = "battery_low" if self._battery_low else "low_power_enter"
        if not (self._quiet_cycle and reason == self._low_power_reason):
            self.effects.condition(reason)
        self._low_power_reason = reason
        self._quiet_cycle = False
        self.effects.link(False)

    def _exit_low_power(self, event: Any) -> None:
        self.effects.link(True)
        name = event.event.name
        self._quiet_cycle = name == "heartbeat"
        self._woke_at = self.clock.monotonic() if name == "heartbeat" else None
        if name in EXIT_REASONS:
            self.effects.condition(EXIT_REASONS[name])

    def _after_change(self, event: Any) -> None:
        now = self.clock.monotonic()
        source = State[event.transition.source].value
        self.seconds_in[source] += now - self._entered
        self._entered = now
        self._count(f"to_{self.state.value}")

    def _heartbeat_lead(self, now: float, reported: bool) -> float:
        """How much sooner than heartbeat_s the next heartbeat wake comes: the time the last
        wake took to report, plus a margin. Reports then come a little under heartbeat_s apart
        instead of heartbeat_s plus the time to a fix, so on a link kept open in low power the
        report goes just before a keep-alive ping that was due, not just after it (with
        `[aws] keepalive_s` dividing heartbeat_s: 2 pings an hour instead of 3). Before the
        first heartbeat wake, the time the last fix took to come stands in for it."""
        if self._woke_at is not None and reported:
            took = now - self._woke_at
        else:
            took = self._acquired_in or 0.0
        return min(took + HEARTBEAT_MARGIN_S, HEARTBEAT_LEAD_MAX * self.cfg.heartbeat_s)

    # ---- internals -----------------------------------------------------------------------------
    def _set_timer(self, seconds: float) -> None:
        """(Re)start the state's timer: it runs out `seconds` from now."""
        self.timers.set(TIMER, self.clock.monotonic() + seconds, self._timeout)

    def _timeout(self) -> None:
        """The state's timer ran out (called back by the scheduler)."""
        name = TIMEOUT_TRIGGERS[self.state]
        if name == "fix_timeout":
            self._count("fix_timeouts")
            self.effects.condition("no_fix")
        self.trigger(name)

    def _consider(self, fix: Fix) -> None:
        was_moving = self.policy.moving
        trigger = self.policy.consider(fix, force=self._force)
        if self._quiet_cycle and self.policy.moving and not was_moving:
            self._quiet_cycle = False  # a heartbeat wake found the asset on the move
            self.effects.condition("low_power_exit")
        if trigger is not None:
            self._force = None
            self._count(f"reports_{trigger}")
            self.effects.record(fix, trigger)
        if self.state is REPORTING:
            self.trigger("rest")

    def _battery_ok(self, reason: str) -> None:
        self._battery_low = False
        if self.state is LOW_POWER:
            self.trigger("battery_ok")
        else:
            self.effects.condition(reason)

    def _gps(self, on: bool) -> None:
        if on != self._gps_on:
            if on:
                self._settle_until = None
            self._gps_on = on
            self.effects.gps_power(on)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1


def trigger_table() -> str:
    """A Markdown table of every transition: trigger, source, destination, guard, cause."""
    rows = ["| trigger | from | to | guard | fired by |", "|---|---|---|---|---|"]
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        guard = []
        for key, prefix in (("conditions", ""), ("unless", "not ")):
            names = t.get(key, [])
            guard += [prefix + n for n in ([names] if isinstance(names, str) else names)]
        rows.append(
            f"| {t['trigger']} | {', '.join(s.value for s in sources)} | "
            f"{t['dest'].value} | {' and '.join(guard) or '-'} | {TRIGGER_CAUSES[t['trigger']]} |"
        )
    return "\n".join(rows)


def mermaid() -> str:
    """The machine as a Mermaid stateDiagram-v2, read from a built machine's own events."""
    m = Machine(
        model=SimpleNamespace(),
        states=list(State),
        transitions=TRANSITIONS,
        initial=IDLE,
        auto_transitions=False,
    )
    lines = ["stateDiagram-v2", f"  [*] --> {IDLE.value}"]
    for name, event in m.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                guards = [("" if c.target else "!") + str(c.func) for c in t.conditions]
                label = name + (f" [{' && '.join(guards)}]" if guards else "")
                lines.append(f"  {State[source].value} --> {State[str(t.dest)].value}: {label}")
    return "\n".join(lines) + "\n"
