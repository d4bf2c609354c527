"""Battery, temperature and motion sensors, chosen by URL: Linux sysfs (power_supply, thermal),
a GPIO motion interrupt, or a scriptable simulation. Must not import the AWS SDK, the spool or the
machine; `gpiod` is imported only when a gpio:// motion backend is opened.

Readings return None for what is unknown and never raise for a missing optional file.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from hw.power import flag, import_gpiod, parse_gpio
from tracker.core.clock import Clock, SystemClock
from tracker.core.errors import HardwareError

log = logging.getLogger(__name__)

SYSFS_ROOT = Path("/sys")
# open-circuit voltage of one Li-ion cell against state of charge, for gauges without `capacity`
LI_ION_CURVE = ((3.30, 0.0), (3.60, 10.0), (3.70, 30.0), (3.80, 55.0), (3.95, 75.0), (4.20, 100.0))


@dataclass(frozen=True)
class BatteryReading:
    """One battery reading; None where the gauge does not say."""

    percent: float | None = None
    voltage: float | None = None  # volts
    charging: bool | None = None
    external_power: bool | None = None
    status: str | None = None  # the kernel's words: Charging, Discharging, Full, Not charging

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Battery(Protocol):
    def read(self) -> BatteryReading | None: ...


class Thermometer(Protocol):
    def read(self) -> float | None: ...


class MotionSensor(Protocol):
    def close(self) -> None: ...


def percent_from_voltage(volts: float, cells: int = 1) -> float:
    """State of charge estimated from a resting Li-ion voltage (piecewise linear)."""
    v = volts / cells
    if v <= LI_ION_CURVE[0][0]:
        return 0.0
    for (v0, p0), (v1, p1) in itertools.pairwise(LI_ION_CURVE):
        if v <= v1:
            return round(p0 + (p1 - p0) * (v - v0) / (v1 - v0), 1)
    return 100.0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip() or None
    except OSError:  # missing file, or a driver that refuses the read (EIO, ENODATA)
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


class NoBattery:
    """No gauge: nothing to report."""

    def read(self) -> BatteryReading | None:
        return None


class SysfsBattery:
    """A `power_supply` battery: capacity, voltage_now, status; external power from the
    supplies of type Mains/USB (or the one named by `?ac=NAME`)."""

    def __init__(
        self, name: str, *, root: Path = SYSFS_ROOT, ac: str | None = None, cells: int = 1
    ) -> None:
        self.base = root / "class" / "power_supply"
        self.dir = self.base / name
        self.ac = ac
        self.cells = cells
        if not self.dir.is_dir():
            found = sorted(p.name for p in self.base.iterdir()) if self.base.is_dir() else []
            raise HardwareError(
                f"battery {self.dir} not found; available: "
                f"{', '.join(found) or 'none'} (check [sensors] battery)"
            )

    def read(self) -> BatteryReading | None:
        capacity = _read_int(self.dir / "capacity")
        microvolts = _read_int(self.dir / "voltage_now")
        voltage = None if microvolts is None else microvolts / 1e6
        percent: float | None = None if capacity is None else float(min(100, max(0, capacity)))
        if percent is None and voltage is not None:
            percent = percent_from_voltage(voltage, self.cells)
        status = _read_text(self.dir / "status")
        charging = {
            "Charging": True,
            "Discharging": False,
            "Not charging": False,
            "Full": False,
        }.get(status or "")
        return BatteryReading(
            percent=percent,
            voltage=voltage,
            charging=charging,
            external_power=self._external(),
            status=status,
        )

    def _external(self) -> bool | None:
        if self.ac is not None:
            online = _read_int(self.base / self.ac / "online")
            return None if online is None else online == 1
        states = []
        try:
            supplies = sorted(self.base.iterdir())
        except OSError:
            return None
        for supply in supplies:
            if _read_text(supply / "type") in ("Mains", "USB", "USB_C", "USB_PD"):
                online = _read_int(supply / "online")
                if online is not None:
                    states.append(online == 1)
        return any(states) if states else None


class NoThermometer:
    def read(self) -> float | None:
        return None


class SysfsThermometer:
    """A `thermal_zone`: `temp` in millidegrees Celsius."""

    def __init__(self, zone: str, *, root: Path = SYSFS_ROOT) -> None:
        self.path = root / "class" / "thermal" / zone / "temp"
        if not self.path.parent.is_dir():
            raise HardwareError(
                f"thermal zone {self.path.parent} not found (check [sensors] temperature)"
            )

    def read(self) -> float | None:
        millideg = _read_int(self.path)
        return None if millideg is None else millideg / 1000.0


class SimSensors:
    """Scriptable battery and temperature for bench runs and tests.

    Set values directly (`set(percent=14)`) or give `steps`: (seconds since open, percent) pairs
    applied as the clock passes them.
    """

    def __init__(
        self,
        *,
        percent: float | None = None,
        voltage: float | None = None,
        charging: bool | None = None,
        external_power: bool | None = None,
        temp: float | None = None,
        steps: list[tuple[float, float]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.percent, self.voltage, self.temp = percent, voltage, temp
        self.charging, self.external_power = charging, external_power
        self.clock = clock or SystemClock()
        self.opened = self.clock.monotonic()
        self.steps = sorted(steps or [])

    def set(self, **values: Any) -> None:
        for key, value in values.items():
            if not hasattr(self, key) or key in ("clock", "opened", "steps"):
                raise HardwareError(f"sim sensors have no value {key!r}")
            setattr(self, key, value)

    def read(self) -> BatteryReading | None:
        elapsed = self.clock.monotonic() - self.opened
        while self.steps and self.steps[0][0] <= elapsed:
            self.percent = self.steps.pop(0)[1]
        percent = self.percent
        if percent is None and self.voltage is not None:
            percent = percent_from_voltage(self.voltage)
        return BatteryReading(
            percent=percent,
            voltage=self.voltage,
            charging=self.charging,
            external_power=self.external_power,
        )

    def temperature(self) -> SimThermometer:
        return SimThermometer(self)


class SimThermometer:
    def __init__(self, sensors: SimSensors) -> None:
        self.sensors = sensors

    def read(self) -> float | None:
        return self.sensors.temp


class NoMotion:
    def close(self) -> None:
        pass


class SimMotion:
    """A motion sensor a test or bench run fires by hand: `trigger()` calls back at once."""

    def __init__(self, on_motion: Callable[[], None]) -> None:
        self.on_motion = on_motion
        self.closed = False

    def trigger(self) -> None:
        if not self.closed:
            self.on_motion()

    def close(self) -> None:
        self.closed = True


class GpioMotion:
    """An accelerometer's interrupt line: a thread waits for edges and calls `on_motion`, at most
    once per `holdoff_s` (a moving vehicle fires many)."""

    def __init__(
        self,
        chip: str,
        line: int,
        on_motion: Callable[[], None],
        *,
        falling: bool = False,
        holdoff_s: float = 1.0,
        gpiod: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        gpiod = gpiod or import_gpiod("gpio:// motion")
        path = chip if chip.startswith("/") else f"/dev/{chip}"
        edge = gpiod.line.Edge.FALLING if falling else gpiod.line.Edge.RISING
        try:
            self._request = gpiod.request_lines(
                path,
                consumer="tracker-motion",
                config={
                    line: gpiod.LineSettings(
                        direction=gpiod.line.Direction.INPUT, edge_detection=edge
                    )
                },
            )
        except OSError as exc:
            raise HardwareError(f"motion line {path} {line}: {exc}") from exc
        self._on_motion = on_motion
        self._holdoff = holdoff_s
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="motion", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -self._holdoff
        while not self._stop.is_set():
            try:
                if not self._request.wait_edge_events(0.5):
                    continue
                self._request.read_edge_events()
            except OSError as exc:
                log.warning("motion line: %s; motion wake-ups disabled", exc)
                return
            now = self._monotonic()
            if now - last >= self._holdoff:
                last = now
                self._on_motion()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._request.release()


def _split(url: str, kind: str, schemes: tuple[str, ...]) -> tuple[str, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise HardwareError(
            f"unknown {kind} URL {url!r}: use one of " + ", ".join(f"{s}://" for s in schemes)
        )
    return parts.scheme, parts.netloc + parts.path.rstrip("/"), parse_qs(parts.query)


def _num(query: dict[str, list[str]], key: str, url: str) -> float | None:
    if key not in query:
        return None
    try:
        return float(query[key][-1])
    except ValueError:
        raise HardwareError(f"bad number for {key} in {url!r}") from None


def _steps(query: dict[str, list[str]], url: str) -> list[tuple[float, float]]:
    out = []
    for item in ",".join(query.get("steps", [])).split(","):
        t, sep, p = item.partition(":")
        try:
            if item:
                out.append((float(t), float(p if sep else "x")))
        except ValueError:
            raise HardwareError(f"bad steps in {url!r}: use steps=SECONDS:PERCENT,...") from None
    return out


def open_sim(url: str, clock: Clock | None = None) -> SimSensors:
    """`sim://?battery=3.9&percent=80&temp=25&charging=0&external=1&steps=600:14,1800:30`."""
    _, _, q = _split(url, "sim sensor", ("sim",))
    tri = {k: (flag(q, k) if k in q else None) for k in ("charging", "external")}
    return SimSensors(
        percent=_num(q, "percent", url),
        voltage=_num(q, "battery", url),
        temp=_num(q, "temp", url),
        charging=tri["charging"],
        external_power=tri["external"],
        steps=_steps(q, url),
        clock=clock,
    )


def open_battery(url: str, *, root: Path = SYSFS_ROOT, clock: Clock | None = None) -> Battery:
    """The battery gauge named by `url`: none://, sysfs://NAME[?ac=NAME&cells=N], sim://?..."""
    scheme, name, q = _split(url, "battery", ("none", "sysfs", "sim"))
    if scheme == "none":
        return NoBattery()
    if scheme == "sim":
        return open_sim(url, clock)
    if not name:
        raise HardwareError(f"bad battery URL {url!r}: use sysfs://NAME, e.g. sysfs://BAT0")
    cells = _num(q, "cells", url)
    return SysfsBattery(
        name, root=root, ac=q.get("ac", [None])[-1], cells=int(cells) if cells else 1
    )


def open_temperature(url: str, *, root: Path = SYSFS_ROOT) -> Thermometer:
    """The temperature sensor named by `url`: none://, sysfs://thermal_zoneN, sim://?temp=C."""
    scheme, name, _ = _split(url, "temperature", ("none", "sysfs", "sim"))
    if scheme == "none":
        return NoThermometer()
    if scheme == "sim":
        return open_sim(url).temperature()
    if not name:
        raise HardwareError(f"bad temperature URL {url!r}: use sysfs://thermal_zone0")
    return SysfsThermometer(name, root=root)


def open_motion(url: str, on_motion: Callable[[], None]) -> MotionSensor:
    """The motion interrupt named by `url`: none://, gpio://CHIP/LINE[?falling=1], sim://.

    `on_motion` runs on the sensor's thread: it must only post an event.
    """
    scheme, _, q = _split(url, "motion", ("none", "gpio", "sim"))
    if scheme == "none":
        return NoMotion()
    if scheme == "sim":
        return SimMotion(on_motion)
    chip, line, q = parse_gpio(url)
    holdoff = _num(q, "holdoff_s", url)
    return GpioMotion(
        chip,
        line,
        on_motion,
        falling=flag(q, "falling"),
        holdoff_s=1.0 if holdoff is None else holdoff,
    )
