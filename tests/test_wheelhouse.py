"""The board's pinned dependencies and the image build scripts' user-facing behaviour (no build)."""

from __future__ import annotations

import fnmatch
import re
import shutil
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


IMAGE_DIR = REPO / "deploy" / "image"
# what linux-image-arm64 7.3 pulls from trixie-backports (and must: bookworm's linux-base is 4.12)
KERNEL_PACKAGES = (
    "linux-base",
    "linux-image-arm64",
    "linux-base-arm64",
    "linux-modules-arm64",
    "linux-image-7.3.4+deb13-arm64",
    "linux-base-7.3.4+deb13-arm64",
    "linux-binary-7.3.4+deb13-arm64",
    "linux-modules-7.3.4+deb13-arm64",
)


def apt_stanzas(text: str) -> list[dict[str, str]]:
    """apt_preferences(5) records, comments left out."""
    records = []
    for block in re.split(r"\n\s*\n", text):
        fields = dict(ln.split(":", 1) for ln in block.splitlines() if ln.strip() and ln[0] != "#")
        if fields:
            records.append({k.strip(): v.strip() for k, v in fields.items()})
    return records


def test_the_image_takes_the_kernel_and_nothing_else_from_trixie_backports() -> None:
    text = (REPO / "scripts" / "image").read_text()
    assert 'KERNEL_SUITE = "trixie-backports"' in text and 'KERNEL = "linux-image-arm64"' in text
    assert 'f"deb {MIRROR} {KERNEL_SUITE} main"' in text
    assert "{SUITE}-backports" not in text  # bookworm-backports' 6.12 is gone
    assert '"$1/etc/apt/preferences.d/tracker-kernel"' in text  # before apt reads the archives
    kernel, rest = apt_stanzas((IMAGE_DIR / "apt-preferences").read_text())
    assert kernel["Pin"] == rest["Pin"] == "release n=trixie-backports"
    assert int(kernel["Pin-Priority"]) > 500  # above bookworm's own packages
    assert rest["Package"] == "*" and int(rest["Pin-Priority"]) < 0  # never, for the rest
    patterns = kernel["Package"].split()
    for name in KERNEL_PACKAGES:
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name
    for name in (
        "firmware-brcm80211",
        "linux-headers-7.3.4+deb13-arm64",
        "linux-image-arm64-dbg",
        "linux-image-7.3.4+deb13-arm64-dbg",
        "linux-libc-dev",
        "raspi-firmware",
        "systemd",
    ):
        assert not any(fnmatch.fnmatchcase(name, p) for p in patterns), name


def test_the_kernel_reaches_boot_with_bookworms_run_parts(tmp_path: Path) -> None:
    text = (REPO / "scripts" / "image").read_text()
    # linux-base's second hook folder is left out (bookworm's run-parts takes one) ...
    assert '"--dpkgopt=path-exclude=/usr/share/kernel/postinst.d",' in text
    assert '"--dpkgopt=path-exclude=/usr/share/kernel/postinst.d/*",' in text
    # ... and the hook that does its work runs first in /etc/kernel/postinst.d
    hook = "/etc/kernel/postinst.d/00-tracker-boot"
    assert f'"$1{hook}"' in text
    assert sorted([Path(hook).name, "initramfs-tools", "z50-raspi-firmware"])[0] == Path(hook).name
    version = "7.3.4+deb13-arm64"
    modules = tmp_path / "usr" / "lib" / "modules" / version
    modules.mkdir(parents=True)
    (tmp_path / "boot").mkdir()
    (modules / "vmlinuz").write_bytes(b"kernel")
    (modules / "config").write_text("CONFIG_X=y\n")

    def hook_run(params: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "DPKG_ROOT": str(tmp_path), "DEB_MAINT_PARAMS": params}
        subprocess.run(
            ["sh", str(IMAGE_DIR / "kernel-postinst"), version, f"/boot/vmlinuz-{version}"],
            env=env,
            check=True,
        )

    hook_run("abort-upgrade")
    assert not list((tmp_path / "boot").iterdir())
    hook_run("configure")
    kernel = tmp_path / "boot" / f"vmlinuz-{version}"
    assert kernel.read_bytes() == b"kernel"
    assert kernel.stat().st_ino == (modules / "vmlinuz").stat().st_ino  # a link, not 50 MB more
    assert (tmp_path / "boot" / f"config-{version}").read_text() == "CONFIG_X=y\n"


def test_the_root_keeps_only_the_raspberry_pi_device_trees() -> None:
    text = (REPO / "scripts" / "image").read_text()
    opts = re.findall(r'"--dpkgopt=path-(exclude|include)=(/usr/lib/modules/[^"]*)"', text)
    assert opts == [  # in this order: dpkg's last matching option wins
        ("exclude", "/usr/lib/modules/*/dtb/*"),
        ("include", "/usr/lib/modules/*/dtb/broadcom"),
        ("include", "/usr/lib/modules/*/dtb/broadcom/*"),
    ]

    def kept(path: str) -> bool:
        keep = True
        for kind, pattern in opts:
            if fnmatch.fnmatchcase(path, pattern):  # dpkg's * also matches "/"
                keep = kind == "include"
        return keep

    base = "/usr/lib/modules/7.3.4+deb13-arm64"
    assert kept(f"{base}/dtb/broadcom/bcm2712-rpi-5-b.dtb")
    assert kept(f"{base}/dtb/broadcom/bcm2837-rpi-zero-2-w.dtb")
    assert not kept(f"{base}/dtb/rockchip/rk3588-rock-5b.dtb")
    assert kept(f"{base}/kernel/drivers/net/ethernet/cadence/macb.ko.xz")  # the Pi 5's Ethernet
    assert kept(f"{base}/vmlinuz") and kept(f"{base}/modules.order")


def test_the_pi_5_firmware_loads_its_tree_on_both_steppings() -> None:
    text = (REPO / "scripts" / "image").read_text()
    assert '"Raspberry Pi 5": "bcm2712-rpi-5-b.dtb"' in text  # the build stops without them
    assert '"Raspberry Pi 5 (D0 stepping)": "bcm2712-d-rpi-5-b.dtb"' in text
    assert 'PI5_D0_OVERLAY = "overlays/bcm2712d0.dtbo"' in text
    custom = (IMAGE_DIR / "raspi-firmware-custom").read_text().splitlines()
    # no device_tree= line: the firmware's own choice, bcm2712-rpi-5-b.dtb plus the D0 overlay
    assert [ln for ln in custom if ln.strip() and not ln.startswith("#")] == []


C0_BASE = """/dts-v1/;
/ {
\tsoc@107c000000 {
\t\tserial@7d001000 { interrupts = <0x00 0x79 0x04>; };
\t\tpinctrl@7d504100 { compatible = "brcm,bcm2712c0-pinctrl"; reg = <0x7d504100 0x30>; };
\t\tpinctrl@7d510700 { compatible = "brcm,bcm2712c0-aon-pinctrl"; reg = <0x7d510700 0x20>; };
\t\tgpio@7d517c00 { brcm,gpio-bank-widths = <0x11 0x06>; };
\t};
};
"""


@pytest.mark.skipif(
    not (shutil.which("dtc") and shutil.which("fdtoverlay") and shutil.which("fdtget")),
    reason="needs device-tree-compiler",
)
def test_the_d0_overlay_makes_the_c0_nodes_into_d0_ones(tmp_path: Path) -> None:
    """The build compares whole trees (Debian's); here the nodes it changes, on a small base."""
    (tmp_path / "c0.dts").write_text(C0_BASE)
    dtbo, base, out = tmp_path / "d0.dtbo", tmp_path / "c0.dtb", tmp_path / "out.dtb"
    subprocess.run(["dtc", "-q", "-o", str(base), str(tmp_path / "c0.dts")], check=True)
    src = IMAGE_DIR / "bcm2712d0.dtso"
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dtbo), str(src)], check=True)
    subprocess.run(["fdtoverlay", "-i", str(base), "-o", str(out), str(dtbo)], check=True)

    def get(node: str, prop: str, kind: str = "x") -> str:
        cmd = ["fdtget", "-t", kind, str(out), f"/soc@107c000000/{node}", prop]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    assert get("serial@7d001000", "interrupts") == "0 78 4"  # the debug UART, ttyAMA10
    assert get("pinctrl@7d504100", "compatible", "s") == "brcm,bcm2712d0-pinctrl"
    assert get("pinctrl@7d504100", "reg") == "7d504100 20"
    assert get("pinctrl@7d510700", "compatible", "s") == "brcm,bcm2712d0-aon-pinctrl"
    assert get("pinctrl@7d510700", "reg") == "7d510700 1c"
    assert get("gpio@7d517c00", "brcm,gpio-bank-widths") == "f 6"


def test_the_pi_5_wifi_finds_its_nvram_file(tmp_path: Path) -> None:
    customize = (IMAGE_DIR / "customize").read_text()
    m = re.search(r"^brcm=.*?5-model-b\.txt\"\n", customize, re.M | re.S)
    assert m, "customize no longer links the Pi 5's NVRAM file"
    brcm = tmp_path / "usr" / "lib" / "firmware" / "brcm"
    brcm.mkdir(parents=True)
    step = ["bash", "-euc", m.group(0), "customize", str(tmp_path)]
    env = {"PATH": "/usr/bin:/bin", "root": str(tmp_path)}
    # without the Pi 4 B file (a firmware package that moved it) the build stops
    assert subprocess.run(step, env=env, capture_output=True).returncode != 0
    (brcm / "brcmfmac43455-sdio.raspberrypi,4-model-b.txt").write_text("nvram\n")
    subprocess.run(step, env=env, check=True)
    link = brcm / "brcmfmac43455-sdio.raspberrypi,5-model-b.txt"
    assert (
        link.is_symlink() and str(link.readlink()) == "brcmfmac43455-sdio.raspberrypi,4-model-b.txt"
    )
    assert link.read_text() == "nvram\n"


def test_gps0_is_the_boards_uart_and_a_usb_receiver_is_named_in_the_config() -> None:
    rules = (IMAGE_DIR / "99-gps.rules").read_text()
    active = [ln for ln in rules.splitlines() if ln.strip() and not ln.startswith("#")]
    assert active == [
        'KERNEL=="ttyS1", SYMLINK+="gps0", GROUP="dialout", MODE="0660"',  # Pi 3, 4, Zero 2 W
        'KERNEL=="ttyAMA10", SYMLINK+="gps0", GROUP="dialout", MODE="0660"',  # Pi 5 debug UART
    ]  # no ttyACM/ttyUSB rule: a USB modem's port must not become the receiver
    card = " ".join((IMAGE_DIR / "README.txt").read_text().split())
    assert 'url = "/dev/ttyACM0"' in card and "Pi 5" in card


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
