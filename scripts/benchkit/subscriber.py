"""A cloud-side consumer for tests: subscribes with its own certificate and collects payloads.

Owns its own MQTT 5 client (the SDK, flow control off); decodes with `tracker.link.codec.decode`.
Must not import the tracker's uplink or spool.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from benchkit.broker import Broker
from benchkit.pki import CLOUD_NAME, Identity

LOCATION_FILTER = "dt/tracker/+/location"


class Subscriber:
    """Subscribes (QoS 1, persistent session) and keeps every payload in arrival order."""

    def __init__(
        self,
        broker: Broker,
        topic_filter: str = LOCATION_FILTER,
        *,
        identity: Identity | None = None,
        client_id: str = CLOUD_NAME,
    ) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.payloads: list[bytes] = []
        self.topics: list[str] = []
        self._cond = threading.Condition(threading.Lock())
        self._subscribed = threading.Event()
        self._stopped = threading.Event()
        self._decoded: list[Any] = []
        self._n_decoded = 0
        ident = identity or broker.pki.cloud
        self._client: Any = mqtt5_client_builder.mtls_from_path(
            cert_filepath=str(ident.cert),
            pri_key_filepath=str(ident.key),
            ca_filepath=str(broker.pki.ca),
            endpoint=broker.host,
            port=broker.port,
            client_id=client_id,
            keep_alive_interval_sec=60,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            session_expiry_interval_sec=3600,
            extended_validation_and_flow_control_options=(
                mqtt5.ExtendedValidationAndFlowControlOptions.NONE
            ),
            min_reconnect_delay_ms=20,
            max_reconnect_delay_ms=200,
            enable_metrics_collection=False,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_disconnection=self._on_disconnect,
            on_lifecycle_stopped=lambda data: self._stopped.set(),
        )

    # SDK callbacks (SDK thread): append and notify only.
    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        with self._cond:
            self.payloads.append(bytes(packet.payload))
            self.topics.append(str(packet.topic))
            self._cond.notify_all()

    def _on_success(self, data: Any) -> None:
        if data.connack_packet.session_present:
            self._subscribed.set()
            return
        fut = self._client.subscribe(
            mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(self.topic_filter, mqtt5.QoS.AT_LEAST_ONCE)]
            )
        )
        fut.add_done_callback(self._on_suback)

    def _on_suback(self, fut: Any) -> None:
        if fut.exception() is None:
            self._subscribed.set()

    def _on_disconnect(self, data: Any) -> None:
        self._subscribed.clear()

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait for the SUBACK."""
        self._client.start()
        self.wait_subscribed(timeout)
        return self

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"subscriber not subscribed to {self.topic_filter} in {timeout} s")

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        """Send a QoS 1 message to a device (a shadow delta, a provisioning reply)."""
        self._client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.stop()
            self._stopped.wait(timeout)

    def count(self) -> int:
        with self._cond:
            return len(self.payloads)

    def wait_until(self, done: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Wait until `done()` holds, re-checking at each message (and every 50 ms)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait(min(left, 0.05))
        return True

    def records(self) -> list[Any]:
        """Every record in every payload received so far, in arrival order (duplicates kept)."""
        from tracker.link import codec

        with self._cond:
            new = self.payloads[self._n_decoded :]
        for p in new:
            self._decoded.extend(codec.decode(p))
        self._n_decoded += len(new)
        return list(self._decoded)

    def seqs(self) -> Counter[int]:
        """How many times each seq arrived."""
        return Counter(r.seq for r in self.records())

    def wait_seqs(self, wanted: set[int], timeout: float = 20.0) -> set[int]:
        """Wait until every seq in `wanted` arrived; return the ones still missing."""
        missing = set(wanted)

        def done() -> bool:
            missing.difference_update(self.seqs())
            return not missing

        self.wait_until(done, timeout)
        return missing

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
