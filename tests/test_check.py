"""`tracker check`: one test per setup mistake, on a board laid out in tmp_path."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from benchkit.broker import Broker
from benchkit.fake_gps import FakeGps
from benchkit.pki import Pki

from tracker import cli
from tracker.setup import check
from tracker.setup.check import Probe, Result
from tracker.setup.credentials import ServiceUser

NMEA = (
    b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
    b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
)
NOW = dt.datetime.now(dt.timezone.utc)


@dataclass
class Board:
    """A provisioned board in a temporary directory; `config()` rewrites its tracker.toml."""

    dir: Path
    pki: Pki
    gps: FakeGps

    @property
    def path(self) -> Path:
        return self.dir / "tracker.toml"

    def config(self, **sections: dict[str, object]) -> Path:
        doc: dict[str, dict[str, object]] = {
            "device": {"thing_name": self.pki.thing_name},
            "aws": {
                "endpoint": "localhost",
                "cert": str(self.dir / "device.crt"),
                "key": str(self.dir / "device.key"),
                "ca": str(self.dir / "ca.pem"),
            },
            "gps": {"url": self.gps.path},
            "spool": {"path": str(self.dir / "spool" / "spool.db")},
        }
        for name, values in sections.items():
            doc.setdefault(name, {}).update(values)
        lines = []
        for name, values in doc.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # TOML-compatible
        self.path.write_text("\n".join(lines) + "\n")
        return self.path


@pytest.fixture
def board(tmp_path: Path, pki: Pki) -> Iterator[Board]:
    d = tmp_path / "board"
    (d / "spool").mkdir(parents=True)
    (d / "device.crt").write_bytes(pki.client.cert.read_bytes())
    (d / "device.key").write_bytes(pki.client.key.read_bytes())
    (d / "device.key").chmod(0o600)
    (d / "ca.pem").write_bytes(pki.ca.read_bytes())
    (tmp_path / "dev").mkdir()
    with FakeGps(tmp_path / "dev") as gps:
        b = Board(d, pki, gps)
        b.config()
        yield b


@contextmanager
def transmitting(gps: FakeGps, data: bytes) -> Iterator[None]:
    """The receiver sends `data` again and again (pyserial flushes what came before the open)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.02):
            with suppress(OSError):  # nobody reading: the buffer is full
                gps.write(data, timeout=0.2)

    sender = threading.Thread(target=run, name="test-gps-sender")
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()


def probe(**kw: object) -> Probe:
    base: dict[str, object] = {
        "user": None,
        "gps_window_s": 0.3,
        "gps_read_s": 0.05,
        "min_free_bytes": 0,
        "min_free_ratio": 0.0,
        "environ": {},
        "connect_timeout_s": 5.0,
    }
    base.update(kw)
    return Probe(**base)  # type: ignore[arg-type]


def by_name(results: list[Result]) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(r.name, []).append(r)
    return out


def level(results: list[Result], name: str) -> str:
    return "/".join(r.level for r in by_name(results)[name])


def test_a_good_board_is_all_ok(board: Board) -> None:
    with transmitting(board.gps, NMEA):
        results = check.run_checks(board.path, probe=probe())
    assert [r for r in results if r.level != "OK"] == []
    names = {r.name for r in results}
    assert {
        "config",
        "key mode",
        "cert+key",
        "cert expiry",
        "clock",
        "ca",
        "gps",
        "spool dir",
        "disk",
    } <= names
    assert check.exit_status(results) == 0
    text = check.table(results)
    assert text.splitlines()[0].startswith("OK    config")
    assert text.splitlines()[-1] == f"0 FAIL, 0 WARN, {len(results)} OK"


def test_config_errors_are_reported_key_by_key(board: Board) -> None:
    board.config(aws={"port": 0, "keepalive_s": 5}, gps={"baudrat": 9600})
    results = check.run_checks(board.path, probe=probe())
    config = [r.detail for r in by_name(results)["config"]]
    assert len(config) == 3
    assert any("[aws] port" in d for d in config)
    assert any("[aws] keepalive_s" in d for d in config)
    assert any("unknown key [gps] baudrat" in d for d in config)
    assert level(results, "cert+key") == "OK"  # the rest still ran
    assert check.exit_status(results) == 2


def test_cross_key_and_missing_key_errors(board: Board) -> None:
    board.config(policy={"min_interval_s": 100, "max_interval_s": 50})
    assert (
        "min_interval_s must not exceed"
        in by_name(check.run_checks(board.path, probe=probe()))["config"][0].detail
    )
    board.path.write_text('[device]\nthing_name = "x"\n')
    details = [r.detail for r in check.run_checks(board.path, probe=probe()) if r.name == "config"]
    assert any("missing key [aws] endpoint" in d for d in details)


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    results = check.run_checks(tmp_path / "nope.toml", probe=probe())
    assert results[0] == Result("FAIL", "config", results[0].detail)
    assert "not found" in results[0].detail
    bad = tmp_path / "bad.toml"
    bad.write_text("[aws\n")
    assert "not valid TOML" in check.run_checks(bad, probe=probe())[0].detail


def test_missing_certificate_file(board: Board) -> None:
    (board.dir / "device.crt").unlink()
    results = check.run_checks(board.path, probe=probe())
    assert level(results, "cert") == "FAIL"
    assert "does not exist" in by_name(results)["cert"][0].detail


@pytest.mark.parametrize(("mode", "expected"), [(0o644, "FAIL"), (0o640, "WARN")])
def test_key_permissions(board: Board, mode: int, expected: str) -> None:
    (board.dir / "device.key").chmod(mode)
    with transmitting(board.gps, NMEA):
        results = check.run_checks(board.path, probe=probe())
    assert level(results, "key mode") == expected
    assert "chmod 600" in by_name(results)["key mode"][0].detail
    if expected == "WARN":
        assert check.exit_status(results) == 1


def test_key_the_service_user_cannot_read(board: Board) -> None:
    user = ServiceUser("tracker", 4242, frozenset({4242}))
    results = check.run_checks(board.path, probe=probe(user=user))
    assert level(results, "key access") == "FAIL"
    assert "chown tracker:" in by_name(results)["key access"][0].detail


def test_certificate_and_key_do_not_match(board: Board) -> None:
    (board.dir / "device.key").write_bytes(board.pki.cloud.key.read_bytes())
    results = check.run_checks(board.path, probe=probe())
    assert level(results, "cert+key") == "FAIL"


def test_expired_and_expiring_certificate(board: Board) -> None:
    expired = board.pki.expired_client()
    (board.dir / "device.crt").write_bytes(expired.cert.read_bytes())
    (board.dir / "device.key").write_bytes(expired.key.read_bytes())
    results = check.run_checks(board.path, probe=probe())
    assert (
        level(results, "cert expiry") == "FAIL"
        and "expired" in by_name(results)["cert expiry"][0].detail
    )
    soon = check.run_checks(
        board.path.parent / "tracker.toml", probe=probe(now=lambda: NOW - dt.timedelta(days=20))
    )
    assert level(soon, "cert expiry") == "WARN"


def test_wrong_root_ca(board: Board) -> None:
    (board.dir / "ca.pem").write_bytes(board.pki.client.cert.read_bytes())
    results = check.run_checks(board.path, probe=probe())
    assert level(results, "ca") == "FAIL"
    assert "not a root CA" in by_name(results)["ca"][0].detail


@pytest.mark.parametrize(
    ("now", "words"),
    [
        (dt.datetime(1970, 1, 1, 0, 1, tzinfo=dt.timezone.utc), "never set"),
        (NOW + dt.timedelta(days=800), "after the certificate's end"),
    ],
)
def test_clock_far_from_the_certificate(board: Board, now: dt.datetime, words: str) -> None:
    results = check.run_checks(board.path, probe=probe(now=lambda: now))
    assert level(results, "clock") == "FAIL" and words in by_name(results)["clock"][0].detail


def test_gps_port_that_cannot_be_opened(board: Board) -> None:
    board.config(gps={"url": str(board.dir / "ttyNOPE")})
    result = by_name(check.run_checks(board.path, probe=probe()))["gps"][0]
    assert result.level == "FAIL" and "cannot open GPS port" in result.detail


def test_gps_silent_or_garbled(board: Board, capsys: pytest.CaptureFixture[str]) -> None:
    silent = by_name(check.run_checks(board.path, probe=probe()))["gps"][0]
    assert silent.level == "FAIL" and "nothing received" in silent.detail
    assert "4800/38400/115200" in silent.detail
    capsys.readouterr()
    with transmitting(board.gps, bytes(range(128, 256))):  # what a wrong baud rate looks like
        garbled = by_name(check.run_checks(board.path, probe=probe()))["gps"][0]
    assert garbled.level == "FAIL" and "nor at 4800/38400/115200" in garbled.detail
    # the slow part says what it is doing before it starts
    assert "bytes but no NMEA" in capsys.readouterr().err


class ReceiverAt38400:
    """A receiver at 38400 baud seen through a port opened at `baudrate` (a board has one; this
    machine does not): noise at any other rate."""

    opened: ClassVar[list[int]] = []

    def __init__(self, url: str, *, baudrate: int, timeout: float) -> None:
        self.baudrate = baudrate
        ReceiverAt38400.opened.append(baudrate)

    def read(self, size: int = 1) -> bytes:
        return NMEA if self.baudrate == 38400 else bytes(range(128, 192))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("detect", "expected"), [(True, "WARN"), (False, "FAIL")])
def test_gps_at_another_baud_rate_is_named(board: Board, detect: bool, expected: str) -> None:
    board.config(gps={"detect_baud": detect})
    ReceiverAt38400.opened = []
    results = check.run_checks(board.path, probe=probe(open_port=ReceiverAt38400))
    gps = by_name(results)["gps"][0]
    assert gps.level == expected
    assert "sends NMEA at 38400 baud, not 9600" in gps.detail
    assert "baudrate = 38400" in gps.detail
    assert ReceiverAt38400.opened[0] == 9600 and 38400 in ReceiverAt38400.opened


def test_spool_directory_missing_or_not_writable(board: Board) -> None:
    # missing, but the tracker creates it at start: not a failure
    board.config(spool={"path": str(board.dir / "nowhere" / "deeper" / "spool.db")})
    results = check.run_checks(board.path, probe=probe())
    assert level(results, "spool dir") == "OK"
    assert "the tracker creates it at start" in by_name(results)["spool dir"][0].detail
    # missing, and the service user cannot create it
    board.dir.chmod(0o755)
    user = ServiceUser("tracker", 4242, frozenset({4242}))
    results = check.run_checks(board.path, probe=probe(user=user))
    detail = by_name(results)["spool dir"][0].detail
    assert level(results, "spool dir") == "FAIL"
    assert f"mkdir -p {board.dir}/nowhere/deeper && chown tracker: " in detail
    board.config()
    (board.dir / "spool").chmod(0o755)
    results = check.run_checks(board.path, probe=probe(user=user))
    assert (
        level(results, "spool dir") == "FAIL"
        and "not writable by the service user" in by_name(results)["spool dir"][0].detail
    )


def test_spool_path_through_a_file_or_at_a_directory(board: Board) -> None:
    (board.dir / "afile").write_text("x")
    board.config(spool={"path": str(board.dir / "afile" / "spool.db")})
    detail = by_name(check.run_checks(board.path, probe=probe()))["spool dir"][0].detail
    assert detail == f"{board.dir}/afile is a file, not a directory: fix [spool] path"
    board.config(spool={"path": str(board.dir / "spool")})
    detail = by_name(check.run_checks(board.path, probe=probe()))["spool dir"][0].detail
    assert detail.startswith(f"[spool] path {board.dir}/spool is a directory: name a file")


def test_disk_nearly_full(board: Board) -> None:
    full = check.run_checks(board.path, probe=probe(min_free_bytes=1 << 62))
    assert level(full, "disk") == "FAIL" and "free some space" in by_name(full)["disk"][0].detail
    tight = check.run_checks(board.path, probe=probe(min_free_ratio=1.0))
    assert level(tight, "disk") == "WARN"


def test_online_connects_to_the_endpoint_as_the_daemon_does(board: Board, broker: Broker) -> None:
    board.config(aws={"port": broker.port, "flow_control": False})
    results = check.run_checks(board.path, online=True, probe=probe())
    (online,) = by_name(results)["online"]
    assert online.level == "OK" and "(MQTT 5, mutual TLS)" in online.detail
    # the daemon's client: MQTT 5 (p5), persistent session (c0), client id = thing name
    assert re.search(rf"as {board.pki.thing_name} \(p5, c0", broker.log.read_text())


def test_online_failures_say_what_the_daemon_would_say(
    board: Board, broker: Broker, pki: Pki
) -> None:
    foreign = pki.foreign_client()  # a certificate the broker does not trust: refused fast
    board.config(aws={"port": broker.port, "cert": str(foreign.cert), "key": str(foreign.key)})
    (refused,) = by_name(check.run_checks(board.path, online=True, probe=probe()))["online"]
    assert refused.level == "FAIL" and "TLS handshake" in refused.detail
    board.config(aws={"endpoint": "nonexistent.invalid"})
    (dns,) = by_name(check.run_checks(board.path, online=True, probe=probe()))["online"]
    assert dns.level == "FAIL" and dns.detail.startswith("cannot resolve nonexistent.invalid")
    closed = broker.port
    broker.stop()
    board.config(aws={"port": closed})
    (gone,) = by_name(check.run_checks(board.path, online=True, probe=probe()))["online"]
    assert gone.level == "FAIL" and "nothing listens there" in gone.detail


def test_command_line(board: Board, capsys: pytest.CaptureFixture[str]) -> None:
    board.config(gps={"url": str(board.dir / "ttyNOPE")})
    status = cli.main(["check", "--config", str(board.path)])
    out = capsys.readouterr().out
    assert status == 2
    assert any(line.startswith("FAIL  gps") for line in out.splitlines())
    assert check.main(argparse.Namespace(config=str(board.dir / "x.toml"), online=False)) == 2


@pytest.mark.skipif(
    not Path("/etc/ssl/certs/ca-certificates.crt").exists(), reason="no system CA bundle"
)
def test_the_system_ca_bundle_as_ca_is_a_warning_without_noise(
    board: Board, capfd: pytest.CaptureFixture[str]
) -> None:
    board.config(aws={"ca": "/etc/ssl/certs/ca-certificates.crt"})
    results = check.run_checks(board.path, probe=probe())
    (ca,) = by_name(results)["ca"]
    assert ca.level == "WARN" and "for AWS IoT use AmazonRootCA1.pem" in ca.detail
    assert "bundle of" in ca.detail and "valid until" not in ca.detail
    out, err = capfd.readouterr()
    assert "Warning" not in out + err


def test_swapped_certificate_and_key_get_no_chmod_advice_for_the_certificate(
    board: Board,
) -> None:
    (board.dir / "device.crt").chmod(0o644)
    board.config(aws={"cert": str(board.dir / "device.key"), "key": str(board.dir / "device.crt")})
    results = check.run_checks(board.path, probe=probe())
    assert "swapped" in by_name(results)["key"][0].detail
    assert "key mode" not in by_name(results)
    assert not any("chmod 600" in r.detail for r in results)
