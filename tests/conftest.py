"""Project-wide fixtures: a test must leave no thread, child process or listening port behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import leaks

from hw.pty import FakeGps


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
