"""Named deadlines on the monotonic clock, owned by the daemon's loop: each part books its own and
is called back when it comes. Pure: no clock of its own (the loop passes the time), no threads, no
I/O; must not import anything of the application.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class _Deadline:
    due: float  # monotonic time
    order: int  # when it was booked: equal deadlines run in the order they were booked
    callback: Callable[[], None]


class Scheduler:
    """One deadline per name; booking a name again moves it. Not thread-safe: the loop's own."""

    def __init__(self) -> None:
        self._deadlines: dict[str, _Deadline] = {}
        self._order = itertools.count()

    def set(self, name: str, due: float, callback: Callable[[], None]) -> None:
        """Call `callback` once `due` (monotonic time) has come, replacing any deadline of `name`
        (booked again, it goes behind the deadlines already booked for the same time)."""
        self._deadlines[name] = _Deadline(due, next(self._order), callback)

    def cancel(self, name: str) -> None:
        """Forget the deadline of `name`, if any."""
        self._deadlines.pop(name, None)

    def due(self, name: str) -> float | None:
        """When `name` is due, or None when it has no deadline."""
        d = self._deadlines.get(name)
        return None if d is None else d.due

    def __contains__(self, name: str) -> bool:
        return name in self._deadlines

    def next_due(self) -> float | None:
        """The earliest deadline: how long the loop may sleep."""
        return min((d.due for d in self._deadlines.values()), default=None)

    def run_due(self, now: float) -> None:
        """Call back every deadline due at `now`, earliest first (equal ones in booking order).

        Each deadline is forgotten before its callback runs, which may book it again. A deadline
        a callback books for `now` or earlier runs in this same call, unless its name has run in
        it already: then it waits for the next call, so a callback that books itself cannot loop.
        """
        ran: set[str] = set()
        while True:
            ready = [
                (d.due, d.order, name)
                for name, d in self._deadlines.items()
                if d.due <= now and name not in ran
            ]
            if not ready:
                return
            _, _, name = min(ready)
            ran.add(name)
            self._deadlines.pop(name).callback()
