"""Remote settings through the device shadow, without a broker: ShadowSync against the
shadow service's rules (support.shadow_responder.ShadowService) and against crafted messages."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.shadow_responder import ShadowService, delta_of

from tracker.core import config
from tracker.core.config import Config
from tracker.core.errors import ConfigError
from tracker.core.limits import MAX_PAYLOAD
from tracker.link import remote_settings
from tracker.link.shadow import REPORT_LIMIT, ShadowSync, shadow_prefix

THING = "tracker-test-1"
PREFIX = f"$aws/things/{THING}/shadow"


def make_cfg(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    doc: dict[str, Any] = {
        "device": {"thing_name": THING},
        "aws": {
            "endpoint": "example-ats.iot.eu-west-1.amazonaws.com",
            "cert": "c.pem",
            "key": "k.pem",
            "ca": "ca.pem",
        },
        "spool": {"path": str(tmp_path / "spool.db")},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return config.from_dict(doc)


class Cloud:
    """ShadowSync and ShadowService wired together in memory, as the broker would."""

    def __init__(self, sync: ShadowSync, service: ShadowService | None = None) -> None:
        self.sync = sync
        self.service = service or ShadowService(THING)
        self.configs: list[Config] = []
        self.rejected: dict[str, str] = {}
        self.online = False

    def connect(self) -> None:
        self.online = True
        self.run(self.sync.on_connected())

    def disconnect(self) -> None:
        self.online = False
        self.sync.on_disconnected()

    def run(self, outgoing: list[tuple[str, bytes]]) -> int:
        """Deliver until nothing moves; returns how many messages went to the device."""
        to_device = 0
        todo = list(outgoing)
        while todo:
            topic, payload = todo.pop(0)
            for reply_topic, reply in self.service.handle(topic, payload):
                if self.online and reply_topic in self.sync.topics():
                    to_device += 1
                    assert to_device < 50, "device and shadow keep talking"
                    res = self.sync.on_message(reply_topic, reply)
                    if res.config is not None:
                        self.configs.append(res.config)
                    self.rejected = res.rejected or self.rejected
                    todo.extend(res.publish)
        return to_device

    def operator(self, desired: dict[str, Any]) -> None:
        """aws iot-data update-thing-shadow with a desired state."""
        for topic, payload in self.service.update({"desired": desired}):
            if self.online and topic in self.sync.topics():
                res = self.sync.on_message(topic, payload)
                if res.config is not None:
                    self.configs.append(res.config)
                self.rejected = res.rejected
                self.run(res.publish)

    def reported(self) -> dict[str, Any]:
        return self.service.document()["state"]["reported"]  # type: ignore[no-any-return]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_cfg(tmp_path)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "remote-settings.json"


def get_request(messages: list[tuple[str, bytes]]) -> bytes:
    """The get among a connection's first messages."""
    (payload,) = [p for t, p in messages if t == f"{PREFIX}/get"]
    return payload


def delta(state: dict[str, Any], version: int) -> bytes:
    return json.dumps({"version": version, "timestamp": 1, "state": state}).encode()


# ---- the key table -------------------------------------------------------------------------------


def test_remote_keys_come_from_config_metadata_and_exclude_identity() -> None:
    paths = set(remote_settings.REMOTE)
    assert "policy.distance_m" in paths and "aws.batch_bytes" in paths
    policy = {f"policy.{f.name}" for f in dataclasses.fields(config.PolicyConfig)}
    budget = {f"budget.{f.name}" for f in dataclasses.fields(config.BudgetConfig)}
    assert policy | budget <= paths and len(paths) == len(policy) + len(budget) + 1
    for local in (
        "device.thing_name",
        "aws.endpoint",
        "aws.cert",
        "aws.key",
        "aws.ca",
        "aws.port",
        "spool.path",
        "gps.url",
    ):
        assert local not in paths


def test_readme_table_lists_every_remote_key_with_unit_default_and_bounds() -> None:
    table = remote_settings.settings_table()
    rows = table.strip().splitlines()[2:]
    assert len(rows) == len(remote_settings.REMOTE)
    assert "| `policy.distance_m` | m | 100 | 5 to 100000 (number) |" in table
    assert "| `aws.batch_bytes` | bytes | 5120 | 512 to 131072 (whole number) |" in table


def test_readme_table_matches_the_config_metadata() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    marker = "<!-- remote-settings-table -->"
    if marker not in readme:
        pytest.skip("README has no remote settings table yet")
    table = readme.split(marker, 1)[1].lstrip("\n")
    expected = remote_settings.settings_table()
    assert table[: len(expected)] == expected, (
        "README table is out of date: paste remote_settings.settings_table() after the marker"
    )


def test_shadow_topics_classic_and_named() -> None:
    assert shadow_prefix(THING) == PREFIX
    assert shadow_prefix(THING, "config") == f"{PREFIX}/name/config"
    with pytest.raises(ConfigError, match="shadow name"):
        shadow_prefix(THING, "bad/name")


# ---- online changes -----------------------------------------------------------------------------


def test_delta_applies_at_once_persists_and_is_reported(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store, token_prefix="t")
    cloud = Cloud(sync)
    cloud.connect()
    assert cloud.reported()["policy"]["distance_m"] == 100
    assert cloud.reported()["software"] and cloud.reported()["config_errors"] == []
    cloud.operator({"policy": {"distance_m": 50, "max_interval_s": 60}})
    assert cloud.configs[-1].policy.distance_m == 50.0
    assert cloud.configs[-1].policy.max_interval_s == 60.0
    assert sync.config.policy.distance_m == 50.0
    assert cloud.reported()["policy"]["distance_m"] == 50
    doc = cloud.service.document()
    assert delta_of(doc["state"]["desired"], doc["state"]["reported"]) == {}
    assert remote_settings.load_persisted(store) == {
        "policy": {"distance_m": 50.0, "max_interval_s": 60.0}
    }


def test_same_delta_twice_publishes_nothing(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    first = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 1}}, 5))
    assert first.rejected and first.publish  # config_errors reported once
    again = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 1}}, 6))
    assert again.rejected and again.publish == [] and again.config is None


def test_delta_for_a_value_already_in_force_puts_reported_right(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 70}}, 3))
    # that report was lost: the shadow still says 100 and sends the delta again
    res = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 70}}, 4))
    assert res.config is None
    ((_, report),) = res.publish
    assert json.loads(report)["state"]["reported"] == {"policy": {"distance_m": 70}}


def test_invalid_and_unknown_keys_are_refused_one_by_one(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    cloud.operator(
        {
            "policy": {
                "distance_m": 1,
                "heading_deg": "wide",
                "min_sats": 4.5,
                "colour": "red",
                "heartbeat_s": 1800,
            },
            "aws": {"endpoint": "evil.example.com", "batch_bytes": 2048},
            "device": {"thing_name": "other"},
        }
    )
    rejected = cloud.rejected
    assert "out of range" in rejected["policy.distance_m"]
    assert "must be a number" in rejected["policy.heading_deg"]
    assert "whole number" in rejected["policy.min_sats"]
    assert rejected["policy.colour"] == "unknown key"
    assert "config file" in rejected["aws.endpoint"]
    assert "not settable remotely" in rejected["device"]
    new = cloud.configs[-1]
    assert (new.policy.heartbeat_s, new.aws.batch_bytes) == (1800.0, 2048)
    assert new.aws.endpoint == cfg.aws.endpoint and new.policy.distance_m == 100.0
    errors = {e["key"]: e["reason"] for e in cloud.reported()["config_errors"]}
    assert set(errors) == set(rejected)
    # the operator fixes the bad key: its error goes, the others stay until desired changes
    cloud.operator(
        {
            "policy": {"distance_m": 20, "heading_deg": None, "min_sats": None, "colour": None},
            "aws": {"endpoint": None},
            "device": None,
        }
    )
    assert cloud.reported()["config_errors"] == []
    assert cloud.reported()["policy"]["distance_m"] == 20


@pytest.mark.parametrize(
    ("desired", "refused"),
    [
        ({"min_interval_s": 600}, {"policy.min_interval_s"}),
        (
            {"min_interval_s": 600, "max_interval_s": 300},
            {"policy.min_interval_s", "policy.max_interval_s"},
        ),
        ({"battery_low_pct": 40}, {"policy.battery_low_pct"}),
        (
            {"battery_ok_pct": 10, "battery_low_pct": 20},
            {"policy.battery_ok_pct", "policy.battery_low_pct"},
        ),
    ],
)
def test_silencing_combinations_are_refused(
    cfg: Config, store: Path, desired: dict[str, Any], refused: set[str]
) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    res = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": desired}, 3))
    assert set(res.rejected) == refused
    assert all("refused" in why for why in res.rejected.values())
    assert res.config is None and sync.config == cfg


def test_heartbeat_longer_than_the_spool_holds_is_refused(tmp_path: Path, store: Path) -> None:
    cfg = make_cfg(tmp_path, spool={"max_fixes": 100}, policy={"min_interval_s": 5})
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    res = sync.on_message(
        f"{PREFIX}/update/delta", delta({"policy": {"heartbeat_s": 1800, "distance_m": 40}}, 3)
    )
    assert "spool" in res.rejected["policy.heartbeat_s"]
    assert res.config is not None and res.config.policy.heartbeat_s == cfg.policy.heartbeat_s
    assert res.config.policy.distance_m == 40.0  # the rest of the change still applies


def test_a_valid_pair_moving_together_is_accepted(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    res = sync.on_message(
        f"{PREFIX}/update/delta",
        delta({"policy": {"min_interval_s": 600, "max_interval_s": 1200}}, 3),
    )
    assert res.rejected == {}
    assert res.config is not None and res.config.policy.min_interval_s == 600.0


# ---- offline, versions, tokens ------------------------------------------------------------------


def test_change_made_while_offline_applies_on_reconnect(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    cloud.disconnect()
    cloud.operator({"policy": {"still_timeout_s": 600}, "aws": {"batch_bytes": 1024}})
    assert cloud.configs == []
    cloud.connect()
    assert cloud.configs[-1].policy.still_timeout_s == 600.0
    assert cloud.configs[-1].aws.batch_bytes == 1024
    assert cloud.reported()["aws"]["batch_bytes"] == 1024


def test_stale_and_out_of_order_deltas_are_ignored(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    assert (
        sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 70}}, 9)).config
        is not None
    )
    old = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 30}}, 8))
    same = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 30}}, 9))
    assert "stale" in old.ignored and "stale" in same.ignored
    assert sync.config.policy.distance_m == 70.0


def test_a_delta_with_nothing_usable_does_not_move_the_version(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    junk = sync.on_message(f"{PREFIX}/update/delta", delta({"aws": {"endpoint": "x"}}, 10**9))
    assert junk.rejected and junk.config is None
    res = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 45}}, 4))
    assert res.config is not None and res.config.policy.distance_m == 45.0


def test_get_reply_needs_our_token_and_a_current_version(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store, token_prefix="dev")
    (get_topic, get), (_, report) = sync.on_connected()
    token = json.loads(get)["clientToken"]
    assert get_topic == f"{PREFIX}/get" and json.loads(report)["clientToken"] != token
    body = {"state": {"desired": {"policy": {"distance_m": 60}}}, "version": 4}
    other = sync.on_message(
        f"{PREFIX}/get/accepted", json.dumps({**body, "clientToken": "console-1"}).encode()
    )
    assert other.config is None and "another request" in other.ignored
    sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 80}}, 7))
    stale = sync.on_message(
        f"{PREFIX}/get/accepted", json.dumps({**body, "clientToken": token}).encode()
    )
    assert "stale" in stale.ignored and sync.config.policy.distance_m == 80.0


def test_reported_fields_copied_into_desired_are_not_refused(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    get = get_request(sync.on_connected())
    copied = {
        "software": "0.0.1",
        "status": {"state": "idle"},
        "config_errors": [],
        "policy": {"distance_m": 55},
    }
    reply = {
        "state": {"desired": copied},
        "version": 2,
        "clientToken": json.loads(get)["clientToken"],
    }
    res = sync.on_message(f"{PREFIX}/get/accepted", json.dumps(reply).encode())
    assert res.rejected == {} and res.applied == {"policy.distance_m": 55}


def test_get_applies_the_whole_desired_state_not_only_the_delta(cfg: Config, store: Path) -> None:
    # applied 70 offline-side but the report never landed; desired went back to what reported says
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 70}}, 3))
    sync.on_disconnected()
    get = get_request(sync.on_connected())
    reply = {
        "state": {
            "desired": {"policy": {"distance_m": 100}},
            "reported": {"policy": {"distance_m": 100}},
        },
        "version": 6,
        "clientToken": json.loads(get)["clientToken"],
    }
    res = sync.on_message(f"{PREFIX}/get/accepted", json.dumps(reply).encode())
    assert res.config is not None and res.config.policy.distance_m == 100.0
    assert res.publish  # the reported state in the shadow was incomplete: full report


def test_first_connection_creates_the_shadow(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    doc = cloud.service.document()
    assert doc["version"] == 1 and doc["state"]["reported"]["policy"]["heartbeat_s"] == 7200
    assert cloud.sync.reports == 1 and cloud.sync.reports_rejected == 0


def test_concurrent_update_with_old_version_loses_as_the_service_defines() -> None:
    service = ShadowService(THING)
    service.update({"desired": {"policy": {"distance_m": 50}}})
    msgs = service.handle(
        f"{PREFIX}/update",
        json.dumps(
            {"state": {"desired": {"policy": {"distance_m": 10}}}, "version": 0, "clientToken": "x"}
        ).encode(),
    )
    assert msgs[0][0] == f"{PREFIX}/update/rejected"
    assert json.loads(msgs[0][1])["code"] == 409
    assert service.document()["state"]["desired"]["policy"]["distance_m"] == 50


# ---- reboot and the settings file ----------------------------------------------------------------


def test_reboot_keeps_the_last_applied_settings(cfg: Config, store: Path) -> None:
    first = ShadowSync(THING, cfg, store)
    first.on_connected()
    first.on_message(
        f"{PREFIX}/update/delta",
        delta({"policy": {"heartbeat_s": 900}, "aws": {"batch_bytes": 4096}}, 2),
    )
    rebooted = ShadowSync(THING, cfg, store)
    assert rebooted.config.policy.heartbeat_s == 900.0
    assert rebooted.config.aws.batch_bytes == 4096
    assert remote_settings.apply_persisted(cfg, store) == rebooted.config
    loaded = config.load(
        _toml(cfg, store.parent), environ={}, overrides=remote_settings.load_persisted(store)
    )
    assert loaded.policy.heartbeat_s == 900.0


def _toml(cfg: Config, directory: Path) -> Path:
    p = directory / "tracker.toml"
    p.write_text(
        f'[device]\nthing_name = "{THING}"\n[aws]\nendpoint = "{cfg.aws.endpoint}"\n'
        'cert = "c"\nkey = "k"\nca = "a"\n'
    )
    return p


def test_persisted_setting_that_no_longer_fits_the_file_is_left_out(
    tmp_path: Path, store: Path
) -> None:
    remote_settings.save_persisted(store, {"policy": {"min_interval_s": 100, "distance_m": 42}})
    cfg = make_cfg(tmp_path, policy={"max_interval_s": 60, "min_interval_s": 5})
    sync = ShadowSync(THING, cfg, store)
    assert sync.config.policy.min_interval_s == 5.0 and sync.config.policy.distance_m == 42.0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"format": 99, "settings": {}}',
        b'{"format": 1, "settings": {"policy": {"distance_m": -5,'
        b' "max_hdop": 2}, "aws": {"endpoint": "x"}}}',
        b"\xff\xfe" * 10,
        b"[" * 100_000,
    ],
)
def test_damaged_settings_file_is_ignored_not_fatal(
    cfg: Config, store: Path, content: bytes
) -> None:
    store.write_bytes(content)
    loaded = remote_settings.load_persisted(store)
    assert loaded in ({}, {"policy": {"max_hdop": 2.0}})
    assert ShadowSync(THING, cfg, store).config.policy.distance_m == 100.0


def test_settings_file_write_is_atomic(
    cfg: Config, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_settings.save_persisted(store, {"policy": {"distance_m": 50}})
    before = store.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        remote_settings.save_persisted(store, {"policy": {"distance_m": 60}})
    assert store.read_bytes() == before
    assert [p.name for p in store.parent.iterdir() if p.name.endswith(".tmp")] == []
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()  # a full disk does not stop the change from applying now
    res = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 70}}, 2))
    assert res.config is not None and sync.save_failures == 1


# ---- size and hostile input --------------------------------------------------------------------


def test_report_stays_well_under_the_shadow_limit(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    sync.report_status({f"key{i}": "x" * 500 for i in range(40)} | {"nested": {"a": [1] * 999}})
    hostile = {"policy": {("k" * 80) + str(i): "v" * 200 for i in range(300)}}
    assert len(delta(hostile, 2)) < MAX_PAYLOAD
    sync.on_message(f"{PREFIX}/update/delta", delta(hostile, 2))
    get = get_request(sync.on_connected())
    reply = {
        "state": {"desired": hostile},
        "version": 3,
        "clientToken": json.loads(get)["clientToken"],
    }
    res = sync.on_message(f"{PREFIX}/get/accepted", json.dumps(reply).encode())
    ((_, report),) = res.publish
    reported = json.loads(report)["state"]["reported"]
    assert len(json.dumps(reported)) < REPORT_LIMIT / 2
    assert len(reported["config_errors"]) == 11  # ten reasons and a count of the rest
    assert "status" in reported and len(reported["status"]) == 16


HOSTILE = [
    b"not json",
    b"",
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
    b'"text"',
    b"null",
    b"42",
    b"[" * 200_000 + b"]" * 200_000,
    b'{"state":' * 5000 + b"{}" + b"}" * 5000,
    b"{" + b" " * (MAX_PAYLOAD + 10) + b"}",
    b'{"version": "7", "state": {"policy": {"distance_m": 50}}}',
    b'{"version": true, "state": {"policy": {"distance_m": 50}}}',
    b'{"version": 9, "state": []}',
    b'{"version": 9, "state": {"policy": []}}',
    b'{"version": 9, "state": {"policy": {"distance_m": NaN}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": 1e999}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": ' + b"9" * 5000 + b"}}}",
    b'{"version": 9, "state": {"policy": {"distance_m": {"x": {"y": [1, [2, [3]]]}}}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": [50]}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": true}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": null}}}',
    b'{"version": 9, "state": {"policy": {"distance_m": 10000000000000000000000}}}',
]


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_documents_are_refused_without_harm(
    cfg: Config, store: Path, payload: bytes
) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    for kind in ("update/delta", "get/accepted", "get/rejected", "update/rejected"):
        res = sync.on_message(f"{PREFIX}/{kind}", payload)
        assert res.config is None
        assert all(len(p) < REPORT_LIMIT for _, p in res.publish)
    assert sync.config == cfg and not store.exists()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from([*remote_settings.REMOTE, "policy.nope", "aws.endpoint", "gps.url"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.dictionaries(KEYS, JSON, max_size=6), version=JSON | st.integers(0, 99))
def test_any_delta_leaves_a_valid_config(
    cfg: Config, store: Path, values: dict[str, Any], version: Any
) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    state: dict[str, Any] = {}
    for path, value in values.items():
        section, name = path.split(".")
        state.setdefault(section, {})[name] = value
    payload = json.dumps({"version": version, "state": state}).encode()
    res = sync.on_message(f"{PREFIX}/update/delta", payload)
    config.validate(sync.config)
    assert sync.config.device == cfg.device and sync.config.aws.endpoint == cfg.aws.endpoint
    for path in res.applied:
        assert path in remote_settings.REMOTE


def test_a_flood_of_unknown_keys_is_one_short_log_line(
    cfg: Config, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    caplog.clear()
    res = sync.on_message(f"{PREFIX}/update/delta", delta({f"k{i}": 1 for i in range(5000)}, 5))
    assert len(res.rejected) == 201 and res.config is None  # at most 200 keys are read
    assert res.rejected["desired"] == "too many keys; at most 200 are read"
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and len(lines[0]) < 600
    assert lines[0].endswith("; and 196 more")
    (_, report) = res.publish[0]
    assert len(report) <= REPORT_LIMIT


@pytest.mark.parametrize("version", [10**30, 2**53 + 1])
def test_an_impossible_shadow_version_cannot_make_later_deltas_stale(
    cfg: Config, store: Path, version: int
) -> None:
    sync = ShadowSync(THING, cfg, store)
    sync.on_connected()
    forged = sync.on_message(
        f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 50}}, version)
    )
    assert forged.config is None and forged.ignored
    real = sync.on_message(f"{PREFIX}/update/delta", delta({"policy": {"distance_m": 60}}, 11))
    assert real.applied == {"policy.distance_m": 60}


# ---- what a connection costs -------------------------------------------------------------------


def test_reports_are_not_echoed_back_to_the_device(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    assert f"{PREFIX}/update/accepted" not in sync.topics()
    assert f"{PREFIX}/update/rejected" in sync.topics()  # a refusal still comes back
    cloud = Cloud(sync)
    cloud.connect()
    assert cloud.sync.reports == 1 and cloud.reported()["policy"]["distance_m"] == 100
    # the report itself brings nothing down the link
    assert cloud.run(sync.report_status({"state": "low_power", "backlog": 3})) == 0
    assert cloud.reported()["status"]["backlog"] == 3


def test_a_reconnect_or_reboot_with_the_same_settings_only_asks(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    version = cloud.service.document()["version"]
    cloud.disconnect()
    again = cloud.sync.on_connected()
    assert [t.rsplit("/", 1)[-1] for t, _ in again] == ["get"]
    cloud.disconnect()
    rebooted = Cloud(ShadowSync(THING, cfg, store), cloud.service)
    rebooted.connect()
    assert rebooted.sync.reports == 0 and rebooted.sync.synced
    assert cloud.service.document()["version"] == version  # the shadow was not written
    # a setting changed remotely is reported as a fragment; the next connection knows it
    rebooted.operator({"policy": {"distance_m": 70}})
    assert rebooted.reported()["policy"]["distance_m"] == 70
    rebooted.disconnect()
    assert [t.rsplit("/", 1)[-1] for t, _ in rebooted.sync.on_connected()] == ["get"]


def test_a_changed_config_file_or_a_changed_shadow_is_reported_again(
    tmp_path: Path, store: Path
) -> None:
    cloud = Cloud(ShadowSync(THING, make_cfg(tmp_path), store))
    cloud.connect()
    cloud.disconnect()
    edited = make_cfg(tmp_path, policy={"distance_m": 250})
    rebooted = Cloud(ShadowSync(THING, edited, store), cloud.service)
    rebooted.connect()
    assert rebooted.sync.reports == 1 and rebooted.reported()["policy"]["distance_m"] == 250
    rebooted.disconnect()
    # someone edits the reported state in the cloud while the device is away: the get's reply
    # shows it, and the device puts it right
    cloud.service.update({"reported": {"policy": {"distance_m": 1}}})
    rebooted.connect()
    assert rebooted.sync.reports == 2 and rebooted.reported()["policy"]["distance_m"] == 250


def test_a_shadow_deleted_while_away_is_made_again(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    cloud.disconnect()
    cloud.service.handle(f"{PREFIX}/delete", b"{}")
    rebooted = Cloud(ShadowSync(THING, cfg, store), cloud.service)
    rebooted.connect()  # nothing reported (same settings), the get finds no shadow: 404
    assert rebooted.sync.reports == 1 and rebooted.reported()["policy"]["distance_m"] == 100


def test_a_damaged_digest_file_means_a_full_report(cfg: Config, store: Path) -> None:
    cloud = Cloud(ShadowSync(THING, cfg, store))
    cloud.connect()
    remote_settings.reported_path(store).write_text("not a digest\n")
    first = ShadowSync(THING, cfg, store).on_connected()
    assert [t.rsplit("/", 1)[-1] for t, _ in first] == ["get", "update"]


def test_a_new_device_asks_first_and_reports_once(cfg: Config, store: Path) -> None:
    sync = ShadowSync(THING, cfg, store)
    cloud = Cloud(sync)
    cloud.online = True
    first = sync.on_connected()
    assert [t.rsplit("/", 1)[-1] for t, _ in first] == ["get", "update"]
    # the get finds no shadow (a short 404, not the new report echoed with its metadata), and
    # the report that followed it is not sent again
    assert cloud.run(first) == 1 and sync.reports == 1 and sync.synced
    assert cloud.reported()["policy"]["distance_m"] == 100
