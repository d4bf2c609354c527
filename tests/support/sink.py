"""What a `hw.gps.GpsReader` hands over, collected for tests that wait on conditions, not time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Sink:
    """`on_data` and `on_status` for a reader; `wait` until a condition on them holds."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.statuses: list[tuple[bool, str]] = []
        self._cond = threading.Condition()

    def on_data(self, data: bytes) -> None:
        with self._cond:
            self.data += data
            self._cond.notify_all()

    def on_status(self, up: bool, detail: str) -> None:
        with self._cond:
            self.statuses.append((up, detail))
            self._cond.notify_all()

    def states(self) -> list[bool]:
        """Up/down reports in order."""
        return [up for up, _ in self.statuses]

    def ups(self) -> int:
        return sum(self.states())

    def downs(self) -> int:
        return len(self.statuses) - self.ups()

    def wait(
        self, check: Callable[[], bool], what: str, poke: Callable[[], None] | None = None
    ) -> None:
        """Wait up to 20 s for `check`; `poke` (if given) runs every 0.1 s meanwhile."""
        deadline = time.monotonic() + 20
        with self._cond:
            while not check():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                if poke is not None:
                    poke()
                self._cond.wait(0.1 if poke is not None else deadline - time.monotonic())
