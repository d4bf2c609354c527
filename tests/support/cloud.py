"""Cloud-side test helpers: real tracker payloads, AWS-shaped events and a moto server process.

The payloads come from a real recording through the device's own decoder and codec; the events
have the shapes AWS documents (Firehose data transformation, IoT rule output, pre-provisioning
hook). The moto server is a standalone child process on a free loopback port; boto3 reaches it
through AWS_ENDPOINT_URL like it would reach AWS.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from benchkit.broker import free_port

from tracker.core.fix import Record
from tracker.link.codec import encode_batch, encode_live
from tracker.receiver.replay import fixes_of

ROOT = Path(__file__).resolve().parent.parent.parent
DRIVE = ROOT / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"
THING = "tracker-10000000c0ffee01"
PREFIX = "dt/tracker"
RECEIVED_MS = 1_764_460_800_123  # 2025-11-30T00:00:00.123Z
STREAM_ARN = "arn:aws:firehose:eu-west-1:123456789012:deliverystream/tracker-fixes"


@cache
def drive_records() -> tuple[Record, ...]:
    """Every fix of the 2.5-hour drive as the spool would hold it (seq from 1000)."""
    with DRIVE.open("rb") as f:
        fixes, _ = fixes_of(f)
    triggers = ("first", "interval", "distance", "heading")
    return tuple(
        Record(1000 + i, fx, triggers[1 + i % 3] if i else "first") for i, fx in enumerate(fixes)
    )


def batches(
    records: Sequence[Record], max_bytes: int = 5120, version: int = 1
) -> list[tuple[bytes, int]]:
    """The records packed into batch payloads the way the forwarder does: (payload, count)."""
    out, i = [], 0
    while i < len(records):
        payload, n = encode_batch(records[i : i + 2000], max_bytes, version=version)
        out.append((payload, n))
        i += n
    return out


def live(record: Record) -> bytes:
    return encode_live(record)


def rule_output(
    payload: bytes, kind: str = "location", thing: str = THING, received: int = RECEIVED_MS
) -> dict[str, Any]:
    """What the IoT rule SQL in stack.yaml selects for one MQTT message."""
    return {
        "topic": f"{PREFIX}/{thing}/{kind}",
        "payload_b64": base64.b64encode(payload).decode(),
        "received": received,
    }


def firehose_event(datas: Sequence[bytes]) -> dict[str, Any]:
    """A Firehose data-transformation invocation with one record per data blob."""
    return {
        "invocationId": "00540a87-5050-496a-84e4-e7d92bbaf5e2",
        "deliveryStreamArn": STREAM_ARN,
        "region": "eu-west-1",
        "records": [
            {
                "recordId": f"4960945574697987419{i:04d}",
                "approximateArrivalTimestamp": RECEIVED_MS + 500,
                "data": base64.b64encode(d).decode(),
            }
            for i, d in enumerate(datas)
        ],
    }


def rule_record(payload: bytes, kind: str = "location", thing: str = THING) -> bytes:
    return json.dumps(rule_output(payload, kind, thing)).encode()


def lines(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON lines of one Ok transformation result."""
    text = base64.b64decode(result["data"]).decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# --- moto ----------------------------------------------------------------------------------------

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
}


def moto_server() -> Iterator[str]:
    """Run moto's standalone server on a free loopback port; yields its URL, env pointed at it.

    Meant as the body of a session fixture: the environment is restored and the process ended
    (and reaped) when the generator is closed.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in [*FAKE_ENV, "AWS_ENDPOINT_URL"]}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        os.environ.update(FAKE_ENV)
        os.environ["AWS_ENDPOINT_URL"] = url
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def moto_reset(url: str) -> None:
    """Forget every resource (between tests)."""
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass
