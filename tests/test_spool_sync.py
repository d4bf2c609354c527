"""The spool's promise rests on one fsync per committed fix (SQLite synchronous = FULL in WAL
mode): a SIGKILL cannot show its absence, a power cut would. Counted with strace, for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUTS = """
import sys, datetime
from tracker.spool.store import Spool
from tracker.core.fix import Fix
t = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc)
with Spool(sys.argv[1]) as s:
    for i in range(int(sys.argv[2])):
        s.put(Fix(t, 1.0 + i * 1e-5, 2.0), "distance")
"""


def syncs(tmp_path: Path, puts: int) -> int:
    """fsync/fdatasync calls made by a process that opens a fresh spool and puts `puts` fixes."""
    work = tmp_path / f"n{puts}"
    work.mkdir()
    trace = work / "trace"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace),
         sys.executable, "-c", PUTS, str(work / "spool.db"), str(puts)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:100]}")
    assert done.returncode == 0, done.stderr
    return sum(1 for line in trace.read_text().splitlines() if "sync(" in line)


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace (Debian package strace)")
def test_every_put_is_synced_to_disk_before_it_returns(tmp_path: Path) -> None:
    overhead = syncs(tmp_path, 0)  # opening and closing
    assert syncs(tmp_path, 40) - overhead >= 40
