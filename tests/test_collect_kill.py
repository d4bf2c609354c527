"""`tracker collect` killed with SIGKILL at random (seeded) moments while a real tracker sends:
every seq ends in the lake exactly once, `tracker gaps` finds none, and every export parses."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.collector import Collector
from benchkit.pki import Pki
from support.sender import child_config, start_child

from tracker.spool.store import Spool

TESTS = Path(__file__).resolve().parent


def lake_seqs(lake: Path, thing: str) -> Counter[int]:
    """Every fix line in the lake, counted by seq (complete lines only)."""
    out: Counter[int] = Counter()
    for f in (lake / "fixes" / f"thing={thing}").rglob("*.jsonl"):
        data = f.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            out[json.loads(line)["seq"]] += 1
    return out


def tracker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=TESTS.parent,
    )  # fmt: skip


@pytest.mark.slow
def test_collector_killed_at_random_moments_keeps_every_seq_exactly_once(
    broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    thing = pki.thing_name
    lake = tmp_path / "lake"
    collector = Collector(broker, lake, tmp_path / "collect")
    cfg = child_config(broker.aws_config(), thing, tmp_path / "spool.db", period_s=0.003, max_s=120)
    rng = random.Random(20261130)
    kills = mid_write = 0
    sender = None
    try:
        collector.start()  # subscribed once: from now on the broker keeps its session
        sender = start_child(cfg)
        for _ in range(15):
            if not collector.alive():
                collector.start(wait=False)
            time.sleep(rng.uniform(0.3, 1.2))  # start-up, subscription, or mid-stream
            before = collector.stats().get("fixes_written", 0)
            collector.kill()
            kills += 1
            mid_write += before > 0
            time.sleep(rng.uniform(0.0, 0.4))  # messages pile up in the session meanwhile
        sender.kill()
        sender.wait()
        drain = start_child({**cfg, "drain": True, "max_s": 30}, subprocess.PIPE)
        _, err = drain.communicate(timeout=40)
        assert drain.returncode == 0, err.decode()[-2000:]
        with Spool(tmp_path / "spool.db") as spool:
            last = spool.stats().next_seq - 1
        collector.start()
        deadline = time.monotonic() + 30
        while len(lake_seqs(lake, thing)) < last and time.monotonic() < deadline:
            time.sleep(0.1)
        assert collector.stop() == 0
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        collector.kill()
    counts = lake_seqs(lake, thing)
    assert kills == 15 and mid_write >= 5 and last > 300, (kills, mid_write, last)
    assert sorted(counts) == list(range(1, last + 1))
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1][:20]

    gaps = tracker("gaps", str(lake))
    assert gaps.returncode == 0, gaps.stdout + gaps.stderr
    assert f"{thing}: seq 1-{last}, {last} fixes, missing none" in gaps.stdout

    gpx = tracker("export", str(lake), "--thing", thing, "--format", "gpx")
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    points = ET.fromstring(gpx.stdout).findall(".//g:trkpt", ns)
    assert gpx.returncode == 0 and len(points) == last
    geo = json.loads(tracker("export", str(lake), "--thing", thing, "--format", "geojson").stdout)
    pts = [f for f in geo["features"] if f["geometry"]["type"] == "Point"]
    assert [f["properties"]["seq"] for f in pts] == list(range(1, last + 1))
    assert all(-180 <= f["geometry"]["coordinates"][0] <= 180 for f in pts)
    assert all(-90 <= f["geometry"]["coordinates"][1] <= 90 for f in pts)
    rows = list(csv.DictReader(io.StringIO(tracker("export", str(lake), "--thing", thing,
                                                   "--format", "csv").stdout)))  # fmt: skip
    assert [int(r["seq"]) for r in rows] == list(range(1, last + 1))
    print(f"{kills} kills ({mid_write} after writing had begun), {last} fixes, none twice")
