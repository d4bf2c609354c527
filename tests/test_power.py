"""GPS power backends: command bytes checked against published strings, URL choice, errors."""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

import pytest

from hw import power
from hw.power import (
    PMTK_STANDBY,
    PMTK_WAKE,
    UBX_BACKUP,
    UBX_GNSS_START,
    UBX_GNSS_STOP,
    GpioPower,
    NoPower,
    SerialCommandPower,
    SimPower,
    open_power,
    ubx_frame,
)
from tracker.core.errors import HardwareError
from tracker.receiver import nmea

# Byte strings as published for u-blox receivers (u-center "Messages" view, widely quoted).
KNOWN_UBX = {
    "CFG-RST GNSS stop": "B5 62 06 04 04 00 00 00 08 00 16 74",
    "CFG-RST GNSS start": "B5 62 06 04 04 00 00 00 09 00 17 76",
    "RXM-PMREQ backup": "B5 62 02 41 08 00 00 00 00 00 02 00 00 00 4D 3B",
    "MON-VER poll": "B5 62 0A 04 00 00 0E 34",
    "CFG-RXM power save": "B5 62 06 11 02 00 08 01 22 92",
    "CFG-RXM continuous": "B5 62 06 11 02 00 08 00 21 91",
}


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_ubx_constants_match_published_bytes() -> None:
    assert hexbytes(KNOWN_UBX["CFG-RST GNSS stop"]) == UBX_GNSS_STOP
    assert hexbytes(KNOWN_UBX["CFG-RST GNSS start"]) == UBX_GNSS_START
    assert hexbytes(KNOWN_UBX["RXM-PMREQ backup"]) == UBX_BACKUP


@pytest.mark.parametrize("name", sorted(KNOWN_UBX))
def test_ubx_checksum_reproduces_known_frames(name: str) -> None:
    raw = hexbytes(KNOWN_UBX[name])
    cls, msg_id, length = raw[2], raw[3], int.from_bytes(raw[4:6], "little")
    assert ubx_frame(cls, msg_id, raw[6 : 6 + length]) == raw


def test_pmtk_sentences_have_valid_checksums() -> None:
    assert PMTK_STANDBY == b"$PMTK161,0*28\r\n"
    for sentence in (PMTK_STANDBY, PMTK_WAKE):
        body, _, _ = sentence.decode().strip().lstrip("$").partition("*")
        assert nmea.frame(body) == sentence  # the receiver's framing and checksum
    gsa = "GPGSA,A,3,20,16,09,03,07,10,23,19,27,30,,,1.64,0.98,1.31"
    assert nmea.frame(gsa) == f"${gsa}*05\r\n".encode()


def test_serial_command_backends_write_through_the_port() -> None:
    written: list[bytes] = []
    pmtk = open_power("pmtk://", write=written.append)
    assert isinstance(pmtk, SerialCommandPower)
    assert pmtk.is_on
    pmtk.set(False)
    assert not pmtk.is_on
    pmtk.set(True)
    assert written == [PMTK_STANDBY, PMTK_WAKE]
    written.clear()
    ubx = open_power("ubx://", write=written.append)
    ubx.set(False)
    ubx.set(True)
    assert written == [UBX_GNSS_STOP, UBX_GNSS_START]
    written.clear()
    backup = open_power("ubx://?mode=backup", write=written.append)
    backup.set(False)
    backup.set(True)
    assert written[0] == UBX_BACKUP
    assert written[1] and set(written[1]) == {0xFF}


def test_write_failure_is_a_hardware_error() -> None:
    def broken(data: bytes) -> None:
        raise OSError(5, "Input/output error")

    p = open_power("pmtk://", write=broken)
    with pytest.raises(HardwareError, match="standby \\(pmtk\\) failed"):
        p.set(False)
    assert p.is_on  # unchanged: the receiver did not get the command


def test_none_and_sim() -> None:
    none = open_power("none://")
    assert isinstance(none, NoPower)
    none.set(False)
    assert not none.is_on
    sim = open_power("sim://")
    assert isinstance(sim, SimPower)
    sim.set(False)
    sim.set(True)
    assert sim.calls == [False, True]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("usb://x", "unknown GPS power URL 'usb://x': use one of none://, pmtk://"),
        ("pmtk://", "pmtk:// power control needs the GPS port"),
        ("ubx://?mode=sleep", "bad ubx:// mode 'sleep'"),
        ("gpio://gpiochip0/x", "bad GPIO URL"),
        ("gpio:///17", "bad GPIO URL"),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, message: str) -> None:
    write = None if url == "pmtk://" else (lambda b: None)
    with pytest.raises(HardwareError) as info:
        open_power(url, write=write)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_gpio_without_gpiod_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import fails as if not installed
    with pytest.raises(HardwareError, match="needs the gpiod package"):
        open_power("gpio://gpiochip0/17")


class FakeRequest:
    def __init__(self, path: str, config: dict[int, Any]) -> None:
        self.path, self.config = path, config
        self.values: list[tuple[int, Any]] = []
        self.released = False

    def set_value(self, line: int, value: Any) -> None:
        self.values.append((line, value))

    def release(self) -> None:
        self.released = True


def fake_gpiod() -> types.ModuleType:
    """The parts of libgpiod 2's Python API the backends use (this machine has no GPIO chip)."""
    mod = types.ModuleType("gpiod")
    line = types.SimpleNamespace(
        Direction=enum.Enum("Direction", "INPUT OUTPUT"),
        Value=enum.Enum("Value", "INACTIVE ACTIVE"),
        Edge=enum.Enum("Edge", "RISING FALLING BOTH"),
    )
    mod.line = line  # type: ignore[attr-defined]
    mod.LineSettings = lambda **kw: kw  # type: ignore[attr-defined]
    mod.requests = []  # type: ignore[attr-defined]

    def request_lines(path: str, consumer: str, config: dict[int, Any]) -> FakeRequest:
        if "missing" in path:
            raise FileNotFoundError(2, "No such file or directory")
        req = FakeRequest(path, config)
        mod.requests.append(req)
        return req

    mod.request_lines = request_lines  # type: ignore[attr-defined]
    return mod


def test_gpio_enable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    gpiod = fake_gpiod()
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    p = open_power("gpio://gpiochip0/17?active_low=1")
    assert isinstance(p, GpioPower)
    req = gpiod.requests[0]
    assert req.path == "/dev/gpiochip0"
    assert req.config[17]["active_low"] is True
    assert req.config[17]["direction"] is gpiod.line.Direction.OUTPUT
    p.set(False)
    p.set(True)
    assert [v.name for _, v in req.values] == ["INACTIVE", "ACTIVE"]
    p.close()
    assert req.released


def test_gpio_missing_chip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", fake_gpiod())
    with pytest.raises(HardwareError, match="GPS enable line /dev/missing 4"):
        open_power("gpio://missing/4")


def test_backend_module_does_not_import_gpiod() -> None:
    assert "gpiod" not in vars(power)
