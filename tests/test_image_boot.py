"""The board image, booted: scripts/image's output in QEMU's arm64 virt machine.

Skipped unless TRACKER_IMAGE names an image. The operator's first-boot files go on a copy's FAT
partition, exactly as on an SD card; the guest's GPS is its UART, fed with a recorded drive;
its broker is Mosquitto with mutual TLS on this machine (10.0.2.2 to the guest). Passes when the
recorded fixes arrive with consecutive seq, and again after a power cut (QEMU system_reset) in
the middle of reporting: nothing lost, the spool carried on where it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.daemon import toml_text
from benchkit.pki import QEMU_HOST, THING_NAME, Pki
from benchkit.subscriber import Subscriber
from support.qemu import Guest, NmeaFeed, fat_list, fat_put

IMAGE = os.environ.get("TRACKER_IMAGE", "")
RECORDING = Path(__file__).parent / "data" / "nmea" / "nmeaparser" / "NmeaSampleData.txt"
# software emulation: the first boot includes provisioning and the tracker's first start
BOOT_TIMEOUT = float(os.environ.get("TRACKER_IMAGE_BOOT_TIMEOUT", "900"))

pytestmark = [
    pytest.mark.image,
    pytest.mark.timeout(3 * BOOT_TIMEOUT + 600),
    pytest.mark.skipif(not IMAGE, reason="set TRACKER_IMAGE=IMG (scripts/image-test IMG)"),
]


def board_config(port: int) -> str:
    return toml_text(
        {
            "device": {"thing_name": THING_NAME, "set_clock": False},
            "aws": {"endpoint": QEMU_HOST, "port": port, "keepalive_s": 30},
            # the recording is from 2005: keep its dates
            "gps": {"url": "/dev/ttyAMA0", "detect_baud": False, "date_floor": "1999-08-22"},
            # report often, so a few minutes of driving make many messages
            "policy": {"min_interval_s": 1, "distance_m": 10, "max_interval_s": 10},
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


def test_image_boots_provisions_reports_and_survives_a_power_cut(tmp_path: Path) -> None:
    image = Path(IMAGE)
    assert image.is_file(), f"TRACKER_IMAGE={IMAGE} is not a file"
    for tool in ("qemu-system-aarch64", "mcopy", "sfdisk"):
        assert shutil.which(tool), (
            f"{tool} is missing: apt-get install qemu-system-arm mtools fdisk"
        )
    pki = Pki(tmp_path / "pki")
    disk = tmp_path / "board.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)

    broker = Broker(pki, tmp_path / "broker", persistence=True)
    feed = NmeaFeed(RECORDING, speed=1.0)
    guest = Guest(disk, tmp_path, feed.port)
    broker.start()
    sub = Subscriber(broker).start()
    try:
        config = tmp_path / "tracker.toml"
        config.write_text(board_config(broker.port))
        fat_put(
            disk,
            {
                "tracker.toml": config,
                "device.pem.crt": pki.client.cert,
                "device.pem.key": pki.client.key,
                "root-ca.pem": pki.ca,
            },
        )
        guest.cmd[guest.cmd.index("-append") + 1] += " systemd.journald.forward_to_console=1"
        guest.start()

        # first boot: provisioning from the FAT partition, then fixes at the broker
        up = guest.running
        assert sub.wait_until(lambda: sub.count() >= 1 or not up(), BOOT_TIMEOUT), guest.failure()
        assert up(), guest.failure()
        first_fix = time.monotonic() - guest.started
        assert sub.wait_until(lambda: complete_to(sub, 10) or not up(), 300), guest.failure()
        before, missing = consecutive(sub)
        assert missing == set()

        # the power cut, in the middle of reporting; the board boots again from the same card
        mark = len(guest.console_text())
        guest.command("system_reset")
        cut = time.monotonic()
        assert sub.wait_until(lambda: complete_to(sub, before + 10) or not up(), BOOT_TIMEOUT), (
            guest.console_text()[mark:][-3000:]
        )
        assert up(), guest.failure()
        after_cut = time.monotonic() - cut
        top, missing = consecutive(sub)
        assert missing == set(), f"seqs lost across the power cut: {sorted(missing)[:20]}"
        # the spool survived the cut: a seq that arrived twice is the same fix both times
        times: dict[int, set[object]] = {}
        for rec in sub.records():
            times.setdefault(rec.seq, set()).add(rec.fix.time)
        assert all(len(t) == 1 for t in times.values()), "a seq was reused for another fix"
        # the first boot took the secrets off the FAT partition and they stay off
        guest.command("quit")
        guest.proc.wait(timeout=30)  # type: ignore[union-attr]
        left = fat_list(disk)
        assert not {"tracker.toml", "device.pem.key", "device.pem.crt"} & set(left), left
        assert "tracker-error.txt" not in left
        dups = sum(sub.seqs().values()) - len(sub.seqs())
        print(
            f"\nimage-test: boot to first fix {first_fix:.0f} s; power cut at seq {before}, "
            f"reporting again {after_cut:.0f} s later; seqs 1..{top} all received "
            f"({dups} duplicates); {feed.sent} NMEA lines fed"
        )
    finally:
        (tmp_path / "console.copy.log").write_text(guest.console_text())
        guest.stop()
        feed.close()
        sub.stop()
        broker.close()
