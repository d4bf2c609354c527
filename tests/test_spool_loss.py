"""Whatever happens to the spool's files, no seq is reused and every detectable loss is reported.

The fault campaign's cases: the database truncated to 0 bytes, the WAL deleted or damaged after a
SIGKILL, the database replaced by an older copy, a really full disk with either drop policy.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.spool_child import parse, run_until_killed

from tracker.core.errors import SpoolError
from tracker.core.fix import Fix
from tracker.spool.files import SEQ_BLOCK
from tracker.spool.store import Spool

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def fix(i: int) -> Fix:
    return Fix(T0 + timedelta(seconds=i), 47.0 + i * 1e-5, 8.5, 420.0, 1.5, 90.0, 3, 9, 0.9)


def rows(path: Path, table: str = "fix") -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute(f"SELECT seq FROM {table} ORDER BY seq")]
    finally:
        db.close()


def put_many(spool: Spool, start: int, n: int) -> list[int]:
    out = []
    for i in range(start, start + n):
        rec = spool.put(fix(i))
        assert rec is not None
        out.append(rec.seq)
    return out


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


# --- case 4: a zero-length or lost file -----------------------------------------------------------


def test_db_truncated_to_zero_bytes_reports_the_backlog_lost(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(path, ack_batch=1) as spool:
        used = put_many(spool, 0, 40)
        spool.ack(r.seq for r in spool.take_oldest(10))  # 1-10 acknowledged, 11-40 the backlog
    os.truncate(path, 0)
    with caplog.at_level(logging.WARNING), Spool(path) as spool:
        stats = spool.stats()
        assert (stats.lost, stats.lost_ranges, stats.backlog) == (1, ((11, 40),), 0)
        new = put_many(spool, 40, 3)
    assert min(new) > max(used)
    (line,) = warnings(caplog)
    assert "spool.db is empty" in line and "11 to 40" in line and "\n" not in line
    with Spool(path) as spool:  # counted once, and the count survives a restart
        assert (spool.stats().lost, spool.stats().lost_ranges) == (1, ((11, 40),))
        assert put_many(spool, 43, 1)[0] > max(new)


def test_db_file_gone_after_a_clean_stop_is_reported(path: Path) -> None:
    with Spool(path) as spool:
        used = put_many(spool, 0, 5)
    path.unlink()
    with Spool(path) as spool:
        assert spool.stats().lost_ranges == ((1, 5),)
        assert put_many(spool, 5, 1)[0] > max(used)


@pytest.mark.parametrize("fault", ["delete_wal", "random_bytes_in_wal"])
def test_wal_lost_or_damaged_after_sigkill_is_reported_and_no_seq_is_reused(
    path: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(f"wal-{fault}")
    put, acked = parse(run_until_killed(path, seed=7, lines=420))
    wal = path.with_name("spool.db-wal")
    size = wal.stat().st_size
    assert size > 200_000 and put  # a long log of unsynced-to-the-database commits
    if fault == "delete_wal":
        wal.unlink()
    else:  # 64 random bytes in the middle of the log
        data = bytearray(wal.read_bytes())
        at = rng.randrange(size // 3, size // 2)
        data[at : at + 64] = rng.randbytes(64)
        wal.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), Spool(path) as spool:
        stats = spool.stats()
        on_disk = set(rows(path))
        new = put_many(spool, 10_000, 5)
    gone = set(put) - acked - on_disk
    assert gone, "the fault did lose fixes: the test would prove nothing otherwise"
    assert stats.lost == 1 and len(stats.lost_ranges) == 1
    low, high = stats.lost_ranges[0]
    assert low <= min(gone) and max(gone) <= high  # every lost fix is inside the reported range
    assert min(new) > max(put)  # seqs the cloud may hold are never handed out again
    assert stats.recovered_corrupt == 0
    (line,) = warnings(caplog)
    assert "spool.db-wal" in line and f"{low} to {high}" in line


def test_torn_last_transaction_is_not_a_loss_and_leaves_no_gap(path: Path) -> None:
    put, _ = parse(run_until_killed(path, seed=3, lines=120))
    wal = path.with_name("spool.db-wal")
    data = wal.read_bytes()
    wal.write_bytes(data[: len(data) - 700])  # a power cut in the middle of the last frame
    with Spool(path) as spool:
        stats = spool.stats()
        assert stats.lost == 0 and stats.lost_ranges == ()
        assert stats.next_seq <= max(put) + 1  # the torn put never returned: no gap


def test_intact_files_after_sigkill_are_not_a_loss(path: Path) -> None:
    put, _ = parse(run_until_killed(path, seed=5, lines=150))
    with Spool(path) as spool:
        assert spool.stats().lost == 0
        assert max(put) < spool.stats().next_seq <= max(put) + 2


# --- case 5: seq reuse after partial loss --------------------------------------------------------


def test_db_replaced_by_an_older_copy_after_a_clean_stop(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(path) as spool:
        put_many(spool, 0, 10)
    shutil.copy(path, tmp_path / "old.db")  # a backup taken while stopped (no WAL: clean close)
    with Spool(path, ack_batch=1) as spool:
        used = put_many(spool, 10, 10)
        spool.ack(r.seq for r in spool.take_oldest(4))  # 1-4 acknowledged
    assert not path.with_name("spool.db-wal").exists()  # a clean close leaves no WAL to delete
    shutil.copy(tmp_path / "old.db", path)  # ... and the backup is restored over the spool
    with caplog.at_level(logging.WARNING), Spool(path) as spool:
        stats = spool.stats()
        assert (stats.lost, stats.lost_ranges) == (1, ((11, 20),))
        new = put_many(spool, 20, 3)
    assert min(new) > max(used)
    (line,) = warnings(caplog)
    assert "clean stop was at 20" in line and "11 to 20" in line


def test_everything_acknowledged_then_older_copy_continues_above_without_a_loss(
    path: Path, tmp_path: Path
) -> None:
    with Spool(path) as spool:
        put_many(spool, 0, 3)
    shutil.copy(path, tmp_path / "old.db")
    with Spool(path, ack_batch=1) as spool:
        put_many(spool, 3, 3)
        spool.ack(r.seq for r in spool.take_oldest(6))
    shutil.copy(tmp_path / "old.db", path)
    with Spool(path) as spool:
        assert spool.stats().lost == 0  # nothing unacknowledged was lost
        assert put_many(spool, 6, 1) == [7]


def test_unreadable_sidecar_moves_the_floor_forward_and_is_reported(path: Path) -> None:
    with Spool(path) as spool:
        used = put_many(spool, 0, 6)
    path.with_name("spool.db.seq").write_bytes(b"\x00\x17garbage")
    with Spool(path) as spool:
        stats = spool.stats()
        assert stats.lost == 1 and stats.lost_ranges == ((7, 6 + SEQ_BLOCK),)
        assert stats.backlog == 6
        assert put_many(spool, 6, 1)[0] > max(used) + SEQ_BLOCK - 1


# --- case 6: a really full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a disk that really fills up (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MB tmpfs for a real full disk needs root")
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path) -> Path:
    """Write a file until the file system has no byte left; returns it."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\xff" * size)
    try:
        with open(where / "probe", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        (where / "probe").unlink()
    return filler


def test_full_disk_with_drop_oldest_evicts_the_oldest_and_keeps_storing(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_disk / "spool.db"
    with Spool(path, drop_policy="oldest") as spool:
        before = put_many(spool, 0, 60)
        filler = fill_disk(small_disk)
        newest = put_many(spool, 60, 1000)  # every put stores the new fix, put after put
        stats = spool.stats()
        assert stats.dropped.get("disk_full", 0) > 0
        assert stats.backlog + stats.dropped["disk_full"] == 1060
        on_disk = rows(path)
        assert on_disk[-1] == newest[-1] and on_disk == list(range(on_disk[0], newest[-1] + 1))
        assert min(newest) > max(before)
        ballast = path.with_name("spool.db.reserve")
        assert ballast.stat().st_size > 200_000  # spent on the first checkpoint, not eaten since
        filler.unlink()  # room again: the ballast comes back whole
        put_many(spool, 1060, 1)
        assert ballast.stat().st_size == 256 * 1024
    assert sum("disk full" in m for m in warnings(caplog)) == 1
    with Spool(path) as spool:
        assert spool.stats().dropped == stats.dropped


def test_full_disk_with_drop_newest_drops_the_new_fix_and_still_deletes_acked_ones(
    small_disk: Path,
) -> None:
    path = small_disk / "spool.db"
    with Spool(path, drop_policy="newest", ack_batch=1000) as spool:
        kept = put_many(spool, 0, 60)
        fill_disk(small_disk)
        results = [spool.put(fix(i)) for i in range(60, 260)]
        assert all(r is None for r in results)  # the new fixes go, put after put
        refused = len(results)
        assert set(kept) <= set(rows(path))  # the backlog stays
        assert spool.stats().dropped == {"disk_full": refused}
        spool.ack(r.seq for r in spool.take_oldest(20))
        spool.flush()  # acknowledged fixes still leave the full disk
        assert not set(kept[:20]) & set(rows(path))
        dropped = spool.stats().dropped
    with Spool(path, drop_policy="newest") as spool:
        assert spool.stats().dropped == dropped  # the counts were written despite the full disk


# --- set_aside ------------------------------------------------------------------------------------


def test_set_aside_moves_a_record_to_held_for_good(path: Path) -> None:
    with Spool(path) as spool:
        put_many(spool, 0, 6)
        taken = spool.take_oldest(2)  # 1, 2 in flight
        spool.set_aside(2, "cannot encode: lat is NaN")
        spool.set_aside(6, "cannot encode: time out of range")  # ready, and the newest
        stats = spool.stats()
        assert (stats.held, stats.held_seqs, stats.backlog, stats.in_flight) == (2, (2, 6), 4, 1)
        spool.release(r.seq for r in taken)
        assert [r.seq for r in spool.take_oldest(10)] == [1, 3, 4, 5]
        assert spool.take_newest() is None
        with pytest.raises(SpoolError, match="seq 99 is not a stored record") as info:
            spool.set_aside(99, "x")
        assert "\n" not in str(info.value)
    assert rows(path, "held") == [2, 6]
    db = sqlite3.connect(path)
    reasons = db.execute("SELECT reason FROM held ORDER BY seq").fetchall()
    db.close()
    assert reasons == [("cannot encode: lat is NaN",), ("cannot encode: time out of range",)]
    with Spool(path, max_fixes=2) as spool:  # held rows survive, are never evicted nor reused
        assert spool.stats().held_seqs == (2, 6) and spool.stats().backlog == 4
        assert put_many(spool, 6, 3) == [7, 8, 9]
        assert spool.stats().held == 2
    assert rows(path, "held") == [2, 6]


def test_a_version_1_file_opens_and_gains_the_held_table(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(
        """
        PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;
        CREATE TABLE fix (seq INTEGER PRIMARY KEY, t_us INTEGER NOT NULL, lat REAL NOT NULL,
            lon REAL NOT NULL, alt REAL, speed REAL, course REAL, mode INTEGER NOT NULL,
            sats INTEGER, hdop REAL, trigger TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO fix VALUES (5, 0, 1.0, 2.0, NULL, NULL, NULL, 3, NULL, NULL, 'interval');
        PRAGMA user_version = 1;
        """
    )
    db.close()
    path.with_name("spool.db.seq").write_text('{"reserved": 1005, "recovered_corrupt": 0}')
    with Spool(path) as spool:
        assert spool.stats().lost == 0
        assert [r.seq for r in spool.take_oldest(5)] == [5]
        spool.set_aside(5, "test")
        assert put_many(spool, 0, 1) == [6]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
