"""A parked day's messages in simulated time: when the condition reports go, and with what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_app import Harness, make_app
from test_budget import parked_nmea

from tracker.core.events import LinkUp
from tracker.daemon.app import App
from tracker.link import codec

HOUR = 3600.0


def parked_day(tmp_path: Path, app: App) -> list[tuple[float, str, dict[str, Any]]]:
    """A short drive's first epochs, then a day parked with the receiver on; every message
    as (simulated time, kind, payload: the condition's or the location's)."""
    h = Harness(app)
    log: list[tuple[float, str, dict[str, Any]]] = []
    publish = h.uplink.publish

    def noted(topic: str, payload: bytes) -> int:
        kind = topic.rsplit("/", 1)[-1] if "/shadow/" not in topic else "shadow"
        doc: dict[str, Any] = {}
        if kind == "condition":
            doc = json.loads(payload)
        elif kind == "location":
            doc = {"triggers": [r.trigger for r in codec.decode(payload)]}
        log.append((h.clock.monotonic(), kind, doc))
        return publish(topic, payload)

    h.uplink.publish = noted  # type: ignore[method-assign]
    h.event(LinkUp())
    epochs = h.play("qtpositioning/nmealog.txt", limit=5)
    last = [e.fix for e in epochs if e.fix is not None][-1]
    h.play(str(parked_nmea(tmp_path / "parked.nmea", last, 1.0)))
    return log


def reasons(log: list[tuple[float, str, dict[str, Any]]]) -> list[tuple[float, str, str]]:
    return [(t, d["reason"], d["state"]) for t, kind, d in log if kind == "condition"]


def test_low_power_conditions_ride_with_heartbeats_and_start_their_own_clock(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, close_link=False, heartbeat_s=HOUR, low_power_condition_s=6 * HOUR)
    log = parked_day(tmp_path, app)
    conds = reasons(log)
    enter = next(t for t, why, _ in conds if why == "low_power_enter")
    periodic = [t for t, why, state in conds if why == "periodic" and t > enter]
    period = app.cfg.policy.low_power_condition_s
    # the report made on entering low power is the first of low power's: no periodic one
    # booked while awake follows it minutes later
    assert periodic and periodic[0] - enter >= period
    # one every period (each goes with the first heartbeat after it fell due)
    assert len(periodic) == int((log[-1][0] - enter) // period)
    for a, b in zip([enter, *periodic], periodic, strict=False):
        assert period <= b - a < period + app.cfg.policy.heartbeat_s
    # each goes right behind a heartbeat report, at the same moment: one wake of the link
    for t in periodic:
        i = next(i for i, (when, kind, d) in enumerate(log) if kind == "condition" and when == t)
        when, kind, doc = log[i - 1]
        assert (when, kind) == (t, "location") and doc["triggers"] == ["heartbeat"], log[i - 1]
        assert log[i][2]["state"] == "low_power"  # sparse, as low power's are
        # sent once the heartbeat report is acknowledged: no backlog (0 is left out)
        assert "backlog" not in log[i][2].get("spool", {}), log[i][2]


def test_with_heartbeats_rarer_than_conditions_they_go_when_due(tmp_path: Path) -> None:
    app = make_app(tmp_path, close_link=False, heartbeat_s=8 * HOUR, low_power_condition_s=3 * HOUR)
    conds = reasons(parked_day(tmp_path, app))
    enter = next(t for t, why, _ in conds if why == "low_power_enter")
    periodic = [t for t, why, _ in conds if why == "periodic" and t > enter]
    gaps = [b - a for a, b in zip([enter, *periodic], periodic, strict=False)]
    assert len(periodic) >= 6 and all(g == pytest.approx(3 * HOUR, abs=60) for g in gaps), gaps


def test_with_the_link_closed_in_low_power_conditions_still_go_every_period(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, close_link=True, heartbeat_s=HOUR, low_power_condition_s=6 * HOUR)
    conds = reasons(parked_day(tmp_path, app))
    enter = next(t for t, why, _ in conds if why == "low_power_enter")
    periodic = [t for t, why, _ in conds if why == "periodic" and t > enter]
    period = app.cfg.policy.low_power_condition_s
    assert len(periodic) >= 3
    gaps = [b - a for a, b in zip([enter, *periodic], periodic, strict=False)]
    assert all(period <= g < period + 2 * HOUR for g in gaps), gaps
