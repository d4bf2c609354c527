#!/usr/bin/env python3
"""Benchmark the Firehose transform: fixes/s for one invocation on a ~6 MB batch of batches.

Usage: PYTHONPATH=. .venv/bin/python scripts/bench_transform.py [--mb 6] [--runs 3]

The input is the 2.5-hour drive (tests/data/nmea/nmeaparser/NmeaSampleData.txt) through the
device's decoder and codec, packed into 5 KB batches as the forwarder sends them, repeated for
as many things as it takes to fill about --mb MB of Firehose records (IoT rule output, base64).
Each measurement runs in its own child process. Printed side by side:

- transform: `cloud.transform.handler(event)`, one invocation, CPU time of the one core it runs
  on (best of --runs), and peak memory (tracemalloc peak during the call; the child's
  ru_maxrss, which includes the interpreter and the event itself);
- baseline: plain `json.loads` of the same payloads (no delta decoding, no output).

Targets: >= 100,000 fixes/s on one core, < 128 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

DRIVE = ROOT / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"
TARGET_RATE = 100_000
TARGET_MB = 128


def payloads_of_drive() -> list[tuple[bytes, int]]:
    from tracker.core.fix import Record
    from tracker.link.codec import encode_batch
    from tracker.receiver.replay import fixes_of

    with DRIVE.open("rb") as f:
        fixes, _ = fixes_of(f)
    records = [Record(1000 + i, fx, "interval") for i, fx in enumerate(fixes)]
    out, i = [], 0
    while i < len(records):
        payload, n = encode_batch(records[i:], 5120)
        out.append((payload, n))
        i += n
    return out


def build_event(mb: float) -> tuple[dict[str, Any], list[bytes], int]:
    """A Firehose invocation of about `mb` MB of record data; (event, payloads, fixes)."""
    drive = payloads_of_drive()
    records: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    size = fixes = thing = 0
    while size < mb * 1_000_000:
        for payload, n in drive:
            doc = {
                "topic": f"dt/tracker/tracker-{thing:04d}/location",
                "payload_b64": base64.b64encode(payload).decode(),
                "received": 1_764_460_800_000 + len(records),
            }
            data = base64.b64encode(json.dumps(doc).encode()).decode()
            records.append(
                {
                    "recordId": f"{len(records):056d}",
                    "approximateArrivalTimestamp": 1_764_460_800_000,
                    "data": data,
                }
            )
            payloads.append(payload)
            size += len(data)
            fixes += n
        thing += 1
    event = {
        "invocationId": "bench",
        "deliveryStreamArn": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/bench",
        "region": "eu-west-1",
        "records": records,
    }
    return event, payloads, fixes


def child(what: str, mb: float, runs: int) -> dict[str, Any]:
    event, payloads, fixes = build_event(mb)
    in_bytes = sum(len(r["data"]) for r in event["records"])
    result: dict[str, Any] = {"fixes": fixes, "records": len(payloads), "in_bytes": in_bytes}
    if what == "baseline":
        best = min(_cpu(lambda: [json.loads(p) for p in payloads]) for _ in range(runs))
        result["cpu_s"] = best
    elif what == "transform":
        from cloud import transform

        out: dict[str, Any] = {}

        def call() -> None:
            out.update(transform.handler(event))

        result["cpu_s"] = min(_cpu(call) for _ in range(runs))
        results = out["records"]
        assert all(r["result"] == "Ok" for r in results), "a record failed"
        result["out_bytes"] = sum(len(r["data"]) for r in results)
    else:  # memory: one call under tracemalloc (slower, so apart from the timing)
        from cloud import transform

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        transform.handler(event)
        result["traced_peak"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def _cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def run_child(what: str, mb: float, runs: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, "--mb", str(mb), "--runs", str(runs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_transform: {what} failed: {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=6.0, help="MB of input records (default 6)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls, best taken (default 3)")
    parser.add_argument(
        "--child", choices=("transform", "baseline", "memory"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        json.dump(child(args.child, args.mb, args.runs), sys.stdout)
        return 0
    t = run_child("transform", args.mb, args.runs)
    b = run_child("baseline", args.mb, args.runs)
    m = run_child("memory", args.mb, 1)
    rate, base_rate = t["fixes"] / t["cpu_s"], b["fixes"] / b["cpu_s"]
    mib = 1024 * 1024
    print(
        f"input: {t['records']} records, {t['in_bytes'] / 1e6:.2f} MB of Firehose data, "
        f"{t['fixes']:,} fixes; output {t['out_bytes'] / 1e6:.2f} MB "
        f"({t['out_bytes'] / t['in_bytes']:.1f}x the input)"
    )
    print(f"{'':32} {'CPU s':>8} {'fixes/s':>12}")
    print(f"{'transform (one invocation)':32} {t['cpu_s']:8.3f} {rate:12,.0f}")
    print(f"{'baseline (json.loads only)':32} {b['cpu_s']:8.3f} {base_rate:12,.0f}")
    print(
        f"peak memory: {m['traced_peak'] / mib:.1f} MiB allocated during the call (tracemalloc), "
        f"{m['maxrss'] / mib:.1f} MiB process peak RSS (interpreter + event + call)"
    )
    ok_rate, ok_mem = rate >= TARGET_RATE, m["maxrss"] / mib < TARGET_MB
    print(
        f"targets: >= {TARGET_RATE:,} fixes/s {'met' if ok_rate else 'MISSED'}, "
        f"< {TARGET_MB} MB {'met' if ok_mem else 'MISSED'}"
    )
    return 0 if ok_rate and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
