"""The MQTT 5 connection to AWS IoT Core: mutual TLS, QoS 1 publishes, lifecycle -> events.

Owns the AWS SDK's MQTT client; besides it only `tracker.twin.collect_link` (the collector's client,
built with `mtls_client`) and `tracker.setup.identity` (fleet provisioning) import the SDK, as
tests/test_boundaries.py checks. SDK callbacks only build an event and call `post`; they never
block and never touch the spool or the state machine.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from awscrt import io, mqtt5
from awsiot import mqtt5_client_builder

from tracker.core.config import THING_NAME_RE, AwsConfig
from tracker.core.errors import UplinkError
from tracker.core.events import Inbound, LinkDown, LinkUp, Post, PubAck, PubFailed, SubscribeRefused
from tracker.core.files import read_file
from tracker.core.limits import MAX_TOPIC_BYTES

# PUBACK reason codes that mean the broker has the message; any other (or none) is a failure
_PUBACK_OK = {0x00, 0x10}  # SUCCESS, NO_MATCHING_SUBSCRIBERS
PING_TIMEOUT_MS = 30_000
ACK_TIMEOUT_S = 60  # seconds to wait for a PUBACK before the SDK fails the publish
# Outbound topic aliases: after the first publish on a topic (per connection) the next ones carry
# a 2-byte alias instead of the topic name (~40 bytes with the thing name). AWS IoT Core allows
# 8 aliases per connection; the client uses no more than the broker's CONNACK grants (0: none).
TOPIC_ALIASES = 8
# CONNACK reason codes that retrying with the same credentials cannot fix
_FATAL_CONNACK = {
    mqtt5.ConnectReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    mqtt5.ConnectReasonCode.BAD_USERNAME_OR_PASSWORD,
    mqtt5.ConnectReasonCode.NOT_AUTHORIZED,
    mqtt5.ConnectReasonCode.BANNED,
    mqtt5.ConnectReasonCode.BAD_AUTHENTICATION_METHOD,
}


def check_topic(topic: str) -> None:
    """Raise UplinkError unless `topic` is a concrete topic name AWS IoT Core accepts."""
    raw = topic.encode("utf-8", "surrogatepass")
    if not topic or len(raw) > MAX_TOPIC_BYTES or any(c in topic for c in "+#\0"):
        raise UplinkError(
            f"invalid MQTT topic {topic!r}: 1-{MAX_TOPIC_BYTES} bytes, no wildcards (+ #) or NUL"
        )


def _check_pem(key: str, path: str, marker: bytes) -> None:
    """Fail early, naming the config key, on a missing, unreadable or non-PEM file."""
    data = read_file(path, f"[aws] {key} file", UplinkError)
    if b"-----BEGIN " not in data or marker not in data:
        raise UplinkError(f"[aws] {key} file {path} is not a PEM {marker.decode().strip('- ')}")


def mtls_client(
    aws: AwsConfig, client_id: str, reconnect_ms: tuple[int, int], **options: Any
) -> Any:
    """A new (not started) MQTT 5 client with what the tracker's two clients (this uplink and the
    collector's link) share: the credential files checked first, mutual TLS to the endpoint and
    port, the keep-alive and its ping timeout, full-jitter reconnects between `reconnect_ms`, no
    metrics. `options` are the builder's other arguments: session, queue, flow control, callbacks.
    UplinkError names the file or the mismatch."""
    _check_pem("cert", aws.cert, b"CERTIFICATE-----")
    _check_pem("key", aws.key, b"PRIVATE KEY-----")
    _check_pem("ca", aws.ca, b"CERTIFICATE-----")
    try:
        return mqtt5_client_builder.mtls_from_path(
            cert_filepath=aws.cert,
            pri_key_filepath=aws.key,
            ca_filepath=aws.ca,
            endpoint=aws.endpoint,
            port=aws.port,  # without it the builder picks 443 + ALPN
            client_id=client_id,
            keep_alive_interval_sec=aws.keepalive_s,
            ping_timeout_ms=min(PING_TIMEOUT_MS, (aws.keepalive_s - 1) * 1000),
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            min_reconnect_delay_ms=reconnect_ms[0],
            max_reconnect_delay_ms=reconnect_ms[1],
            enable_metrics_collection=False,
            **options,
        )
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise UplinkError(
            f"[aws] key {aws.key} does not match cert {aws.cert}, or cert/key/ca "
            f"{aws.ca} holds no valid PEM data ({describe(exc)})"
        ) from exc


def stop_client(client: Any, stopped: threading.Event, timeout: float) -> None:
    """Stop an SDK client (None: nothing to stop) and wait up to `timeout` for it to say so."""
    if client is not None:
        client.stop()
        stopped.wait(timeout)


def describe(exc: BaseException | None) -> str:
    """One line for an SDK error: its CRT name when it has one."""
    if exc is None:
        return "unknown error"
    name = getattr(exc, "name", None)
    if name:
        return str(name)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def explain_failure(name: str, host: str, port: int) -> str:
    """One line for a connection attempt that failed before MQTT: what and where to look."""
    server = f"{host}:{port}"
    if name.startswith("AWS_IO_DNS"):
        return f"cannot resolve {host} ({name}): check [aws] endpoint and the board's DNS"
    if name == "AWS_IO_SOCKET_CONNECTION_REFUSED":
        return (
            f"{server} refused the connection ({name}): nothing listens there; check [aws]"
            " endpoint and port (AWS IoT Core: 8883)"
        )
    if name == "AWS_IO_SOCKET_CLOSED":
        return (
            f"{server} closed the connection during the TLS handshake ({name}): is [aws] port a"
            " plain MQTT port (1883)? AWS IoT Core speaks TLS on 8883"
        )
    if name in ("AWS_IO_SOCKET_TIMEOUT", "AWS_IO_TLS_NEGOTIATION_TIMEOUT") or "TIMEOUT" in name:
        return (
            f"no answer from {server} in time ({name}): the network or a firewall drops the"
            " connection, or the link is very slow"
        )
    if name in ("AWS_IO_SOCKET_NO_ROUTE_TO_HOST", "AWS_IO_SOCKET_NETWORK_DOWN"):
        return f"no route to {server} ({name}): the board has no working network"
    return f"cannot connect to {server}: {name}"


class Uplink:
    """One MQTT 5 client for one thing; every outcome is posted to the loop as an event."""

    def __init__(
        self,
        aws: AwsConfig,
        thing_name: str,
        post: Post,
        *,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 120.0,
    ) -> None:
        if not THING_NAME_RE.fullmatch(thing_name):
            raise UplinkError(
                f"thing name {thing_name!r} is invalid: use 1-128 of A-Z a-z 0-9 : _ -"
            )
        self._aws = aws
        self._thing = thing_name
        self._post = post
        self._reconnect_ms = (int(reconnect_min_s * 1000), int(reconnect_max_s * 1000))
        self._client: Any = None
        self._tokens = itertools.count(1)
        self._stopped = threading.Event()
        self._connected_once = False  # written by SDK callbacks only
        self._gen = 0  # which start() the current client comes from
        self._gen_lock = threading.RLock()  # held while a lifecycle event is posted
        self._topics: list[str] = []

    @property
    def server(self) -> str:
        return f"{self._aws.endpoint}:{self._aws.port}"

    def start(self) -> None:
        """Check the credential files, then connect in the background (events report progress)."""
        if self._client is not None:
            return
        aws = self._aws
        flow = (
            mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
            if aws.flow_control
            else mqtt5.ExtendedValidationAndFlowControlOptions.NONE
        )
        session = (
            mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
            if aws.session_expiry_s
            else mqtt5.ClientSessionBehaviorType.CLEAN
        )
        with self._gen_lock:
            self._gen += 1
            gen = self._gen
        client = mtls_client(
            aws,
            self._thing,
            self._reconnect_ms,
            # a PUBACK that never comes on a live connection must not hold a window slot
            # forever: the publish fails, its fixes go back to the spool and out again
            ack_timeout_sec=ACK_TIMEOUT_S,
            session_behavior=session,
            # QoS 1 publishes survive a lost connection and go again after reconnecting (the
            # forwarder relies on it: it does not resend what is in flight on LinkDown)
            offline_queue_behavior=(
                mqtt5.ClientOperationQueueBehaviorType.FAIL_QOS0_PUBLISH_ON_DISCONNECT
            ),
            session_expiry_interval_sec=aws.session_expiry_s or None,
            extended_validation_and_flow_control_options=flow,
            # the default policy's ClientHello carries a post-quantum key share (1.5 KB
            # instead of 0.26 KB) on every connection
            cipher_pref=(
                io.TlsCipherPref.PQ_DEFAULT
                if aws.post_quantum_tls
                else io.TlsCipherPref.TLSv1_2_2025_07
            ),
            topic_aliasing_options=mqtt5.TopicAliasingOptions(
                outbound_behavior=mqtt5.OutboundTopicAliasBehaviorType.LRU,
                outbound_cache_max_size=TOPIC_ALIASES,
            ),
            on_publish_received=self._on_publish_received,
            on_lifecycle_connection_success=self._current(gen, self._on_connection_success),
            on_lifecycle_connection_failure=self._current(gen, self._on_connection_failure),
            on_lifecycle_disconnection=self._current(gen, self._on_disconnection),
            on_lifecycle_stopped=self._current(gen, self._on_stopped),
        )
        self._stopped.clear()
        self._client = client
        client.start()

    def publish(self, topic: str, payload: bytes) -> int:
        """Hand one QoS 1 publish to the SDK; its outcome is posted as PubAck or PubFailed."""
        check_topic(topic)
        token = next(self._tokens)
        client = self._client
        if client is None:
            self._post(PubFailed(token, "uplink is not started"))
            return token
        try:
            fut = client.publish(
                mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
            )
        except Exception as exc:  # the SDK refused it outright (validation)
            self._post(PubFailed(token, describe(exc)))
            return token
        fut.add_done_callback(lambda f: self._on_publish_done(token, f))
        return token

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) now and after every reconnect that lost the session."""
        if topic not in self._topics:
            self._topics.append(topic)
        if self._client is not None:
            self._send_subscribe([topic])

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect and let go of the client; pending publishes fail (PubFailed)."""
        client, self._client = self._client, None
        stop_client(client, self._stopped, timeout)

    # SDK callbacks: they run on the SDK's event-loop thread; build an event and post it.

    def _current(self, gen: int, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """`fn`, run only while the client of start number `gen` is the newest one: a stopped
        client's late LinkUp or LinkDown (after `stop()` timed out) must not describe the
        client that replaced it. Publish outcomes always pass: their tokens are never reused."""

        def call(data: Any) -> None:
            with self._gen_lock:
                if gen == self._gen:
                    fn(data)

        return call

    def _send_subscribe(self, topics: list[str]) -> None:
        client = self._client
        if client is None or not topics:
            return
        subs = [mqtt5.Subscription(topic_filter=t, qos=mqtt5.QoS.AT_LEAST_ONCE) for t in topics]
        # a refused SUBSCRIBE is tried again after the next reconnect that loses the session
        try:
            fut = client.subscribe(mqtt5.SubscribePacket(subscriptions=subs))
        except Exception as exc:  # the SDK refused it outright (validation)
            for t in topics:
                self._post(SubscribeRefused(t, describe(exc)))
            return
        fut.add_done_callback(lambda f: self._on_suback(list(topics), f))

    def _on_suback(self, topics: list[str], fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            if getattr(exc, "name", "") != "AWS_ERROR_MQTT5_USER_REQUESTED_STOP":
                for t in topics:
                    self._post(SubscribeRefused(t, describe(exc)))
            return
        codes = list(getattr(fut.result(), "reason_codes", None) or [])
        for i, topic in enumerate(topics):
            code = codes[i] if i < len(codes) else None
            if code is None or int(code) >= 0x80:
                name = getattr(code, "name", "no reason code")
                self._post(SubscribeRefused(topic, f"SUBACK {name}"))

    def _on_publish_done(self, token: int, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self._post(PubFailed(token, describe(exc)))
            return
        puback = getattr(fut.result(), "puback", None)
        code = getattr(puback, "reason_code", None)
        if code is not None and int(code) in _PUBACK_OK:
            self._post(PubAck(token))
            return
        # fail safe: only a known success code lets the spool delete; an unknown code (the SDK
        # gives None for one it cannot name) or no PUBACK at all sends the records again
        name = getattr(code, "name", None) or "without a known reason code"
        why = getattr(puback, "reason_string", None)
        self._post(PubFailed(token, f"PUBACK {name}" + (f": {why}" if why else "")))

    def _on_publish_received(self, data: Any) -> None:
        packet = data.publish_packet
        payload = packet.payload
        if isinstance(payload, str):
            payload = payload.encode()
        self._post(Inbound(str(packet.topic), bytes(payload or b"")))

    def _on_connection_success(self, data: Any) -> None:
        present = bool(getattr(data.connack_packet, "session_present", False))
        # A session kept from an earlier run may lack topics this run subscribes to.
        if not present or not self._connected_once:
            self._send_subscribe(list(self._topics))
        self._connected_once = True
        self._post(LinkUp(session_present=present))

    def _on_connection_failure(self, data: Any) -> None:
        exc = data.exception
        name = describe(exc)
        connack = data.connack_packet
        code = getattr(connack, "reason_code", None)
        if code is not None and code in _FATAL_CONNACK:
            self._post(
                LinkDown(
                    f"{self.server} refused the connection ({code.name}): check "
                    f"that the certificate {self._aws.cert} is active and its policy "
                    f"allows client id {self._thing}",
                    fatal=True,
                )
            )
        elif name.startswith("AWS_IO_TLS"):
            # Before any success this is a configuration problem; afterwards it may be transient.
            self._post(
                LinkDown(
                    f"TLS handshake with {self.server} failed ({name}): the server rejected "
                    f"certificate {self._aws.cert} (unknown CA, expired, inactive), or ca "
                    f"{self._aws.ca} did not sign the server's certificate, or the clock is wrong",
                    fatal=not self._connected_once,
                )
            )
        elif code is not None and int(code) >= 0x80:
            self._post(
                LinkDown(f"{self.server} refused the connection ({getattr(code, 'name', code)})")
            )
        else:
            self._post(LinkDown(explain_failure(name, self._aws.endpoint, self._aws.port)))

    def _on_disconnection(self, data: Any) -> None:
        packet = data.disconnect_packet
        exc = data.exception
        if getattr(exc, "name", "") == "AWS_ERROR_MQTT5_USER_REQUESTED_STOP":
            self._post(LinkDown("stopped"))
            return
        if packet is not None and packet.reason_code is not None:
            reason = (
                f"server disconnected: {getattr(packet.reason_code, 'name', packet.reason_code)}"
            )
        else:
            reason = f"connection lost: {describe(exc)}"
        self._post(LinkDown(reason))

    def _on_stopped(self, data: Any) -> None:
        self._stopped.set()
