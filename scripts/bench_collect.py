#!/usr/bin/env python3
"""Benchmark `tracker collect`: sustained messages/s from Mosquitto (mTLS, loopback) into the lake.

For each variant a fresh MQTT 5 session is subscribed, then N live-fix messages are queued in the
broker while the consumer is away, then the consumer comes back and drains them; the rate counts
from the first message delivered to the last one acknowledged. Variants, in the same run:
  bare      the same client acknowledging each message at once, nothing stored (the ceiling)
  no-fsync  the collector writing the lake, without fsync (unsafe: shows what fsync costs)
  collect   the collector as shipped: fsync per group of waiting messages, then the PUBACKs
  per-msg   the collector with groups of one: an fsync per message
Usage: scripts/bench_collect.py [--messages N]
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit.broker import Broker  # noqa: E402
from benchkit.fixes import synthetic_fix  # noqa: E402
from benchkit.pki import Pki  # noqa: E402
from benchkit.subscriber import Subscriber  # noqa: E402

from tracker.core.fix import Record  # noqa: E402
from tracker.link.codec import encode_live  # noqa: E402
from tracker.twin.collect import CollectConfig, Collector, CollectSection  # noqa: E402
from tracker.twin.collect_link import CollectLink, Delivery, LinkState  # noqa: E402
from tracker.twin.lake import LakeWriter  # noqa: E402

TOPIC = "dt/tracker/bench-tracker/location"


def subscribe_once(cfg: CollectConfig) -> None:
    """Create the broker session (subscribed), then leave: messages now queue for it."""
    events: queue.Queue[object] = queue.Queue()
    link = CollectLink(cfg.aws, cfg.collect.client_id, cfg.filters(), events.put)
    link.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ev = events.get(timeout=20)
        if isinstance(ev, LinkState) and ev.reason == "subscribed":
            break
    link.stop()


def run(name: str, broker: Broker, pki: Pki, work: Path, n: int, first_seq: int) -> dict[str, Any]:
    aws = broker.aws_config(pki.cloud)
    lake_dir = work / f"lake-{name}"
    cfg = CollectConfig(aws, CollectSection(client_id=f"bench-{name}", lake=str(lake_dir)))
    subscribe_once(cfg)
    with Subscriber(broker, "unused/+", identity=pki.client, client_id="bench-publisher") as pub:
        for i in range(first_seq, first_seq + n):
            pub.publish(TOPIC, encode_live(Record(i, synthetic_fix(i), "interval")))
    lake = LakeWriter(lake_dir, sync=name != "no-fsync").open()
    collector = Collector(cfg, lake, None)
    if name == "per-msg":
        collector.group_max = 1
    if name == "bare":
        collector.store = lambda topic, payload, received: None  # type: ignore[method-assign]
    first: list[float] = []
    seen = [0]

    def post(ev: object) -> None:
        if isinstance(ev, Delivery):
            if not first:
                first.append(time.monotonic())
            seen[0] += 1
        collector.events.put(ev)

    link = CollectLink(aws, cfg.collect.client_id, cfg.filters(), post)
    link.start()
    deadline = time.monotonic() + 300
    done = [0.0]

    def stop() -> bool:
        if not done[0] and seen[0] >= n and collector.events.empty():
            done[0] = time.monotonic()  # the last group was stored and acknowledged
        return bool(done[0]) or time.monotonic() > deadline

    collector.run(link, stop)
    link.stop()
    lake.close()
    elapsed = done[0] - first[0] if first and done[0] else float("nan")
    groups = collector.stats.groups
    return {
        "variant": name,
        "messages": seen[0],
        "seconds": elapsed,
        "rate": seen[0] / elapsed if elapsed else 0.0,
        "groups": groups,
        "per_group": seen[0] / groups if groups else 0.0,
        "written": collector.stats.fixes_written,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=5000)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-collect-"))
    pki = Pki(work / "pki", thing_name="bench-tracker")
    broker = Broker(pki, work / "broker")
    rows = []
    try:
        broker.start()
        for k, name in enumerate(("bare", "no-fsync", "collect", "per-msg")):
            n = args.messages if name != "per-msg" else max(100, args.messages // 5)
            rows.append(run(name, broker, pki, work, n, 1 + k * 1_000_000))
    finally:
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"tracker collect: {args.messages} live fixes (~190 B) queued in Mosquitto, mTLS")
    print(f"{'variant':<10} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'fsync groups':>12} "
          f"{'msgs/group':>10} {'in lake':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['variant']:<10} {r['messages']:>8} {r['seconds']:>8.2f} {r['rate']:>8.0f} "
              f"{r['groups']:>12} {r['per_group']:>10.1f} {r['written']:>8}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
