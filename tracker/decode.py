"""`tracker decode FILE...`: expand message payloads (live or batch) into one JSON line per fix.

Uses only `tracker.codec`; must not import sqlite3 or the AWS SDK.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tracker.codec import decode
from tracker.errors import CodecError
from tracker.fix import Record


def record_dict(record: Record) -> dict[str, Any]:
    """`seq`, `trigger` (when set) and the fields of `Fix.to_dict()`, in that order."""
    d: dict[str, Any] = {"seq": record.seq}
    if record.trigger:
        d["trigger"] = record.trigger
    d.update(record.fix.to_dict())
    return d


def main(args: argparse.Namespace) -> int:
    """Decode each file (one payload per file, `-` for stdin); 2 when any file was bad."""
    status = 0
    for name in args.files:
        try:
            if name == "-":
                payload = sys.stdin.buffer.read()
            else:
                with open(name, "rb") as f:
                    payload = f.read()
            records = decode(payload)
        except OSError as exc:
            print(f"tracker decode: {name}: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        except CodecError as exc:
            print(f"tracker decode: {name}: {exc}", file=sys.stderr)
            status = 2
            continue
        for record in records:
            print(json.dumps(record_dict(record)))
        sys.stdout.flush()
    return status
