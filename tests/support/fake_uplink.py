"""An in-memory stand-in for `tracker.link.uplink.Uplink` for whole-app tests in simulated time.

It records every publish; the test decides when the broker acknowledges (`ack_all`) and when the
link comes and goes, by posting the same events the real uplink posts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from tracker.core.events import LinkUp, Post, PubAck
from tracker.core.fix import Record
from tracker.link import codec


@dataclass
class Published:
    token: int
    topic: str
    payload: bytes
    acked: bool = False


@dataclass
class FakeUplink:
    post: Post
    started: bool = False
    restarts: int = 0
    stopped: bool = False
    subscriptions: list[str] = field(default_factory=list)
    sent: list[Published] = field(default_factory=list)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start(self) -> None:
        """The first start waits for the test's LinkUp; a restart reconnects at once."""
        if self.started:
            self.restarts += 1
            self.post(LinkUp())
        self.started = True
        self.stopped = False

    def subscribe(self, topic: str) -> None:
        self.subscriptions.append(topic)

    def publish(self, topic: str, payload: bytes) -> int:
        token = next(self._tokens)
        self.sent.append(Published(token, topic, payload))
        return token

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True

    def ack_all(self) -> int:
        """The broker acknowledges everything outstanding (posted as PubAck events)."""
        n = 0
        for p in self.sent:
            if not p.acked:
                p.acked = True
                self.post(PubAck(p.token))
                n += 1
        return n

    def on(self, suffix: str) -> list[Published]:
        return [p for p in self.sent if p.topic.endswith(suffix)]

    def records(self) -> list[Record]:
        """Every fix received on the location topic, in arrival order."""
        return [r for p in self.on("/location") for r in codec.decode(p.payload)]

    def conditions(self) -> list[dict[str, Any]]:
        return [json.loads(p.payload) for p in self.on("/condition")]
