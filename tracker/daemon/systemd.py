"""systemd integration without a dependency: sd_notify (READY, WATCHDOG, STATUS) and
journald-friendly log lines. Standard library only; a no-op when not run under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

# syslog priorities journald reads from a "<N>" prefix on stderr lines
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; every method is a no-op without one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._addr = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ok = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # ping at half the watchdog period, as sd_watchdog_enabled(3) advises
        self.watchdog_interval: float | None = int(usec) / 2e6 if ok else None

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, message: str) -> None:
        if not self._addr:
            return
        addr = self._addr
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(addr)
                sock.sendall(message.encode())
        except OSError as exc:
            logging.getLogger(__name__).debug("sd_notify failed: %s", exc)

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message` under journald, `LEVEL logger: message` on a terminal."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        # a module's own name without its layer: "tracker.link.uplink" logs as "uplink"
        name = record.name
        if name.startswith("tracker."):
            name = name.rsplit(".", 1)[1]
        name = name.removeprefix("hw.")
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{name}: {msg}"
        return f"{record.levelname:<7} {name}: {msg}"


def setup_logging(level: str) -> None:
    """Log to stderr, one line per record, in the form journald understands when under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_log_level(level)


def set_log_level(level: str) -> None:
    """The root logger's level (at start and on SIGHUP)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    # one line per state change is the app's job; the library's own chatter stays out
    logging.getLogger("transitions").setLevel(max(logging.WARNING, root.level))
