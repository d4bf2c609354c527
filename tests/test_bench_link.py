"""scripts/bench_link.py's parts: the scenario days it writes and the relay that counts bytes."""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_link  # noqa: E402

from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder  # noqa: E402


def test_scenario_days_cover_24_hours_and_decode_to_fixes() -> None:
    fixes = bench_link.drive_fixes()
    for name in ("parked", "commuter", "delivery"):
        points = bench_link.scenario_points(name, fixes)
        assert points[0].t == 0 and 86_400 - 10 <= points[-1].t < 86_400
        assert all(b.t > a.t for a, b in itertools.pairwise(points))
        if name == "parked":
            continue
        data = bench_link.nmea(points[:500] + points[-500:])
        dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
        epochs = dec.feed(data) + dec.flush()
        got = [e.fix for e in epochs if e.fix is not None]
        assert len(got) == 1000
        assert got[0].time == bench_link.DAY0


def test_commuter_drives_two_hours_and_parks_the_rest() -> None:
    points = bench_link.scenario_points("commuter", bench_link.drive_fixes())
    moving = [p for p in points if p.speed > 1.5]
    assert 1.4 * 3600 < len(moving) * bench_link.DRIVE_STEP_S <= 2.0 * 3600  # stops at lights
    assert points[0].lat == points[-1].lat  # home again


def test_the_relay_counts_both_ways_and_an_outage_cuts_and_refuses() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def echo() -> None:
        conn, _ = server.accept()
        while data := conn.recv(4096):
            conn.sendall(data * 2)
        conn.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    relay = bench_link.Relay(server.getsockname()[1])
    try:
        c = socket.create_connection(("127.0.0.1", relay.port))
        c.sendall(b"x" * 3000)
        got = b""
        while len(got) < 6000:
            got += c.recv(65536)
        relay.outage(True)
        assert c.recv(10) == b""  # cut
        c.close()
        refused = socket.create_connection(("127.0.0.1", relay.port))
        refused.settimeout(2)
        assert refused.recv(10) == b""
        refused.close()
        time.sleep(0.1)
        (conn,) = relay.conns
        assert (conn.up, conn.down) == (3000, 6000)
        assert conn.segs >= 4 and conn.extra_segs >= 2  # 6000 bytes are 5 cellular segments
    finally:
        relay.close()
        server.close()
