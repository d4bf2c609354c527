"""Amazon Data Firehose transformation: tracker messages -> one JSON line per fix.

Each input record's data is the IoT rule's output (`cloud.message`). A location message, live or
batch, is expanded with `tracker.link.codec.decode` into one line per fix:

    {"kind":"fix","thing":"tracker-1","seq":1041,"trigger":"interval","time":"...","lat":...,
     "lon":...,"alt":...,"speed":...,"course":...,"mode":3,"sats":8,"hdop":1.9,
     "received":"...","topic":"dt/tracker/tracker-1/location"}

A condition message becomes one line of its own kind (`"kind":"condition"`, the message as
`body`). Partition keys for dynamic partitioning: `kind` (fixes or conditions), `thing` and
`day` (UTC day of the payload's first fix; of the receive time for a condition).

Firehose allows one output record per input record, so a batch's lines travel in one record
and land whole in the partition of its first fix (a batch that crosses midnight UTC stays in
the first day's partition).

A record that cannot be read or decoded is never dropped silently: it comes back as
`ProcessingFailed` (Firehose writes it under errors/) with data that names the problem and
keeps the original payload, and one log line names the record and the reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cloud.message import Message, parse
from tracker.core.errors import CodecError
from tracker.core.fix import Record
from tracker.link.codec import decode

log = logging.getLogger("cloud.transform")

# Same options as the device's encoder: compact, exact floats, no NaN.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Transform one Firehose invocation; every input record gets exactly one answer."""
    records = event.get("records")
    if not isinstance(records, list):
        log.error("transform: event has no records list; nothing to do")
        return {"records": []}
    return {"records": [transform_record(r) for r in records]}


def transform_record(record: Any) -> dict[str, Any]:
    """One Firehose record -> Ok with JSON lines and partition keys, or ProcessingFailed."""
    record_id = record.get("recordId", "") if isinstance(record, dict) else ""
    data = record.get("data") if isinstance(record, dict) else None
    try:
        if not isinstance(data, str):
            raise CodecError("record has no data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CodecError(f"record data is not base64: {exc}") from exc
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CodecError("record data is not the rule's JSON output") from exc
        arrival = record.get("approximateArrivalTimestamp")
        msg = parse(doc, arrival if isinstance(arrival, int) else None)
        lines, keys = _expand(msg)
    except Exception as exc:  # one bad record must never stop the others
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, CodecError):
            reason = f"internal error {type(exc).__name__}: {reason}"
        return _failed(record_id, data, reason)
    return {
        "recordId": record_id,
        "result": "Ok",
        "data": base64.b64encode(lines).decode("ascii"),
        "metadata": {"partitionKeys": keys},
    }


def _expand(msg: Message) -> tuple[bytes, dict[str, str]]:
    if msg.kind == "condition":
        return _condition(msg)
    records = decode(msg.payload)
    head = '{"kind":"fix","thing":' + _enc(msg.thing) + ","
    tail = ',"received":' + _enc(msg.received) + ',"topic":' + _enc(msg.topic) + "}\n"
    triggers: dict[str, str] = {}
    out = []
    for r in records:
        trigger = triggers.get(r.trigger)
        if trigger is None:
            trigger = triggers[r.trigger] = _enc(r.trigger)
        out.append(head + _fix_fields(r, trigger) + tail)
    day = records[0].fix.time.strftime("%Y-%m-%d")
    return "".join(out).encode(), {"kind": "fixes", "thing": msg.thing, "day": day}


def _enc(v: Any) -> str:
    return _ENCODER.encode(v)


def _time(t: datetime) -> str:
    """`tracker.core.fix.format_time` for the UTC times the codec returns, in a third of the
    time."""
    if t.microsecond:
        return t.isoformat(timespec="milliseconds")[:23] + "Z"
    return t.isoformat(timespec="seconds")[:19] + "Z"


def _num(v: float | None) -> str:
    # repr() of a finite float or an int is exactly what json writes; the codec lets no NaN in
    return "null" if v is None else repr(v)


def _fix_fields(r: Record, trigger: str) -> str:
    """`seq`, `trigger` and every fix field (null when unknown), without braces."""
    f = r.fix
    return (
        f'"seq":{r.seq},"trigger":{trigger},"time":"{_time(f.time)}",'
        f'"lat":{f.lat!r},"lon":{f.lon!r},"alt":{_num(f.alt)},"speed":{_num(f.speed)},'
        f'"course":{_num(f.course)},"mode":{f.mode},"sats":{_num(f.sats)},"hdop":{_num(f.hdop)}'
    )


def _condition(msg: Message) -> tuple[bytes, dict[str, str]]:
    try:
        body = json.loads(msg.payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"condition message is not JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(body, dict):
        raise CodecError("condition message is not a JSON object")
    line = {
        "kind": "condition",
        "thing": msg.thing,
        "received": msg.received,
        "time": body.get("time") if isinstance(body.get("time"), str) else None,
        "reason": body.get("reason") if isinstance(body.get("reason"), str) else None,
        "body": body,
        "topic": msg.topic,
    }
    try:
        text = _enc(line)
    except ValueError as exc:  # NaN / Infinity from a hostile message
        raise CodecError(f"condition message cannot be stored: {exc}") from exc
    day = msg.received[:10]
    return (text + "\n").encode(), {"kind": "conditions", "thing": msg.thing, "day": day}


def _failed(record_id: str, data: Any, reason: str) -> dict[str, Any]:
    log.warning("transform: record %s failed: %s", str(record_id)[:80], reason)
    original = data if isinstance(data, str) else None
    error = {"error": reason, "recordId": record_id, "data": original}
    return {
        "recordId": record_id,
        "result": "ProcessingFailed",
        "data": base64.b64encode(_enc(error).encode() + b"\n").decode("ascii"),
    }
