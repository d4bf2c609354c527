#!/usr/bin/env python3
"""How often the daemon wakes up: context switches and CPU per minute while tracking and in
low power, next to a baseline serial reader that polls with a 0.5 s timeout.

Runs the real `tracker run` against Mosquitto (mutual TLS, loopback) with a real pty GPS fed at
real speed from a parked recording; the GPS is put in standby by PMTK command (`pmtk://`), and
the fake receiver goes quiet when it is told to, as a real one would. Takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchkit.broker import Broker  # noqa: E402
from benchkit.daemon import daemon_config  # noqa: E402
from benchkit.fake_gps import FakeGps  # noqa: E402
from benchkit.pki import Pki  # noqa: E402

RECORDING = ROOT / "tests" / "data" / "nmea" / "signalk" / "gps.log"  # parked, 1 Hz, 20 min
STANDBY = b"$PMTK161,0*28"


def switches(pid: int) -> tuple[int, float]:
    """Context switches of every thread of `pid`, and its CPU seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total, cpu


def per_minute(pid: int, seconds: float) -> tuple[float, float]:
    s0, c0 = switches(pid)
    time.sleep(seconds)
    s1, c1 = switches(pid)
    return (s1 - s0) * 60 / seconds, (c1 - c0) * 60 / seconds


def config(work: Path, broker: Broker, gps: FakeGps) -> Path:
    path = work / "tracker.toml"
    path.write_text(daemon_config(broker, gps.path, work / "spool.db", {
        "aws": {"flow_control": True},
        "policy": {"still_timeout_s": 30, "max_interval_s": 30},
        "power": {"gps": "pmtk://"},
        "log": {"level": "warning"},
    }))  # fmt: skip
    return path


def wait_for(sock: socket.socket, prefix: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            return False
        if msg.startswith(prefix):
            return True
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of each measurement")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tracker-wakeups-"))
    broker = Broker(Pki(work / "pki"), work / "broker")
    broker.start()
    gps = FakeGps()
    baseline_gps = FakeGps(name="gps1")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(work / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tracker", "run", "-c", str(config(work, broker, gps))]
    daemon = subprocess.Popen(cmd, env=env)
    poller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import serial, sys\n"
                "port = serial.Serial(sys.argv[1], 9600, timeout=0.5)\n"
                "while True:\n    port.read(256)\n"
            ),
            baseline_gps.path,
        ]
    )
    try:
        if not wait_for(notify, "READY=1", 30):
            print("the daemon did not start", file=sys.stderr)
            return 1
        time.sleep(1.0)  # the reader opens the pty
        gps.play(RECORDING.read_bytes(), speed=1.0)
        if not wait_for(notify, "STATUS=state=reporting", 60):
            print("no fix reported", file=sys.stderr)
            return 1
        tracking = per_minute(daemon.pid, args.seconds / 2)
        if not wait_for(notify, "STATUS=state=low_power", 180):
            print("never reached low power", file=sys.stderr)
            return 1
        deadline = time.monotonic() + 10
        while STANDBY not in gps.commands() and time.monotonic() < deadline:
            time.sleep(0.1)
        gps.stop_playing()  # the receiver is in standby: it sends nothing
        time.sleep(2.0)
        low = per_minute(daemon.pid, args.seconds)
        base = per_minute(poller.pid, args.seconds / 2)
        print(f"{'per minute':<34}{'context switches':>18}{'CPU s':>10}")
        print(f"{'tracker, tracking (1 Hz NMEA)':<34}{tracking[0]:>18.0f}{tracking[1]:>10.3f}")
        print(f"{'tracker, low_power (GPS standby)':<34}{low[0]:>18.1f}{low[1]:>10.3f}")
        print(f"{'baseline: reader polling at 0.5 s':<34}{base[0]:>18.0f}{base[1]:>10.3f}")
        return 0
    finally:
        for proc in (daemon, poller):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gps.close()
        baseline_gps.close()
        broker.close()
        notify.close()


if __name__ == "__main__":
    raise SystemExit(main())
