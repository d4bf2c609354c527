"""What a test leaves running: Python threads, child processes, this process's listening ports."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# pids and thread names that a session-scoped fixture owns on purpose
ALLOWED_PIDS: set[int] = set()
ALLOWED_THREAD_PREFIXES: set[str] = set()


def threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and t.is_alive()
        and not any(t.name.startswith(p) for p in ALLOWED_THREAD_PREFIXES)
    }


def children() -> set[int]:
    """Live (not zombie) child processes of this process."""
    kids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for pid in text.split():
            p = int(pid)
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                kids.add(p)
    return kids - ALLOWED_PIDS


def listening_ports() -> set[int]:
    """TCP ports this process listens on (sockets it owns, from /proc/net/tcp{,6})."""
    inodes = set()
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def settle(check, before, seconds: float = 2.0):  # type: ignore[no-untyped-def]
    """Give stopping threads/processes a moment to finish; return what is still new."""
    deadline = time.monotonic() + seconds
    while True:
        extra = check() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)
