"""scripts/install in a staging root, and the systemd unit and udev rule it ships."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "tracker.service"
# udev syntax: KEY[{attr}] OP "value", comma separated
RULE = re.compile(r'[A-Z]+(\{\w+\})?(==|\+=|=)"[^"]*"(, [A-Z]+(\{\w+\})?(==|\+=|=)"[^"]*")*')


def install(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/install"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def spy_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose systemctl, useradd, groupadd, usermod and udevadm only record their calls."""
    bin_dir, log = tmp_path / "spy-bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("systemctl", "useradd", "groupadd", "usermod", "udevadm"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        tool.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", log


def unit(path: Path) -> dict[str, dict[str, str]]:
    """A systemd unit's sections; a key given more than once has its values joined by a space."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key] = f"{current[key]} {value}".strip() if key in current else value
    return sections


def files(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.lstat().st_mode & 0o7777
        for p in sorted(root.rglob("*"))
        if not p.is_dir()
    }


def test_staging_root_lays_out_every_file_and_runs_nothing(tmp_path: Path) -> None:
    root = tmp_path / "image"
    path, calls = spy_path(tmp_path)
    done = install("--root", str(root), path=path)
    assert done.returncode == 0, done.stderr
    assert not calls.exists()  # no systemctl, no user creation in a staging root
    got = files(root)
    assert got == {
        "etc/systemd/system/tracker.service": 0o644,
        "etc/systemd/system/tracker-clock.path": 0o644,
        "etc/systemd/system/tracker-clock.service": 0o644,
        "opt/tracker/bin/tracker-provision": 0o755,
        "opt/tracker/share/99-gps.rules": 0o644,
        "opt/tracker/share/aws/claim-policy-keys.json": 0o644,
        "opt/tracker/share/aws/claim-policy.json": 0o644,
        "opt/tracker/share/aws/provisioning-template.json": 0o644,
        "opt/tracker/share/aws/tracker-policy.json": 0o644,
        "opt/tracker/share/provision": 0o755,
        "usr/local/bin/tracker": 0o777,
        "usr/local/bin/tracker-provision": 0o777,
    }
    assert os.readlink(root / "usr/local/bin/tracker") == "/opt/tracker/venv/bin/tracker"
    assert (root / "etc/tracker").stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/tracker").is_dir()
    launcher = (root / "opt/tracker/bin/tracker-provision").read_text()
    assert "exec /opt/tracker/venv/bin/python /opt/tracker/share/provision" in launcher
    assert (root / "etc/systemd/system/tracker.service").read_bytes() == UNIT.read_bytes()

    again = install("--root", str(root), path=path)
    assert again.returncode == 0 and files(root) == got


def test_prefix_moves_every_path(tmp_path: Path) -> None:
    root = tmp_path / "image"
    assert install("--root", str(root), "--prefix", "/srv/trk").returncode == 0
    service = unit(root / "etc/systemd/system/tracker.service")["Service"]
    assert service["ExecStart"].startswith("/srv/trk/venv/bin/tracker run")
    clock = unit(root / "etc/systemd/system/tracker-clock.service")["Service"]
    assert clock["ExecStart"].startswith("/srv/trk/venv/bin/tracker set-clock")
    assert os.readlink(root / "usr/local/bin/tracker") == "/srv/trk/venv/bin/tracker"
    assert "/opt/tracker" not in (root / "srv/trk/bin/tracker-provision").read_text()


def test_live_dry_run_shows_the_board_steps(tmp_path: Path) -> None:
    path, calls = spy_path(tmp_path)
    done = install("--dry-run", path=path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "-m venv /opt/tracker/venv" in out and "pip install" in out
    assert "--require-hashes -r " in out and "deploy/requirements.lock" in out
    assert re.search(r"pip install --no-cache-dir --no-deps \S+$", out, re.M)
    assert "+ systemctl enable tracker.service tracker-clock.path" in out
    assert "+ systemctl daemon-reload" in out
    assert "usermod --append --groups dialout,gpio tracker" in out
    assert not calls.exists()


def test_wheelhouse_installs_offline_from_its_wheels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    path, calls = spy_path(tmp_path)
    done = install("--dry-run", "--wheelhouse", str(wheels), path=path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "holds no tracker wheel" in done.stderr
    (wheels / "tracker-0.1.0-py3-none-any.whl").write_bytes(b"")
    done = install("--dry-run", "--wheelhouse", str(wheels), path=path)
    assert done.returncode == 0, done.stderr
    pip = next(line for line in done.stdout.splitlines() if "pip install" in line)
    assert f"--no-index --find-links={wheels}" in pip and pip.endswith(" tracker")
    assert not calls.exists()


def test_unit_key_settings() -> None:
    u = unit(UNIT)
    service = u["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert int(service["WatchdogSec"]) > 0
    assert service["StateDirectory"] == "tracker"
    assert service["User"] == "tracker"
    assert set(service["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome"):
        assert service[key] == "true", key
    assert service["ProtectSystem"] == "strict"
    assert service["ExecStart"].split()[:2] == ["/opt/tracker/venv/bin/tracker", "run"]
    assert "/etc/tracker/tracker.toml" in service["ExecStart"]
    assert u["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in u["Unit"]["Wants"]


ANALYZE = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze (Debian package systemd)"
)
UNITS = ("tracker.service", "tracker-clock.service", "tracker-clock.path")


@ANALYZE
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants the ExecStart binary to exist: point it at one that does
    for name in UNITS:
        text = (REPO / "deploy" / name).read_text()
        text = text.replace("/opt/tracker/venv/bin/tracker", shutil.which("true") or "")
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "tracker" not in done.stderr  # no warnings about our units


def exposure(name: str) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(REPO / "deploy" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


@ANALYZE
def test_the_units_exposure_scores_stay_low() -> None:
    assert exposure("tracker.service") <= 2.0
    assert exposure("tracker-clock.service") <= 1.5


def test_the_tracker_holds_no_capability_and_only_its_devices() -> None:
    service = unit(UNIT)["Service"]
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["ProtectClock"] == "true" and "@clock" in service["SystemCallFilter"]
    assert service["DevicePolicy"] == "closed"
    allowed = service["DeviceAllow"].split()
    for group in ("char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-ttyACM", "char-gpiochip"):
        assert allowed[allowed.index(group) + 1] == "rw", group
    assert service["ProtectProc"] == "invisible" and service["ProcSubset"] == "pid"


def test_only_the_clock_helper_may_set_the_clock_and_it_runs_on_the_trackers_request() -> None:
    from tracker.receiver.gpstime import CLOCK_REQUEST

    clock = unit(REPO / "deploy" / "tracker-clock.service")["Service"]
    assert clock["CapabilityBoundingSet"] == "CAP_SYS_TIME" == clock["AmbientCapabilities"]
    assert clock["ExecStart"].split()[1] == "set-clock"
    allow, deny = clock["SystemCallFilter"].split("~", 1)
    assert "@clock" in allow.split() and "@clock" not in deny.split()
    watched = unit(REPO / "deploy" / "tracker-clock.path")["Path"]["PathChanged"]
    runtime = unit(UNIT)["Service"]["RuntimeDirectory"]
    assert watched == f"/run/{runtime}/{CLOCK_REQUEST}"
    assert clock["ExecStart"].split()[2] == watched


def test_udev_rule_names_the_gps() -> None:
    rules = (REPO / "deploy" / "99-gps.rules").read_text().splitlines()
    active = [r for r in rules if r.strip() and not r.startswith("#")]
    assert active
    for rule in active:
        assert 'SYMLINK+="gps0"' in rule and 'GROUP="dialout"' in rule
        assert rule.startswith('SUBSYSTEM=="tty"')
        assert RULE.fullmatch(rule), rule
