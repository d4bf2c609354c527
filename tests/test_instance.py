"""One tracker per spool: a second `tracker run` is refused with the first one's pid, and
`tracker check --online` does not take the running tracker's client id."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.daemon import daemon_config
from benchkit.fake_gps import FakeGps

from tracker.core import files
from tracker.core.errors import TrackerError
from tracker.daemon.instance import InstanceLock, lock_path, running_pid

ROOT = Path(__file__).resolve().parents[1]


def tracker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_a_second_tracker_on_the_same_spool_is_refused_naming_the_first(
    broker: Broker, gps: FakeGps, tmp_path: Path
) -> None:
    spool = tmp_path / "state" / "spool.db"
    cfg = tmp_path / "tracker.toml"
    cfg.write_text(daemon_config(broker, gps.path, spool))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "tracker", "run", "-c", str(cfg)],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while running_pid(spool) != first.pid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running_pid(spool) == first.pid
        second = tracker("run", "-c", str(cfg))
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"another tracker (pid {first.pid}) is running" in lines[0]
        assert "systemctl stop tracker" in lines[0]
        check = tracker("check", "--online", "-c", str(cfg))
        online = [line for line in check.stdout.splitlines() if " online " in f" {line} "]
        assert online and online[0].startswith("WARN"), check.stdout
        assert f"pid {first.pid}" in online[0] and "not connecting" in online[0]
        assert first.poll() is None  # the first one was left alone
    finally:
        first.terminate()
        first.wait(timeout=15)
    assert running_pid(spool) is None  # the lock goes with the process
    assert "not connecting" not in tracker("check", "--online", "-c", str(cfg)).stdout


def test_the_lock_is_exclusive_between_open_files_and_names_the_holder(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    first = InstanceLock(spool)
    first.acquire()
    assert lock_path(spool).stat().st_mode & 0o777 == 0o600
    with pytest.raises(TrackerError, match=rf"another tracker \(pid {os.getpid()}\)"):
        InstanceLock(spool).acquire()
    first.release()
    again = InstanceLock(spool)
    again.acquire()  # free once released
    again.release()


def test_the_one_lock_file_helper_is_exclusive_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "some.lock"
    fd = files.try_lock(path)
    assert fd is not None
    try:
        assert files.try_lock(path) is None  # a second open file description is refused
    finally:
        os.close(fd)
    again = files.try_lock(path)
    assert again is not None
    os.close(again)
