"""sd_notify over a real unix datagram socket, and journald-style log lines."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from tracker.daemon.systemd import JournalFormatter, Notifier


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
        assert n.enabled and n.watchdog_interval == 10.0
        n.ready()
        n.watchdog()
        n.status("state=idle")
        got = [sock.recv(100).decode() for _ in range(3)]
    assert got == ["READY=1", "WATCHDOG=1", "STATUS=state=idle"]


def test_notifier_is_a_no_op_without_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready()  # nothing to send to, nothing raised


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval is None


def test_journal_lines_carry_syslog_priority() -> None:
    rec = logging.LogRecord(
        "tracker.link.uplink", logging.WARNING, "x", 1, "link down: %s", ("eof",), None
    )
    assert JournalFormatter(journal=True).format(rec) == "<4>uplink: link down: eof"
    assert JournalFormatter(journal=False).format(rec) == "WARNING uplink: link down: eof"
