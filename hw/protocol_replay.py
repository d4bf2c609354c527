"""pyserial handler for `replay://PATH?speed=N&loop=1&max_gap=S`: a recording paced by its own UTC.

Owns the pacing schedule (a pure function) and the replay port; imports only pyserial from outside
the standard library, never pynmea2 nor the rest of the tracker.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

SECONDS_PER_DAY = 86400.0
DEFAULT_MAX_GAP = 2.0
_MAX_BUFFER = 65536  # due bytes held at most before a read takes them
MAX_RECORDING = 64 << 20  # held in memory whole: a bigger file (or /dev/zero) would exhaust it
# A sentence whose first field (RMC, GGA, GNS, ZDA) or fifth field (GLL) is the UTC time of day.
_TIMED = re.compile(rb"[$!][A-Z]{2}(RMC|GGA|GNS|ZDA|GLL),([^*\r\n]*)")
_HHMMSS = re.compile(rb"(\d\d)(\d\d)(\d\d(?:\.\d+)?)")


def line_time(line: bytes) -> float | None:
    """Seconds since UTC midnight carried by an RMC/GGA/GLL/GNS/ZDA line, or None."""
    m = _TIMED.search(line)
    if m is None:
        return None
    fields = m.group(2).split(b",")
    index = 4 if m.group(1) == b"GLL" else 0
    if len(fields) <= index:
        return None
    t = _HHMMSS.fullmatch(fields[index])
    if t is None:
        return None
    hh, mm, ss = int(t.group(1)), int(t.group(2)), float(t.group(3))
    if hh > 23 or mm > 59 or ss >= 61.0:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def recorded_gap(before: float, after: float) -> float:
    """Recorded seconds from one time of day to the next: midnight wraps, backward jumps are 0."""
    gap = after - before
    if gap < -SECONDS_PER_DAY / 2:
        gap += SECONDS_PER_DAY
    return max(gap, 0.0)


def pacing(
    times: Sequence[float | None], *, speed: float = 1.0, max_gap: float = DEFAULT_MAX_GAP
) -> list[float]:
    """Playback offset in seconds of each line, from each line's time of day (None: untimed).

    Lines before the first timed line go at 0; an untimed line goes with the timed line before
    it; each recorded gap is divided by `speed` and capped at `max_gap` seconds of playback;
    `speed=0` plays everything at once.
    """
    offsets: list[float] = []
    now = 0.0
    last: float | None = None
    for t in times:
        if t is not None:
            if last is not None and speed > 0:
                now += min(recorded_gap(last, t) / speed, max_gap)
            last = t
        offsets.append(now)
    return offsets


def cycle_gap(*, speed: float, max_gap: float = DEFAULT_MAX_GAP) -> float:
    """Playback pause between the end of a looped recording and its restart: one 1 s epoch."""
    return 0.0 if speed == 0 else min(1.0 / speed, max_gap)


@dataclass(frozen=True)
class ReplayOptions:
    """What a `replay://` URL asks for."""

    path: str
    speed: float = 1.0
    loop: bool = False
    max_gap: float = DEFAULT_MAX_GAP


def _number(name: str, text: str, lo: float, lo_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < lo or (lo_open and value == lo):
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise SerialException(
            f"replay URL parameter {name!r} must be a number {bound}, got {text!r}"
        )
    return value


def parse_url(url: str) -> ReplayOptions:
    """Options of a `replay://PATH?speed=N&loop=0|1&max_gap=S` URL; errors name the parameter."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "replay" or not sep:
        raise SerialException(f"expected a URL of the form replay://PATH?speed=N, got {url!r}")
    path, _, query = rest.partition("?")
    if not path:
        raise SerialException("replay URL has no file path: use replay:///path/to/recording.nmea")
    speed, max_gap, loop = 1.0, DEFAULT_MAX_GAP, False
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "speed":
            speed = _number(name, value, 0.0, lo_open=False)
        elif name == "max_gap":
            max_gap = _number(name, value, 0.0, lo_open=True)
        elif name == "loop":
            if value not in ("0", "1"):
                raise SerialException(f"replay URL parameter 'loop' must be 0 or 1, got {value!r}")
            loop = value == "1"
        else:
            raise SerialException(
                f"unknown replay URL parameter {name!r}: use speed, loop or max_gap"
            )
    return ReplayOptions(path=unquote(path), speed=speed, loop=loop, max_gap=max_gap)


def split_recording(data: bytes) -> list[bytes]:
    """The lines a receiver would send, endings kept; `#` comment lines of gpsd logs dropped."""
    return [line for line in data.splitlines(keepends=True) if not line.startswith(b"#")]


class Serial(SerialBase):  # type: ignore[misc]
    """A read-only serial port that plays a recording paced by the recording's own UTC times."""

    is_open: bool
    _port: str | None
    _timeout: float | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        # Tests may set a fake clock's `monotonic` before open(); the port only measures intervals.
        self.monotonic: Callable[[], float] = time.monotonic
        self._lines: list[bytes] = []
        self._offsets: list[float] = []
        self._cycle = 0.0
        self._next = 0
        self._start = 0.0
        self._buffer = bytearray()
        self._loop = False
        self._wake = threading.Event()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        """Load the recording and start the playback clock."""
        if self.is_open:
            raise SerialException("port is already open")
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        options = parse_url(self._port)
        try:
            with open(options.path, "rb") as f:
                data = f.read(MAX_RECORDING + 1)
        except ValueError:  # a NUL in the path
            raise SerialException(f"replay path {options.path!r} holds a NUL character") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SerialException(
                f"cannot read recording {options.path}: {reason}; check the file path in [gps] url"
            ) from exc
        if len(data) > MAX_RECORDING:
            raise SerialException(
                f"recording {options.path} is over {MAX_RECORDING >> 20} MB: split it into "
                "smaller files"
            )
        self._lines = split_recording(data)
        self._offsets = pacing(
            [line_time(line) for line in self._lines], speed=options.speed, max_gap=options.max_gap
        )
        if self._offsets:
            self._cycle = self._offsets[-1] + cycle_gap(
                speed=options.speed, max_gap=options.max_gap
            )
        self._loop = options.loop and bool(self._lines)
        self._next = 0
        self._buffer.clear()
        self._wake.clear()
        self._start = self.monotonic()
        self.is_open = True

    def close(self) -> None:
        """Stop playback; a blocked read returns."""
        self.is_open = False
        self._wake.set()

    def _reconfigure_port(self, force_update: bool = False) -> None:
        """A recording has no line settings."""

    @property
    def finished(self) -> bool:
        """True once a non-looping recording has been read to its end."""
        return not self._loop and self._next >= len(self._lines) and not self._buffer

    def _due_at(self, index: int) -> float:
        cycle, i = divmod(index, len(self._lines))
        return cycle * self._cycle + self._offsets[i]

    def _collect(self) -> float | None:
        """Move due lines into the buffer; return seconds until the next line is due, or None."""
        elapsed = self.monotonic() - self._start
        n = len(self._lines)
        while self._next < n or (self._loop and n):
            if len(self._buffer) >= _MAX_BUFFER:  # a fast loop never ends: collect on demand
                return 0.0
            due = self._due_at(self._next)
            if due > elapsed:
                return due - elapsed
            self._buffer += self._lines[self._next % n]
            self._next += 1
            if self._loop and self._next >= 2 * n:  # keep the index small on long loops
                self._next -= n
                self._start += self._cycle
                elapsed -= self._cycle
        return None

    @property
    def in_waiting(self) -> int:
        """Bytes of the recording that are due and not yet read."""
        if not self.is_open:
            raise PortNotOpenError()
        self._collect()
        return len(self._buffer)

    def read(self, size: int = 1) -> bytes:
        """Up to `size` due bytes; waits for more until the port's timeout, like a real port."""
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else self.monotonic() + self._timeout
        while True:
            wait = self._collect()
            if len(self._buffer) >= min(size, _MAX_BUFFER) or not self.is_open:
                break
            left = None if deadline is None else deadline - self.monotonic()
            if left is not None and left <= 0:
                break
            if wait is None or (left is not None and left < wait):
                wait = left
            if self._wake.wait(wait):
                self._wake.clear()
                break
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def cancel_read(self) -> None:
        """Make a blocked read return at once."""
        self._wake.set()

    def write(self, data: bytes) -> int:
        """A recording does not listen: commands to the receiver are accepted and dropped."""
        if not self.is_open:
            raise PortNotOpenError()
        return len(data)

    def reset_input_buffer(self) -> None:
        """Drop what is due now."""
        self._collect()
        self._buffer.clear()

    def reset_output_buffer(self) -> None:
        """Nothing is ever queued for output."""
