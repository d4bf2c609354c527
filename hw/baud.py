"""Baud-rate detection: try the usual rates on a serial GPS port until one shows valid NMEA.

Opens ports only through the factory it is given (`hw.gps.open_gps` in the reader and in
`tracker check`), so it does not import `hw.gps`; must not import the AWS SDK, the spool or the
state machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hw.port import PortFactory, SerialPort

log = logging.getLogger(__name__)

BAUD_RATES = (4800, 9600, 38400, 115200)


def candidate_rates(configured: int) -> list[int]:
    """Baud rates to try, the configured one first."""
    return [configured, *(r for r in BAUD_RATES if r != configured)]


def count_valid_nmea(data: bytes) -> int:
    """Checksum-valid NMEA sentences in `data` (the framer is imported on first use)."""
    from tracker.receiver.nmea import count_valid_sentences

    return count_valid_sentences(data)


@dataclass
class Detected:
    """The rate that yielded valid NMEA, the port open at it, and what was read while listening."""

    baudrate: int
    port: SerialPort
    data: bytes


def detect_baudrate(
    url: str,
    configured: int,
    *,
    open_port: PortFactory,
    timeout: float = 0.5,
    reads: int = 6,
    count_valid: Callable[[bytes], int] = count_valid_nmea,
    stopped: Callable[[], bool] = lambda: False,
) -> Detected | None:
    """Try each usual rate (configured first) for up to `reads` reads; keep one with valid NMEA.

    Returns None when no rate yields a checksum-valid sentence (or when `stopped()`).
    Raises:
        GpsError: when the port cannot be opened at all.
    """
    for rate in candidate_rates(configured):
        port = open_port(url, baudrate=rate, timeout=timeout)
        data = bytearray()
        keep = False
        try:
            for _ in range(reads):
                if stopped():
                    return None
                data += port.read(512)
                if count_valid(bytes(data)) > 0:
                    log.info("GPS port %s: found NMEA at %d baud", url, rate)
                    keep = True
                    return Detected(rate, port, bytes(data))
        finally:
            if not keep:
                port.close()
    log.warning("GPS port %s: no valid NMEA at %s baud", url, "/".join(map(str, BAUD_RATES)))
    return None
