"""Amazon Location Service feed: each fix of a location message -> a tracker device position.

Invoked by its own IoT rule with the same rule output as the Firehose records
(`{"topic": ..., "payload_b64": ..., "received": ...}`, see `cloud.message`). Every fix of the
message, live or batch, goes to `BatchUpdateDevicePosition` on the tracker named by the
environment variable LOCATION_TRACKER_NAME, at most 10 updates per call (the API's limit), with
DeviceId = thing name, SampleTime = fix time, Position = [lon, lat] and seq/trigger as position
properties.

A payload that cannot be decoded is logged (one line) and not retried; an API error is raised
so Lambda retries the asynchronous invocation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from botocore.config import Config

from cloud.message import Message, parse
from tracker.core.errors import CodecError
from tracker.core.fix import Record
from tracker.link.codec import decode

log = logging.getLogger("cloud.location")
log.setLevel(logging.INFO)

TRACKER_ENV = "LOCATION_TRACKER_NAME"
MAX_UPDATES = 10  # BatchUpdateDevicePosition takes 1 to 10 updates
_client_config: Config | None = None  # tests: no host prefix (tracking.) for a loopback endpoint


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """One IoT rule invocation; returns counts (for logs and tests)."""
    try:
        msg = parse(event)
        if msg.kind != "location":
            raise CodecError(f"topic {msg.topic} is not a location topic")
        records = decode(msg.payload)
    except CodecError as exc:
        log.warning("location: message not fed: %s", exc)
        return {"updated": 0, "calls": 0, "errors": 1}
    tracker = os.environ.get(TRACKER_ENV, "")
    if not tracker:
        log.error("location: %s is not set; nothing fed", TRACKER_ENV)
        return {"updated": 0, "calls": 0, "errors": len(records)}
    return feed(boto3.client("location", config=_client_config), tracker, msg, records)


def updates(msg: Message, records: Sequence[Record]) -> list[dict[str, Any]]:
    """The BatchUpdateDevicePosition updates for these records, oldest first."""
    return [
        {
            "DeviceId": msg.thing,
            "SampleTime": r.fix.time,
            "Position": [r.fix.lon, r.fix.lat],
            "PositionProperties": {"seq": str(r.seq), "trigger": r.trigger or "-"},
        }
        for r in records
    ]


def feed(client: Any, tracker: str, msg: Message, records: Sequence[Record]) -> dict[str, Any]:
    """Send the positions in calls of at most 10; API errors raise, rejected updates are logged."""
    todo = updates(msg, records)
    calls = errors = 0
    for i in range(0, len(todo), MAX_UPDATES):
        answer = client.batch_update_device_position(
            TrackerName=tracker, Updates=todo[i : i + MAX_UPDATES]
        )
        calls += 1
        for e in answer.get("Errors", []):
            errors += 1
            err = e.get("Error", {})
            log.warning(
                "location: %s at %s rejected: %s %s",
                e.get("DeviceId"),
                e.get("SampleTime"),
                err.get("Code"),
                err.get("Message"),
            )
    return {"updated": len(todo) - errors, "calls": calls, "errors": errors}
