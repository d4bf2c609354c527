"""The GPS port: `open_gps(url)` and `GpsReader`, the thread that keeps reading (baud: hw.baud).

Owns the serial handle and its reopen policy; hands raw bytes on through callbacks. Must not
import the AWS SDK, the spool or the state machine.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import serial
from serial.serialutil import SerialException

from hw.baud import count_valid_nmea, detect_baudrate
from hw.port import PortFactory, SerialPort
from tracker.core.clock import Clock, SystemClock
from tracker.core.errors import GpsError

log = logging.getLogger(__name__)

# pyserial looks up `<package>.protocol_<scheme>` for a URL: this adds replay:// and gpsd://.
if "hw" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("hw")

_FIX_URL = "check [gps] url and that the receiver is plugged in"
_REASONS = {
    errno.ENOENT: f"no such device; {_FIX_URL}",
    errno.ENODEV: f"no such device; {_FIX_URL}",
    errno.ENXIO: f"no such device; {_FIX_URL}",
    errno.EACCES: "permission denied; run the tracker as a user in the dialout group",
    errno.EPERM: "permission denied; run the tracker as a user in the dialout group",
    errno.EBUSY: "port busy; stop what holds it (gpsd, a serial console) or read gpsd://",
    errno.ENOTTY: "not a serial port; check [gps] url",
    errno.EIO: f"input/output error; {_FIX_URL}",
}


def is_device_path(url: str) -> bool:
    """True for a plain serial device path (a real port with a baud rate), False for a URL."""
    return "://" not in url


def _one_line(text: str) -> str:
    return " ".join(text.split())


def open_gps(url: str, *, baudrate: int = 9600, timeout: float | None = 0.5) -> serial.SerialBase:
    """Open the GPS port named by a serial path or a URL (replay://, gpsd://, loop://, spy://...).

    Raises:
        GpsError: one line naming the port, the problem and what to check.
    """
    if not url.strip():
        raise GpsError(
            "GPS port is not set; put a serial path (/dev/ttyAMA0), replay://FILE or "
            "gpsd://HOST:PORT in [gps] url"
        )
    try:
        if is_device_path(url):
            return serial.Serial(url, baudrate=baudrate, timeout=timeout)
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
    except SerialException as exc:
        if is_device_path(url) and exc.errno in _REASONS:
            reason = _REASONS[exc.errno]
        elif is_device_path(url) and str(exc).startswith("Could not configure port"):
            reason = _REASONS[errno.ENOTTY]
        else:
            reason = _one_line(exc.strerror or str(exc)) if exc.errno else _one_line(str(exc))
        raise GpsError(f"cannot open GPS port {url}: {reason}") from exc
    except ValueError as exc:
        text = str(exc)
        if text.startswith("invalid URL"):
            scheme = url.split("://", 1)[0]
            raise GpsError(
                f"cannot open GPS port {url}: unknown scheme {scheme!r}; use a serial path, "
                "replay://FILE, gpsd://HOST:PORT or a pyserial URL (loop://, socket://, spy://)"
            ) from exc
        raise GpsError(f"cannot open GPS port {url}: {_one_line(text)}") from exc


def backoff_delays(
    *, first: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """Reopen waits: `first` doubling up to `cap`, each a random 50-100 % of that (jitter)."""
    base = first
    while True:
        yield base * (0.5 + 0.5 * rand())
        base = min(base * 2, cap)


@dataclass
class ReaderStats:
    """Counters a status report or a test can read."""

    opens: int = 0
    losses: int = 0
    open_failures: int = 0
    errors: int = 0
    bytes: int = 0
    baudrate: int = 0
    detections: int = 0


class _Detect(Exception):
    """Internal: bytes but no valid NMEA for too long at this rate."""


PROBE_TIMEOUT = 0.5  # read timeout while trying baud rates


class GpsReader:
    """A thread that opens the GPS port by URL, passes every byte to `on_data` and survives unplugs.

    `on_status(up, detail)` is called when the port opens and when it is lost (or first fails to
    open). Losses are retried forever with `backoff_delays`; `wait(seconds) -> stopped` sleeps
    interruptibly (default: the stop event's wait). Callbacks run on the reader thread.
    """

    def __init__(
        self,
        url: str,
        on_data: Callable[[bytes], None],
        on_status: Callable[[bool, str], None],
        *,
        baudrate: int = 9600,
        timeout: float | None = 0.5,
        detect_baud: bool = True,
        detect_after: float = 3.0,
        open_port: PortFactory = open_gps,
        count_valid: Callable[[bytes], int] = count_valid_nmea,
        clock: Clock | None = None,
        wait: Callable[[float], bool] | None = None,
        rand: Callable[[], float] = random.random,
        backoff_first: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.url = url
        self._on_data = on_data
        self._on_status = on_status
        self._baudrate = baudrate
        self._timeout = timeout
        self._detect = detect_baud and is_device_path(url)
        self._detect_after = detect_after
        self._open_port = open_port
        self._count_valid = count_valid
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._rand = rand
        self._backoff = (backoff_first, backoff_cap)
        self._port: SerialPort | None = None
        self._port_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stats = ReaderStats(baudrate=baudrate)

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="gps-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop reading and close the port; returns within about one read timeout."""
        self._stop.set()
        with self._port_lock:
            port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            try:
                cancel()
            except Exception:  # a port half-closed by an unplug
                log.debug("cancel_read failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None

    def is_alive(self) -> bool:
        """True while the reader thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def write(self, data: bytes) -> None:
        """Send bytes to the receiver (power and configuration commands) from any thread.

        Raises:
            GpsError: the port is not open right now (unplugged, reopening) or the write failed.
        """
        with self._port_lock:
            port = self._port
        if port is None:
            raise GpsError(f"GPS port {self.url} is not open; command not sent")
        try:
            port.write(data)
        except OSError as exc:  # SerialException too; the reader will notice the loss
            raise GpsError(f"writing to GPS port {self.url} failed: {_one_line(str(exc))}") from exc

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Open, read, reopen with backoff: until `stop()`. Never raises."""
        delays: Iterator[float] | None = None
        reported_down = False
        while not self._stop.is_set():
            try:
                port = self._open_port(self.url, baudrate=self._baudrate, timeout=self._timeout)
            except Exception as exc:
                self.stats.open_failures += 1
                if not isinstance(exc, OSError):
                    self.stats.errors += 1
                    log.exception("GPS port %s: unexpected error opening", self.url)
                if not reported_down:
                    self._status(False, _one_line(str(exc)))
                    reported_down = True
                else:
                    log.debug("GPS port %s still down: %s", self.url, exc)
            else:
                delays = None
                reported_down = False
                detail = self._pump(port)
                if self._stop.is_set():
                    break
                self._status(False, detail)
                reported_down = True
            if delays is None:
                delays = backoff_delays(
                    first=self._backoff[0], cap=self._backoff[1], rand=self._rand
                )
            if self._wait(next(delays)):
                break

    def _pump(self, port: SerialPort) -> str:
        """Read `port` until it fails or stop(); returns why it stopped. Closes the port."""
        self.stats.opens += 1
        self._set_port(port)
        self._status(True, f"{self.url} open at {self._baudrate} baud")
        try:
            while not self._stop.is_set():
                try:
                    self._read_until_detect(port)
                except _Detect:
                    port.close()
                    self._set_port(None)
                    port = self._run_detection()
                    self._set_port(port)
            return "stopped"
        except Exception as exc:
            if isinstance(exc, OSError):
                self.stats.losses += 1
                log.debug("GPS port %s lost: %s", self.url, exc)  # the loop says it
            else:
                self.stats.errors += 1
                log.exception("GPS port %s: unexpected error reading", self.url)
            return f"{self.url} lost: {_one_line(str(exc))}; reopening"
        finally:
            self._set_port(None)
            try:
                port.close()
            except Exception:
                log.debug("closing a lost port failed", exc_info=True)

    def _read_until_detect(self, port: SerialPort) -> None:
        """Pass whole lines on as they come; raise _Detect when baud detection is due."""
        pending = bytearray()
        window = bytearray()
        checking = self._detect
        since = self._clock.monotonic()
        while not self._stop.is_set():
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(waiting)
                self.stats.bytes += len(data)
                pending += data
                end = pending.rfind(b"\n") + 1
                # Whole lines only (fewer, cleaner events); a partial tail waits for one timeout.
                if end or len(pending) > 4096:
                    end = end or len(pending)
                    self._deliver(bytes(pending[:end]))
                    del pending[:end]
            elif pending:
                self._deliver(bytes(pending))
                pending.clear()
            if checking:
                window += data
                del window[:-8192]
                if self._count_valid(bytes(window)) > 0:
                    checking = False
                elif len(window) >= 64 and self._clock.monotonic() - since >= self._detect_after:
                    if pending:
                        self._deliver(bytes(pending))
                    raise _Detect
        if pending:
            self._deliver(bytes(pending))

    def _run_detection(self) -> SerialPort:
        """Find the rate that yields NMEA; on failure reopen at the configured rate."""
        self.stats.detections += 1
        log.info("GPS port %s: no valid NMEA at %d baud, trying others", self.url, self._baudrate)
        probe = self._timeout or PROBE_TIMEOUT  # each rate is tried for a bounded time
        reads = max(1, math.ceil(2.0 / probe))
        found = detect_baudrate(
            self.url,
            self._baudrate,
            open_port=self._open_port,
            timeout=probe,
            reads=reads,
            count_valid=self._count_valid,
            stopped=self._stop.is_set,
        )
        if found is None:
            # Keep the configured rate; try again after a longer window (a receiver set to a
            # binary protocol never shows NMEA at any rate).
            self._detect_after = min(self._detect_after * 10, 600.0)
            return self._open_port(self.url, baudrate=self._baudrate, timeout=self._timeout)
        if found.baudrate != self._baudrate:
            log.warning(
                "GPS port %s: receiver talks at %d baud, not %d; set [gps] baudrate = %d",
                self.url,
                found.baudrate,
                self._baudrate,
                found.baudrate,
            )
        self._baudrate = self.stats.baudrate = found.baudrate
        self._detect = False
        if getattr(found.port, "timeout", self._timeout) != self._timeout:
            found.port.timeout = self._timeout  # type: ignore[attr-defined]  # no idle wake-ups
        self._deliver(found.data)
        return found.port

    # -- helpers --------------------------------------------------------------------------------

    def _set_port(self, port: SerialPort | None) -> None:
        with self._port_lock:
            self._port = port

    def _deliver(self, data: bytes) -> None:
        try:
            self._on_data(data)
        except Exception:
            self.stats.errors += 1
            log.exception("GPS data handler failed")

    def _status(self, up: bool, detail: str) -> None:
        try:
            self._on_status(up, detail)
        except Exception:
            self.stats.errors += 1
            log.exception("GPS status handler failed")
