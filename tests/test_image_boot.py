"""The board image, booted: scripts/image's output in QEMU's arm64 virt machine.

Skipped unless TRACKER_IMAGE names an image. The image is flashed onto a larger "card" (a copy
made 1 GiB longer), and the operator's first-boot files go on its FAT partition, exactly as on
an SD card: the config, the credentials and an SSH key. The guest's GPS is its UART, fed with a
recorded drive; its broker is Mosquitto with mutual TLS on this machine (10.0.2.2 to the guest).
The power is cut four times (QEMU killed and started again on the same disk): during the first
boot's provisioning, in the middle of reporting, just as the board reports again after a cut,
and early in a boot. After each the board must boot and report again, with every seq from 1 up
at the broker (duplicates allowed, a seq never reused for another fix). At the end: the data
partition and its file system fill the card, the root is read-only, the secrets are off the
FAT partition.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.daemon import toml_text
from benchkit.pki import QEMU_HOST, THING_NAME, Pki
from benchkit.subscriber import Subscriber
from support.qemu import Guest, NmeaFeed, fat_get, fat_list, fat_put, partitions

IMAGE = os.environ.get("TRACKER_IMAGE", "")
RECORDING = Path(__file__).parent / "data" / "nmea" / "nmeaparser" / "NmeaSampleData.txt"
# software emulation: the first boot includes provisioning and the tracker's first start
BOOT_TIMEOUT = float(os.environ.get("TRACKER_IMAGE_BOOT_TIMEOUT", "900"))
CARD_EXTRA_MIB = 1024  # the card is this much larger than the image
MIB = 1 << 20
# the device tree of every supported board, loaded by the firmware from the FAT partition
BOARD_DTBS = (
    "bcm2837-rpi-3-b.dtb",
    "bcm2837-rpi-3-b-plus.dtb",
    "bcm2837-rpi-zero-2-w.dtb",
    "bcm2711-rpi-4-b.dtb",
    "bcm2711-rpi-400.dtb",
    "bcm2712-rpi-5-b.dtb",
    "bcm2712-d-rpi-5-b.dtb",
)
PI5_D0_OVERLAY = "overlays/bcm2712d0.dtbo"  # the Pi 5 firmware applies it on the D0 stepping
PI5_NVRAM = "brcmfmac43455-sdio.raspberrypi,5-model-b.txt"  # the Pi 5 Wi-Fi's, not in bookworm
# what the Pi 3 and 4 firmware needs besides config.txt (the Pi 5 has its own in EEPROM)
FIRMWARE = ("bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat")

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(not IMAGE, reason="set TRACKER_IMAGE=IMG (scripts/image-test IMG)"),
]


def board_config(port: int) -> str:
    return toml_text(
        {
            "device": {"thing_name": THING_NAME, "set_clock": False},
            "aws": {"endpoint": QEMU_HOST, "port": port, "keepalive_s": 30},
            # the recording is from 2005: keep its dates
            "gps": {"url": "/dev/ttyAMA0", "detect_baud": False, "date_floor": "1999-08-22"},
            # report often, each fix in its own message, so a few minutes of driving make many
            # messages and a power cut hits the board in the middle of reporting
            "policy": {
                "min_interval_s": 1,
                "distance_m": 10,
                "max_interval_s": 10,
                "max_delay_s": 0,
            },
        },
        "scripts/image-test: the operator's tracker.toml",
    )


def complete_to(sub: Subscriber, seq: int) -> bool:
    """Every seq from 1 up to at least `seq` arrived (backlog batches may follow live fixes)."""
    top, missing = consecutive(sub)
    return top >= seq and not missing


def consecutive(sub: Subscriber) -> tuple[int, set[int]]:
    """The highest seq received and the seqs missing below it."""
    seqs = set(sub.seqs())
    top = max(seqs, default=0)
    return top, set(range(1, top + 1)) - seqs


def no_seq_reused(sub: Subscriber) -> None:
    """A seq that arrived twice is the same fix both times: the spool survived the cut."""
    times: dict[int, set[object]] = {}
    for rec in sub.records():
        times.setdefault(rec.seq, set()).add(rec.fix.time)
    reused = sorted(seq for seq, t in times.items() if len(t) > 1)
    assert not reused, f"seqs reused for another fix: {reused[:20]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ext4_bytes(disk: Path, offset: int) -> int:
    """The size of the ext4 file system at `offset` in the disk file, from its superblock."""
    with open(disk, "rb") as fh:
        fh.seek(offset + 1024)
        sb = fh.read(1024)
    assert sb[56:58] == b"\x53\xef", "no ext4 superblock on the data partition"
    blocks_lo, log_block = struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 24)[0]
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0]
    return int((blocks_hi << 32 | blocks_lo) * (1024 << log_block))


@pytest.mark.timeout(120)
def test_the_boot_partition_boots_every_board(tmp_path: Path) -> None:
    image = Path(IMAGE)
    names = set(fat_list(image))
    assert not [n for n in (*BOARD_DTBS, *FIRMWARE) if n not in names], sorted(names)
    config = fat_get(image, "config.txt", tmp_path / "config.txt").read_text()
    lines = [ln.strip() for ln in config.splitlines() if ln.strip() and ln[0] != "#"]
    kernel = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("kernel="))
    initrd = next(ln.split()[1] for ln in lines if ln.startswith("initramfs "))
    assert {kernel, initrd} <= names  # every board loads these, the Pi 5 included
    assert {"enable_uart=1", "upstream_kernel=1", "arm_64bit=1"} <= set(lines)
    # no device_tree= and no board section: every board, each Pi 5 stepping too, loads the tree
    # the firmware picks by itself (the Pi 5: bcm2712-rpi-5-b.dtb, on D0 with the overlay)
    assert not [ln for ln in lines if ln.startswith(("device_tree", "["))], lines
    overlay = fat_get(image, PI5_D0_OVERLAY, tmp_path / "bcm2712d0.dtbo")
    assert overlay.read_bytes()[:4] == b"\xd0\x0d\xfe\xed"  # a flattened device tree
    d0 = "overlay checked"
    if shutil.which("dtc") and shutil.which("fdtoverlay"):  # the C0 tree + overlay = the D0 tree

        def dts(dtb: Path) -> str:
            cmd = ["dtc", "-q", "-s", "-I", "dtb", "-O", "dts", str(dtb)]
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        c0 = fat_get(image, "bcm2712-rpi-5-b.dtb", tmp_path / "c0.dtb")
        merged = tmp_path / "merged.dtb"
        cmd = ["fdtoverlay", "-i", str(c0), "-o", str(merged), str(overlay)]
        subprocess.run(cmd, check=True)
        assert dts(merged) == dts(fat_get(image, "bcm2712-d-rpi-5-b.dtb", tmp_path / "d0.dtb"))
        d0 = "C0 tree + D0 overlay = D0 tree"
    cmdline = fat_get(image, "cmdline.txt", tmp_path / "cmdline.txt").read_text()
    assert " ro " in f" {cmdline} " and not re.search(r"console=(ttyS|ttyAMA|serial)", cmdline)
    print(
        f"\nimage-test: boot partition: {len(names)} files, {kernel}, all board device trees, {d0}"
    )


@pytest.mark.timeout(8 * BOOT_TIMEOUT)
def test_image_boots_grows_provisions_reports_and_survives_power_cuts(tmp_path: Path) -> None:
    image = Path(IMAGE)
    assert image.is_file(), f"TRACKER_IMAGE={IMAGE} is not a file"
    for tool in ("qemu-system-aarch64", "mcopy", "sfdisk"):
        assert shutil.which(tool), (
            f"{tool} is missing: apt-get install qemu-system-arm mtools fdisk"
        )
    pki = Pki(tmp_path / "pki")
    disk = tmp_path / "board.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    with open(disk, "r+b") as fh:  # flashed onto a larger card
        fh.truncate(image.stat().st_size + CARD_EXTRA_MIB * MIB)

    broker = Broker(pki, tmp_path / "broker", persistence=True)
    feed = NmeaFeed(RECORDING, speed=1.0)
    ssh = shutil.which("ssh") and shutil.which("ssh-keygen")
    guest = Guest(disk, tmp_path, feed.port, ssh_port=free_port() if ssh else 0)
    rng = random.Random(os.environ.get("TRACKER_IMAGE_SEED", "12"))
    broker.start()
    sub = Subscriber(broker).start()
    up = guest.running
    cuts: list[str] = []

    def recovered(name: str, at: float, count: int, want: int) -> None:
        """After a cut: the board reports again and every seq up to `want` is there."""
        assert sub.wait_until(lambda: sub.count() > count or not up(), BOOT_TIMEOUT), (
            f"no report after the cut {name}: " + guest.failure()
        )
        again = time.monotonic() - at
        assert sub.wait_until(lambda: complete_to(sub, want) or not up(), BOOT_TIMEOUT), (
            f"after the cut {name}: seqs missing {sorted(consecutive(sub)[1])[:20]}; "
            + guest.failure()
        )
        assert up(), guest.failure()
        no_seq_reused(sub)
        top, _ = consecutive(sub)
        cuts.append(f"{name}: reporting again {again:.0f} s after power-on, seqs 1..{top} all in")

    try:
        config = tmp_path / "tracker.toml"
        config.write_text(board_config(broker.port))
        files = {
            "tracker.toml": config,
            "device.pem.crt": pki.client.cert,
            "device.pem.key": pki.client.key,
            "root-ca.pem": pki.ca,
        }
        if ssh:
            key = tmp_path / "id_ed25519"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", str(key)],
                check=True,
            )
            files["authorized_keys"] = key.with_suffix(".pub")
        fat_put(disk, files)
        guest.cmd[guest.cmd.index("-append") + 1] += " systemd.journald.forward_to_console=1"
        guest.start()

        # cut 1: during the first boot, while tracker-firstboot installs the credentials
        pattern = r"Install the tracker's config|tracker-firstboot\["
        seen = guest.wait_console(pattern, BOOT_TIMEOUT)
        assert seen is not None, guest.failure()
        time.sleep(rng.uniform(0.0, 3.0))
        early_report = sub.count()
        guest.power_cut()
        on = guest.started
        assert sub.wait_until(lambda: sub.count() > early_report or not up(), BOOT_TIMEOUT), (
            guest.failure()
        )
        first_fix = time.monotonic() - on
        assert sub.wait_until(lambda: complete_to(sub, 10) or not up(), 300), guest.failure()
        no_seq_reused(sub)
        cuts.append(
            f"1 during first-boot provisioning ({seen:.0f} s after power-on, "
            f"{early_report} reports before it): first fix {first_fix:.0f} s after power-on again"
        )

        # cut 2: in the middle of reporting (the spool writes every fix)
        target = sub.count() + rng.randint(3, 8)
        assert sub.wait_until(lambda: sub.count() >= target or not up(), 300), guest.failure()
        top2, count2 = consecutive(sub)[0], sub.count()
        guest.power_cut()
        on2 = guest.started
        # cut 3: just as the board reports again after cut 2 (the backlog in flight)
        assert sub.wait_until(lambda: sub.count() > count2 or not up(), BOOT_TIMEOUT), (
            guest.failure()
        )
        cuts.append(
            f"2 mid-reporting (at seq {top2}): reporting again "
            f"{time.monotonic() - on2:.0f} s after power-on"
        )
        time.sleep(rng.uniform(0.0, 2.0))
        top3, count3 = consecutive(sub)[0], sub.count()
        guest.power_cut()
        recovered(f"3 as it reported again (at seq {top3})", guest.started, count3, top3 + 10)

        # cut 4 mid-reporting, and cut 5 early in the next boot (under emulation the kernel
        # takes about 13 s, then systemd checks and mounts /data by about 40 s)
        top4, count4 = consecutive(sub)[0], sub.count()
        guest.power_cut()
        early = rng.uniform(10.0, 45.0)
        time.sleep(early)
        guest.power_cut()
        recovered(
            f"4 mid-reporting (at seq {top4}) and 5 {early:.0f} s into the next boot",
            guest.started,
            count4,
            top4 + 10,
        )

        top, missing = consecutive(sub)
        assert missing == set(), f"seqs lost across the power cuts: {sorted(missing)[:20]}"
        no_seq_reused(sub)

        inside = ""
        if ssh:  # the operator's way in: key only, the root read-only, the data partition grown
            done = subprocess.run(
                ["ssh", "-i", str(key), "-p", str(guest.ssh_port), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=60", "root@127.0.0.1",
                 "uname -r; readlink /usr/lib/firmware/brcm/" + PI5_NVRAM + "; "
                 "findmnt -no OPTIONS /; df -B1M --output=size,avail /data | tail -1; "
                 "stat -c '%a %U %n' /etc/tracker/device.pem.key /data/ssh/authorized_keys"],
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            release, nvram, opts, df, *modes = done.stdout.splitlines()
            assert nvram == "brcmfmac43455-sdio.raspberrypi,4-model-b.txt", nvram  # Pi 5 Wi-Fi
            assert "ro" in opts.split(","), opts
            assert modes == [
                "600 tracker /etc/tracker/device.pem.key",
                "600 root /data/ssh/authorized_keys",
            ], modes
            size, avail = df.split()
            inside = f"; in the guest (Linux {release}) /data is {size} MiB with {avail} MiB free"

        guest.command("quit")
        guest.proc.wait(timeout=30)  # type: ignore[union-attr]
        # the data partition reaches the end of the card and its file system fills it
        parts = partitions(disk)
        end = (parts[2]["start"] + parts[2]["size"]) * 512
        assert disk.stat().st_size - end < MIB, (end, disk.stat().st_size)
        fs = ext4_bytes(disk, parts[2]["start"] * 512)
        assert fs > parts[2]["size"] * 512 - 8 * MIB, (fs, parts[2])
        # the first boot took the secrets off the FAT partition and they stay off
        left = fat_list(disk)
        assert not set(files) & set(left), left
        assert not {"tracker-error.txt", "network-error.txt"} & set(left), left
        dups = sum(sub.seqs().values()) - len(sub.seqs())
        report = [
            f"image {image.stat().st_size // MIB} MiB on a card {CARD_EXTRA_MIB} MiB larger: "
            f"data partition {parts[2]['size'] // 2048} MiB, file system {fs // MIB} MiB{inside}",
            f"boot to first fix {first_fix:.0f} s (first boot, after cut 1)",
            *(f"power cut {c}" for c in cuts),
            f"seqs 1..{top} all received ({dups} duplicates); {feed.sent} NMEA lines fed",
        ]
        print("\n" + "\n".join(f"image-test: {line}" for line in report))
        (tmp_path / "report.json").write_text(json.dumps(report, indent=1))
    finally:
        (tmp_path / "console.copy.log").write_text(guest.console_text())
        guest.stop()
        feed.close()
        sub.stop()
        broker.close()
