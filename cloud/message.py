"""What the IoT rules hand on: the device's topic, its raw payload (base64) and the receive time.

Both the Firehose records and the Location rule's Lambda event carry this JSON object, produced
by the rule SQL in deploy/aws/stack.yaml:

    SELECT topic() AS topic, encode(*, 'base64') AS payload_b64, timestamp() AS received
    FROM 'dt/tracker/+/location'

The thing name is the topic level before the kind (`PREFIX/THING/location`): the device policy
lets a device publish only under its own thing name, so the topic is as good as the client id.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tracker.core.errors import CodecError
from tracker.core.limits import MAX_PAYLOAD

THING_NAME_RE = re.compile(
    r"[A-Za-z0-9:_-]{1,128}"
)  # as tracker.core.config checks it on the device
KINDS = ("location", "condition")
_Y10K = 253_402_300_800_000  # ms: datetime cannot go further


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message as the rule saw it."""

    thing: str
    kind: str  # location or condition
    topic: str
    payload: bytes
    received_ms: int  # the rule's timestamp(): ms since 1970, UTC

    @property
    def received(self) -> str:
        """The receive time as ISO-8601 UTC with milliseconds."""
        return iso_ms(self.received_ms)


def iso_ms(ms: int) -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse(doc: Any, fallback_received_ms: int | None = None) -> Message:
    """The rule output -> Message; CodecError (one line) when it is not what the rule makes."""
    if not isinstance(doc, dict):
        raise CodecError("rule output is not a JSON object")
    topic, b64, received = doc.get("topic"), doc.get("payload_b64"), doc.get("received")
    if not isinstance(topic, str):
        raise CodecError("rule output has no topic")
    levels = topic.split("/")
    if len(levels) < 3 or levels[-1] not in KINDS:
        raise CodecError(f"topic {topic[:80]!r} is not PREFIX/THING/location or .../condition")
    thing = levels[-2]
    if not THING_NAME_RE.fullmatch(thing):
        raise CodecError(f"topic {topic[:80]!r} does not name a valid thing")
    if not isinstance(b64, str):
        raise CodecError("rule output has no payload_b64")
    if len(b64) > (MAX_PAYLOAD + 2) // 3 * 4:
        raise CodecError(f"payload of about {len(b64) * 3 // 4} bytes exceeds {MAX_PAYLOAD}")
    try:
        payload = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(f"payload_b64 is not base64: {exc}") from exc
    if received is None:
        received = fallback_received_ms
    if not isinstance(received, int) or isinstance(received, bool) or not 0 <= received < _Y10K:
        raise CodecError(f"received {received!r} is not a time in ms")
    return Message(thing, levels[-1], topic, payload, received)
