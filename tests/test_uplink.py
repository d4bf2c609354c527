"""Uplink against a real Mosquitto with mutual TLS: events, settings, credential errors."""

from __future__ import annotations

import dataclasses
import os
import queue
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from benchkit.broker import Broker
from benchkit.pki import Identity, Pki
from benchkit.subscriber import Subscriber

from tracker.core.config import AwsConfig
from tracker.core.errors import UplinkError
from tracker.core.events import Event, Inbound, LinkDown, LinkUp, PubAck, PubFailed
from tracker.link.uplink import Uplink

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

THING = "tracker-test-1"
E = TypeVar("E", bound=Event)
MakeUplink = Callable[..., Uplink]


class Events:
    """The loop's queue, seen from a test."""

    def __init__(self) -> None:
        self.q: queue.Queue[Event] = queue.Queue()

    def post(self, ev: Event) -> None:
        self.q.put(ev)

    def next(self, kind: type[E], timeout: float = 10.0) -> E:
        """The next event of this kind (others are skipped)."""
        while True:
            ev = self.q.get(timeout=timeout)
            if isinstance(ev, kind):
                return ev


def deliver(cloud: Subscriber, events: Events, topic: str) -> Inbound:
    """Send from the cloud until the device receives (its SUBACK may trail the CONNACK)."""
    for _ in range(50):
        cloud.publish(topic, b'{"state":{}}')
        try:
            return events.next(Inbound, timeout=0.2)
        except queue.Empty:
            continue
    raise AssertionError(f"nothing arrived on {topic}")


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_uplink(events: Events) -> Iterator[MakeUplink]:
    made: list[Uplink] = []

    def make(aws: AwsConfig, thing: str = THING) -> Uplink:
        u = Uplink(aws, thing, events.post, reconnect_min_s=0.05, reconnect_max_s=0.5)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


def test_connects_with_the_thing_name_persistent_session_and_keepalive(
    broker: Broker, events: Events, make_uplink: MakeUplink
) -> None:
    up = make_uplink(broker.aws_config(keepalive_s=30))
    up.start()
    assert isinstance(events.next(LinkUp), LinkUp)
    # MQTT 5 (p5), clean start off (c0), keep-alive as configured, client id = thing name
    assert re.search(rf"as {THING} \(p5, c0, k30, u'{THING}'\)", broker.log.read_text())


def test_publish_is_acknowledged_and_reaches_the_cloud(
    broker: Broker, subscriber: Subscriber, events: Events, make_uplink: MakeUplink
) -> None:
    aws = broker.aws_config()
    up = make_uplink(aws)
    up.start()
    events.next(LinkUp)
    token = up.publish(aws.topic(THING, "location"), b'{"seq":1}')
    assert events.next(PubAck) == PubAck(token)
    assert subscriber.wait_until(lambda: subscriber.count() == 1)
    assert subscriber.payloads == [b'{"seq":1}']
    assert subscriber.topics == [f"dt/tracker/{THING}/location"]


def test_a_puback_with_an_error_code_is_a_failure(
    pki: Pki, tmp_path: Path, events: Events, make_uplink: MakeUplink
) -> None:
    acl = f"user {THING}\ntopic readwrite dt/tracker/{THING}/#\n"
    with Broker(pki, tmp_path / "acl-broker", acl=acl) as b:
        up = make_uplink(b.aws_config())
        up.start()
        events.next(LinkUp)
        bad = up.publish("dt/tracker/someone-else/location", b"{}")
        failed = events.next(PubFailed)
        up.stop()
    assert failed == PubFailed(bad, "PUBACK NOT_AUTHORIZED")


def test_inbound_messages_and_resubscribe(
    broker: Broker, subscriber: Subscriber, events: Events, make_uplink: MakeUplink
) -> None:
    up = make_uplink(broker.aws_config())
    topic = f"$aws/things/{THING}/shadow/update/delta"
    up.subscribe(topic)
    up.start()
    events.next(LinkUp)
    assert deliver(subscriber, events, topic) == Inbound(topic, b'{"state":{}}')
    broker.restart(kill=True)  # no persistence: the session, and so the subscription, is gone
    assert events.next(LinkUp) == LinkUp(session_present=False)
    assert deliver(subscriber, events, topic).topic == topic


def test_subscribes_on_first_connect_even_when_an_old_session_is_present(
    broker: Broker, subscriber: Subscriber, events: Events, make_uplink: MakeUplink
) -> None:
    first = make_uplink(broker.aws_config())
    first.start()
    events.next(LinkUp)
    first.stop()  # a previous run left a session without subscriptions
    topic = f"$aws/things/{THING}/shadow/update/delta"
    up = make_uplink(broker.aws_config())
    up.subscribe(topic)
    up.start()
    assert events.next(LinkUp) == LinkUp(session_present=True)
    assert deliver(subscriber, events, topic) == Inbound(topic, b'{"state":{}}')


def test_broker_not_running_reports_link_down_then_connects(
    pki: Pki, tmp_path: Path, events: Events, make_uplink: MakeUplink
) -> None:
    b = Broker(pki, tmp_path / "late-broker")
    try:
        up = make_uplink(b.aws_config())
        up.start()
        down = events.next(LinkDown)
        assert not down.fatal
        assert "AWS_IO_SOCKET_CONNECTION_REFUSED" in down.reason
        b.start()
        assert isinstance(events.next(LinkUp), LinkUp)
    finally:
        b.close()


def test_publish_before_start_or_after_stop_fails_without_blocking(
    broker: Broker, events: Events, make_uplink: MakeUplink
) -> None:
    aws = broker.aws_config()
    up = make_uplink(aws)
    t1 = up.publish(aws.topic(THING, "location"), b"x")
    assert events.next(PubFailed) == PubFailed(t1, "uplink is not started")
    up.start()
    events.next(LinkUp)
    up.stop()
    assert events.next(LinkDown) == LinkDown("stopped")
    t2 = up.publish(aws.topic(THING, "location"), b"x")
    assert events.next(PubFailed).token == t2 != t1


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "x" * 129, "thing#1", "t\x00"])
def test_a_bad_thing_name_is_refused(broker: Broker, events: Events, name: str) -> None:
    with pytest.raises(UplinkError, match="thing name"):
        Uplink(broker.aws_config(), name, events.post)


@pytest.mark.parametrize("topic", ["dt/+/x", "dt/#", "", "a" * 257, "a\x00b"])
def test_a_topic_with_wildcards_is_refused(broker: Broker, events: Events, topic: str) -> None:
    up = Uplink(broker.aws_config(), THING, events.post)
    with pytest.raises(UplinkError, match="invalid MQTT topic"):
        up.publish(topic, b"x")


def _one_line(exc: pytest.ExceptionInfo[UplinkError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_key_file_fails_at_start_naming_it(
    broker: Broker, events: Events, tmp_path: Path
) -> None:
    aws = broker.aws_config(key=str(tmp_path / "nope.key"))
    up = Uplink(aws, THING, events.post)
    with pytest.raises(UplinkError) as exc:
        up.start()
    assert _one_line(exc) == f"[aws] key file {tmp_path / 'nope.key'} does not exist"
    assert "New connection" not in broker.log.read_text()  # nothing touched the network


def test_unreadable_and_non_pem_files_are_named(
    broker: Broker, events: Events, pki: Pki, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    up = Uplink(broker.aws_config(ca=junk), THING, events.post)
    with pytest.raises(UplinkError) as exc:
        up.start()
    assert _one_line(exc) == f"[aws] ca file {junk} is not a PEM CERTIFICATE"
    up = Uplink(broker.aws_config(cert=str(pki.client.key)), THING, events.post)
    with pytest.raises(UplinkError, match=r"\[aws\] cert file .* is not a PEM CERTIFICATE"):
        up.start()
    if os.geteuid() != 0:  # root reads anything
        pki.client.key.chmod(0)
        with pytest.raises(UplinkError, match="not readable"):
            Uplink(broker.aws_config(), THING, events.post).start()


def test_a_key_that_does_not_match_the_certificate(
    broker: Broker, events: Events, pki: Pki
) -> None:
    other = pki.client_for("someone-else")
    up = Uplink(broker.aws_config(Identity(pki.client.cert, other.key)), THING, events.post)
    with pytest.raises(UplinkError) as exc:
        up.start()
    assert _one_line(exc).startswith(f"[aws] key {other.key} does not match cert {pki.client.cert}")


@pytest.mark.parametrize("which", ["foreign", "expired"])
def test_a_certificate_the_broker_rejects_is_a_fatal_link_down(
    broker: Broker, events: Events, make_uplink: MakeUplink, pki: Pki, which: str
) -> None:
    ident = pki.foreign_client() if which == "foreign" else pki.expired_client()
    up = make_uplink(broker.aws_config(ident))
    up.start()
    down = events.next(LinkDown)
    assert down.fatal
    assert "\n" not in down.reason
    assert f"certificate {ident.cert}" in down.reason


def test_basic_ingest_topics_are_published_as_is(
    broker: Broker, events: Events, make_uplink: MakeUplink
) -> None:
    aws = broker.aws_config(basic_ingest_rule="fleet")
    topic = aws.topic(THING, "location")
    assert topic == f"$aws/rules/fleet/dt/tracker/{THING}/location"
    with Subscriber(broker, "$aws/rules/fleet/dt/tracker/+/location") as sub:  # '#' skips '$'
        up = make_uplink(aws)
        up.start()
        events.next(LinkUp)
        token = up.publish(topic, b"{}")
        assert events.next(PubAck) == PubAck(token)
        assert sub.wait_until(lambda: sub.count() == 1)


def test_a_puback_without_a_known_reason_code_never_deletes(
    pki: Pki, events: Events, make_uplink: MakeUplink
) -> None:
    from support.raw_broker import RawBroker

    peer = RawBroker(pki, puback_code=0xFF)
    try:
        aws = peer.aws_config(pki)
        up = make_uplink(aws)
        up.start()
        events.next(LinkUp)
        token = up.publish(aws.topic(THING, "location"), b'{"seq":1}')
        failed = events.next(PubFailed)
        up.stop()
    finally:
        peer.close()
    assert failed.token == token
    assert failed.reason == "PUBACK without a known reason code"
    assert peer.published == [f"dt/tracker/{THING}/location"]


def test_a_refused_subscription_is_named(pki: Pki, events: Events, make_uplink: MakeUplink) -> None:
    from support.raw_broker import RawBroker

    from tracker.core.events import SubscribeRefused

    peer = RawBroker(pki, suback_code=0x87)  # NOT_AUTHORIZED
    try:
        aws = peer.aws_config(pki)
        up = make_uplink(aws)
        topic = f"$aws/things/{THING}/shadow/update/delta"
        up.subscribe(topic)
        up.start()
        said = events.next(SubscribeRefused)
        up.stop()
    finally:
        peer.close()
    assert said == SubscribeRefused(topic, "SUBACK NOT_AUTHORIZED")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("closed", "refused the connection (AWS_IO_SOCKET_CONNECTION_REFUSED): nothing listens"),
        ("dns", "cannot resolve localhst.invalid (AWS_IO_DNS_"),  # INVALID_NAME, QUERY_FAILED
        ("plain", "closed the connection during the TLS handshake"),
    ],
)
def test_a_failed_connection_says_why_and_where_to_look(
    pki: Pki, events: Events, make_uplink: MakeUplink, where: str, expected: str
) -> None:
    import socket
    import threading
    from dataclasses import replace

    aws = AwsConfig(endpoint="localhost", cert=str(pki.client.cert), key=str(pki.client.key),
                    ca=str(pki.ca), flow_control=False)  # fmt: skip
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()
    server = threading.Thread(target=lambda: None)
    if where == "plain":  # a plain MQTT listener: answers bytes that are not TLS, then closes
        srv.listen(4)
        srv.settimeout(0.1)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.sendall(b"\x20\x02\x00\x00")
                conn.close()

        server = threading.Thread(target=serve, daemon=True)
    else:
        srv.close()
    server.start()
    aws = replace(aws, port=port, endpoint="localhst.invalid" if where == "dns" else "127.0.0.1")
    up = make_uplink(aws)
    up.start()
    down = events.next(LinkDown, timeout=20)
    up.stop()
    stop.set()
    server.join(5)
    srv.close()
    assert expected in down.reason, down.reason
    if where == "dns":
        assert "check [aws] endpoint and the board's DNS" in down.reason


@pytest.mark.parametrize("pq", [False, True])
def test_topic_aliases_and_the_tls_policy_the_client_is_built_with(
    broker: Broker, events: Events, monkeypatch: pytest.MonkeyPatch, pq: bool
) -> None:
    from awscrt import io, mqtt5
    from awsiot import mqtt5_client_builder

    seen: dict[str, object] = {}

    def builder(**kwargs: object) -> object:
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(mqtt5_client_builder, "mtls_from_path", builder)
    aws = dataclasses.replace(broker.aws_config(), post_quantum_tls=pq)
    with pytest.raises(UplinkError):
        Uplink(aws, THING, events.post).start()
    aliasing = seen["topic_aliasing_options"]
    assert isinstance(aliasing, mqtt5.TopicAliasingOptions)
    assert aliasing.outbound_behavior == mqtt5.OutboundTopicAliasBehaviorType.LRU
    assert aliasing.outbound_cache_max_size == 8  # AWS IoT Core's limit per connection
    # without the post-quantum key share the ClientHello is about 1.3 KB smaller
    want = io.TlsCipherPref.PQ_DEFAULT if pq else io.TlsCipherPref.TLSv1_2_2025_07
    assert seen["cipher_pref"] == want
