"""A recording `Effects` for the state machine's tests: every call the machine makes, in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracker.core.fix import Fix


@dataclass
class EffectsLog:
    """An `Effects` that remembers every call, in order."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    gps_on: bool = False
    link_wanted: bool = True

    def gps_power(self, on: bool) -> None:
        self.gps_on = on
        self.calls.append(("gps_power", on))

    def record(self, fix: Fix, trigger: str) -> None:
        self.calls.append(("record", (fix, trigger)))

    def condition(self, reason: str) -> None:
        self.calls.append(("condition", reason))

    def link(self, wanted: bool) -> None:
        self.link_wanted = wanted
        self.calls.append(("link", wanted))

    def of(self, kind: str) -> list[Any]:
        """The arguments of every call of one kind."""
        return [arg for k, arg in self.calls if k == kind]
