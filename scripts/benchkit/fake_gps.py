"""A GPS receiver emulated on a real pseudo-terminal: the app opens `.path` like /dev/ttyAMA0.

Owns one pty pair, a stable symlink to its device and an optional playback thread; used by tests,
the bench and end-to-end runs. Imports only the standard library and `hw.protocol_replay`.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import tempfile
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from hw.protocol_replay import DEFAULT_MAX_GAP, line_time, pacing, split_recording


class FakeGps:
    """A pty whose slave side is a GPS serial device; bytes written to the master are "received".

    `.path` is a symlink in a private directory that always points at the current device, like a
    udev rule's /dev/gps0: `unplug()` closes the pty (readers see `SerialException`) and removes
    the link, `replug()` makes a new pty (a new /dev/pts/N) and points the link at it.
    """

    def __init__(self, link_dir: str | os.PathLike[str] | None = None, name: str = "gps0") -> None:
        self._own_dir = link_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="fakegps-") if link_dir is None else link_dir)
        self.path = str(self._dir / name)
        self._lock = threading.Lock()
        self._master = -1
        self._slave = -1
        self.device = ""
        self._stop = threading.Event()
        self._player: threading.Thread | None = None
        self._played = threading.Event()
        self.written = 0
        self._commands = bytearray()
        self.replug()

    # -- plugging -------------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        """True while the pty exists."""
        return self._master >= 0

    def replug(self) -> None:
        """Plug the receiver (back) in: a new pty pair, the link re-pointed at its device."""
        with self._lock:
            if self._master >= 0:
                return
            master, slave = os.openpty()
            # Raw at once, so bytes written before the app opens the port are not cooked (CR->NL)
            # or echoed back; keeping the slave open also keeps them buffered.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.device = os.ttyname(slave)
            tmp = self.path + ".new"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.device, tmp)
            os.replace(tmp, self.path)

    def unplug(self) -> None:
        """Pull the receiver out: close the pty (the app's next read fails) and remove the link."""
        with self._lock:
            if os.path.lexists(self.path):
                os.unlink(self.path)
            for fd in (self._master, self._slave):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = -1

    # -- sending --------------------------------------------------------------------------------

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Send bytes as the receiver would; blocks while the app is not reading, up to `timeout`.

        Raises:
            OSError: EIO when unplugged, ETIMEDOUT when the app did not read in time.
        """
        self._write(data, timeout, None)

    def _write(self, data: bytes, timeout: float, cancel: threading.Event | None) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            with self._lock:
                if self._master < 0:
                    raise OSError(errno.EIO, "fake GPS is unplugged")
                self._drain()
                try:
                    n = os.write(self._master, view[:4096])
                except BlockingIOError:
                    n = 0
                master = self._master
            self.written += n
            view = view[n:]
            if view:
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    raise OSError(errno.ETIMEDOUT, "the app did not read the fake GPS in time")
                select.select([], [master], [], min(left, 0.05))

    def _drain(self) -> None:
        """Keep what the app wrote to the receiver (the last 64 KB), so its writes never block."""
        try:
            while chunk := os.read(self._master, 4096):
                self._commands += chunk
        except OSError:
            pass
        del self._commands[:-65536]

    def commands(self) -> bytes:
        """What the app has written to the receiver since the last call (power commands...)."""
        with self._lock:
            if self._master >= 0:
                self._drain()
            data = bytes(self._commands)
            self._commands.clear()
        return data

    def play(self, data: bytes, *, speed: float = 0.0, max_gap: float = DEFAULT_MAX_GAP) -> None:
        """Send a recording from a thread, paced like `replay://` (`speed=0`: as fast as read).

        `wait_played()` returns when it is all sent; lines sent while unplugged are lost.
        """
        self.stop_playing()
        lines = split_recording(data)
        offsets = pacing([line_time(line) for line in lines], speed=speed, max_gap=max_gap)
        self._stop.clear()
        self._played.clear()
        self._player = threading.Thread(
            target=self._play, args=(lines, offsets), name="fakegps-player", daemon=True
        )
        self._player.start()

    def _play(self, lines: list[bytes], offsets: list[float]) -> None:
        start = time.monotonic()
        try:
            for line, offset in zip(lines, offsets, strict=True):
                if self._stop.wait(max(0.0, start + offset - time.monotonic())):
                    return
                try:
                    self._write(line, 5.0, self._stop)
                except OSError:
                    if self._stop.is_set():
                        return
        finally:
            self._played.set()

    def wait_played(self, timeout: float | None = None) -> bool:
        """Wait until `play()` has sent everything; True if it has."""
        return self._played.wait(timeout)

    def stop_playing(self) -> None:
        """Stop a playback thread and wait for it."""
        self._stop.set()
        if self._player is not None:
            self._player.join()
            self._player = None

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop playing, close the pty and remove the link (and its directory if ours)."""
        self.stop_playing()
        self.unplug()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FakeGps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
