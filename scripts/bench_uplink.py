#!/usr/bin/env python3
"""Benchmark the store-and-forward uplink against Mosquitto on loopback, flow control ON.

Prints, side by side with a naive baseline: backlog drain time, messages and wire bytes per fix;
peak RSS draining small and large backlogs; fix-to-PUBACK latency and disk bytes per live fix.
Each measurement runs in its own child process. Usage: scripts/bench_uplink.py [--fixes N]
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.core.clock import FakeClock  # noqa: E402
from tracker.core.config import AwsConfig  # noqa: E402
from tracker.core.events import Event, LinkUp, PubAck, PubFailed  # noqa: E402
from tracker.link import codec  # noqa: E402
from tracker.link.forward import Forwarder, publish_packet_bytes  # noqa: E402
from tracker.link.uplink import Uplink  # noqa: E402
from tracker.spool.store import Spool  # noqa: E402

THING = "bench-tracker"
BASELINE_CAP = 1000
LIVE_FIXES = 300
LIVE_SPACING_S = 0.012  # below the 100 publishes/s flow control, so no throttling


def proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def disk_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Station:
    """A connected Uplink and its event queue (child side)."""

    def __init__(self, aws: AwsConfig) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.uplink = Uplink(aws, THING, self.events.put)
        self.topic = aws.topic(THING, "location")
        self.uplink.start()
        while not isinstance(self.events.get(timeout=20), LinkUp):
            pass

    def next(self, timeout: float = 60.0) -> Event:
        return self.events.get(timeout=timeout)


def child_drain(aws: AwsConfig, spool_path: str, version: int = 1) -> dict[str, Any]:
    """Drain an existing spool through the Forwarder; time, messages, bytes, peak RSS."""
    station = Station(aws)
    spool = Spool(spool_path)
    fixes = spool.stats().backlog
    fw = Forwarder(
        spool, station.uplink, station.topic, window=aws.window, batch_bytes=aws.batch_bytes,
        batch_version=version,
    )  # fmt: skip
    start = time.perf_counter()
    fw.link_up()
    fw.pump()
    while spool.stats().backlog:
        ev = station.next()
        if isinstance(ev, PubAck):
            fw.on_puback(ev.token)
        elif isinstance(ev, PubFailed):
            fw.on_failed(ev.token)
        fw.pump()
    seconds = time.perf_counter() - start
    st = fw.stats()
    station.uplink.stop()
    spool.close()
    return {
        "fixes": fixes,
        "seconds": seconds,
        "messages": st.messages_sent,
        "wire_bytes": st.wire_bytes,
        "hwm_kb": proc_status("VmHWM"),
    }


def child_naive(aws: AwsConfig, n: int) -> dict[str, Any]:
    """One JSON message per fix, all handed to the SDK at once, then every PUBACK awaited."""
    from benchkit.fixes import synthetic_fix

    from tracker.core.fix import Record

    station = Station(aws)
    payloads = [codec.encode_live(Record(i, synthetic_fix(i), "interval")) for i in range(1, n + 1)]
    start = time.perf_counter()
    for p in payloads:
        station.uplink.publish(station.topic, p)
    done = 0
    while done < n:
        if isinstance(station.next(), (PubAck, PubFailed)):
            done += 1
    seconds = time.perf_counter() - start
    wire = sum(publish_packet_bytes(station.topic, len(p)) for p in payloads)
    station.uplink.stop()
    return {
        "fixes": n,
        "seconds": seconds,
        "messages": n,
        "wire_bytes": wire,
        "hwm_kb": proc_status("VmHWM"),
    }


def child_live(aws: AwsConfig, spool_path: str | None, n: int) -> dict[str, Any]:
    """Fixes one at a time: put (fsync) -> live publish -> PUBACK; or a bare publish."""
    from benchkit.fixes import synthetic_fix

    from tracker.core.fix import Record

    station = Station(aws)
    clock = FakeClock()  # the spool's ack-flush timer sees 1 s between fixes, as at 1 Hz
    spool = Spool(spool_path, clock=clock) if spool_path else None
    fw = Forwarder(spool, station.uplink, station.topic) if spool else None
    if fw:
        fw.link_up()
    lat: list[float] = []
    written = disk_written()
    for i in range(1, n + 1):
        time.sleep(LIVE_SPACING_S)
        clock.advance(1.0)
        t0 = time.perf_counter()
        if spool and fw:
            spool.put(synthetic_fix(i), "interval")
            fw.pump()
        else:
            station.uplink.publish(
                station.topic, codec.encode_live(Record(i, synthetic_fix(i), "interval"))
            )
        while True:
            ev = station.next()
            if fw and isinstance(ev, PubAck):
                fw.on_puback(ev.token)
            if isinstance(ev, (PubAck, PubFailed)):
                break
        lat.append(time.perf_counter() - t0)
    if spool:
        spool.close()
    written = disk_written() - written
    station.uplink.stop()
    lat.sort()
    return {
        "fixes": n,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "disk_bytes_per_fix": written / n,
    }


def run_child(aws: AwsConfig, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(aws.__dict__), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1200)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def build_spool(path: Path, n: int) -> None:
    from benchkit.fixes import fill

    with Spool(path) as spool:
        fill(spool, n)


def copy_spool(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.parent.glob(src.name + "*"):
        shutil.copy2(f, dst / f.name)
    return dst / src.name


def main() -> int:
    from benchkit.broker import Broker
    from benchkit.pki import Pki

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixes", type=int, default=100_000, help="large backlog size")
    ap.add_argument("--small", type=int, default=1_000, help="small backlog size (RSS)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
        d = Path(tmp)
        pki = Pki(d / "pki", thing_name=THING)
        with Broker(pki, d / "broker") as broker:
            aws = broker.aws_config(flow_control=True)
            large, small = d / "large" / "spool.db", d / "small" / "spool.db"
            large.parent.mkdir()
            small.parent.mkdir()
            build_spool(large, args.fixes)
            build_spool(small, args.small)
            drain = run_child(aws, "drain", str(copy_spool(large, d / "run-large")))
            drain2 = run_child(aws, "drain", str(copy_spool(large, d / "run-large-v2")), "2")
            drain_small = run_child(aws, "drain", str(copy_spool(small, d / "run-small")))
            naive = run_child(aws, "naive", str(min(BASELINE_CAP, args.fixes)))
            live = run_child(aws, "live", str(d / "live.db"), str(LIVE_FIXES))
            bare = run_child(aws, "live", "", str(LIVE_FIXES))
    report(args.fixes, drain, drain_small, naive, live, bare)
    print(
        f"\nBatch version 2 (deflated): drain {drain2['seconds']:.1f} s, "
        f"{drain2['messages']:,} messages, {drain2['wire_bytes'] / drain2['fixes']:.1f} wire "
        f"bytes per fix, peak RSS {drain2['hwm_kb'] / 1024:.1f} MB"
    )
    return 0


def report(
    n: int,
    drain: dict[str, Any],
    small: dict[str, Any],
    naive: dict[str, Any],
    live: dict[str, Any],
    bare: dict[str, Any],
) -> None:
    scale = n / naive["fixes"]
    print(
        "AWS IoT Core flow control ON (100 publishes/s, 512 KB/s); Mosquitto on loopback, "
        "mutual TLS, MQTT 5, QoS 1\n"
    )
    print(f"Drain of a {n:,}-fix backlog       forwarder (batches)   naive (1 JSON/fix)")
    print(
        f"  seconds                        {drain['seconds']:>12.1f}   "
        f"{naive['seconds'] * scale:>14.1f}  (extrapolated)"
    )
    print(
        f"  messages                       {drain['messages']:>12,}   "
        f"{int(naive['messages'] * scale):>14,}"
    )
    print(
        f"  wire bytes per fix             {drain['wire_bytes'] / drain['fixes']:>12.1f}   "
        f"{naive['wire_bytes'] / naive['fixes']:>14.1f}"
    )
    print(
        f"  (naive measured on {naive['fixes']:,} fixes in {naive['seconds']:.1f} s, "
        f"extrapolated x{scale:g}; target: drain under 20 s)"
    )
    diff = (drain["hwm_kb"] - small["hwm_kb"]) / 1024
    print("\nPeak RSS (VmHWM) while draining")
    print(f"  {small['fixes']:>7,} fixes  {small['hwm_kb'] / 1024:6.1f} MB")
    print(
        f"  {drain['fixes']:>7,} fixes  {drain['hwm_kb'] / 1024:6.1f} MB   difference "
        f"{diff:+.1f} MB (target within 5 MB)"
    )
    print(
        f"  naive, {naive['fixes']:,} publishes handed to the SDK at once: "
        f"{naive['hwm_kb'] / 1024:.1f} MB"
    )
    print(f"\nLive fixes, one at a time ({live['fixes']} fixes, spool ack-flush clock at 1 Hz)")
    print("                                 spool+forwarder   bare publish")
    print(f"  fix -> PUBACK p50 (ms)         {live['p50_ms']:>12.2f}   {bare['p50_ms']:>12.2f}")
    print(f"  fix -> PUBACK p99 (ms)         {live['p99_ms']:>12.2f}   {bare['p99_ms']:>12.2f}")
    print(
        f"  disk bytes written per fix     {live['disk_bytes_per_fix']:>12.0f}   "
        f"{bare['disk_bytes_per_fix']:>12.0f}"
    )


def child(argv: list[str]) -> int:
    aws = AwsConfig(**json.loads(argv[0]))
    kind, rest = argv[1], argv[2:]
    if kind == "drain":
        result = child_drain(aws, rest[0], int(rest[1]) if len(rest) > 1 else 1)
    elif kind == "naive":
        result = child_naive(aws, int(rest[0]))
    else:
        result = child_live(aws, rest[0] or None, int(rest[1]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
