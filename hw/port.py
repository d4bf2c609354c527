"""What the GPS reader and the baud-rate detector need of a serial port: the protocol both use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class SerialPort(Protocol):
    """What the reader needs of a pyserial port."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


PortFactory = Callable[..., SerialPort]
