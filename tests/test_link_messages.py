"""What the daemon says about its link: every failed connection explained once, then only when
the reason changes or every ten minutes; a refused publish or subscription named with the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_app import Harness, make_app

from tracker.core.events import LinkDown, LinkUp, PubFailed, SubscribeRefused

REFUSED = "127.0.0.1:8883 refused the connection (AWS_IO_SOCKET_CONNECTION_REFUSED): ..."
DNS = "cannot resolve localhst (AWS_IO_DNS_INVALID_NAME): check [aws] endpoint"


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_connection_failures_at_start_are_said_once_then_on_change_or_every_ten_minutes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h = Harness(make_app(tmp_path))
    start = h.clock.monotonic()
    for i in range(30):  # the SDK retries: one LinkDown per attempt
        h.clock.set(start + i * 10)
        h.event(LinkDown(REFUSED))
    lines = said(caplog, "cannot connect")
    assert lines == [f"cannot connect (1 attempt): {REFUSED}; next attempt within 2 s"]
    h.clock.set(start + 700)  # ten minutes on: said again with the count
    h.event(LinkDown(REFUSED))
    assert said(caplog, "cannot connect")[-1].startswith("cannot connect (31 attempts): ")
    assert said(caplog, "cannot connect")[-1].endswith("next attempt within 120 s")
    h.event(LinkDown(DNS))  # a new reason is said at once
    assert said(caplog, "cannot connect")[-1].startswith(f"cannot connect (32 attempts): {DNS}")
    assert len(said(caplog, "cannot connect")) == 3
    h.event(LinkUp())
    h.event(LinkDown("connection lost: AWS_IO_SOCKET_CLOSED"))
    assert said(caplog, "link down: connection lost")  # a drop after being up is said too
    h.event(LinkDown(REFUSED))
    assert said(caplog, "cannot connect")[-1].startswith("cannot connect (1 attempt): ")


def test_a_fatal_failure_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(make_app(tmp_path))
    h.event(LinkDown("TLS handshake failed: ...", fatal=True))
    (record,) = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert record.levelname == "ERROR"


def test_not_authorized_publishes_name_the_likely_cause_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(make_app(tmp_path))
    h.auto_ack = False
    h.event(LinkUp())
    h.play("qtpositioning/nmealog.txt", limit=20)
    tokens = [p.token for p in h.uplink.on("/location")]
    assert tokens
    for token in tokens:
        h.event(PubFailed(token, "PUBACK NOT_AUTHORIZED"))
    hints = said(caplog, "the broker refuses what truck-7 publishes")
    assert len(hints) == 1
    assert "[device] thing_name" in hints[0] and "dt/tracker/truck-7/*" in hints[0]
    assert h.app.spool.stats().backlog == h.app.reports  # nothing was deleted


def test_a_refused_subscription_is_an_error_naming_the_topic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(make_app(tmp_path))
    topic = "$aws/things/truck-7/shadow/update/delta"
    h.event(SubscribeRefused(topic, "SUBACK NOT_AUTHORIZED"))
    (line,) = said(caplog, "refused the subscription")
    assert topic in line and "SUBACK NOT_AUTHORIZED" in line and "policy" in line


def test_a_shadow_delta_is_logged_once_not_by_every_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from tracker.core.events import Inbound

    caplog.set_level(logging.INFO)
    h = Harness(make_app(tmp_path))
    h.event(LinkUp())
    caplog.clear()
    delta = {"version": 7, "state": {"policy": {"distance_m": 50, "nope": 1}}}
    h.event(Inbound("$aws/things/truck-7/shadow/update/delta", json.dumps(delta).encode()))
    applied = said(caplog, "applied")
    refused = said(caplog, "refused")
    assert len(applied) == 1 and "policy.distance_m=50" in applied[0]
    assert len(refused) == 1 and "policy.nope" in refused[0]
