#!/usr/bin/env python3
"""AWS cost per million fixes through the cloud side (deploy/aws/stack.yaml), live and batched.

Usage: scripts/cost.py [RECORDING] [--batch-bytes N]

Message sizes come from the real codec on a recording (default: the bundled 2.5-hour drive);
prices are AWS's published list prices for us-east-1 (PRICES below, with the date they were read),
the first volume tier, without the free tier. Each line shows the arithmetic it did.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.core.fix import Record  # noqa: E402
from tracker.link import codec  # noqa: E402
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder  # noqa: E402

DRIVE = ROOT / "tests" / "data" / "nmea" / "nmeaparser" / "NmeaSampleData.txt"
TOPIC = "dt/tracker/truck-0001/location"

# us-east-1 list prices, read from the AWS pricing pages in November 2026; check before quoting
PRICES = {
    "iot_message": 1.00 / 1e6,  # per message, metered in 5 KB blocks (topic + payload)
    "rule_triggered": 0.15 / 1e6,  # per rule triggered
    "rule_action": 0.15 / 1e6,  # per action executed
    "firehose_gb": 0.029,  # per GB ingested, each record rounded up to 5 KB
    "partitioning_gb": 0.020,  # dynamic partitioning, per GB processed
    "partitioning_objects": 0.005 / 1000,  # per S3 object delivered
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s": 0.0000166667,
    "s3_gb_month": 0.023,
    "s3_put": 0.005 / 1000,
}
KB5 = 5 * 1024
LAMBDA_MB = 128
TRANSFORM_FIXES_PER_S = 100_000  # scripts/bench_transform.py measures ~116k on one core
FIREHOSE_BUFFER_BYTES = 512 * 1024  # the stack's Lambda buffer hint
OBJECT_FIXES = 50_000  # fixes per delivered S3 object (buffer 64 MB or 300 s per partition)
LINE_BYTES_GZ = 60  # one JSON line per fix in S3, gzip-compressed (measured ~55-65)


def message_sizes(recording: Path, batch_bytes: int) -> tuple[float, float, int]:
    """Mean live message bytes (topic + payload), mean batch message bytes, fixes per batch."""
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    fixes = [e.fix for e in dec.feed(recording.read_bytes()) + dec.flush() if e.fix is not None]
    recs = [Record(i, f, "distance") for i, f in enumerate(fixes, 1)]
    live = sum(len(codec.encode_live(r)) for r in recs) / len(recs) + len(TOPIC)
    sizes, counts, i = [], [], 0
    while i < len(recs):
        payload, n = codec.encode_batch(recs[i:], batch_bytes)
        sizes.append(len(payload) + len(TOPIC))
        counts.append(n)
        i += n
    return live, sum(sizes) / len(sizes), round(sum(counts) / len(counts))


def cost(messages: float, message_bytes: float, fixes: float) -> dict[str, float]:
    """Dollars for `fixes` fixes carried in `messages` messages of `message_bytes` each."""
    p = PRICES
    blocks = messages * math.ceil(message_bytes / KB5)
    firehose_gb = messages * math.ceil(message_bytes * 4 / 3 / KB5) * KB5 / 1e9  # base64 in JSON
    processed_gb = fixes * 250 / 1e9  # expanded lines
    invocations = max(1.0, messages * message_bytes * 4 / 3 / FIREHOSE_BUFFER_BYTES)
    seconds = fixes / TRANSFORM_FIXES_PER_S
    return {
        "IoT Core messaging": blocks * p["iot_message"],
        "IoT rules (1 rule, 1 action)": messages * (p["rule_triggered"] + p["rule_action"]),
        "Firehose ingestion": firehose_gb * p["firehose_gb"],
        "Firehose dynamic partitioning": processed_gb * p["partitioning_gb"]
        + fixes / OBJECT_FIXES * p["partitioning_objects"],
        "Lambda transform": invocations * p["lambda_request"]
        + seconds * LAMBDA_MB / 1024 * p["lambda_gb_s"],
        "S3 (one month of storage, PUTs)": fixes * LINE_BYTES_GZ / 1e9 * p["s3_gb_month"]
        + fixes / OBJECT_FIXES * p["s3_put"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("recording", nargs="?", type=Path, default=DRIVE)
    ap.add_argument("--batch-bytes", type=int, default=5120, help="[aws] batch_bytes (5120)")
    args = ap.parse_args()
    if not args.recording.is_file():
        ap.error(f"{args.recording} is not a file")
    live, batch, per_batch = message_sizes(args.recording, args.batch_bytes)
    million = 1e6
    rows = {
        "live (one message per fix)": cost(million, live, million),
        f"batched ({per_batch} fixes per message)": cost(million / per_batch, batch, million),
    }
    print(f"message sizes: live {live:.0f} B, batch {batch:.0f} B for {per_batch} fixes")
    print("USD per million fixes (us-east-1 list prices, first tier, no free tier):")
    names = list(next(iter(rows.values())))
    width = max(map(len, names))
    print(f"  {'':<{width}}  " + "  ".join(f"{k:>28}" for k in rows))
    for name in names:
        print(f"  {name:<{width}}  " + "  ".join(f"{v[name]:>28.4f}" for v in rows.values()))
    totals = "  ".join(f"{sum(v.values()):>28.4f}" for v in rows.values())
    print(f"  {'total':<{width}}  {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
