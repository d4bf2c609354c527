"""`tracker collect --config FILE`: the local twin of the cloud side, from broker into the lake.

Subscribes to every tracker's location and condition topics, decodes each message, stores it in
the lake (`tracker.twin.lake`) de-duplicated by (thing, seq), fsyncs, and only then sends its
PUBACK. A crash before the PUBACK leaves the message in the broker's session: it comes again and the
lake recognises it. The SDK is `tracker.twin.collect_link`'s; this module owns the loop and the
config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tracker.core.config import (
    THING_NAME_RE,
    TOPIC_PREFIX_RE,
    AwsConfig,
    build_section,
    read_toml,
    setting,
    shown,
)
from tracker.core.errors import CodecError, ConfigError, TrackerError
from tracker.core.limits import MAX_PAYLOAD
from tracker.link import codec
from tracker.link.forward import publish_packet_bytes
from tracker.twin.lake import LakeWriter

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass  # type: ignore[import-not-found,unused-ignore]

log = logging.getLogger("tracker.twin.collect")

GROUP_MAX = 512  # messages stored under one fsync at most
STATS_EVERY_S = 0.5
KINDS = ("location", "condition")


@dataclass(frozen=True)
class CollectSection:
    client_id: str = setting("tracker-collector", "MQTT client id of the collector")
    lake: str = setting(None, "folder the lake is written to (created when missing)")
    topic_prefix: str = setting("dt/tracker", "the devices' [aws] topic_prefix")
    reconnect_max_s: float = setting(
        60.0, "longest wait between reconnect attempts", lo=0.1, hi=600, unit="s"
    )


@dataclass(frozen=True)
class CollectConfig:
    aws: AwsConfig
    collect: CollectSection

    def filters(self) -> list[str]:
        """`<prefix>/+/location` and `.../condition`, from the device's own topic builder."""
        plain = dataclasses.replace(
            self.aws, topic_prefix=self.collect.topic_prefix, basic_ingest_rule=""
        )
        return [plain.topic("+", kind) for kind in KINDS]


def from_dict(doc: Mapping[str, Any]) -> CollectConfig:
    """Validate a TOML-shaped dict: sections [aws] and [collect] only."""
    unknown = sorted(set(doc) - {"aws", "collect"})
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}]; the collector reads [aws] and [collect]"
        )
    cfg = CollectConfig(
        aws=build_section("aws", AwsConfig, doc.get("aws", {})),
        collect=build_section("collect", CollectSection, doc.get("collect", {})),
    )
    if not cfg.aws.endpoint or any(c in cfg.aws.endpoint for c in "/: "):
        raise ConfigError(
            f"[aws] endpoint {cfg.aws.endpoint!r} must be a host name, without scheme or port"
        )
    if cfg.aws.session_expiry_s == 0:
        raise ConfigError(
            "[aws] session_expiry_s = 0 loses messages sent while the collector is down: "
            "leave it out or set it to how long the collector may be stopped (seconds)"
        )
    if not THING_NAME_RE.fullmatch(cfg.collect.client_id):
        raise ConfigError(
            f"[collect] client_id {shown(cfg.collect.client_id)} is invalid: "
            "use 1-128 of A-Z a-z 0-9 : _ -"
        )
    prefix = cfg.collect.topic_prefix
    if not TOPIC_PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"[collect] topic_prefix {shown(prefix)} is invalid: use words of "
            "A-Z a-z 0-9 _ - separated by /, no wildcards or leading $"
        )
    if not cfg.collect.lake.strip():
        raise ConfigError("[collect] lake is empty: set the folder to write the lake to")
    return cfg


def load(path: str | None) -> CollectConfig:
    """Read and validate the collector's TOML file; ConfigError (one line) on any problem."""
    if not path:
        raise ConfigError("no config file: pass --config FILE")
    doc = read_toml(Path(path))
    return from_dict(doc)


@dataclass
class Stats:
    """Counters of this run; written to `--stats FILE` for the bench and monitoring."""

    subscribed: bool = False
    link: str = "down"
    messages: int = 0
    location_messages: int = 0
    location_payload_bytes: int = 0
    location_wire_bytes: int = 0
    records: int = 0
    fixes_written: int = 0
    duplicates: int = 0
    conditions: int = 0
    conditions_written: int = 0
    rejected: int = 0
    groups: int = 0
    started: str = field(default_factory=lambda: _now().isoformat())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def thing_of(topic: str, prefix: str) -> tuple[str, str] | None:
    """`PREFIX/THING/KIND` -> (thing, kind); None for any other topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    thing, _, kind = topic[len(head) :].partition("/")
    if kind not in KINDS or not THING_NAME_RE.fullmatch(thing):
        return None
    return thing, kind


class Collector:
    """Stores deliveries in the lake, then acknowledges them; one owning thread."""

    def __init__(self, cfg: CollectConfig, lake: LakeWriter, stats_path: Path | None) -> None:
        self.cfg = cfg
        self.lake = lake
        self.stats = Stats()
        self.stats_path = stats_path
        self.events: queue.Queue[object] = queue.Queue()
        self.group_max = GROUP_MAX
        self._stats_due = 0.0

    def store(self, topic: str, payload: bytes, received: datetime) -> None:
        """Decode one message into the lake's buffers (nothing is written yet)."""
        st = self.stats
        st.messages += 1
        where = thing_of(topic, self.cfg.collect.topic_prefix)
        if where is None:
            self._reject(topic, payload, "topic is not PREFIX/THING/location or .../condition")
            return
        thing, kind = where
        if len(payload) > MAX_PAYLOAD:
            self._reject(topic, payload, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
            return
        if kind == "condition":
            st.conditions += 1
            try:
                doc = json.loads(payload)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                self._reject(topic, payload, f"not JSON: {str(exc).splitlines()[0]}")
                return
            if not isinstance(doc, dict):
                self._reject(topic, payload, "not a condition message: expected a JSON object")
                return
            st.conditions_written += self.lake.add_condition(thing, doc, received)
            return
        st.location_messages += 1
        st.location_payload_bytes += len(payload)
        st.location_wire_bytes += publish_packet_bytes(topic, len(payload))
        try:
            records = codec.decode(payload)
        except CodecError as exc:
            self._reject(topic, payload, str(exc))
            return
        for rec in records:
            st.records += 1
            if self.lake.add_fix(thing, rec, received):
                st.fixes_written += 1
            else:
                st.duplicates += 1

    def _reject(self, topic: str, payload: bytes, reason: str) -> None:
        self.stats.rejected += 1
        log.warning("rejected a message on %s: %s", topic[:200], reason)
        self.lake.add_rejected(topic, payload, reason, _now())

    def run(self, link: Any, stop: Any) -> None:
        """Until `stop()`: take the waiting deliveries, store them, fsync, then PUBACK them."""
        from tracker.twin.collect_link import Delivery, LinkState

        self.write_stats(force=True)
        while not stop():
            try:
                first = self.events.get(timeout=0.2)
            except queue.Empty:
                self.write_stats()
                continue
            group = [first]
            while len(group) < self.group_max:
                try:
                    group.append(self.events.get_nowait())
                except queue.Empty:
                    break
            received = _now()
            deliveries = []
            for ev in group:
                if isinstance(ev, Delivery):
                    self.store(ev.topic, ev.payload, received)
                    deliveries.append(ev)
                elif isinstance(ev, LinkState):
                    self._link_state(ev)
            if deliveries:
                self.lake.commit()  # written and fsynced ...
                for d in deliveries:  # ... before the broker may forget it
                    link.ack(d)
                self.stats.groups += 1
            self.write_stats()

    def _link_state(self, ev: Any) -> None:
        if ev.up:
            self.stats.link = "up"
            if ev.reason == "subscribed":
                self.stats.subscribed = True
            log.info("link up: %s", ev.reason)
        else:
            self.stats.link = "down"
            log.log(logging.ERROR if ev.fatal else logging.WARNING, "link down: %s", ev.reason)

    def write_stats(self, force: bool = False) -> None:
        if self.stats_path is None:
            return
        now = time.monotonic()
        if not force and now < self._stats_due:
            return
        self._stats_due = now + STATS_EVERY_S
        tmp = self.stats_path.with_name(self.stats_path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self.stats)) + "\n")
        os.replace(tmp, self.stats_path)


def main(args: argparse.Namespace) -> int:
    """Run the collector until SIGTERM/SIGINT."""
    cfg = load(args.config)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tracker.twin.collect_link import CollectLink

    lake = LakeWriter(Path(cfg.collect.lake)).open()
    stats_path = Path(args.stats) if args.stats else None
    collector = Collector(cfg, lake, stats_path)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    filters = cfg.filters()
    link = CollectLink(
        cfg.aws,
        cfg.collect.client_id,
        filters,
        collector.events.put,
        reconnect_max_s=cfg.collect.reconnect_max_s,
    )
    known = sum(len(s) for s in lake.seqs.values())
    log.info(
        "collecting %s from %s into %s (%d fixes of %d things already there)",
        " and ".join(filters), link.server, cfg.collect.lake, known, len(lake.seqs),
    )  # fmt: skip
    try:
        link.start()
        collector.run(link, lambda: bool(stopping))
    except OSError as exc:
        raise TrackerError(
            f"cannot write the lake {cfg.collect.lake}: {exc.strerror or exc}; "
            "free space or fix its permissions, then start again (nothing unstored was acked)"
        ) from exc
    finally:
        link.stop()
        # deliveries still queued were never acknowledged: the broker sends them again
        collector.stats.link = "down"
        collector.write_stats(force=True)
        lake.close()
    log.info("stopped: %s", json.dumps(dataclasses.asdict(collector.stats)))
    return 0
