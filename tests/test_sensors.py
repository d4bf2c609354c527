"""Battery, temperature and motion backends on a fake sysfs tree (real files) and simulations."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from test_power import fake_gpiod

from hw.sensors import (
    BatteryReading,
    GpioMotion,
    NoBattery,
    SimMotion,
    open_battery,
    open_motion,
    open_temperature,
    percent_from_voltage,
)
from tracker.core.clock import FakeClock
from tracker.core.errors import HardwareError


def supply(root: Path, name: str, **files: str) -> Path:
    d = root / "class" / "power_supply" / name
    d.mkdir(parents=True)
    for key, value in files.items():
        (d / key).write_text(value + "\n")
    return d


def test_sysfs_battery_full_reading(tmp_path: Path) -> None:
    supply(
        tmp_path, "BAT0", type="Battery", capacity="81", voltage_now="3912000", status="Discharging"
    )
    supply(tmp_path, "AC0", type="Mains", online="0")
    supply(tmp_path, "usb", type="USB", online="1")
    reading = open_battery("sysfs://BAT0", root=tmp_path).read()
    assert reading == BatteryReading(
        percent=81.0, voltage=3.912, charging=False, external_power=True, status="Discharging"
    )
    assert reading.as_dict()["voltage"] == 3.912


def test_sysfs_battery_missing_files_read_none(tmp_path: Path) -> None:
    d = supply(tmp_path, "BAT1", type="Battery")
    battery = open_battery("sysfs://BAT1", root=tmp_path)
    assert battery.read() == BatteryReading()
    (d / "status").write_text("Charging\n")
    (d / "voltage_now").write_text("4100000\n")
    reading = battery.read()
    assert reading is not None
    assert reading.charging is True
    assert reading.percent == percent_from_voltage(4.1)  # no capacity file: from the voltage


def test_sysfs_battery_named_ac_and_garbage(tmp_path: Path) -> None:
    supply(tmp_path, "BAT0", capacity="garbage", status="Full")
    supply(tmp_path, "ACAD", online="1")
    reading = open_battery("sysfs://BAT0?ac=ACAD", root=tmp_path).read()
    assert reading is not None
    assert (reading.percent, reading.charging, reading.external_power) == (None, False, True)


def test_sysfs_battery_not_found_names_the_choices(tmp_path: Path) -> None:
    supply(tmp_path, "axp20x-battery")
    with pytest.raises(HardwareError, match="available: axp20x-battery") as info:
        open_battery("sysfs://BAT0", root=tmp_path)
    assert "\n" not in str(info.value)


def test_percent_from_voltage_curve() -> None:
    assert percent_from_voltage(3.0) == 0
    assert percent_from_voltage(4.3) == 100
    assert percent_from_voltage(3.65) == 20
    assert percent_from_voltage(7.4, cells=2) == 30
    values = [percent_from_voltage(v / 100) for v in range(320, 430)]
    assert values == sorted(values)


def test_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    thermo = open_temperature("sysfs://thermal_zone0", root=tmp_path)
    assert thermo.read() is None
    (zone / "temp").write_text("47312\n")
    assert thermo.read() == 47.312
    with pytest.raises(HardwareError, match="thermal_zone9 not found"):
        open_temperature("sysfs://thermal_zone9", root=tmp_path)


def test_none_backends() -> None:
    assert isinstance(open_battery("none://"), NoBattery)
    assert open_battery("none://").read() is None
    assert open_temperature("none://").read() is None
    open_motion("none://", lambda: None).close()


def test_sim_values_and_steps() -> None:
    clock = FakeClock(0)
    battery = open_battery(
        "sim://?battery=3.9&percent=80&charging=0&steps=600:14,1800:30", clock=clock
    )
    assert battery.read() == BatteryReading(percent=80, voltage=3.9, charging=False)
    clock.advance(599)
    assert battery.read().percent == 80  # type: ignore[union-attr]
    clock.advance(1)
    assert battery.read().percent == 14  # type: ignore[union-attr]
    clock.advance(1200)
    assert battery.read().percent == 30  # type: ignore[union-attr]
    battery.set(percent=None, voltage=3.6, external_power=True)  # type: ignore[attr-defined]
    reading = battery.read()
    assert reading is not None
    assert (reading.percent, reading.external_power) == (10.0, True)
    with pytest.raises(HardwareError, match="no value 'colour'"):
        battery.set(colour=1)  # type: ignore[attr-defined]
    assert open_temperature("sim://?temp=25").read() == 25.0


@pytest.mark.parametrize(
    ("opener", "url", "message"),
    [
        (open_battery, "file://x", "unknown battery URL 'file://x'"),
        (open_battery, "sysfs://", "bad battery URL"),
        (open_battery, "sim://?percent=lots", "bad number for percent"),
        (open_battery, "sim://?steps=10", "bad steps"),
        (open_temperature, "sysfs://", "bad temperature URL"),
        (open_temperature, "i2c://x", "unknown temperature URL"),
    ],
)
def test_bad_urls(opener, url: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HardwareError, match=message):
        opener(url)


def test_sim_motion_calls_back_until_closed() -> None:
    seen: list[int] = []
    motion = open_motion("sim://", lambda: seen.append(1))
    assert isinstance(motion, SimMotion)
    motion.trigger()
    motion.close()
    motion.trigger()
    assert seen == [1]


def test_motion_bad_url() -> None:
    with pytest.raises(HardwareError, match="unknown motion URL"):
        open_motion("spi://x", lambda: None)
    with pytest.raises(HardwareError, match="bad GPIO URL"):
        open_motion("gpio://chip/", lambda: None)


class EdgeRequest:
    """A GPIO line request whose edges the test fires by hand."""

    def __init__(self) -> None:
        self.edge = threading.Event()
        self.released = False

    def wait_edge_events(self, timeout: float) -> bool:
        return self.edge.wait(timeout)

    def read_edge_events(self) -> list[object]:
        self.edge.clear()
        return [object()]

    def release(self) -> None:
        self.released = True


def test_gpio_motion_thread_posts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = fake_gpiod()
    request = EdgeRequest()
    configs: list[dict[int, dict[str, object]]] = []

    def request_lines(path: str, consumer: str, config: dict[int, dict[str, object]]) -> object:
        configs.append(config)
        return request

    gpiod.request_lines = request_lines  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    fired = threading.Event()
    count: list[int] = []

    def on_motion() -> None:
        count.append(1)
        fired.set()

    motion = open_motion("gpio://gpiochip0/27?falling=1&holdoff_s=0", on_motion)
    assert isinstance(motion, GpioMotion)
    assert configs[0][27]["edge_detection"] is gpiod.line.Edge.FALLING
    request.edge.set()
    assert fired.wait(10)
    motion.close()
    assert request.released
    assert count == [1]


def test_gpio_motion_without_gpiod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(HardwareError, match="needs the gpiod package"):
        open_motion("gpio://gpiochip0/27", lambda: None)


class EdgeTrain:
    """Edges that arrive one by one at given monotonic times; `done` once all are read."""

    def __init__(self, times: list[float]) -> None:
        self.times = list(times)
        self.now = 0.0
        self.done = threading.Event()
        self.released = False

    def wait_edge_events(self, timeout: float) -> bool:
        if self.times:
            return True
        self.done.set()
        threading.Event().wait(min(timeout, 0.01))
        return False

    def read_edge_events(self) -> list[object]:
        self.now = self.times.pop(0)
        return [object()]

    def release(self) -> None:
        self.released = True


def test_gpio_motion_holds_off_a_burst_of_edges() -> None:
    gpiod = fake_gpiod()
    train = EdgeTrain([10.0, 10.3, 10.9, 11.2, 11.25, 15.0])
    gpiod.request_lines = lambda path, consumer, config: train  # type: ignore[attr-defined]
    fired: list[float] = []
    motion = GpioMotion(
        "gpiochip0", 27, lambda: fired.append(train.now), holdoff_s=1.0, gpiod=gpiod,
        monotonic=lambda: train.now,
    )  # fmt: skip
    assert train.done.wait(10)
    motion.close()
    assert fired == [10.0, 11.2, 15.0]  # one wake-up per second of a vibrating vehicle
