"""Project-wide fixtures: a test must leave no thread, child process or listening port behind;
the parts many tests run against (a GPS on a pseudo-terminal, a test PKI, a Mosquitto broker
with mutual TLS, a cloud-side subscriber) come from scripts/benchkit, which the bench shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.fake_gps import FakeGps
from benchkit.pki import Pki
from benchkit.subscriber import Subscriber
from support import leaks


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    before_t, before_p, before_l = leaks.threads(), leaks.children(), leaks.listening_ports()
    yield
    problems = []
    if extra := leaks.settle(leaks.threads, before_t):
        problems.append(f"threads left running: {sorted(t.name for t in extra)}")
    if extra := leaks.settle(leaks.children, before_p):
        problems.append(f"child processes left running: {sorted(extra)}")
    if extra := leaks.settle(leaks.listening_ports, before_l):
        problems.append(f"ports left listening: {sorted(extra)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def gps() -> Iterator[FakeGps]:
    """A serial GPS on a real pseudo-terminal, opened by path as a board opens /dev/ttyAMA0."""
    with FakeGps() as fake:
        yield fake


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh test PKI in this test's temporary directory."""
    return Pki(tmp_path / "pki")


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A running broker (no persistence) for this test; killed and reaped at the end."""
    b = Broker(pki, tmp_path / "broker")
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    """A cloud consumer subscribed to every tracker's location topic on `broker`."""
    sub = Subscriber(broker)
    try:
        yield sub.start()
    finally:
        sub.stop()
