"""Remote settings end to end: ShadowSync driven through a real Uplink and Mosquitto (mutual TLS),
with the shadow service played by support.shadow_responder."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from benchkit.broker import Broker
from benchkit.pki import Pki
from support.shadow_responder import ShadowResponder, delta_of, shadow_responder_fixture  # noqa: F401

from tracker.core import config
from tracker.core.config import AwsConfig, Config
from tracker.core.events import Event, Inbound, LinkDown, LinkUp, PubAck, PubFailed
from tracker.link import remote_settings
from tracker.link.shadow import ShadowSync
from tracker.link.uplink import Uplink

WAIT_S = 8.0  # an upper bound for a broken test to fail, not a timing assertion


class DeviceLoop:
    """The daemon's part in small: one queue, events routed to ShadowSync, its output published."""

    def __init__(
        self, aws: AwsConfig, cfg: Config, store: Path, *, shadow_name: str | None = None
    ) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.sync = ShadowSync(cfg.device.thing_name, cfg, store, shadow_name=shadow_name)
        self.config = self.sync.config
        self.applied: list[Config] = []
        self.link_up = False
        self.unacked: set[int] = set()  # publish tokens the broker has not acknowledged yet
        self.uplink = Uplink(aws, cfg.device.thing_name, self.events.put, reconnect_max_s=1.0)
        for topic in self.sync.topics():
            self.uplink.subscribe(topic)

    def handle(self, event: Event) -> None:
        if isinstance(event, LinkUp):
            self.link_up = True
            self.publish(self.sync.on_connected())
        elif isinstance(event, LinkDown):
            self.link_up = False
            self.sync.on_disconnected()
        elif isinstance(event, (PubAck, PubFailed)):
            self.unacked.discard(event.token)
        elif isinstance(event, Inbound):
            res = self.sync.on_message(event.topic, event.payload)
            if res.config is not None:
                self.config = res.config
                self.applied.append(res.config)
            self.publish(res.publish)

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.unacked.add(self.uplink.publish(topic, payload))

    def run_until(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        """Handle events until `done()`; fails the test if that never happens."""
        remaining = int(timeout / 0.05)
        while not done():
            try:
                self.handle(self.events.get(timeout=0.05))
            except queue.Empty:
                remaining -= 1
                if remaining <= 0:
                    pytest.fail("the device never reached the expected state")

    def start(self, cloud: ShadowResponder | None = None, name: str | None = None) -> DeviceLoop:
        """Connect; returns once the get is answered and what followed it is acknowledged, and
        (given the shadow service) once the service holds a reported state."""
        self.uplink.start()
        self.run_until(lambda: self.link_up and self.sync.synced and not self.unacked)
        if cloud is not None:  # the service gets the report after the broker acknowledged it
            self.run_until(lambda: "policy" in reported(cloud, name))
        return self

    def stop(self) -> None:
        self.uplink.stop()
        self.sync.on_disconnected()
        self.link_up = False


@pytest.fixture
def device_factory(
    broker: Broker,
    pki: Pki,
    tmp_path: Path,
) -> Iterator[Callable[..., DeviceLoop]]:
    made: list[DeviceLoop] = []
    cfg = config.from_dict(
        {
            "device": {"thing_name": pki.thing_name},
            "aws": {
                "endpoint": "localhost",
                "cert": str(pki.client.cert),
                "key": str(pki.client.key),
                "ca": str(pki.ca),
            },
            "spool": {"path": str(tmp_path / "spool.db")},
        }
    )

    def make(**aws_overrides: Any) -> DeviceLoop:
        aws_overrides.setdefault("session_expiry_s", 0)  # only the get can bring missed changes
        shadow_name = aws_overrides.pop("shadow_name", None)
        loop = DeviceLoop(
            broker.aws_config(**aws_overrides),
            cfg,
            remote_settings.default_store_path(cfg),
            shadow_name=shadow_name,
        )
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.stop()


def reported(cloud: ShadowResponder, name: str | None = None) -> dict[str, Any]:
    return cloud.document(name).get("state", {}).get("reported", {})  # type: ignore[no-any-return]


def test_delta_while_online_changes_the_config_and_is_reported(
    shadow_responder: ShadowResponder, device_factory: Callable[..., DeviceLoop]
) -> None:
    device = device_factory().start(shadow_responder)
    assert reported(shadow_responder)["policy"]["distance_m"] == 100
    shadow_responder.update_desired({"policy": {"distance_m": 50, "max_interval_s": 60}})
    device.run_until(lambda: reported(shadow_responder)["policy"]["distance_m"] == 50)
    assert device.config.policy.distance_m == 50.0 and device.config.policy.max_interval_s == 60.0
    assert len(device.applied) == 1
    doc = shadow_responder.document()
    assert delta_of(doc["state"]["desired"], doc["state"]["reported"]) == {}


def test_change_while_offline_applies_after_reconnect_and_survives_reboot(
    shadow_responder: ShadowResponder, device_factory: Callable[..., DeviceLoop]
) -> None:
    first = device_factory().start(shadow_responder)
    first.stop()
    shadow_responder.update_desired({"policy": {"heartbeat_s": 900}, "aws": {"batch_bytes": 2048}})
    assert reported(shadow_responder)["policy"]["heartbeat_s"] == 7200  # nobody applied it yet
    # the board reboots while offline: a new process, the same settings file
    device = device_factory().start(shadow_responder)
    device.run_until(lambda: reported(shadow_responder)["aws"]["batch_bytes"] == 2048)
    assert device.config.policy.heartbeat_s == 900.0 and device.config.aws.batch_bytes == 2048
    device.stop()
    rebooted = device_factory()
    assert rebooted.config.policy.heartbeat_s == 900.0  # before any connection


def test_invalid_and_unknown_keys_are_reported_as_config_errors(
    shadow_responder: ShadowResponder, device_factory: Callable[..., DeviceLoop]
) -> None:
    device = device_factory().start(shadow_responder)
    shadow_responder.update_desired(
        {
            "policy": {"distance_m": -3, "fancy": 1, "min_sats": 6},
            "aws": {"endpoint": "elsewhere.example.com"},
        }
    )
    device.run_until(lambda: reported(shadow_responder)["policy"]["min_sats"] == 6)
    errors = {e["key"]: e["reason"] for e in reported(shadow_responder)["config_errors"]}
    assert set(errors) == {"policy.distance_m", "policy.fancy", "aws.endpoint"}
    assert device.config.policy.distance_m == 100.0
    assert device.config.aws.endpoint == "localhost"


def test_named_shadow(
    shadow_responder: ShadowResponder, device_factory: Callable[..., DeviceLoop]
) -> None:
    device = device_factory(shadow_name="tracker").start(shadow_responder, "tracker")
    shadow_responder.update_desired({"policy": {"still_timeout_s": 120}}, name="tracker")
    device.run_until(
        lambda: reported(shadow_responder, "tracker")["policy"]["still_timeout_s"] == 120
    )
    assert device.config.policy.still_timeout_s == 120.0
    assert shadow_responder.document() == {}  # the classic shadow was never touched


def test_garbage_on_the_shadow_topics_does_no_harm(
    shadow_responder: ShadowResponder, device_factory: Callable[..., DeviceLoop]
) -> None:
    device = device_factory().start(shadow_responder)
    prefix = f"$aws/things/{device.sync.prefix.split('/')[2]}/shadow"
    for payload in (
        b"\xff not json",
        b"[" * 50_000,
        b'{"version": 99, "state": 5}',
        b'{"version": 99, "state": {"aws": {"endpoint": "rogue.example.com"}}}',
    ):
        shadow_responder.uplink.publish(f"{prefix}/update/delta", payload)
    shadow_responder.uplink.publish(f"{prefix}/get/accepted", b'{"version": 1, "state": {}}')
    shadow_responder.update_desired({"policy": {"settle_s": 10}})
    device.run_until(lambda: reported(shadow_responder)["policy"]["settle_s"] == 10)
    assert device.config.aws.endpoint == "localhost"
    assert device.config.policy.settle_s == 10.0
