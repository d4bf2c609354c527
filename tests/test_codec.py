"""Message codec: exact round trips to the documented precision, packing, garbage rejected."""

from __future__ import annotations

import contextlib
import json
import zlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.core.errors import CodecError
from tracker.core.fix import Fix, Record
from tracker.core.limits import MAX_PAYLOAD
from tracker.link.codec import (
    KNOWN_TRIGGERS,
    V2_DICT,
    decode,
    encode_batch,
    encode_condition,
    encode_live,
    quantize,
)

T0 = datetime(2005, 9, 25, 23, 52, 34, tzinfo=timezone.utc)

times = st.datetimes(
    min_value=datetime(1980, 1, 6),
    max_value=datetime(2099, 12, 31, 23, 59, 59),
    timezones=st.just(timezone.utc),
)
fixes = st.builds(
    Fix,
    time=times,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    alt=st.none() | st.floats(-1000, 50_000),
    speed=st.none() | st.floats(0, 500),
    course=st.none() | st.floats(0, 360, exclude_max=True),
    mode=st.sampled_from([2, 3]),
    sats=st.none() | st.integers(0, 64),
    hdop=st.none() | st.floats(0, 99.99),
)
triggers = st.sampled_from(["", "first", "interval", "distance", "heading", "stop", "ünïcode"])
records = st.lists(st.tuples(st.integers(1, 3), fixes, triggers), min_size=1, max_size=40).map(
    lambda xs: _with_seqs(xs)
)


def _with_seqs(xs: list[tuple[int, Fix, str]]) -> list[Record]:
    seq, out = 1_000_000, []
    for step, fix, trigger in xs:
        seq += step
        out.append(Record(seq, fix, trigger))
    return out


def _drive(n: int, trigger: str = "interval") -> list[Record]:
    return [
        Record(
            100 + i,
            Fix(
                T0 + timedelta(seconds=2 * i),
                39.4328366 - i * 2e-4,
                -119.76559 - i * 4e-4,
                1378.6 + i / 10,
                23.2 + (i % 7) / 10,
                153.1,
                3,
                10,
                0.8,
            ),
            trigger,
        )
        for i in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(records, st.integers(64, 20_000))
def test_batch_round_trip_is_exact_to_documented_precision(
    recs: list[Record], max_bytes: int
) -> None:
    payload, n = encode_batch(recs, max_bytes)
    assert 1 <= n <= len(recs)
    assert n == 1 or len(payload) <= max_bytes
    expected = [Record(r.seq, quantize(r.fix), r.trigger) for r in recs[:n]]
    assert decode(payload) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**53), fixes, triggers)
def test_live_round_trip_is_exact_to_the_millisecond(seq: int, fix: Fix, trigger: str) -> None:
    (rec,) = decode(encode_live(Record(seq, fix, trigger)))
    ms = fix.time.replace(microsecond=fix.time.microsecond // 1000 * 1000)
    assert rec == Record(seq, replace(fix, time=ms), trigger)
    assert encode_batch([rec])[0] == encode_batch([Record(seq, fix, trigger)])[0]


def test_live_message_is_plain_readable_json() -> None:
    doc = json.loads(encode_live(_drive(1)[0]))
    assert doc == {
        "seq": 100,
        "trigger": "interval",
        "time": "2005-09-25T23:52:34Z",
        "lat": 39.4328366,
        "lon": -119.76559,
        "alt": 1378.6,
        "speed": 23.2,
        "course": 153.1,
        "mode": 3,
        "sats": 10,
        "hdop": 0.8,
    }


def test_documented_precision_of_a_batch() -> None:
    fix = Fix(
        T0.replace(microsecond=123_999),
        1.23456789,
        -0.000000049,
        12.3449,
        1.0049,
        359.96,
        3,
        7,
        1.234,
    )
    (rec,) = decode(encode_batch([Record(1, fix)])[0])
    assert rec.fix == Fix(
        T0.replace(microsecond=123_000), 1.2345679, -0.0, 12.34, 1.0, 0.0, 3, 7, 1.23
    )


def test_batch_of_a_drive_stays_under_60_bytes_per_fix() -> None:
    recs = _drive(500)
    payload, n = encode_batch(recs)
    assert len(payload) <= 5120
    assert len(payload) / n < 60


@pytest.mark.parametrize("max_bytes", [64, 200, 1000, 5120, MAX_PAYLOAD])
def test_batch_fills_but_never_passes_max_bytes(max_bytes: int) -> None:
    recs = _drive(6000)
    payload, n = encode_batch(recs, max_bytes)
    assert len(payload) <= max_bytes or n == 1
    assert n < len(recs)
    if max_bytes < MAX_PAYLOAD:  # one more record would not have fitted
        assert len(encode_batch(recs[: n + 1], MAX_PAYLOAD)[0]) > max_bytes
    else:
        assert len(payload) > max_bytes - 60


def test_one_record_bigger_than_max_bytes_goes_alone() -> None:
    big = Record(1, _drive(1)[0].fix, "x" * 500)
    payload, n = encode_batch([big, *_drive(3)], 64)
    assert n == 1 and len(payload) > 64
    assert decode(payload)[0].trigger == "x" * 500


def test_seq_gaps_and_null_fields_survive() -> None:
    a = Record(5, Fix(T0, 1.0, 2.0, None, None, None, 2, None, None), "")
    b = Record(9, Fix(T0, 1.0, 2.0, 10.0, 1.0, 90.0, 3, 5, 1.0), "distance")
    c = Record(10, Fix(T0, 1.0, 2.0, None, 1.0, None, 3, None, 1.0), "distance")
    assert decode(encode_batch([a, b, c])[0]) == [a, b, c]


def test_condition_is_compact_json_and_rejects_nan() -> None:
    fields = {"battery_v": 3.91, "backlog": 12, "state": "moving"}
    assert json.loads(encode_condition(fields)) == fields
    with pytest.raises(CodecError):
        encode_condition({"temp": float("nan")})
    with pytest.raises(CodecError):
        encode_condition({"when": T0})


def test_a_sparse_condition_leaves_out_null_zero_and_empty_fields() -> None:
    fields = {
        "reason": "periodic", "time": None, "state": "low_power", "uptime_s": 0,
        "battery": {"percent": 80.0, "voltage": None}, "link": {"up": True, "drops": 0},
        "spool": {"backlog": 0, "dropped": {}, "lost_ranges": []}, "internal_errors": 0,
        "temperature_c": 0.0,
    }  # fmt: skip
    assert json.loads(encode_condition(fields, sparse=True)) == {
        "reason": "periodic", "state": "low_power", "battery": {"percent": 80.0},
        "link": {"up": True}, "temperature_c": 0.0,  # a measured 0.0 is not "unknown"
    }  # fmt: skip
    assert json.loads(encode_condition(fields)) == fields
    assert len(encode_condition(fields, sparse=True)) < len(encode_condition(fields)) / 2


def test_encode_rejects_empty_and_nonfinite() -> None:
    with pytest.raises(CodecError):
        encode_batch([])
    with pytest.raises(CodecError):
        encode_batch([Record(1, Fix(T0, float("nan"), 0.0))])
    with pytest.raises(CodecError):
        encode_live(Record(1, Fix(T0, 0.0, 0.0, alt=float("inf"))))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"[1,2]",
        b"{}",
        b'{"v":2,"d":[[1]],"tt":[""]}',
        b'{"v":1,"d":[],"tt":[""]}',
        b'{"v":1,"d":[[0,0,0,0,0,0,0,0,0,3,0,0]],"tt":[""]}',
        b'{"v":1,"d":[[0,0,0,0,0,0,0,0,1,3]],"tt":[""]}',
        b'{"v":1,"d":[[0,0,0,0,0,0,0,0,0,3]],"tt":[1]}',
        b'{"v":1,"d":[[0,"a",0]],"tt":[""]}',
        b'{"v":1,"d":[[0,true,0]],"tt":[""]}',
        b'{"v":1,"d":[[0,900000001,0,0,0,0,0,0,0,3]],"tt":[""]}',
        b'{"v":1,"d":[[0,0,0,0,0,0,0,0,0,4]],"tt":[""]}',
        b'{"v":1,"d":[[0,0,0,0,0,0,0,0,0,3,-5]],"tt":[""]}',
        b'{"v":1,"d":[[99999999999999999999,0,0,0,0,0,0,0,0,3]],"tt":[""]}',
        b'{"v":1,"d":[[null,0,0,0,0,0,0,0,0,3]],"tt":[""]}',
        b'{"seq":-1,"time":"2005-09-25T23:52:34Z","lat":1,"lon":2}',
        b'{"seq":1,"lat":1,"lon":2}',
        b'{"seq":1,"time":"yesterday","lat":1,"lon":2}',
        b'{"seq":1,"time":"2005-09-25T23:52:34Z","lat":"1","lon":2}',
        b'{"seq":1,"time":"2005-09-25T23:52:34Z","lat":1,"lon":2,"mode":1.5}',
        b'{"seq":1,"time":"2005-09-25T23:52:34Z","lat":1,"lon":2,"trigger":7}',
        b"[" * 100_000,
        b'{"v":1,"d":[[0,1%s,0,0,0,0,0,0,0,3]],"tt":[""]}' % (b"0" * 400),
        b'{"v":1,"d":[[0,0,0,0,0,0,0,1%s,0,3]],"tt":[""]}' % (b"0" * 400),
    ],
)
def test_decode_rejects_garbage_with_one_line(payload: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode(payload)
    assert "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_codec_error(payload: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(payload)


# --- batch version 2 (deflated rows) -------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(records, st.integers(64, 20_000))
def test_v2_round_trip_is_exact_and_fits_max_bytes(recs: list[Record], max_bytes: int) -> None:
    payload, n = encode_batch(recs, max_bytes, version=2)
    assert payload[:1] in (b"\x02", b"\x03")  # deflated, or binary when that is smaller
    assert 1 <= n <= len(recs)
    assert n == 1 or len(payload) <= max_bytes
    expected = [Record(r.seq, quantize(r.fix), r.trigger) for r in recs[:n]]
    assert decode(payload) == expected


@settings(max_examples=100, deadline=None)
@given(records)
def test_every_fix_the_decoder_makes_round_trips_through_v2(recs: list[Record]) -> None:
    """What v1 decodes (a fix within FIELD_LIMITS, quantized) goes through v2 unchanged."""
    decoded = decode(encode_batch(recs, MAX_PAYLOAD)[0])
    assert decode(encode_batch(decoded, MAX_PAYLOAD, version=2)[0]) == decoded


@pytest.mark.parametrize("max_bytes", [64, 200, 1000, 5120])
def test_v2_fills_but_never_passes_max_bytes(max_bytes: int) -> None:
    import random

    rng = random.Random(7)  # a drive with noise, so it does not compress to nothing
    recs = [
        Record(r.seq, replace(r.fix, lat=r.fix.lat + rng.random() * 1e-4), r.trigger)
        for r in _drive(6000)
    ]
    payload, n = encode_batch(recs, max_bytes, version=2)
    assert len(payload) <= max_bytes or n == 1
    assert n < len(recs)
    assert len(encode_batch(recs[: n + 1], MAX_PAYLOAD, version=2)[0]) > max_bytes * 0.97


def test_v2_is_smaller_than_v1_on_a_drive() -> None:
    recs = _drive(500)
    v1, n1 = encode_batch(recs, MAX_PAYLOAD)
    v2, n2 = encode_batch(recs, MAX_PAYLOAD, version=2)
    assert n1 == n2 == 500
    assert len(v2) < len(v1) / 3


def test_v2_of_one_fix_is_smaller_than_live_json() -> None:
    rec = _drive(1)[0]
    assert len(encode_batch([rec], version=2)[0]) < len(encode_live(rec)) / 2


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02",
        b"\x02garbage",
        b"\x02" + zlib.compress(b'{"d":[[1]],"tt":[""]}')[2:-4][:-3],  # truncated
        b"\x02" + zlib.compress(b"[1]", 9)[2:-4],  # not a batch (no dictionary: bad)
        b"\x02" + b"\x00" * (MAX_PAYLOAD + 1),
    ],
)
def test_v2_rejects_garbage_with_one_line(payload: bytes) -> None:
    with pytest.raises(CodecError) as info:
        decode(payload)
    assert "\n" not in str(info.value)


def test_v2_refuses_a_decompression_bomb() -> None:
    from tracker.link.codec import V2_DICT, V2_MAX_INFLATED

    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, V2_DICT)
    bomb = b"\x02" + c.compress(b'{"d":[' + b"[0]," * (V2_MAX_INFLATED // 3)) + c.flush()
    assert len(bomb) < MAX_PAYLOAD
    with pytest.raises(CodecError, match="inflates past"):
        decode(bomb)


def _v2_body(body: bytes) -> bytes:
    from tracker.link.codec import V2_DICT

    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, V2_DICT)
    return b"\x02" + c.compress(body) + c.flush()


@pytest.mark.parametrize(
    "body",
    [b"[1]", b'{"v":1,"d":[[0,0,0,0,0,0,0,0,0,3]],"tt":[""]}', b'{"d":[],"tt":[""]}', b"\xff"],
)
def test_v2_checks_what_it_inflates(body: bytes) -> None:
    with pytest.raises(CodecError):
        decode(_v2_body(body))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_v2_decode_never_raises_anything_but_codec_error(tail: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(b"\x02" + tail)


# --- batch version 3 (binary rows, for a few fixes) ----------------------------------------------


def test_a_lone_heartbeat_goes_as_binary_at_half_the_deflated_size() -> None:
    (rec,) = _drive(1, trigger="heartbeat")
    payload, n = encode_batch([rec], 5120, version=2)
    assert n == 1 and payload[:1] == b"\x03" and len(payload) <= 40
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, V2_DICT)
    body = encode_batch([rec], 5120, version=1)[0].replace(b'{"v":1,', b"{")
    assert len(payload) * 2 <= 1 + len(deflated.compress(body) + deflated.flush())
    assert decode(payload) == [Record(rec.seq, quantize(rec.fix), "heartbeat")]


def test_a_full_batch_stays_deflated() -> None:
    payload, n = encode_batch(_drive(2000), 5120, version=2)
    assert payload[:1] == b"\x02" and n > 300


@settings(max_examples=200, deadline=None)
@given(records)
def test_v3_round_trip_is_exact_with_unknown_and_unicode_triggers(recs: list[Record]) -> None:
    recs = [
        Record(r.seq, r.fix, t)
        for r, t in zip(recs, ["geofence-exit", "ü", "", "stop"] * 10, strict=False)
    ]
    payload, n = encode_batch(recs[:3], MAX_PAYLOAD, version=2)
    v3 = _encode_v3_for_test(recs[:n])
    expected = [Record(r.seq, quantize(r.fix), r.trigger) for r in recs[:n]]
    assert decode(v3) == expected and decode(payload) == expected


def _encode_v3_for_test(recs: list[Record]) -> bytes:
    """The binary form of a batch, whichever form encode_batch picked."""
    doc = json.loads(encode_batch(recs, MAX_PAYLOAD, version=1)[0])
    out = bytearray(b"\x03")
    out.append(len(doc["tt"]))
    for t in doc["tt"]:
        raw = t.encode()
        out.append(len(KNOWN_TRIGGERS) + len(raw))
        out += raw
    for row in doc["d"]:
        out.append(len(row))
        for v in row:
            z = 0 if v is None else (v << 1 if v >= 0 else (-v << 1) - 1) + 1
            while z > 0x7F:
                out.append((z & 0x7F) | 0x80)
                z >>= 7
            out.append(z)
    return bytes(out)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"\x03", "truncated in the trigger table"),
        (b"\x03\x00", "not a non-empty list of rows"),
        (b"\x03\x01", "truncated in the trigger table"),
        (b"\x03\x01\x0c\x61", "truncated in the trigger table"),
        (b"\x03\x01\x09\xff", "not UTF-8"),
        (b"\x03\x01\x06\x0c" + b"\x01" * 12, "more than 11"),
        (b"\x03\x01\x06\x02\x01", "truncated in row 0"),
        (b"\x03\x01\x06\x01\x00", "not an integer"),  # a time that is null
        (b"\x03\x01\x06\x01" + b"\xff" * 11, "too long"),
        (b"\x03\x00\x09\x01\x01\x01\x01\x01\x01\x01\x01\x03", "not in tt"),
    ],
)
def test_v3_garbage_is_one_line_naming_the_fault(payload: bytes, says: str) -> None:
    with pytest.raises(CodecError) as info:
        decode(payload)
    assert says in str(info.value) and "\n" not in str(info.value)
