"""User mistakes found by trying them: each ends as one line naming the problem and the fix.

Bad paths, directories for files, binary garbage, empty files, wrong values, a staging root that
is a file, Ctrl-C half-way; plus the bounds on what the tracker accepts from the shadow.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from benchkit.pki import Pki
from serial.serialutil import SerialException

from hw import protocol_gpsd, protocol_replay
from tracker import cli
from tracker.core import config, files
from tracker.core.errors import ConfigError, GpsError, ProvisionError, UplinkError
from tracker.link import shadow, uplink
from tracker.receiver import replay
from tracker.setup import check, credentials, provision

REPO = Path(__file__).resolve().parent.parent
GARBAGE = bytes(range(256)) * 8  # not UTF-8, not PEM, not NMEA


def load_script(name: str) -> ModuleType:
    """A script of scripts/ (no .py suffix) as a module, so its main() runs in-process."""
    path = REPO / "scripts" / name
    loader = importlib.machinery.SourceFileLoader(f"script_{name}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def one_error_line(err: str, prefix: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def config_text(tmp_path: Path, extra: str = "") -> str:
    return f"""
[device]
thing_name = "truck-1"
[aws]
endpoint = "localhost"
cert = "{tmp_path / "c.pem"}"
key = "{tmp_path / "k.pem"}"
ca = "{tmp_path / "ca.pem"}"
{extra}
"""


# ------------------------------------------------------------------------------ config file


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory; pass --config FILE"),
        (lambda p: p.write_bytes(GARBAGE), "is not UTF-8 text (a binary file?)"),
    ],
)
def test_run_with_a_config_that_is_no_toml_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    path = tmp_path / "tracker.toml"
    make(path)
    assert cli.main(["run", "-c", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err, "tracker: error: ")
    assert str(path) in line and message in line


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory; pass --config FILE"),
        (lambda p: p.write_bytes(GARBAGE), "is not UTF-8 text"),
    ],
)
def test_check_with_a_config_that_is_no_toml_file_says_what_it_is(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "tracker.toml"
    make(path)
    results, good = check.check_config(path, {})
    assert good == {} and len(results) == 1
    assert results[0].level == "FAIL" and message in results[0].detail
    assert "Errno" not in results[0].detail and "codec" not in results[0].detail


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "not found; pass --settings FILE"),
        (lambda p: p.mkdir(), "is a directory; pass --settings FILE"),
        (lambda p: p.write_bytes(GARBAGE), "is not UTF-8 text (a binary file?)"),
        (lambda p: p.write_text("[gps\n"), "is not valid TOML"),
    ],
)
def test_provisioning_settings_that_are_no_toml_file_are_one_line(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "settings.toml"
    make(path)
    with pytest.raises(ProvisionError) as caught:
        provision.load_settings(path)
    assert str(caught.value).startswith(f"settings file {path} ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("value", ["nan", "-nan", "+nan"])
def test_nan_is_not_a_number_in_range(tmp_path: Path, value: str) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(config_text(tmp_path, f"[policy]\ndistance_m = {value}"))
    with pytest.raises(ConfigError, match=r"^\[policy\] distance_m must be a number, not nan$"):
        config.load(path, environ={})
    path.write_text(config_text(tmp_path))
    with pytest.raises(ConfigError, match="not nan"):
        config.load(path, environ={"TRACKER_POLICY_MAX_HDOP": "nan"})


@pytest.mark.parametrize("text", ["/dev/tty\\u0000S0", "/dev/ttyS0\\nx", "a\\tb"])
def test_control_characters_in_a_string_value_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(config_text(tmp_path, f'[gps]\nurl = "{text}"'))
    with pytest.raises(ConfigError, match=r"^\[gps\] url = .* holds a control character"):
        config.load(path, environ={})


def test_a_topic_prefix_past_aws_limits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(config_text(tmp_path, 'topic_prefix = "a/b/c/d/e/f/g"'))  # in [aws]
    with pytest.raises(ConfigError, match=r"hold 8 slashes.*use at most 6 levels"):
        config.load(path, environ={})
    long = "x" * 250
    path.write_text(config_text(tmp_path, f'topic_prefix = "{long}"'))
    with pytest.raises(ConfigError, match="allows 256: shorten the prefix"):
        config.load(path, environ={})
    path.write_text(config_text(tmp_path, 'topic_prefix = "a/b/c/d/e/f"'))
    assert config.load(path, environ={}).aws.topic_prefix == "a/b/c/d/e/f"  # 7 slashes: allowed


def test_a_huge_value_is_echoed_short(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(config_text(tmp_path, f"[gps]\nurl = {list(range(5000))}"))
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert len(str(info.value)) < 100 and "must be a string" in str(info.value)


# ------------------------------------------------------------------------------ credentials


def test_check_calls_a_directory_a_directory(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "cert-dir").mkdir()
    aws = {"cert": str(tmp_path / "cert-dir"), "key": str(pki.client.key), "ca": str(pki.ca)}
    findings = dict(credentials.check_files(aws, None, credentials.CLOCK_SANE_AFTER))
    assert findings["cert"].level == "FAIL"
    assert "is a directory, not a file; fix [aws] cert" in findings["cert"].detail
    assert "run as root" not in findings["cert"].detail


def test_check_warns_when_others_may_replace_the_key(tmp_path: Path, pki: Pki) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    key = shared / "device.key"
    key.write_bytes(pki.client.key.read_bytes())
    key.chmod(0o600)
    shared.chmod(0o777)
    aws = {"cert": str(pki.client.cert), "key": str(key), "ca": str(pki.ca)}
    findings = dict(credentials.check_files(aws, None, credentials.CLOCK_SANE_AFTER))
    assert findings["key dir"].level == "WARN"
    assert f"chmod 700 {shared.resolve()}" in findings["key dir"].detail
    shared.chmod(0o700)
    findings = dict(credentials.check_files(aws, None, credentials.CLOCK_SANE_AFTER))
    assert "key dir" not in findings


@pytest.mark.parametrize(
    ("make", "why"),
    [(lambda p: None, "does not exist"), (lambda p: p.mkdir(), "is a directory, not a file")],
)
def test_provisioning_and_the_uplink_name_an_unreadable_credential_alike(
    tmp_path: Path, make: Any, why: str
) -> None:
    path = tmp_path / "device.crt"
    make(path)
    with pytest.raises(ProvisionError) as by_provisioning:
        credentials.load_certificate(path, "[aws] cert file")
    with pytest.raises(UplinkError) as by_uplink:
        uplink._check_pem("cert", str(path), b"CERTIFICATE-----")
    assert str(by_provisioning.value) == str(by_uplink.value) == f"[aws] cert file {path} {why}"
    with pytest.raises(ValueError, match=r"^key path 'a\\x00b' holds a NUL character$"):
        files.read_file("a\0b", "key", ValueError)


def test_an_empty_or_huge_credential_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(ProvisionError, match=f"^certificate {empty} is empty; pass the PEM file$"):
        credentials.load_certificate(empty)
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"-" * (credentials.MAX_PEM_BYTES + 1))
    with pytest.raises(ProvisionError, match="is over 1 MB: not a PEM file"):
        credentials.load_private_key(huge)


# ------------------------------------------------------------------------------ provisioning


@pytest.fixture(scope="module")
def provision_script() -> ModuleType:
    return load_script("provision")


def existing(pki: Pki, root: Path, *extra: str, cert: Path | None = None) -> list[str]:
    return [
        "existing",
        "--thing",
        "truck-1",
        "--endpoint",
        "example-ats.iot.eu-west-1.amazonaws.com",
        "--ca",
        str(pki.ca),
        "--cert",
        str(cert or pki.client.cert),
        "--key",
        str(pki.client.key),
        "--root",
        str(root),
        *extra,
    ]


def test_provision_names_the_bad_credential_file(
    tmp_path: Path, pki: Pki, provision_script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_bytes(GARBAGE)
    assert provision_script.main(existing(pki, tmp_path / "root", cert=junk)) == 2
    line = one_error_line(capsys.readouterr().err, "provision: error: ")
    assert line == f"provision: error: certificate {junk} is not a PEM certificate"
    assert provision_script.main(existing(pki, tmp_path / "root", cert=tmp_path)) == 2
    line = one_error_line(capsys.readouterr().err, "provision: error: ")
    assert line == f"provision: error: certificate {tmp_path} is a directory, not a file"
    assert not (tmp_path / "root").exists()


def test_provision_with_a_root_that_is_a_file(
    tmp_path: Path, pki: Pki, provision_script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "image.img"
    root.write_bytes(b"not a folder")
    assert provision_script.main(existing(pki, root)) == 2
    line = one_error_line(capsys.readouterr().err, "provision: error: ")
    assert line.endswith(f"--root {root} is not a directory; pass the staging tree's folder")
    assert provision_script.main(existing(pki, root / "sub")) == 2
    assert f"under {root}, which is not a directory" in capsys.readouterr().err
    assert root.read_bytes() == b"not a folder"


def test_provision_with_a_relative_spool_path(
    tmp_path: Path, pki: Pki, provision_script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert provision_script.main(existing(pki, root, "--set", "spool.path=spool.db")) == 2
    line = one_error_line(capsys.readouterr().err, "provision: error: ")
    assert "[spool] path 'spool.db' must be an absolute path on the board" in line
    assert not root.exists()


def test_provision_settings_file_with_a_value_where_a_table_goes(
    tmp_path: Path, pki: Pki, provision_script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("spool = 3\n")
    args = existing(pki, tmp_path / "root", "--settings", str(settings))
    assert provision_script.main(args) == 2
    line = one_error_line(capsys.readouterr().err, "provision: error: ")
    assert "spool = 3 is not a table; write it as [spool]" in line
    with pytest.raises(ConfigError, match=r"must be a \[gps\] table"):
        provision.parse_settings([], {"gps": "/dev/ttyS0"})  # type: ignore[dict-item]


def test_interrupted_provisioning_leaves_the_board_as_it_was(
    tmp_path: Path,
    pki: Pki,
    provision_script: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "root"
    assert provision_script.main(existing(pki, root)) == 0
    etc = root / "etc/tracker"
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in etc.iterdir()}
    other = pki.client_for("truck-2")
    real_replace, calls = os.replace, []

    def replace_then_ctrl_c(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:  # one file already swapped in: Ctrl-C now
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)  # as provision sees it
    args = existing(pki, root, "--force")
    args[args.index("--key") + 1] = str(other.key)
    args[args.index("--cert") + 1] = str(other.cert)
    assert provision_script.main(args) == 130
    assert one_error_line(capsys.readouterr().err, "provision: ") == (
        "provision: interrupted; nothing was changed"
    )
    after = {p.name: (p.read_bytes(), p.stat().st_mode) for p in etc.iterdir()}
    assert after == before  # the old key is back, and no temp copy of the new one is left


def test_installed_thing_of_a_garbage_config_is_none(tmp_path: Path) -> None:
    config_file = provision.host_path(tmp_path, provision.CONFIG_FILE)
    config_file.parent.mkdir(parents=True)
    for text in (GARBAGE, b"device = 3\n"):
        config_file.write_bytes(text)
        assert provision.installed_thing(tmp_path) is None


# ------------------------------------------------------------------------------ install


@pytest.fixture(scope="module")
def install_script() -> ModuleType:
    return load_script("install")


@pytest.mark.parametrize("prefix", ["/", "/opt/my tracker", "/opt/t;reboot", "/opt/t$x"])
def test_install_refuses_a_prefix_that_breaks_the_unit(
    tmp_path: Path, install_script: ModuleType, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    assert install_script.main(["--root", str(tmp_path / "r"), "--prefix", prefix]) == 2
    line = one_error_line(capsys.readouterr().err, "install: error: ")
    assert "--prefix" in line and "A-Z a-z 0-9 . _ -" in line
    assert not (tmp_path / "r").exists()


def test_install_with_a_root_that_is_a_file(
    tmp_path: Path, install_script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "image.img"
    root.write_bytes(b"x")
    assert install_script.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err, "install: error: ") == (
        f"install: error: --root {root} is not a directory; pass a staging folder"
    )


def test_interrupted_install_says_so_and_leaves_no_temp_file(
    tmp_path: Path,
    install_script: ModuleType,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def ctrl_c(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", ctrl_c)  # as the script sees it
    assert install_script.main(["--root", str(tmp_path)]) == 130
    assert "install: interrupted; run it again to finish" in capsys.readouterr().err
    assert [p for p in tmp_path.rglob("*.tmp")] == []


# ------------------------------------------------------------------------------ bench


@pytest.fixture(scope="module")
def bench_plan() -> ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        module = importlib.import_module("bench_plan")
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return module


DRIVE = REPO / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}"], "has no two timed NMEA sentences"),
        (["{garbage}"], "has no two timed NMEA sentences"),
        (["{tmp}"], "is a directory; pass an NMEA file"),
        ([str(DRIVE), "--duration", "0"], "--duration must be more than 0 s"),
        ([str(DRIVE), "--out", "{garbage}"], "is a file; pass a folder for the report"),
        ([str(DRIVE), "--kill", "-1"], "--kill must be 0 or more"),
    ],
)
def test_bench_command_line_mistakes(
    tmp_path: Path,
    bench_plan: ModuleType,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "empty.nmea").write_bytes(b"")
    (tmp_path / "garbage.nmea").write_bytes(GARBAGE)
    names = {
        "empty": str(tmp_path / "empty.nmea"),
        "garbage": str(tmp_path / "garbage.nmea"),
        "tmp": str(tmp_path),
    }
    with pytest.raises(SystemExit) as info:
        bench_plan.parse_args([a.format(**names) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err


# ------------------------------------------------------------------------------ GPS URLs


def test_gpsd_port_zero_is_refused_not_replaced() -> None:
    with pytest.raises(SerialException, match="port must be a number 1-65535"):
        protocol_gpsd.parse_url("gpsd://localhost:0")
    assert protocol_gpsd.parse_url("gpsd://") == ("127.0.0.1", 2947)


def test_replay_of_a_file_too_big_to_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol_replay, "MAX_RECORDING", 1000)
    big = tmp_path / "big.nmea"
    big.write_bytes(b"$GPGGA,1*00\r\n" * 100)
    port = protocol_replay.Serial()
    port.port = f"replay://{big}"
    with pytest.raises(SerialException, match="is over 0 MB: split it"):
        port.open()
    assert not port.is_open
    port.port = "replay:///tmp/a%00b"
    with pytest.raises(SerialException, match="holds a NUL character"):
        port.open()


def test_replay_subcommand_of_a_directory(tmp_path: Path) -> None:
    args = argparse.Namespace(file=str(tmp_path), allow_no_checksum=False, format="jsonl")
    with pytest.raises(GpsError, match=f"^cannot read recording {tmp_path}: Is a directory$"):
        replay.main(args)


# ------------------------------------------------------------------------------ the shadow


def test_a_deeply_nested_shadow_document_is_refused() -> None:
    deep: Any = 1
    for _ in range(shadow.MAX_DEPTH + 1):
        deep = {"a": deep}
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        shadow.parse(json.dumps(deep).encode())
    ok: Any = 1
    for _ in range(10):
        ok = [ok]
    assert shadow.parse(json.dumps({"state": ok}).encode())["state"] == ok


def test_a_rejection_code_cannot_flood_or_forge_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config.from_dict(
        {
            "device": {"thing_name": "truck-1"},
            "aws": {"endpoint": "e", "cert": "c", "key": "k", "ca": "a"},
        }
    )
    sync = shadow.ShadowSync("truck-1", cfg, tmp_path / "remote.json", token_prefix="t")
    topic, _ = sync.request_shadow()[0]
    token = "t-1"
    payload = json.dumps(
        {"clientToken": token, "code": "x" * 5000 + "\n", "message": "boom\nFAKE LINE"}
    ).encode()
    with caplog.at_level(logging.WARNING, logger="tracker.link.shadow"):
        result = sync.on_message(topic.replace("/get", "/get/rejected"), payload)
    assert "\n" not in result.ignored and len(result.ignored) < 300
    (record,) = [r for r in caplog.records if "get rejected" in r.getMessage()]
    assert "\n" not in record.getMessage() and len(record.getMessage()) < 300


def test_provisioning_values_never_show_the_private_key_in_their_repr(tmp_path: Path) -> None:
    from tracker.setup.provision import Bundle, Change

    marker = b"PRIVATE KEY-----"  # a stand-in, not a key: built so no file holds a PEM header
    secret = b"-----BEGIN " + marker + b"\nSECRETSECRET\n-----END " + marker + b"\n"
    bundle = Bundle("t1", "example.iot", b"CERT", secret, b"CA")
    change = Change(tmp_path / "device.key", "create", 0o600, data=secret)
    for value in (bundle, change):
        assert "SECRETSECRET" not in repr(value) and "PRIVATE KEY" not in repr(value)
        assert "SECRETSECRET" not in str(value)
    assert "t1" in repr(bundle) and "device.key" in repr(change)


def test_a_start_up_error_is_the_only_line_not_after_a_stopped_line(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(
        config_text(tmp_path, f'[spool]\npath = "{tmp_path / "s" / "spool.db"}"\n')
        + '[gps]\nurl = "/dev/null"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert done.returncode == 2
    line = one_error_line(done.stderr, "tracker: error: ")
    assert "cert file" in line and "does not exist" in line
