"""Run tests/support/spool_writer.py in a child process and SIGKILL it after some operations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).parent / "spool_writer.py"


def run_until_killed(path: Path, seed: int, lines: int) -> list[str]:
    """Start the writer, SIGKILL it after `lines` reported operations, return everything it said."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    said: list[str] = []
    try:
        while len(said) < lines:
            line = child.stdout.readline()
            if not line:
                break
            said.append(line)
        os.kill(child.pid, signal.SIGKILL)
        # read through the same buffered objects: communicate() would skip what readline buffered
        rest, err = child.stdout.read(), child.stderr.read()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, f"writer died on its own: {err}"
    return said + rest.splitlines(keepends=True)


def parse(said: list[str]) -> tuple[list[int], set[int]]:
    """The writer's report: seqs put (in order) and seqs acknowledged."""
    put: list[int] = []
    acked: set[int] = set()
    for line in said:
        kind, *seqs = line.split()
        if kind == "P":
            put += map(int, seqs)
        else:
            acked.update(map(int, seqs))
    return put, acked
