"""Spool + Forwarder + Uplink on one event queue, as the daemon wires them; also a child program.

`ForwardLoop` drives the three from a test; `python -m support.sender CONFIG_JSON` (`start_child`)
runs one as a child process that puts synthetic fixes (`benchkit.fixes`) at a high rate until
killed (the SIGKILL scenario), or drains the spool and exits (`"drain": true`). Imports no test
fixtures.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchkit.fixes import synthetic_fix

from tracker.core.config import AwsConfig
from tracker.core.events import Event, LinkDown, LinkUp, PubAck, PubFailed
from tracker.link import codec
from tracker.link.forward import Forwarder
from tracker.link.uplink import Uplink
from tracker.spool.store import Spool


class _Recorder:
    """The Uplink, remembering which seqs each publish token carried (for assertions only)."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.sent: dict[int, list[int]] = {}

    def publish(self, topic: str, payload: bytes) -> int:
        token = self.uplink.publish(topic, payload)
        self.sent[token] = [r.seq for r in codec.decode(payload)]
        return token


class ForwardLoop:
    """The daemon's store-and-forward wiring, driven by `step()` / `run_until()`."""

    def __init__(
        self,
        aws: AwsConfig,
        thing: str,
        spool_path: str | Path,
        *,
        window: int = 8,
        batch_bytes: int = 5120,
        reconnect_max_s: float = 0.5,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.spool = Spool(spool_path)
        self.uplink = Uplink(
            aws, thing, self.events.put, reconnect_min_s=0.05, reconnect_max_s=reconnect_max_s
        )
        self.recorder = _Recorder(self.uplink)
        self.forwarder = Forwarder(
            self.spool,
            self.recorder,
            aws.topic(thing, "location"),
            window=window,
            batch_bytes=batch_bytes,
        )
        self.gate = gate  # called on LinkUp before sending: e.g. wait for the cloud subscriber
        self.acked: set[int] = set()
        self.links: list[LinkUp | LinkDown] = []
        self.failures: list[PubFailed] = []
        self.max_outstanding = 0  # publishes inside the SDK at once (highest seen)
        self.in_flight_at_drops: list[int] = []  # fixes awaiting a PUBACK at each LinkDown

    def start(self) -> ForwardLoop:
        self.uplink.start()
        return self

    def put(self, n: int = 1) -> None:
        """Record n new fixes (durable) and let the forwarder send."""
        for _ in range(n):
            self.spool.put(synthetic_fix(self.spool.stats().next_seq), "interval")
            self.forwarder.pump()
        self._watch()

    def handle(self, ev: Event) -> None:
        fw = self.forwarder
        if isinstance(ev, LinkUp):
            self.links.append(ev)
            if self.gate is not None:
                self.gate()
            fw.link_up()
        elif isinstance(ev, LinkDown):
            self.links.append(ev)
            self.in_flight_at_drops.append(fw.stats().in_flight_fixes)
            fw.link_down()
        elif isinstance(ev, PubAck):
            self.acked.update(self.recorder.sent.pop(ev.token, ()))
            fw.on_puback(ev.token)
        elif isinstance(ev, PubFailed):
            self.recorder.sent.pop(ev.token, None)
            self.failures.append(ev)
            fw.on_failed(ev.token)
        fw.pump()
        self._watch()

    def _watch(self) -> None:
        s = self.forwarder.stats()
        self.max_outstanding = max(self.max_outstanding, s.in_flight + s.orphaned)

    def step(self, timeout: float = 0.05) -> bool:
        """Handle one event if one comes within `timeout`."""
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            return False
        self.handle(ev)
        return True

    def run_until(self, done: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            self.step()
        return True

    def drained(self) -> bool:
        return self.spool.stats().backlog == 0

    def close(self) -> None:
        self.uplink.stop()
        while not self.events.empty():
            self.handle(self.events.get_nowait())
        self.spool.close()


def main(argv: list[str]) -> int:
    """Child program: `{"aws": {...}, "thing", "spool", "period_s", "drain"}` as one JSON arg."""
    cfg: dict[str, Any] = json.loads(argv[0])
    loop = ForwardLoop(AwsConfig(**cfg["aws"]), cfg["thing"], cfg["spool"]).start()
    period = float(cfg.get("period_s", 0.005))
    drain = bool(cfg.get("drain", False))
    deadline = time.monotonic() + float(cfg.get("max_s", 60.0))
    next_put = time.monotonic()
    while time.monotonic() < deadline:
        if not drain and time.monotonic() >= next_put:
            loop.put()
            next_put = max(next_put + period, time.monotonic() - period)
        while loop.step(0):  # everything already queued, without waiting
            pass
        if drain and loop.drained():
            loop.close()
            return 0
        wait = 0.05 if drain else next_put - time.monotonic()
        if wait > 0:
            loop.step(min(wait, 0.05))
    loop.close()
    return 1


def child_config(aws: AwsConfig, thing: str, spool: Path, **options: object) -> dict[str, object]:
    """The CONFIG_JSON of a sender child for `aws` (`options`: period_s, max_s, drain)."""
    keys = ("endpoint", "port", "cert", "key", "ca", "flow_control")
    return {
        "aws": {k: getattr(aws, k) for k in keys},
        "thing": thing,
        "spool": str(spool),
        **options,
    }


def start_child(
    cfg: dict[str, object], stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`python -m support.sender CONFIG_JSON` as a child, with tests/ and scripts/ on its path."""
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(str(p) for p in (root / "tests", root / "scripts", root))
    return subprocess.Popen(
        [sys.executable, "-m", "support.sender", json.dumps(cfg)],
        env=dict(os.environ, PYTHONPATH=path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
