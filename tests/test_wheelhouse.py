"""The board's pinned dependencies and the image build scripts' user-facing behaviour (no build)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PINS = REPO / "deploy" / "requirements.lock"
SCRIPTS = ("wheelhouse", "image", "image-test", "test-arm64", "firstboot", "growdata")


def pins() -> dict[str, str]:
    out = {}
    for line in PINS.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = pins()
    for text in deps:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue  # not on bookworm's Python 3.11 (tomli)
        name = req.name.lower()
        assert name in pinned, f"{name} is missing from {PINS.name}"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {req}"


def test_the_pins_are_what_this_checkout_runs_with() -> None:
    """The suite runs against the versions the boards get (scripts/setup installs from PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    for name, pinned in pins().items():
        try:
            have = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed here")
        if have != pinned:
            pytest.skip(f"this .venv has {name} {have}, the boards get {pinned}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_explain_themselves(script: str) -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / script), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) >= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "sparc"], "invalid choice"),
        (["--cert", "/etc/hostname"], "--cert and --key go together"),
        (["--claim", "a.crt", "a.key"], "need --config tracker.toml and --ca"),
        (["--data-mib", "8"], "--data-mib must be at least 32"),
        (["--config", "x.toml", "--ca", "ca.pem", "--cert", "c", "--key", "k"], "no such file"),
    ],
)
def test_image_user_mistakes_are_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "image"), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    if "invalid choice" not in message:
        assert done.stderr.count("\n") == 1, done.stderr


def test_wheelhouse_rejects_an_unknown_architecture() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "wheelhouse"), "--arch", "mips"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_the_image_root_is_read_only_and_the_uart_free() -> None:
    fstab = (REPO / "deploy" / "image" / "fstab").read_text()
    mounts = {f[1]: f for f in (ln.split() for ln in fstab.splitlines()) if f and f[0][0] != "#"}
    assert "ro" in mounts["/"][3].split(",")
    assert mounts["/data"][2] == "ext4" and "rw" in mounts["/data"][3].split(",")
    for path in ("/var/lib/tracker", "/etc/tracker"):
        assert mounts[path][0].startswith("/data/") and "bind" in mounts[path][3]
    text = (REPO / "scripts" / "image").read_text()
    cmdline = re.search(r'^CMDLINE = \(?\s*"(.*)"', text, re.M).group(1)  # type: ignore[union-attr]
    assert " ro " in f" {cmdline} " and "root=LABEL=TRK-ROOT" in cmdline
    assert not re.search(r"console=(serial|ttyS|ttyAMA)", cmdline)


def test_images_wheels_and_keys_are_never_committed() -> None:
    ignored = (REPO / ".gitignore").read_text().split()
    for pattern in ("*.img", "*.whl", "*.key", "*.pem", "/build/"):
        assert pattern in ignored


def test_the_image_kernel_has_the_pi_5_device_tree_and_the_firmware_its_section() -> None:
    text = (REPO / "scripts" / "image").read_text()
    assert 'KERNEL = f"linux-image-arm64/{SUITE}-backports"' in text
    assert '"Raspberry Pi 5": "bcm2712-rpi-5-b.dtb"' in text  # the build stops without it
    custom = (REPO / "deploy" / "image" / "raspi-firmware-custom").read_text().split("\n")
    lines = [ln for ln in custom if ln and not ln.startswith("#")]
    assert lines == ["[pi5]", "device_tree=bcm2712-rpi-5-b.dtb", "[all]"]
    rules = (REPO / "deploy" / "image" / "99-gps.rules").read_text()
    assert 'KERNEL=="ttyS1", SYMLINK+="gps0"' in rules  # Pi 3, 4, Zero 2 W header UART
    assert 'KERNEL=="ttyAMA10", SYMLINK+="gps0"' in rules  # Pi 5 debug UART


def test_the_image_ssh_takes_keys_only_and_has_no_host_key_of_its_own() -> None:
    sshd = (REPO / "deploy" / "image" / "sshd.conf").read_text()
    settings = dict(ln.split(None, 1) for ln in sshd.splitlines() if ln and ln[0] != "#")
    assert settings["PasswordAuthentication"] == "no"
    assert settings["KbdInteractiveAuthentication"] == "no"
    assert settings["AuthorizedKeysFile"].startswith("/data/")
    assert settings["HostKey"].startswith("/data/")  # made on each board, kept on its data
    customize = (REPO / "deploy" / "image" / "customize").read_text()
    assert 'rm -f "$root"/etc/ssh/ssh_host_*' in customize
    unit = (REPO / "deploy" / "image" / "ssh.service.conf").read_text()
    assert "ConditionPathExists=/data/ssh/authorized_keys" in unit  # no keys given: no sshd
