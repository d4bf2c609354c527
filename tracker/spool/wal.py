"""Read an SQLite write-ahead log without SQLite: would opening it discard committed transactions?

SQLite's recovery keeps the frames up to the last commit frame before the first frame that fails
its checksum, and silently drops everything after that. A torn last transaction (a power cut in
the middle of a commit) is expected and harmless; a committed transaction after the break is not:
it means bytes in the middle of the log were damaged and the commits behind them are lost.
Format: https://www.sqlite.org/fileformat2.html#walformat. Standard library only.
"""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC_LE = 0x377F0682  # checksum words are little-endian
MAGIC_BE = 0x377F0683  # checksum words are big-endian
HEADER = 32
FRAME_HEADER = 24
MASK = 0xFFFFFFFF
WAL_INDEX_VERSION = 3007000
WAL_INDEX_BYTES = 100  # two copies of the 48-byte index header, then nBackfill (native order)


def checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continued from (s0, s1)."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & MASK
        s1 = (s1 + words[i + 1] + s0) & MASK
    return s0, s1


def wal_damage(wal: Path, page_size: int) -> str | None:
    """Why opening `wal` would lose committed transactions, or None when it would not.

    `page_size` is the database's, used when the log's own header cannot be trusted.
    """
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < HEADER:
        return None
    magic, _version, size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:HEADER])
    size = 65536 if size == 1 else size
    order = {MAGIC_LE: "<", MAGIC_BE: ">"}.get(magic)
    good_size = 512 <= size <= 65536 and size & (size - 1) == 0
    if order is None or not good_size or checksum(data[:24], 0, 0, order) != (c1, c2):
        if len(data) >= HEADER + FRAME_HEADER + page_size:
            return f"the header of {wal.name} is damaged and the log holds frames"
        return None
    frame = FRAME_HEADER + size
    count = (len(data) - HEADER) // frame
    s = (c1, c2)
    i = 0
    while i < count:  # the frames SQLite accepts
        at = HEADER + i * frame
        pgno, _commit, f1, f2, k1, k2 = struct.unpack(">6I", data[at : at + FRAME_HEADER])
        if pgno == 0 or (f1, f2) != (salt1, salt2):
            break
        s = checksum(data[at : at + 8] + data[at + FRAME_HEADER : at + frame], *s, order)
        if s != (k1, k2):
            break
        i += 1
    for j in range(i + 1, count):  # a commit that verifies on its own after the break is lost
        at = HEADER + j * frame
        pgno, commit, f1, f2, k1, k2 = struct.unpack(">6I", data[at : at + FRAME_HEADER])
        if pgno == 0 or commit == 0 or (f1, f2) != (salt1, salt2):
            continue
        p0, p1 = struct.unpack(">2I", data[at - frame + 16 : at - frame + 24])  # stored sum
        if checksum(data[at : at + 8] + data[at + FRAME_HEADER : at + frame], p0, p1, order) == (
            k1,
            k2,
        ):
            return f"{wal.name} is damaged at frame {i + 1}, committed frame {j + 1} lies after it"
    return None


def unbackfilled(shm: Path) -> int:
    """Frames the WAL index says are committed but not yet copied into the database.

    After a crash the index (-shm) outlives the process; a clean close by any connection deletes
    it together with the WAL. So a WAL that is missing while its index counts such frames was
    lost with committed transactions in it. 0 when the index is missing or not understood.
    """
    try:
        with open(shm, "rb") as f:
            head = f.read(WAL_INDEX_BYTES)
    except OSError:
        return 0
    if len(head) < WAL_INDEX_BYTES:
        return 0
    version, _unused, _change, is_init = struct.unpack("=3IB", head[:13])
    if version != WAL_INDEX_VERSION or not is_init or head[:48] != head[48:96]:
        return 0
    (mx_frame,) = struct.unpack("=I", head[16:20])
    (backfill,) = struct.unpack("=I", head[96:100])
    return max(0, int(mx_frame) - int(backfill))


def db_page_size(db: Path) -> int:
    """The page size in a database file's header; 4096 when it cannot be read."""
    try:
        with open(db, "rb") as f:
            head = f.read(18)
    except OSError:
        return 4096
    if len(head) < 18 or not head.startswith(b"SQLite format 3\0"):
        return 4096
    size = int.from_bytes(head[16:18], "big")
    return 65536 if size == 1 else size if size >= 512 else 4096
