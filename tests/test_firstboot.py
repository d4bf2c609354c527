"""scripts/firstboot: the first-boot files on the FAT partition, handed to tracker-provision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRSTBOOT = REPO / "scripts" / "firstboot"
CONFIG = """
[device]
thing_name = "truck-7"

[aws]
endpoint = "abc-ats.iot.eu-west-1.amazonaws.com"
port = 8883
cert = "/somewhere/else.crt"

[gps]
url = "/dev/gps0"
"""


def fake_provision(tmp_path: Path, status: int = 0, err: str = "") -> Path:
    """A tracker-provision that records its arguments and the settings file it was given."""
    tool = tmp_path / "tracker-provision"
    log = tmp_path / "provision.log"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {log}\n'
        'while [ $# -gt 0 ]; do [ "$1" = --settings ] && cat "$2" >> '
        f"{log}.settings; shift; done\n"
        f"echo '{err}' >&2\nexit {status}\n"
    )
    tool.chmod(0o755)
    return log


def firstboot(tmp_path: Path, boot: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRACKER_PROVISION=str(tmp_path / "tracker-provision"))
    env["RUNTIME_DIRECTORY"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, str(FIRSTBOOT), "--boot", str(boot), "--root", str(tmp_path / "root"),
         "--no-start"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip


def drop(boot: Path, *names: str) -> None:
    boot.mkdir(exist_ok=True)
    for name in names:
        (boot / name).write_text(CONFIG if name == "tracker.toml" else f"{name}\n")


def test_nothing_on_the_card_is_nothing_to_do(tmp_path: Path) -> None:
    log = fake_provision(tmp_path)
    drop(tmp_path / "boot", "README.txt")
    done = firstboot(tmp_path, tmp_path / "boot")
    assert done.returncode == 0 and "nothing" in done.stdout
    assert not log.exists()


def test_existing_credentials_are_installed_then_removed_from_the_card(tmp_path: Path) -> None:
    log = fake_provision(tmp_path)
    boot = tmp_path / "boot"
    drop(boot, "tracker.toml", "device.pem.crt", "device.pem.key", "root-ca.pem", "README.txt")
    done = firstboot(tmp_path, boot)
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert args[:3] == ["existing", "--thing", "truck-7"]
    assert args[args.index("--endpoint") + 1] == "abc-ats.iot.eu-west-1.amazonaws.com"
    assert args[args.index("--key") + 1] == str(boot / "device.pem.key")
    assert "--force" in args
    settings = Path(f"{log}.settings").read_text()
    assert 'url = "/dev/gps0"' in settings and "cert" not in settings  # provisioning sets paths
    assert sorted(p.name for p in boot.iterdir()) == ["README.txt"]  # the secrets are gone
    assert not list(tmp_path.glob("tracker-firstboot.toml"))  # the temporary settings too


def test_a_claim_provisions_by_fleet_template(tmp_path: Path) -> None:
    log = fake_provision(tmp_path)
    boot = tmp_path / "boot"
    drop(boot, "claim.pem.crt", "claim.pem.key", "root-ca.pem")
    (boot / "tracker.toml").write_text(
        CONFIG + '\n[provision]\ntemplate = "tracker-fleet"\nparams = { Site = "north" }\n'
    )
    done = firstboot(tmp_path, boot)
    assert done.returncode == 0, done.stderr
    args = log.read_text().split()
    assert args[0] == "fleet"
    assert args[args.index("--template") + 1] == "tracker-fleet"
    assert args[args.index("--param") + 1] == "Site=north"
    assert "provision" not in Path(f"{log}.settings").read_text()
    assert list(boot.iterdir()) == []


def test_a_refusal_leaves_the_files_and_says_why_on_the_card(tmp_path: Path) -> None:
    fake_provision(tmp_path, 2, "provision: error: the key does not belong to the certificate")
    boot = tmp_path / "boot"
    drop(boot, "tracker.toml", "device.pem.crt", "device.pem.key", "root-ca.pem")
    done = firstboot(tmp_path, boot)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    error = (boot / "tracker-error.txt").read_text()
    assert error == "provision: error: the key does not belong to the certificate\n"
    assert (boot / "device.pem.key").exists()


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    fake_provision(tmp_path)
    boot = tmp_path / "boot"
    drop(boot, "tracker.toml", "root-ca.pem")
    done = firstboot(tmp_path, boot)
    assert done.returncode == 2 and "no credentials" in done.stderr
    drop(boot, "device.pem.crt", "device.pem.key")
    (boot / "root-ca.pem").unlink()
    done = firstboot(tmp_path, boot)
    assert done.returncode == 2 and "root-ca.pem" in done.stderr
    (boot / "root-ca.pem").write_text("ca\n")
    (boot / "tracker.toml").write_text("[device\n")
    done = firstboot(tmp_path, boot)
    assert done.returncode == 2 and "not valid TOML" in done.stderr


def network(tmp_path: Path, boot: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FIRSTBOOT), "--network", "--boot", str(boot), "--data",
         str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


WIFI = 'country=DE\r\nnetwork={\r\n  ssid="depot"\r\n  psk="correct horse"\r\n}\r\n'
KEYS = "# the depot's laptop\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample depot\n"


def test_wifi_and_ssh_keys_go_to_the_data_partition_0600(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    drop(boot, "README.txt", "tracker.toml")
    (boot / "wpa_supplicant.conf").write_text(WIFI, newline="")
    (boot / "authorized_keys").write_text(KEYS)
    done = network(tmp_path, boot)
    assert done.returncode == 0, done.stderr
    wifi = tmp_path / "data" / "network" / "wpa_supplicant.conf"
    keys = tmp_path / "data" / "ssh" / "authorized_keys"
    assert wifi.read_text() == WIFI.replace("\r\n", "\n")  # Windows line ends fixed
    assert keys.read_text() == KEYS
    for path in (wifi, keys):
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    # gone from the card; the tracker's own files are left to the first boot
    assert sorted(p.name for p in boot.iterdir()) == ["README.txt", "tracker.toml"]
    # nothing new on the card: nothing changes
    done = network(tmp_path, boot)
    assert done.returncode == 0 and "no network files" in done.stdout
    assert keys.read_text() == KEYS


def test_new_network_files_replace_the_old(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "authorized_keys").write_text(KEYS)
    assert network(tmp_path, boot).returncode == 0
    (boot / "authorized_keys").write_text("ecdsa-sha2-nistp256 AAAAE2Vj other\n")
    assert network(tmp_path, boot).returncode == 0
    keys = tmp_path / "data" / "ssh" / "authorized_keys"
    assert keys.read_text() == "ecdsa-sha2-nistp256 AAAAE2Vj other\n"
    assert [p.name for p in keys.parent.iterdir()] == ["authorized_keys"]  # no temporary left


def test_a_wrong_network_file_stays_on_the_card_and_says_why(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    header = "-----BEGIN OPENSSH PRIVATE" + " KEY-----"  # someone copied the wrong half
    (boot / "authorized_keys").write_text(f"{header}\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    done = network(tmp_path, boot)
    assert done.returncode == 2 and "holds a private key" in done.stderr
    assert "private key" in (boot / "network-error.txt").read_text()
    assert (boot / "authorized_keys").exists()
    assert not (tmp_path / "data" / "ssh" / "authorized_keys").exists()
    (boot / "authorized_keys").unlink()
    (boot / "wpa_supplicant.conf").write_text('ssid="depot"\n')
    done = network(tmp_path, boot)
    assert done.returncode == 2 and "network={" in done.stderr
    (boot / "wpa_supplicant.conf").write_text(WIFI)
    assert network(tmp_path, boot).returncode == 0
    assert not (boot / "network-error.txt").exists()  # fixed: the message goes too
