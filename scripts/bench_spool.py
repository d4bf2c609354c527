#!/usr/bin/env python3
"""Spool and codec benchmark: flash bytes and put() latency vs a naive SQLite queue, wire bytes.

Run from the repository: `PYTHONPATH=. .venv/bin/python scripts/bench_spool.py [--dir DIR] [-n N]`.
Put DIR on the card you care about (an SD card, not tmpfs: /proc/self/io counts no tmpfs writes).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tracker.core.fix import Fix, Record
from tracker.link.codec import encode_batch, encode_live
from tracker.spool.store import Spool

DRIVE = Path(__file__).resolve().parents[1] / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"
BLOCK = 5 * 1024  # AWS IoT Core meters messages in 5 KB blocks


def io_counters() -> dict[str, int]:
    """This process's write counters: wchar (bytes handed to write()) and write_bytes (to disk)."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


def drive_fixes() -> list[Fix]:
    """The 2.5 h drive's fixes, or a synthetic track when the decoder is not there."""
    try:
        from tracker.receiver.replay import fixes_of

        with open(DRIVE, "rb") as f:
            return fixes_of(f)[0]
    except (ImportError, OSError) as exc:
        print(f"(drive not decoded: {exc}; using a synthetic track)", file=sys.stderr)
        t0 = datetime(2005, 9, 25, tzinfo=timezone.utc)
        return [
            Fix(
                t0 + timedelta(seconds=2 * i),
                39.43 - i * 2e-4,
                -119.77 - i * 4e-4,
                1378.6,
                23.2,
                153.1,
                3,
                10,
                0.8,
            )
            for i in range(3400)
        ]


class NaiveQueue:
    """The baseline: default settings, one INSERT + COMMIT per put, one DELETE + COMMIT per ack."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, body TEXT)")
        self.db.commit()
        self.seq = 0

    def put(self, fix: Fix, trigger: str = "") -> Record:
        self.seq += 1
        rec = Record(self.seq, fix, trigger)
        self.db.execute("INSERT INTO q VALUES (?, ?)", (rec.seq, encode_live(rec).decode()))
        self.db.commit()
        return rec

    def ack(self, seqs: list[int]) -> None:
        for seq in seqs:
            self.db.execute("DELETE FROM q WHERE seq = ?", (seq,))
            self.db.commit()

    def close(self) -> None:
        self.db.close()


def run(
    name: str, make: Callable[[Path], Spool | NaiveQueue], fixes: list[Fix], where: Path, mode: str
) -> tuple[str, float, float, float, float]:
    """One workload; returns (name, wchar/fix, write_bytes/fix, p50 ms, p99 ms)."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=where))
    q = make(d / "spool.db")
    lat: list[float] = []
    before = io_counters()
    if mode == "live":  # link up: every fix published at once and acknowledged
        for f in fixes:
            t = time.perf_counter()
            rec = q.put(f, "interval")
            lat.append(time.perf_counter() - t)
            assert rec is not None
            q.ack([rec.seq])
    else:  # offline, then the backlog drains in batches of 100
        seqs = []
        for f in fixes:
            t = time.perf_counter()
            rec = q.put(f, "interval")
            lat.append(time.perf_counter() - t)
            assert rec is not None
            seqs.append(rec.seq)
        for i in range(0, len(seqs), 100):
            if isinstance(q, Spool):
                q.ack(r.seq for r in q.take_oldest(100))
            else:
                q.ack(seqs[i : i + 100])
    q.close()
    after = io_counters()
    n = len(fixes)
    lat.sort()
    return (
        name,
        (after["wchar"] - before["wchar"]) / n,
        (after["write_bytes"] - before["write_bytes"]) / n,
        statistics.median(lat) * 1e3,
        lat[int(len(lat) * 0.99)] * 1e3,
    )


def wire(fixes: list[Fix], every: int, max_bytes: int) -> tuple[str, float, float, int, int]:
    """Payload bytes per fix for batches vs one live message per fix, and 5 KB blocks billed."""
    recs = [Record(i + 1, f, "interval") for i, f in enumerate(fixes[::every])]
    batch_bytes = batch_blocks = i = 0
    while i < len(recs):
        payload, n = encode_batch(recs[i : i + 2000], max_bytes)
        batch_bytes += len(payload)
        batch_blocks += -(-len(payload) // BLOCK)
        i += n
    live = [len(encode_live(r)) for r in recs]
    live_blocks = sum(-(-b // BLOCK) for b in live)
    label = f"1 fix / {2 * every} s ({len(recs)} fixes)"
    return label, batch_bytes / len(recs), sum(live) / len(recs), batch_blocks, live_blocks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the files go")
    p.add_argument("-n", type=int, default=2000, help="fixes per workload")
    p.add_argument("--max-bytes", type=int, default=5120, help="batch size limit")
    args = p.parse_args()
    fixes = drive_fixes()
    sample = (fixes * (args.n // len(fixes) + 1))[: args.n]
    print(f"# spool: {args.n} fixes per workload in {args.dir}, sqlite {sqlite3.sqlite_version}")
    print(
        f"{'workload':<22}{'wchar B/fix':>13}{'disk B/fix':>12}{'put p50 ms':>12}{'put p99 ms':>12}"
    )
    for mode in ("live", "backlog"):
        for name, make in (("spool", Spool), ("naive", NaiveQueue)):
            label, wchar, disk, p50, p99 = run(name, make, sample, args.dir, mode)
            print(f"{label + ' ' + mode:<22}{wchar:>13.0f}{disk:>12.0f}{p50:>12.2f}{p99:>12.2f}")
    print(
        f"\n# wire: the 2.5 h drive ({len(fixes)} fixes at 2 s), batches up to {args.max_bytes} B"
    )
    print(
        f"{'reporting':<30}{'batch B/fix':>12}{'live B/fix':>12}{'batch blocks':>14}"
        f"{'live blocks':>13}"
    )
    for every in (1, 5, 15, 30):
        label, b, lv, bb, lb = wire(fixes, every, args.max_bytes)
        print(f"{label:<30}{b:>12.1f}{lv:>12.1f}{bb:>14}{lb:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
