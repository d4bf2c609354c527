"""`tracker decode FILE...`: expand message payloads (live or batch) into one JSON line per fix.

A file is one payload, or a stream of messages one per line as `mosquitto_sub` prints them:
the plain payload, `-v` (`TOPIC PAYLOAD`), `-F %j` / `-F %J` (a JSON envelope with topic and
payload) or `-F %x` (hex). When a line carries its topic, the thing name is added to its fixes.
Uses only `tracker.link.codec`; must not import sqlite3 or the AWS SDK.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from tracker.core.errors import CodecError
from tracker.core.fix import Record
from tracker.link.codec import decode

HEX_RE = re.compile(rb"(?:[0-9a-fA-F]{2})+")
TOPIC_RE = re.compile(rb"[^\s{\[\"]+")


def record_dict(record: Record, thing: str | None = None) -> dict[str, Any]:
    """`thing` (when known), `seq`, `trigger` (when set) and the fields of `Fix.to_dict()`."""
    d: dict[str, Any] = {"thing": thing} if thing else {}
    d["seq"] = record.seq
    if record.trigger:
        d["trigger"] = record.trigger
    d.update(record.fix.to_dict())
    return d


def thing_of(topic: str) -> str | None:
    """`.../THING/location` or `.../THING/condition` -> THING."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[-1] in ("location", "condition") and parts[-2]:
        return parts[-2]
    return None


def _unhex(text: bytes) -> bytes | None:
    return bytes.fromhex(text.decode()) if HEX_RE.fullmatch(text) else None


def parse_line(line: bytes) -> tuple[str | None, bytes]:
    """One captured line -> (topic or None, payload)."""
    line = line.strip()
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and "topic" in doc and "payload" in doc and "seq" not in doc:
        topic = str(doc["topic"])
        body = doc["payload"]
        if isinstance(body, str):  # -F %j: a quoted payload
            raw = body.encode("utf-8", "surrogateescape")
            return topic, (_unhex(raw) if doc.get("format") == "hex" else None) or raw
        return topic, json.dumps(body).encode()  # -F %J: the payload itself
    if doc is not None:
        return None, line  # a plain payload
    raw_hex = _unhex(line)
    if raw_hex is not None:  # -F %x
        return None, raw_hex
    head, _, rest = line.partition(b" ")
    if rest and TOPIC_RE.fullmatch(head) and b"/" in head:  # -v: TOPIC PAYLOAD
        rest = rest.strip()
        return head.decode(errors="replace"), _unhex(rest) or rest
    return None, line


def messages(data: bytes) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, topic, payload) of every non-empty line."""
    for n, line in enumerate(data.splitlines(), 1):
        if line.strip():
            topic, payload = parse_line(line)
            yield n, topic, payload


def _emit(records: list[Record], thing: str | None) -> None:
    for record in records:
        print(json.dumps(record_dict(record, thing)))


def decode_data(name: str, data: bytes) -> int:
    """Decode one file's bytes; 2 when any message in it was bad."""
    try:
        _emit(decode(data), None)  # one payload: the file as a whole
        return 0
    except CodecError as whole_error:
        single = len([x for x in data.splitlines() if x.strip()]) <= 1
        status = 0
        for n, topic, payload in messages(data):
            thing = thing_of(topic) if topic else None
            if topic and topic.endswith("/condition"):
                continue  # condition messages carry no fixes
            try:
                _emit(decode(payload), thing)
            except CodecError as exc:
                where = name if single else f"{name}:{n}"
                reason = (
                    whole_error if single and topic is None and payload == data.strip() else exc
                )
                print(f"tracker decode: {where}: {reason}", file=sys.stderr)
                status = 2
        if not data.strip():
            print(f"tracker decode: {name}: {whole_error}", file=sys.stderr)
            status = 2
        return status


def main(args: argparse.Namespace) -> int:
    """Decode each file (a payload, or captured lines; `-` for stdin); 2 when any was bad."""
    status = 0
    for name in args.files:
        try:
            if name == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(name, "rb") as f:
                    data = f.read()
        except OSError as exc:
            print(f"tracker decode: {name}: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        status = max(status, decode_data(name, data))
        sys.stdout.flush()
    return status
