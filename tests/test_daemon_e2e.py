"""End to end: a recording through a real pty into `tracker run`, real Mosquitto with mutual TLS.

The daemon is a child process opening the pty exactly as it would open /dev/ttyAMA0; a subscriber
plays the cloud. It must report READY over sd_notify, publish locations and conditions, stop on
SIGTERM within a few seconds, and leave nothing unacknowledged on disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.daemon import daemon_config
from benchkit.fake_gps import FakeGps
from benchkit.subscriber import Subscriber

from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder
from tracker.spool.store import Spool

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

ROOT = Path(__file__).resolve().parents[1]
RECORDING = ROOT / "tests" / "data" / "nmea" / "qtpositioning" / "nmealog.txt"
SPEED = 25


def write_config(path: Path, broker: Broker, gps: FakeGps, spool: Path) -> None:
    path.write_text(daemon_config(broker, gps.path, spool, {
        "policy": {"condition_interval_s": 60},
        "sensors": {"battery": "sim://?percent=77", "temperature": "sim://?temp=30"},
        "debug": {"clock_speed": SPEED},
    }))  # fmt: skip


def opened_by(pid: int, device: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == device:
                return True
        except OSError:
            continue
    return False


def test_recording_through_a_pty_into_the_daemon_reaches_the_cloud(
    broker: Broker, gps: FakeGps, tmp_path: Path
) -> None:
    spool = tmp_path / "state" / "spool.db"
    cfg = tmp_path / "tracker.toml"
    write_config(cfg, broker, gps, spool)
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    locations = Subscriber(broker).start()
    conditions = Subscriber(broker, "dt/tracker/+/condition", client_id="cloud-conditions").start()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker", "run", "-c", str(cfg)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = []
        while "READY=1" not in messages:
            messages.append(sock.recv(4096).decode())
        deadline = time.monotonic() + 20
        while not opened_by(proc.pid, gps.device) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert opened_by(proc.pid, gps.device), "the daemon never opened the GPS pty"
        gps.play(RECORDING.read_bytes(), speed=SPEED)
        assert gps.wait_played(60)
        time.sleep(0.5)  # the last epoch closes on the next cycle; let the loop drain
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = proc.communicate(timeout=15)
        stop_s = time.monotonic() - started
        sock.settimeout(0)
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert proc.returncode == 0, err
    assert stop_s < 5, f"SIGTERM took {stop_s:.1f} s"
    with Spool(spool) as s:
        recorded = s.stats().next_seq - 1
    assert recorded > 10
    missing = locations.wait_seqs(set(range(1, recorded + 1)), timeout=10)
    locations.stop()
    assert not missing, f"fixes never received: {sorted(missing)[:20]}"
    conditions.wait_until(lambda: conditions.count() > 0, timeout=5)
    conditions.stop()
    received = locations.records()
    assert received[0].seq == 1 and received[0].trigger == "first"
    # every fix that reached the cloud is one the recording holds, at the receiver's own time
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    truth = {
        e.fix.time: e.fix
        for e in decoder.feed(RECORDING.read_bytes()) + decoder.flush()
        if e.fix is not None
    }
    for rec in received:
        fix = truth[rec.fix.time]
        assert abs(fix.lat - rec.fix.lat) < 1e-6 and abs(fix.lon - rec.fix.lon) < 1e-6
    assert any(m.startswith("STATUS=state=reporting") for m in messages), messages
    assert "STOPPING=1" in messages
    assert conditions.payloads, "no condition message reached the cloud"
    assert b'"battery"' in conditions.payloads[0]
    assert "Traceback" not in err
