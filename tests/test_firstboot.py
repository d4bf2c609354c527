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
