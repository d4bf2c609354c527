"""GPS receiver power: standby and wake by serial command (MediaTek PMTK, u-blox UBX) or an enable
GPIO line, chosen by URL (`open_power`). Must not import the AWS SDK, the spool or the machine;
`gpiod` is imported only when a gpio:// backend is opened.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from tracker.core.errors import HardwareError

Write = Callable[[bytes], None]

SCHEMES = ("none", "pmtk", "ubx", "gpio", "sim")

# MediaTek (MT3339, MT3333, PA1616...): standby until any byte arrives on RX.
PMTK_STANDBY = b"$PMTK161,0*28\r\n"
# A harmless test sentence; its first byte is the wake-up, the rest is acknowledged with PMTK001.
PMTK_WAKE = b"$PMTK000*32\r\n"


def ubx_frame(cls: int, msg_id: int, payload: bytes = b"") -> bytes:
    """A UBX frame: sync chars, class, id, little-endian length, payload, 8-bit Fletcher sum."""
    body = struct.pack("<BBH", cls, msg_id, len(payload)) + payload
    ck_a = ck_b = 0
    for byte in body:
        ck_a = (ck_a + byte) & 0xFF
        ck_b = (ck_b + ck_a) & 0xFF
    return b"\xb5\x62" + body + bytes((ck_a, ck_b))


# UBX-CFG-RST (0x06 0x04): navBbrMask 0 (hot start), resetMode 0x08 GNSS stop / 0x09 GNSS start.
# The receiver stays on the UART and keeps its ephemeris: the next start is a hot start.
UBX_GNSS_STOP = ubx_frame(0x06, 0x04, struct.pack("<HBB", 0x0000, 0x08, 0))
UBX_GNSS_START = ubx_frame(0x06, 0x04, struct.pack("<HBB", 0x0000, 0x09, 0))
# UBX-RXM-PMREQ (0x02 0x41), 8-byte form: duration 0 (until woken), flags backup.
UBX_BACKUP = ubx_frame(0x02, 0x41, struct.pack("<II", 0, 0x02))
# In backup mode an edge on UART RX wakes the receiver; the first bytes are lost.
UBX_WAKE = b"\xff" * 8


class GpsPower(Protocol):
    """Switches the receiver between tracking and its lowest-power state that keeps its almanac."""

    @property
    def is_on(self) -> bool: ...

    def set(self, on: bool) -> None: ...


class NoPower:
    """No power control: the receiver stays on; `set` only records the wish."""

    def __init__(self) -> None:
        self.is_on = True

    def set(self, on: bool) -> None:
        self.is_on = on


class SimPower:
    """A bench backend: records every call."""

    def __init__(self) -> None:
        self.is_on = True
        self.calls: list[bool] = []

    def set(self, on: bool) -> None:
        self.calls.append(on)
        self.is_on = on


class SerialCommandPower:
    """Sends a standby command and a wake-up sequence through the GPS port's `write`."""

    def __init__(self, name: str, write: Write, standby: bytes, wake: bytes) -> None:
        self.name = name
        self._write = write
        self._standby = standby
        self._wake = wake
        self.is_on = True

    def set(self, on: bool) -> None:
        try:
            self._write(self._wake if on else self._standby)
        except OSError as exc:
            what = "wake" if on else "standby"
            raise HardwareError(f"GPS {what} ({self.name}) failed: {exc}") from exc
        self.is_on = on


class GpioPower:
    """Drives the receiver's enable (or power switch) line through the GPIO character device."""

    def __init__(self, chip: str, line: int, *, active_low: bool = False) -> None:
        gpiod = import_gpiod("gpio://")
        self._line = line
        path = chip if chip.startswith("/") else f"/dev/{chip}"
        try:
            settings = gpiod.LineSettings(
                direction=gpiod.line.Direction.OUTPUT,
                active_low=active_low,
                output_value=gpiod.line.Value.ACTIVE,
            )
            self._request = gpiod.request_lines(
                path, consumer="tracker-gps", config={line: settings}
            )
            self._active, self._inactive = gpiod.line.Value.ACTIVE, gpiod.line.Value.INACTIVE
        except OSError as exc:
            raise HardwareError(f"GPS enable line {path} {line}: {exc}") from exc
        self.is_on = True

    def set(self, on: bool) -> None:
        try:
            self._request.set_value(self._line, self._active if on else self._inactive)
        except OSError as exc:
            raise HardwareError(f"GPS enable line {self._line}: {exc}") from exc
        self.is_on = on

    def close(self) -> None:
        self._request.release()


def import_gpiod(url: str) -> Any:
    try:
        import gpiod  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise HardwareError(
            f"{url} needs the gpiod package (libgpiod 2): install the tracker's gpio extra"
            " (/opt/tracker/venv/bin/pip install 'gpiod>=2')"
        ) from exc
    return gpiod


def parse_gpio(url: str) -> tuple[str, int, dict[str, list[str]]]:
    """`gpio://gpiochip0/17?active_low=1` -> ("gpiochip0", 17, query)."""
    parts = urlsplit(url)
    line = parts.path.strip("/")
    if not parts.netloc or not line.isdigit():
        raise HardwareError(f"bad GPIO URL {url!r}: use gpio://CHIP/LINE, e.g. gpio://gpiochip0/17")
    return parts.netloc, int(line), parse_qs(parts.query)


def flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter (1/true/yes)."""
    return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes", "on")


def open_power(url: str, write: Write | None = None) -> GpsPower:
    """The GPS power backend named by `url`; `write` sends bytes to the GPS port."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise HardwareError(
            f"unknown GPS power URL {url!r}: use one of " + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "none":
        return NoPower()
    if scheme == "sim":
        return SimPower()
    if scheme == "gpio":
        chip, line, query = parse_gpio(url)
        return GpioPower(chip, line, active_low=flag(query, "active_low"))
    if write is None:
        raise HardwareError(f"{scheme}:// power control needs the GPS port; use a serial [gps] url")
    if scheme == "pmtk":
        return SerialCommandPower("pmtk", write, PMTK_STANDBY, PMTK_WAKE)
    mode = parse_qs(urlsplit(url).query).get("mode", ["stop"])[-1]
    if mode == "stop":
        return SerialCommandPower("ubx", write, UBX_GNSS_STOP, UBX_GNSS_START)
    if mode == "backup":
        return SerialCommandPower("ubx backup", write, UBX_BACKUP, UBX_WAKE)
    raise HardwareError(f"bad ubx:// mode {mode!r}: use ubx://?mode=stop or ubx://?mode=backup")
