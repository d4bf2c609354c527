"""AWS IoT Core's limits that the device's settings and messages must respect: one home for each."""

from __future__ import annotations

MAX_PAYLOAD = 128 * 1024  # the largest message AWS IoT Core accepts, in bytes
MAX_TOPIC_BYTES = 256  # the longest topic name, Basic Ingest prefix included
