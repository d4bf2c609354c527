"""Config files for running the real daemon (`tracker run`) against a test broker and a pty GPS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchkit.broker import Broker

Sections = Mapping[str, Mapping[str, Any]]


def toml_text(sections: Sections, header: str = "") -> str:
    """TOML for flat sections (JSON strings, numbers and booleans are valid TOML values)."""
    body = "".join(
        f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )
    return (f"# {header}\n" if header else "") + body


def daemon_config(broker: Broker, gps_path: str, spool: Path, extra: Sections | None = None) -> str:
    """A config for this broker and GPS: recordings keep their dates, the clock is never set."""
    aws = broker.aws_config()
    sections: dict[str, dict[str, Any]] = {
        "device": {"thing_name": broker.pki.thing_name, "set_clock": False},
        "aws": {"endpoint": aws.endpoint, "port": aws.port, "cert": aws.cert, "key": aws.key,
                "ca": aws.ca, "flow_control": False},
        "gps": {"url": gps_path, "detect_baud": False, "date_floor": "1999-08-22"},
        "spool": {"path": str(spool)},
        "power": {"gps": "sim://"},
    }  # fmt: skip
    for name, keys in (extra or {}).items():
        sections.setdefault(name, {}).update(keys)
    return toml_text(sections)
