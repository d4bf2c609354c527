"""Message payloads: live fixes, packed backlog batches and condition reports, and their decoding.

Pure (standard library and `tracker.core.fix` only); must not import sqlite3, awsiot or awscrt.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from tracker.core.errors import CodecError
from tracker.core.fix import Fix, Record, fix_problem
from tracker.core.limits import MAX_PAYLOAD

BATCH_VERSION = 1
# Batch version 2: one byte 0x02, then the v1 document's rows and trigger table ({"d":...,
# "tt":...}) as raw deflate with the preset dictionary below. JSON never starts with 0x02.
V2_MAGIC = b"\x02"
# Fixed for good: a v2 payload is inflated with exactly these bytes. Most likely text last.
V2_DICT = (
    b'"tt":["first","start","stop","distance","heading","interval","heartbeat","wake"]}'
    b'],[2000,],[1000,],[5000,0,0,0,0,0,0,0,0,0,0],[0,0,0,0,0,0,{"d":[['
)
V2_MAX_INFLATED = 4 * 1024 * 1024  # a v2 payload inflates to this much at most (either side)
# Batch version 3: one byte 0x03, then the v1 document's trigger table and rows in binary, for
# messages of a few fixes, where deflate has too little to work on (a heartbeat: 31 bytes
# instead of 62). The table: a varint count, then per trigger a varint k: KNOWN_TRIGGERS[k], or
# for k >= len(KNOWN_TRIGGERS) the next k - len(KNOWN_TRIGGERS) bytes (UTF-8). Each row: a
# varint count of its values, then per value a varint: 0 for null, else zigzag(value) + 1.
# The encoder sends whichever of v2 and v3 is smaller.
V3_MAGIC = b"\x03"
KNOWN_TRIGGERS = ("first", "start", "stop", "distance", "heading", "interval", "heartbeat", "wake")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_SEQ = 2**53  # inclusive: seqs stay exact in every JSON reader (JavaScript's safe integers)
MS = timedelta(milliseconds=1)

# Batch columns, in row order (most often non-zero first, so trailing zeros can be cut):
# name, scale (stored integer = round(value * scale)), nullable
COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("time", 1000, False),  # ms since 1970
    ("lat", 10_000_000, False),  # 1e-7 deg
    ("lon", 10_000_000, False),
    ("speed", 100, True),  # cm/s
    ("course", 10, True),  # 0.1 deg
    ("alt", 100, True),  # cm
    ("hdop", 100, True),
    ("sats", 1, True),
    ("trigger", 1, False),  # index into the batch's trigger table
    ("mode", 1, False),
    ("seq", 1, False),  # stored as the step minus one: consecutive seqs cost nothing
)
NCOL = len(COLUMNS)
_NULLABLE = tuple(nullable for _, _, nullable in COLUMNS)
_SEQ = NCOL - 1


def quantize(fix: Fix) -> Fix:
    """The fix as a batch carries it: time to 1 ms (truncated), each number to its column's step.

    Numbers round to the nearest step (lat/lon 1e-7 deg, speed 0.01 m/s, course 0.1 deg wrapped
    into [0, 360), alt 0.01 m, hdop 0.01); `decode` returns exactly these values.
    """
    ints = _ints(fix)
    kw: dict[str, Any] = {}
    for (name, scale, _), v in zip(COLUMNS[1:8], ints[1:8], strict=True):
        kw[name] = None if v is None else _unscale(v, name, scale)
    return Fix(time=EPOCH + MS * ints[0], mode=fix.mode, **kw)  # type: ignore[operator]


def encode_live(record: Record) -> bytes:
    """One fix as plain JSON: `seq`, `trigger` (when set) and the fields of `Fix.to_dict()`.

    Numbers go out exactly (shortest round-tripping float); unknown (None) fields are left out.
    """
    _check_record(record)
    d: dict[str, Any] = {"seq": record.seq}
    if record.trigger:
        d["trigger"] = record.trigger
    d.update((k, v) for k, v in record.fix.to_dict().items() if v is not None)
    return _dumps(d)


def encode_batch(
    records: Sequence[Record], max_bytes: int = 5120, *, version: int = 1
) -> tuple[bytes, int]:
    """Pack the first n >= 1 records that fit in max_bytes; returns (payload, n).

    `max_bytes` bounds the payload as sent. `version=2` asks for a compact payload: version 2
    (deflated) or version 3 (binary), whichever carries more records, or of two that carry as
    many the smaller. A single record larger than max_bytes still goes alone, so the caller
    always progresses. Raises CodecError
    naming the seq of the first record no receiver could have produced (a fix outside
    `tracker.core.fix.FIELD_LIMITS`), so the caller can set that one aside.
    """
    if not records:
        raise CodecError("encode_batch needs at least one record")
    if not 64 <= max_bytes <= MAX_PAYLOAD:
        raise CodecError(f"max_bytes {max_bytes} is outside 64..{MAX_PAYLOAD}")
    if version == 2:
        return _encode_v2(records, max_bytes)
    if version != 1:
        raise CodecError(f"batch version {version} cannot be encoded (1 or 2)")
    head = b'{"v":%d,"d":[' % BATCH_VERSION
    triggers: list[str] = []
    rows: list[bytes] = []
    state = [0] * NCOL
    state[_SEQ] = -1
    size = len(head) + len(b'],"tt":[]}')
    tt_size = 0
    for rec in records:
        _check_record(rec)
        new_trigger = rec.trigger not in triggers
        if new_trigger:
            triggers.append(rec.trigger)
        vals = _values(rec, triggers)  # once per record: the row and the next state both use it
        row = _row(vals, state)
        add = len(row) + (1 if rows else 0)
        tt_add = (len(_dumps(rec.trigger)) + (1 if tt_size else 0)) if new_trigger else 0
        if rows and size + add + tt_add > max_bytes:
            if new_trigger:
                triggers.pop()
            break
        rows.append(row)
        size += add + tt_add
        tt_size += tt_add
        _advance(state, vals)
    tt = _dumps(triggers)
    payload = head + b",".join(rows) + b'],"tt":' + tt + b"}"
    return payload, len(rows)


def encode_condition(fields: Mapping[str, Any], *, sparse: bool = False) -> bytes:
    """A condition message (battery, temperature, backlog, state...) as compact JSON.

    `sparse` (low power, where every byte is a keep-alive's worth): keys whose value is null,
    a whole-number zero (the counters), an empty string or an empty object or list are left
    out, at every level; a reader takes a missing key as that. A measurement of 0.0 (a
    temperature) stays, so it cannot read as unknown. `reason` and `state` always stay. Still a
    JSON object that IoT rules and the cloud transform read as before."""
    try:
        doc = dict(fields)
        if sparse:
            kept = {k: doc[k] for k in ("reason", "state") if k in doc}
            doc = _sparse(doc) | kept
        return _dumps(doc)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"condition message cannot be encoded: {exc}") from exc


def _sparse(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            value = _sparse(value)
        if value is None or value == "" or (isinstance(value, (dict, list, tuple)) and not value):
            continue
        if type(value) is int and value == 0:
            continue
        out[key] = value
    return out


def decode(payload: bytes) -> list[Record]:
    """A live or batch payload (v1, v2 or v3) -> its records; CodecError (one line) on anything
    malformed."""
    if payload[:1] == V2_MAGIC:
        return _decode_v2(payload)
    if payload[:1] == V3_MAGIC:
        return _decode_v3(payload)
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"not JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise CodecError("not a message: expected a JSON object")
    if "d" in doc:
        return _decode_batch(doc)
    if "seq" in doc:
        return [_decode_live(doc)]
    raise CodecError("not a location message: neither a live fix (seq) nor a batch (v, d)")


# --- encoding helpers ---------------------------------------------------------------------------


# One encoder for every message: json.dumps with these options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _dumps(v: Any) -> bytes:
    return _ENCODER.encode(v).encode()


def _check_record(rec: Record) -> None:
    problem = fix_problem(rec.fix)
    if problem is None and not 0 <= rec.seq <= MAX_SEQ:
        problem = f"seq is outside 0..{MAX_SEQ}"
    if problem is not None:
        raise CodecError(f"fix {rec.seq} cannot be encoded: {problem}")


def _scaled(name: str, v: float, scale: int) -> int:
    if not math.isfinite(v):
        raise CodecError(f"{name} {v} is not a finite number")
    return round(v * scale)


def _unscale(i: int, name: str, scale: int) -> float | int:
    return i if name == "sats" else i / scale


def _ints(f: Fix) -> list[int | None]:
    out: list[int | None] = [(f.time - EPOCH) // MS]
    for name, scale, _ in COLUMNS[1:8]:
        v = getattr(f, name)
        out.append(None if v is None else _scaled(name, v, scale))
    if out[4] is not None:
        out[4] %= 3600  # course 359.96 is 0.0, not 360.0
    return out


def _values(rec: Record, triggers: list[str]) -> list[int | None]:
    return [*_ints(rec.fix), triggers.index(rec.trigger), rec.fix.mode, rec.seq]


def _row(vals: list[int | None], state: list[int]) -> bytes:
    return _dumps(_row_values(vals, state))


def _row_values(vals: list[int | None], state: list[int]) -> list[int | None]:
    """A v1 row: each value's change from the last known one, the seq's step minus one, the
    trailing zeros cut."""
    row = [None if v is None else v - s for v, s in zip(vals, state, strict=True)]
    row[_SEQ] = int(row[_SEQ] or 0) - 1
    while row and row[-1] == 0:
        row.pop()
    return row


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _v3_table(triggers: Sequence[str]) -> bytes:
    """Version 3's header: the magic byte and the trigger table."""
    out = bytearray(V3_MAGIC)
    _varint(len(triggers), out)
    for t in triggers:
        if t in KNOWN_TRIGGERS:
            _varint(KNOWN_TRIGGERS.index(t), out)
        else:
            raw = t.encode()
            _varint(len(KNOWN_TRIGGERS) + len(raw), out)
            out += raw
    return bytes(out)


def _v3_row(row: Sequence[int | None]) -> bytes:
    out = bytearray()
    _varint(len(row), out)
    for v in row:
        _varint(0 if v is None else (v << 1 if v >= 0 else (-v << 1) - 1) + 1, out)
    return bytes(out)


def _advance(state: list[int], vals: list[int | None]) -> None:
    for i, v in enumerate(vals):
        if v is not None:
            state[i] = v


def _encode_v2(records: Sequence[Record], max_bytes: int) -> tuple[bytes, int]:
    """Version 2: the v1 rows deflated; the most records whose compressed payload fits."""
    triggers: list[str] = []
    rows: list[bytes] = []
    values: list[list[int | None]] = []
    n_triggers: list[int] = []  # size of the trigger table after each row
    state = [0] * NCOL
    state[_SEQ] = -1
    raw = 0
    for rec in records:
        _check_record(rec)
        if rec.trigger not in triggers:
            triggers.append(rec.trigger)
        vals = _values(rec, triggers)
        row_values = _row_values(vals, state)
        row = _dumps(row_values)
        raw += len(row) + 1
        if rows and raw + len(_dumps(triggers)) + 16 > V2_MAX_INFLATED:
            break
        rows.append(row)
        values.append(row_values)
        n_triggers.append(len(triggers))
        _advance(state, vals)

    # v3 takes the most records when its size fits first (a few fixes, or a small max_bytes);
    # its rows are encoded only as far as it can fit, plus the one that does not
    v3_rows: list[bytes] = []
    n3, size3 = 0, 0
    for k, row_values in enumerate(values, 1):
        v3_rows.append(_v3_row(row_values))
        size3 += len(v3_rows[-1])
        if len(_v3_table(triggers[: n_triggers[k - 1]])) + size3 > max_bytes:
            break
        n3 = k

    def v3(n: int) -> bytes:
        return _v3_table(triggers[: n_triggers[n - 1]]) + b"".join(v3_rows[:n])

    def smallest(n: int, v2: bytes) -> tuple[bytes, int]:
        """The most records either version fits; of two that fit as many, the smaller (past
        n3, v3 is larger than max_bytes, so only a lone oversized record compares)."""
        if n3 > n:
            return v3(n3), n3
        if n <= len(v3_rows) and len(v3(n)) < len(v2):
            return v3(n), n
        return v2, n

    def packed(n: int) -> bytes:
        body = b'{"d":[' + b",".join(rows[:n]) + b'],"tt":' + _dumps(triggers[: n_triggers[n - 1]])
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, V2_DICT)
        return V2_MAGIC + c.compress(body + b"}") + c.flush()

    n = len(rows)
    payload = packed(n)
    if len(payload) <= max_bytes or n == 1:
        return smallest(n, payload)
    # the compressed size grows with n (nearly in proportion): search from the estimate
    lo, hi = 1, n - 1  # lo fits (or is the single record that goes alone); hi+1 does not
    best = packed(1)
    guess: int | None = max(1, min(hi, int(n * max_bytes / len(payload) * 0.98)))
    while lo <= hi:
        mid = guess if guess is not None else (lo + hi) // 2
        guess = None
        candidate = packed(mid)
        if len(candidate) <= max_bytes:
            best, lo = candidate, mid + 1
            # the next probe just above: the estimate is usually close
            if lo <= hi:
                guess = min(hi, mid + max(1, (hi - mid) // 8))
        else:
            hi = mid - 1
    return smallest(max(1, lo - 1), best)


def _decode_v2(payload: bytes) -> list[Record]:
    if len(payload) > MAX_PAYLOAD:
        raise CodecError(f"batch of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    d = zlib.decompressobj(-15, zdict=V2_DICT)
    try:
        body = d.decompress(payload[1:], V2_MAX_INFLATED)
        complete = d.eof
    except zlib.error as exc:
        raise CodecError(f"batch version 2 does not inflate: {exc}") from exc
    if not complete:
        too_big = d.unconsumed_tail or len(body) >= V2_MAX_INFLATED
        raise CodecError(
            f"batch version 2 inflates past {V2_MAX_INFLATED} bytes"
            if too_big
            else "batch version 2 is truncated"
        )
    if d.unused_data:
        raise CodecError("batch version 2 has bytes after its end")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"batch version 2 holds no JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict) or "v" in doc:
        raise CodecError("batch version 2 does not hold a batch document")
    return _decode_batch({**doc, "v": BATCH_VERSION})


def _decode_v3(payload: bytes) -> list[Record]:
    if len(payload) > MAX_PAYLOAD:
        raise CodecError(f"batch of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    pos = 1

    def varint(what: str) -> int:
        nonlocal pos
        n = shift = 0
        while True:
            if pos >= len(payload):
                raise CodecError(f"batch version 3 is truncated in {what}")
            b = payload[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise CodecError(f"batch version 3: a number in {what} is too long")

    triggers: list[str] = []
    for _ in range(varint("the trigger table")):
        k = varint("the trigger table")
        if k < len(KNOWN_TRIGGERS):
            triggers.append(KNOWN_TRIGGERS[k])
            continue
        end = pos + k - len(KNOWN_TRIGGERS)
        if end > len(payload):
            raise CodecError("batch version 3 is truncated in the trigger table")
        try:
            triggers.append(payload[pos:end].decode())
        except UnicodeDecodeError as exc:
            raise CodecError("batch version 3: a trigger is not UTF-8") from exc
        pos = end
    rows: list[list[int | None]] = []
    while pos < len(payload):
        count = varint(f"row {len(rows)}")
        if count > NCOL:
            raise CodecError(f"batch row {len(rows)} has {count} values, more than {NCOL}")
        row: list[int | None] = []
        for _ in range(count):
            z = varint(f"row {len(rows)}")
            row.append(None if z == 0 else ((z - 1) >> 1) ^ -((z - 1) & 1))
        rows.append(row)
    return _decode_batch({"v": BATCH_VERSION, "d": rows, "tt": triggers})


# --- decoding helpers ---------------------------------------------------------------------------


def _show(v: Any) -> str:
    """A value for a one-line error: its repr, clipped (payloads can be hostile)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**24 else f"{str(v)[:12]}..."
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_live(doc: dict[str, Any]) -> Record:
    seq, trigger = doc.get("seq"), doc.get("trigger", "")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise CodecError(f"seq {_show(seq)} is not an integer in 0..{MAX_SEQ}")
    if not isinstance(trigger, str):
        raise CodecError(f"trigger {_show(trigger)} is not a string")
    for key in ("lat", "lon", "alt", "speed", "course", "hdop"):
        v = doc.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise CodecError(f"{key} {_show(v)} is not a number")
    if doc.get("sats") is not None and not _is_int(doc["sats"]):
        raise CodecError(f"sats {_show(doc['sats'])} is not an integer")
    if not _is_int(doc.get("mode", 2)):
        raise CodecError(f"mode {_show(doc.get('mode'))} is not an integer")
    try:
        fix = Fix.from_dict(doc)
    except KeyError as exc:
        raise CodecError(f"live fix has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise CodecError(f"live fix is malformed: {exc}") from exc
    except OverflowError as exc:
        raise CodecError("live fix is malformed: a number is out of range") from exc
    return Record(seq, _checked(fix), trigger)


def _decode_batch(doc: dict[str, Any]) -> list[Record]:
    if doc.get("v") != BATCH_VERSION:
        raise CodecError(f"batch version {_show(doc.get('v'))} is not supported (expected 1)")
    rows, triggers = doc.get("d"), doc.get("tt")
    if not isinstance(rows, list) or not rows:
        raise CodecError("batch field d is not a non-empty list of rows")
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise CodecError("batch field tt is not a list of strings")
    state = [0] * NCOL
    state[_SEQ] = -1
    out: list[Record] = []
    for n, row in enumerate(rows):
        if type(row) is not list or len(row) > NCOL:
            raise CodecError(f"batch row {n} is not a list of at most {NCOL} numbers")
        state[_SEQ] += 1  # seq steps by one more than the stored difference
        vals: list[int | None] = []
        for i, d in enumerate(row):
            if type(d) is int:  # not bool
                state[i] += d
                vals.append(state[i])
            elif d is None and _NULLABLE[i]:
                vals.append(None)
            else:
                raise CodecError(f"batch row {n}: {COLUMNS[i][0]} {_show(d)} is not an integer")
        vals.extend(state[len(vals) :])  # left-out trailing columns did not change
        out.append(_record(n, vals, triggers))
    return out


def _record(n: int, vals: list[int | None], triggers: list[str]) -> Record:
    t_ms, lat, lon, speed, course, alt, hdop, sats, trig, mode, seq = vals
    assert t_ms is not None and trig is not None and mode is not None and seq is not None
    assert lat is not None and lon is not None
    if not 0 <= trig < len(triggers):
        raise CodecError(f"batch row {n}: trigger index {trig} is not in tt")
    if not 0 <= seq <= MAX_SEQ:
        raise CodecError(f"batch row {n}: seq {_show(seq)} is outside 0..{MAX_SEQ}")
    try:
        fix = Fix(
            time=EPOCH + MS * t_ms,
            lat=lat / 10_000_000,
            lon=lon / 10_000_000,
            alt=None if alt is None else alt / 100,
            speed=None if speed is None else speed / 100,
            course=None if course is None else course / 10,
            mode=mode,
            sats=sats,
            hdop=None if hdop is None else hdop / 100,
        )
    except OverflowError as exc:
        raise CodecError(f"batch row {n}: a value is out of range") from exc
    return Record(seq, _checked(fix), triggers[trig])


def _checked(fix: Fix) -> Fix:
    problem = fix_problem(fix)
    if problem is not None:
        raise CodecError(problem)
    return fix
