"""Firehose transformation: every payload the device sends becomes one JSON line per fix."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from support.cloud import (
    PREFIX,
    RECEIVED_MS,
    THING,
    batches,
    drive_records,
    firehose_event,
    lines,
    live,
    rule_output,
    rule_record,
)

from cloud import transform
from tracker.core.limits import MAX_PAYLOAD
from tracker.link.codec import decode, encode_condition
from tracker.twin.decode import record_dict

TOPIC = f"{PREFIX}/{THING}/location"


def expected_line(rec_dict: dict[str, Any]) -> dict[str, Any]:
    """What `tracker decode` prints for a fix, plus thing, kind, receive time and topic."""
    return {
        "kind": "fix",
        "thing": THING,
        "trigger": "",
        **rec_dict,
        "received": "2025-11-30T00:00:00.123Z",
        "topic": TOPIC,
    }


def test_live_fix_is_one_line_with_every_field() -> None:
    rec = drive_records()[5]
    out = transform.handler(firehose_event([rule_record(live(rec))]))
    (result,) = out["records"]
    assert result["result"] == "Ok"
    assert result["recordId"] == "49609455746979874190000"
    (line,) = lines(result)
    assert line == expected_line(record_dict(decode(live(rec))[0]))
    assert list(line)[:4] == ["kind", "thing", "seq", "trigger"]
    assert set(line) >= {"time", "lat", "lon", "alt", "speed", "course", "mode", "sats", "hdop"}
    day = rec.fix.time.strftime("%Y-%m-%d")
    assert result["metadata"] == {"partitionKeys": {"kind": "fixes", "thing": THING, "day": day}}


def test_unknown_fields_are_null_not_missing() -> None:
    rec = drive_records()[0]
    bare = replace(rec, fix=replace(rec.fix, alt=None, speed=None, course=None, sats=None))
    (line,) = lines(transform.handler(firehose_event([rule_record(live(bare))]))["records"][0])
    assert line["alt"] is None and line["sats"] is None and line["hdop"] == rec.fix.hdop


@pytest.mark.parametrize("version", [1, 2])
def test_whole_drive_in_batches_matches_the_codec_exactly(version: int) -> None:
    records = drive_records()
    packed = batches(records, version=version)
    event = firehose_event([rule_record(p) for p, _ in packed])
    out = transform.handler(event)["records"]
    assert [r["recordId"] for r in out] == [r["recordId"] for r in event["records"]]
    got: list[dict[str, Any]] = []
    for result, (payload, n) in zip(out, packed, strict=True):
        assert result["result"] == "Ok"
        these = lines(result)
        assert len(these) == n
        assert these == [expected_line(record_dict(r)) for r in decode(payload)]
        assert result["metadata"]["partitionKeys"]["day"] == these[0]["time"][:10]
        got.extend(these)
    assert [g["seq"] for g in got] == [r.seq for r in records]
    assert len(got) == len(records) == 3407


def test_batch_across_midnight_lands_in_the_first_fix_day() -> None:
    recs = list(drive_records()[:4])
    shift = timedelta(hours=23, minutes=59, seconds=58) - timedelta(
        hours=recs[0].fix.time.hour, minutes=recs[0].fix.time.minute,
        seconds=recs[0].fix.time.second,
    )  # fmt: skip
    recs = [replace(r, fix=replace(r.fix, time=r.fix.time + shift)) for r in recs]
    payload, _ = batches(recs)[0]
    (result,) = transform.handler(firehose_event([rule_record(payload)]))["records"]
    days = {line["time"][:10] for line in lines(result)}
    assert len(days) == 2 and result["metadata"]["partitionKeys"]["day"] == min(days)


def test_condition_message_is_its_own_kind() -> None:
    body = {"reason": "periodic", "time": "2008-03-03T22:26:16Z", "state": "reporting",
            "battery": {"percent": 80.0, "voltage": None}, "spool": {"backlog": 3}}  # fmt: skip
    (result,) = transform.handler(
        firehose_event([rule_record(encode_condition(body), "condition")])
    )["records"]
    assert result["result"] == "Ok"
    assert result["metadata"]["partitionKeys"] == {
        "kind": "conditions", "thing": THING, "day": "2025-11-30",
    }  # fmt: skip
    (line,) = lines(result)
    assert line == {
        "kind": "condition", "thing": THING, "received": "2025-11-30T00:00:00.123Z",
        "time": "2008-03-03T22:26:16Z", "reason": "periodic", "body": body,
        "topic": f"{PREFIX}/{THING}/condition",
    }  # fmt: skip


def test_a_sparse_low_power_condition_is_stored_like_a_full_one() -> None:
    full = {"reason": "periodic", "time": "2008-03-03T22:26:16Z", "state": "low_power",
            "battery": {"percent": 80.0, "voltage": None}, "spool": {"backlog": 0}}  # fmt: skip
    payload = encode_condition(full, sparse=True)
    (result,) = transform.handler(firehose_event([rule_record(payload, "condition")]))["records"]
    (line,) = lines(result)
    assert (line["time"], line["reason"]) == ("2008-03-03T22:26:16Z", "periodic")
    assert line["body"] == {"reason": "periodic", "time": "2008-03-03T22:26:16Z",
                            "state": "low_power", "battery": {"percent": 80.0}}  # fmt: skip


def _b64(doc: Any) -> bytes:
    return json.dumps(doc).encode()


good_batch = batches(drive_records()[:50])[0][0]
BAD_PAYLOADS = {
    "truncated batch": good_batch[: len(good_batch) // 2],
    "truncated live": live(drive_records()[0])[:-7],
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "oversized": b'{"v":1,"d":[' + b"[1]," * (MAX_PAYLOAD // 4) + b'[1]],"tt":[""]}',
    "wrong version": good_batch.replace(b'{"v":1,', b'{"v":2,', 1),
    "version as string": good_batch.replace(b'{"v":1,', b'{"v":"1",', 1),
    "nested bomb": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"v":1,"d":[[' + b"9" * 5000 + b',1,1]],"tt":[""]}',
    "overflowing time": b'{"v":1,"d":[[99999999999999999999,1,1]],"tt":[""]}',
    "position out of range": b'{"v":1,"d":[[1,1900000000,1,0,0,0,0,0,0,3]],"tt":[""]}',
    "trigger index out of tt": b'{"v":1,"d":[[1,1,1,0,0,0,0,0,5,3]],"tt":[""]}',
    "bool as number": b'{"v":1,"d":[[true,1,1]],"tt":[""]}',
    "nan in live": b'{"seq":1,"time":"2020-01-01T00:00:00Z","lat":NaN,"lon":1,"mode":3}',
    "live without time": b'{"seq":1,"lat":1,"lon":1}',
    "json array": b"[1,2,3]",
    "neither kind": b'{"hello":"world"}',
    "script": b'{"seq":1,"trigger":"<script>alert(1)</script>","time":"x","lat":1,"lon":1}',
}


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_bad_payload_is_one_processing_failed_record_and_the_rest_go_on(name: str) -> None:
    payload = BAD_PAYLOADS[name]
    good = live(drive_records()[1])
    event = firehose_event([rule_record(good), rule_record(payload), rule_record(good)])
    out = transform.handler(event)["records"]
    assert [r["result"] for r in out] == ["Ok", "ProcessingFailed", "Ok"]
    failed = out[1]
    assert failed["recordId"] == event["records"][1]["recordId"]
    assert "metadata" not in failed
    error = json.loads(base64.b64decode(failed["data"]))
    assert error["recordId"] == failed["recordId"]
    assert error["data"] == event["records"][1]["data"]  # the original, for a replay
    assert isinstance(error["error"], str) and error["error"] and "\n" not in error["error"]
    assert "internal error" not in error["error"], error["error"]


BAD_RECORDS = {
    "not base64": b"!!!",
    "not json": b"\xff\xfe",
    "no topic": _b64({"payload_b64": "e30=", "received": RECEIVED_MS}),
    "foreign topic": _b64({**rule_output(b"{}"), "topic": "dt/tracker/x/shadow"}),
    "thing with a wildcard": _b64({**rule_output(b"{}"), "topic": "dt/tracker/a+b/location"}),
    "payload not base64": _b64({**rule_output(b"{}"), "payload_b64": "%%%"}),
    "received in year 30000": _b64({**rule_output(b"{}"), "received": 10**18}),
    "condition not an object": rule_record(b"[1]", "condition"),
    "condition with NaN": rule_record(b'{"t":NaN}', "condition"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_record_fails_alone(name: str) -> None:
    data = BAD_RECORDS[name]
    event = firehose_event([data, rule_record(live(drive_records()[2]))])
    if name == "not base64":
        event["records"][0]["data"] = "!!!"
    out = transform.handler(event)["records"]
    assert [r["result"] for r in out] == ["ProcessingFailed", "Ok"]
    error = json.loads(base64.b64decode(out[0]["data"]))["error"]
    assert "internal error" not in error, error


def test_missing_receive_time_falls_back_to_firehose_arrival() -> None:
    doc = rule_output(live(drive_records()[3]))
    del doc["received"]
    (result,) = transform.handler(firehose_event([json.dumps(doc).encode()]))["records"]
    assert lines(result)[0]["received"] == "2025-11-30T00:00:00.623Z"


def test_hostile_event_shapes_never_raise() -> None:
    assert transform.handler({}) == {"records": []}
    out = transform.handler({"records": [None, 7, {"recordId": "x"}, {"data": 5}]})["records"]
    assert [r["result"] for r in out] == ["ProcessingFailed"] * 4
    assert out[2]["recordId"] == "x"


def test_bench_script_runs_and_prints_its_numbers() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts/bench_transform.py"
    done = subprocess.run(
        [sys.executable, str(script), "--mb", "0.05", "--runs", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # 1: a target missed on a busy machine
    assert "transform (one invocation)" in done.stdout and "baseline" in done.stdout
    assert "peak memory" in done.stdout
