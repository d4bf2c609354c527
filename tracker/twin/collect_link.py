"""The collector's MQTT 5 subscription: mutual TLS, persistent session, manual PUBACKs.

The collector's only module that touches the AWS SDK; it builds and stops its client with
`tracker.link.uplink`'s (credential checks, TLS, keep-alive, backoff) and reuses its error wording.
SDK callbacks only build an event and call `post`; PUBACKs are sent by the owning thread through
`ack`, once the message is on disk.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from awscrt import mqtt5

from tracker.core.config import AwsConfig
from tracker.link.uplink import _FATAL_CONNACK, describe, mtls_client, stop_client


@dataclass(frozen=True)
class Delivery:
    """A PUBLISH received; `ack` it (through `CollectLink.ack`) once it is stored."""

    topic: str
    payload: bytes
    handle: Any  # the SDK's PUBACK control handle; None for QoS 0


@dataclass(frozen=True)
class LinkState:
    """Connected and subscribed (`up`), or not, with a one-line reason."""

    up: bool
    reason: str = ""
    fatal: bool = False


class CollectLink:
    """One MQTT 5 client subscribed to `filters` (QoS 1) that never acknowledges on its own."""

    def __init__(
        self,
        aws: AwsConfig,
        client_id: str,
        filters: list[str],
        post: Callable[[object], None],
        *,
        reconnect_max_s: float = 60.0,
    ) -> None:
        self._aws = aws
        self._client_id = client_id
        self._filters = filters
        self._post = post
        self._reconnect_max_ms = max(100, int(reconnect_max_s * 1000))
        self._client: Any = None
        self._stopped = threading.Event()
        self._connected_once = False

    @property
    def server(self) -> str:
        return f"{self._aws.endpoint}:{self._aws.port}"

    def start(self) -> None:
        """Check the credential files, then connect in the background."""
        aws = self._aws
        self._client = mtls_client(
            aws,
            self._client_id,
            (min(1000, self._reconnect_max_ms), self._reconnect_max_ms),
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            session_expiry_interval_sec=aws.session_expiry_s,
            extended_validation_and_flow_control_options=(
                mqtt5.ExtendedValidationAndFlowControlOptions.NONE
            ),
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnection,
            on_lifecycle_stopped=lambda _data: self._stopped.set(),
        )
        self._client.start()

    def ack(self, delivery: Delivery) -> None:
        """Send the PUBACK of a stored message. A link lost meanwhile is fine: the broker keeps
        the message in the session and delivers it again, and the lake knows it already."""
        client = self._client
        if client is None or delivery.handle is None:
            return
        with contextlib.suppress(Exception):
            client.invoke_publish_acknowledgement(delivery.handle)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect; messages not acknowledged stay in the broker's session."""
        client, self._client = self._client, None
        stop_client(client, self._stopped, timeout)

    # SDK callbacks (the SDK's event-loop thread): build an event, post it, return.

    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        acquire = data.acquire_publish_acknowledgement_control
        handle = acquire() if acquire is not None else None
        payload = packet.payload
        if isinstance(payload, str):
            payload = payload.encode()
        self._post(Delivery(str(packet.topic), bytes(payload or b""), handle))

    def _on_success(self, data: Any) -> None:
        present = bool(getattr(data.connack_packet, "session_present", False))
        if present and self._connected_once:
            self._post(LinkState(True, "session resumed"))
            return
        self._connected_once = True
        subs = [
            mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE) for f in self._filters
        ]
        try:
            fut = self._client.subscribe(mqtt5.SubscribePacket(subscriptions=subs))
        except Exception as exc:  # the SDK refused it outright
            self._post(LinkState(False, f"subscribe failed: {describe(exc)}"))
            return
        fut.add_done_callback(self._on_suback)

    def _on_suback(self, fut: Any) -> None:
        exc = fut.exception()
        if exc is not None:
            self._post(LinkState(False, f"subscribe failed: {describe(exc)}"))
            return
        codes = list(getattr(fut.result(), "reason_codes", []) or [])
        bad = [getattr(c, "name", str(c)) for c in codes if int(c) >= 0x80]
        if bad:
            self._post(
                LinkState(
                    False,
                    f"{self.server} refused the subscription to {', '.join(self._filters)} "
                    f"({', '.join(bad)}): allow client id {self._client_id} to subscribe",
                    fatal=True,
                )
            )
        else:
            self._post(LinkState(True, "subscribed"))

    def _on_failure(self, data: Any) -> None:
        name = describe(data.exception)
        code = getattr(data.connack_packet, "reason_code", None)
        if code is not None and code in _FATAL_CONNACK:
            reason = (
                f"{self.server} refused the connection ({code.name}): check that the certificate "
                f"{self._aws.cert} is active and allows client id {self._client_id}"
            )
            self._post(LinkState(False, reason, fatal=True))
        elif name.startswith("AWS_IO_TLS"):
            reason = (
                f"TLS handshake with {self.server} failed ({name}): check cert "
                f"{self._aws.cert}, ca {self._aws.ca} and the clock"
            )
            self._post(LinkState(False, reason, fatal=not self._connected_once))
        else:
            self._post(LinkState(False, f"cannot connect to {self.server}: {name}"))

    def _on_disconnection(self, data: Any) -> None:
        exc = data.exception
        if getattr(exc, "name", "") == "AWS_ERROR_MQTT5_USER_REQUESTED_STOP":
            return
        self._post(LinkState(False, f"connection lost: {describe(exc)}"))
