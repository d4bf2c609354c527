"""Config loading: every key validated, errors name the key; CLI > env > file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.core import config
from tracker.core.errors import ConfigError

MINIMAL = """
[device]
thing_name = "truck-42"
[aws]
endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"
cert = "/etc/tracker/cert.pem"
key = "/etc/tracker/key.pem"
ca = "/etc/tracker/ca.pem"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tracker.toml"
    p.write_text(text)
    return p


def test_minimal_config_gets_vehicle_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL), environ={})
    assert cfg.device.thing_name == "truck-42"
    assert cfg.aws.port == 8883
    # pings cost the data plan: the longest keep-alive AWS allows; a dead link is noticed by
    # the first publish left without its PUBACK (tracker.link.uplink.ACK_TIMEOUT_S), within a minute
    assert cfg.aws.keepalive_s == 1200
    from tracker.link.uplink import ACK_TIMEOUT_S

    assert ACK_TIMEOUT_S <= 60
    assert cfg.aws.topic("truck-42", "location") == "dt/tracker/truck-42/location"
    assert cfg.spool.drop_policy == "oldest"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[aws]\nkeepalive_s = 10", "[aws] keepalive_s = 10 is out of range: allowed 30 to 1200 s"),
        ('[spool]\ndrop_policy = "random"', "[spool] drop_policy = 'random' is not one of"),
        ('[policy]\nmin_interval_s = "5"', "[policy] min_interval_s must be a number"),
        ("[gps]\nbaudrate = 9600.5", "[gps] baudrate must be a whole number"),
        ("[gps]\ndetect_baud = 1", "[gps] detect_baud must be true or false"),
        ("[gps]\nspeed = 1", "unknown key [gps] speed"),
        ("[gsp]\nurl = 'x'", "unknown section [gsp]"),
        ("[policy]\nmin_interval_s = 600\nmax_interval_s = 60", "min_interval_s must not exceed"),
        (
            "[budget]\nbytes_per_day = 5000",
            "[budget] bytes_per_day = 5000 is below 20000 bytes, too little for one connection "
            "and its messages a day: set 0 (no limit) or at least 20000",
        ),
        ("[budget]\nmessages_per_day = 10", "[budget] messages_per_day = 10 is below 24"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    text = MINIMAL
    section = extra.split("\n", 1)[0]
    if section in text:  # merge into the existing table instead of repeating it
        text = text.replace(section, extra)
    else:
        text += "\n" + extra
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), environ={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["truck/42", "#", "a+b", "", "x" * 129, "dev ice"])
def test_thing_names_that_could_inject_topics_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="thing_name"):
        config.load(write(tmp_path, MINIMAL.replace("truck-42", name)), environ={})


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing key \[aws\] ca"):
        config.load(write(tmp_path, MINIMAL.replace('ca = "/etc/tracker/ca.pem"', "")), environ={})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; pass --config FILE"):
        config.load(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[device\n"), environ={})


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[gps]\nurl = "/dev/ttyS0"\nbaudrate = 4800\n')
    env = {"TRACKER_GPS_URL": "/dev/ttyUSB0", "TRACKER_GPS_BAUDRATE": "38400"}
    cfg = config.load(path, environ=env)
    assert (cfg.gps.url, cfg.gps.baudrate) == ("/dev/ttyUSB0", 38400)
    cfg = config.load(path, environ=env, overrides={"gps": {"url": "replay://x.nmea"}})
    assert (cfg.gps.url, cfg.gps.baudrate) == ("replay://x.nmea", 38400)


def test_env_values_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[aws\] port = 70000 is out of range") as info:
        config.load(write(tmp_path, MINIMAL), environ={"TRACKER_AWS_PORT": "70000"})
    assert str(info.value).endswith("(set by the environment variable TRACKER_AWS_PORT)")
    with pytest.raises(ConfigError, match=r"unknown key \[policy\] distancem") as info:
        config.load(write(tmp_path, MINIMAL), environ={"TRACKER_POLICY_DISTANCEM": "5"})
    assert "TRACKER_POLICY_DISTANCEM" in str(info.value)


def test_basic_ingest_topics(tmp_path: Path) -> None:
    cfg = config.load(
        write(tmp_path, MINIMAL.replace("[aws]", '[aws]\nbasic_ingest_rule = "fleet"')), environ={}
    )
    assert (
        cfg.aws.topic("truck-42", "condition") == "$aws/rules/fleet/dt/tracker/truck-42/condition"
    )


@pytest.mark.parametrize("prefix", ["dt/#", "$aws/x", "a//b", "a/+/b", ""])
def test_topic_prefix_cannot_hold_wildcards(tmp_path: Path, prefix: str) -> None:
    text = MINIMAL.replace("[aws]", f'[aws]\ntopic_prefix = "{prefix}"')
    with pytest.raises(ConfigError, match="topic_prefix"):
        config.load(write(tmp_path, text), environ={})


def test_readme_reference_matches_the_config() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    marker = "<!-- config-reference -->"
    assert marker in readme
    body = readme.split(marker, 1)[1].lstrip("\n")
    expected = config.reference_markdown()
    assert body[: len(expected)] == expected, (
        "README's configuration reference is out of date: paste config.reference_markdown()"
    )


def test_every_key_has_a_doc_and_numbers_have_bounds() -> None:
    import dataclasses

    for name, cls in config.SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            assert f.metadata["doc"], f"[{name}] {f.name} has no doc"
            if type(f.default) in (int, float):
                assert f.metadata["lo"] is not None and f.metadata["hi"] is not None, f.name
