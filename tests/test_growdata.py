"""scripts/growdata: the image's data partition takes the rest of the card (on a plain file)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GROWDATA = REPO / "scripts" / "growdata"
MIB = 1 << 20
SECTORS_PER_MIB = MIB // 512


def image(path: Path, parts: list[tuple[int, int, int]], size_mib: int) -> Path:
    """A sparse disk image with an MBR of (type, start MiB, size MiB) entries, as scripts/image."""
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, 0x7472636B)
    for i, (ptype, start, size) in enumerate(parts):
        entry = 446 + 16 * i
        mbr[entry + 4] = ptype
        struct.pack_into("<II", mbr, entry + 8, start * SECTORS_PER_MIB, size * SECTORS_PER_MIB)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as fh:
        fh.write(mbr)
        fh.truncate(size_mib * MIB)
    return path


def table(path: Path) -> list[tuple[int, int]]:
    """(start, size) in sectors of each partition, as the script left the MBR."""
    mbr = path.read_bytes()[:512]
    out = []
    for i in range(4):
        start, size = struct.unpack_from("<II", mbr, 446 + 16 * i + 8)
        if size:
            out.append((start, size))
    return out


def growdata(disk: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GROWDATA), "--disk", str(disk), *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# the layout of scripts/image: 4 MiB gap, FAT, root, data
LAYOUT = [(0x0C, 4, 196), (0x83, 200, 869), (0x83, 1069, 256)]


def test_a_larger_card_gives_the_data_partition_the_rest(tmp_path: Path) -> None:
    disk = image(tmp_path / "card.img", LAYOUT, 1325)
    assert growdata(disk).stdout.endswith("already reaches the end of the disk\n")
    with open(disk, "r+b") as fh:  # flashed onto a larger card
        fh.truncate(4000 * MIB + 12345)
    done = growdata(disk)
    assert done.returncode == 0, done.stderr
    assert "grown from 256 MiB to 2931 MiB" in done.stdout
    parts = table(disk)
    assert parts[:2] == [(4 * 2048, 196 * 2048), (200 * 2048, 869 * 2048)]  # the others stay
    assert parts[2] == (1069 * 2048, (4000 - 1069) * 2048)  # ends on the last whole MiB
    assert growdata(disk).stdout.endswith("already reaches the end of the disk\n")  # once only
    if shutil.which("sfdisk"):  # the table reads back as a valid one
        out = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True)
        got = json.loads(out.stdout)["partitiontable"]["partitions"]
        assert [(p["start"], p["size"]) for p in got] == parts


def test_only_the_last_partition_grows(tmp_path: Path) -> None:
    disk = image(tmp_path / "card.img", LAYOUT, 2000)
    done = growdata(disk, "--partition", "2")
    assert done.returncode == 1 and "partition 3 follows partition 2" in done.stderr
    assert table(disk)[1] == (200 * 2048, 869 * 2048)


def test_a_few_mib_more_are_not_worth_a_write(tmp_path: Path) -> None:
    disk = image(tmp_path / "card.img", LAYOUT, 1325 + 7)
    before = disk.read_bytes()[:512]
    assert growdata(disk).returncode == 0
    assert disk.read_bytes()[:512] == before


def test_what_is_not_an_mbr_is_left_alone(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(4 * MIB))
    done = growdata(disk)
    assert done.returncode == 1 and "no MBR partition table" in done.stderr
    assert disk.read_bytes() == bytes(4 * MIB)
    gpt = image(tmp_path / "gpt.img", [(0xEE, 0, 100)], 200)
    done = growdata(gpt, "--partition", "1")
    assert done.returncode == 1 and "GPT protective" in done.stderr


@pytest.mark.parametrize("number", ["0", "4"])
def test_a_missing_partition_is_named(tmp_path: Path, number: str) -> None:
    disk = image(tmp_path / "card.img", LAYOUT, 2000)
    done = growdata(disk, "--partition", number)
    assert done.returncode == 1 and f"partition {number}" in done.stderr


def test_the_image_grows_its_data_partition_and_file_system_at_boot() -> None:
    unit = (REPO / "deploy" / "image" / "tracker-growdata.service").read_text()
    assert "Before=systemd-fsck@dev-disk-by\\x2dlabel-TRK\\x2dDATA.service data.mount" in unit
    fstab = (REPO / "deploy" / "image" / "fstab").read_text()
    data = next(ln.split() for ln in fstab.splitlines() if ln.startswith("LABEL=TRK-DATA"))
    assert "x-systemd.growfs" in data[3].split(",")
    customize = (REPO / "deploy" / "image" / "customize").read_text()
    assert "tracker-growdata.service" in customize and "scripts/growdata" in customize
