"""pyserial handler for `gpsd://HOST:PORT`: the raw NMEA that gpsd relays, read like a serial port.

Owns one TCP connection to gpsd; drops gpsd's JSON lines. Imports only pyserial from outside the
standard library, never the rest of the tracker.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from urllib.parse import urlsplit

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2947
CONNECT_TIMEOUT = 3.0
WATCH = b'?WATCH={"enable":true,"nmea":true};\n'
_MAX_LINE = 4096  # gpsd lines are far shorter; a longer one is junk and is dropped


def parse_url(url: str) -> tuple[str, int]:
    """Host and port of a `gpsd://HOST:PORT` URL (both optional); SerialException if malformed."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "gpsd":
        raise SerialException(f"expected a URL of the form gpsd://HOST:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SerialException(f"gpsd URL takes only HOST:PORT, got {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise SerialException(f"gpsd URL port must be a number 1-65535, got {url!r}") from exc
    if port == 0:
        raise SerialException(f"gpsd URL port must be a number 1-65535, got {url!r}")
    return parts.hostname or DEFAULT_HOST, DEFAULT_PORT if port is None else port


def split_nmea(buffer: bytearray) -> bytes:
    """Take the complete lines out of `buffer`; return the NMEA ones, dropping gpsd's JSON."""
    end = buffer.rfind(b"\n") + 1
    if not end:
        if len(buffer) > _MAX_LINE:
            buffer.clear()
        return b""
    lines = bytes(buffer[:end]).splitlines(keepends=True)
    del buffer[:end]
    return b"".join(line for line in lines if not line.lstrip().startswith(b"{"))


class Serial(SerialBase):  # type: ignore[misc]
    """gpsd's NMEA relay as a read-only serial port; a lost connection raises SerialException."""

    is_open: bool
    _port: str | None
    _timeout: float | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._socket: socket.socket | None = None
        self._lines = bytearray()  # raw from gpsd, possibly a partial line at the end
        self._nmea = bytearray()  # NMEA ready to be read
        self._cancel_r = self._cancel_w = -1
        self._fd_lock = threading.Lock()  # cancel_read() may race close() from another thread
        self.address = (DEFAULT_HOST, DEFAULT_PORT)
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        """Connect to gpsd and ask it to relay raw NMEA."""
        if self.is_open:
            raise SerialException("port is already open")
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        self.address = parse_url(self._port)
        host, port = self.address
        try:
            sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise SerialException(
                f"cannot connect to gpsd at {host}:{port}: {exc.strerror or exc}; "
                "is gpsd running and listening there?"
            ) from exc
        try:
            sock.sendall(WATCH)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SerialException(f"gpsd at {host}:{port} refused the watch: {exc}") from exc
        self._socket = sock
        self._cancel_r, self._cancel_w = os.pipe()
        self._lines.clear()
        self._nmea.clear()
        self.is_open = True

    def close(self) -> None:
        """Close the connection to gpsd."""
        self.is_open = False
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        with self._fd_lock:
            for fd in (self._cancel_r, self._cancel_w):
                if fd >= 0:
                    os.close(fd)
            self._cancel_r = self._cancel_w = -1

    def _reconfigure_port(self, force_update: bool = False) -> None:
        """gpsd owns the receiver's line settings."""

    def _receive(self, timeout: float | None) -> bool:
        """Wait up to `timeout` for data from gpsd and take it; False if cancelled."""
        assert self._socket is not None
        ready, _, _ = select.select([self._socket.fileno(), self._cancel_r], [], [], timeout)
        if self._cancel_r in ready:
            os.read(self._cancel_r, 4096)
            return False
        if not ready:
            return True
        try:
            chunk = self._socket.recv(65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise SerialException(f"connection to gpsd lost: {exc}") from exc
        if not chunk:
            host, port = self.address
            raise SerialException(f"gpsd at {host}:{port} closed the connection")
        self._lines += chunk
        self._nmea += split_nmea(self._lines)
        return True

    @property
    def in_waiting(self) -> int:
        """NMEA bytes received and not yet read."""
        if not self.is_open:
            raise PortNotOpenError()
        self._receive(0)
        return len(self._nmea)

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes of NMEA; waits for more until the port's timeout, like a real port."""
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while len(self._nmea) < size:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._receive(left) or left == 0:
                break
        data = bytes(self._nmea[:size])
        del self._nmea[:size]
        return data

    def cancel_read(self) -> None:
        """Make a blocked read return at once."""
        with self._fd_lock:
            if self._cancel_w >= 0:
                os.write(self._cancel_w, b"x")

    def write(self, data: bytes) -> int:
        """gpsd owns the receiver: commands are not passed on."""
        if not self.is_open:
            raise PortNotOpenError()
        return len(data)

    def reset_input_buffer(self) -> None:
        """Drop NMEA received and not yet read."""
        self._nmea.clear()

    def reset_output_buffer(self) -> None:
        """Nothing is ever queued for output."""
