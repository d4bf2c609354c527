"""The crash-safe store-and-forward queue of fixes on disk: put, take, ack, release, bounded drops.

The only module that imports sqlite3; must not import awsiot, awscrt or serial.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from tracker.core.clock import Clock, SystemClock
from tracker.core.errors import SpoolError
from tracker.core.files import fsync_dir
from tracker.core.fix import Fix, Record
from tracker.spool import sql as spool_sql
from tracker.spool.files import SeqSidecar, move_aside, prepare_dir
from tracker.spool.loss import Found, look, settle
from tracker.spool.room import Room
from tracker.spool.rows import COLS, HELD_SEQS, MARKS, SpoolStats, to_record, to_row
from tracker.spool.rows import kind as _kind
from tracker.spool.sql import SCHEMA, SCHEMA_VERSION

__all__ = ["Spool", "SpoolStats"]

log = logging.getLogger(__package__)  # logs as "spool", the package's main module

EVICT_ON_DISK_FULL = 16  # oldest rows dropped first when the disk is full (doubled until it fits)
DROP_POLICIES = ("oldest", "newest")


class _Corrupt(Exception):
    """The database file is not a database or is malformed."""


class Spool:
    """Fixes on disk from `put` until their PUBACK; in-flight marks live in memory only.

    Rows go ready -> in flight (`take_*`) -> acknowledged (`ack`). Acknowledged rows are deleted
    in batches (in the next `put`'s transaction, or every `ack_batch` acks or `ack_flush_s`
    seconds), so a crash can resend a few acknowledged fixes but never loses an unacknowledged one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_fixes: int = 500_000,
        drop_policy: str = "oldest",
        max_file_bytes: int | None = None,
        ack_batch: int = 256,
        ack_flush_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if drop_policy not in DROP_POLICIES:
            raise SpoolError(f"drop policy {drop_policy!r} is not one of {DROP_POLICIES}")
        if max_fixes < 1:
            raise SpoolError(f"max_fixes {max_fixes} must be at least 1")
        self.path = Path(path)
        self.max_fixes = max_fixes
        self.drop_policy = drop_policy
        self.max_file_bytes = max_file_bytes
        self.ack_batch = ack_batch
        self.ack_flush_s = ack_flush_s
        self._clock = clock or SystemClock()
        self._in_flight: set[int] = set()
        # Every row with seq <= _taken_to is in flight or acknowledged, so `take_oldest` starts
        # its scan above it instead of stepping over a window of in-flight rows on every call.
        self._taken_to = 0
        self._acked: set[int] = set()  # acknowledged, delete pending
        self._acked_since = 0.0
        self._dropped: dict[str, int] = {}
        self._dirty_drops = False
        self._disk_full = False
        self._count = 0  # rows in the fix table
        self._held: list[int] = []  # seqs set aside, oldest first
        self._db: sqlite3.Connection | None = None
        prepare_dir(self.path)
        self._sidecar = side = SeqSidecar(self.path)
        self._room = Room(self.path, self._checkpoint, self._free_pages)
        found: Found | None = look(self.path, side)  # before SQLite recovers a damaged WAL
        self.next_seq = 1
        try:
            fresh = self._open()
        except _Corrupt as exc:
            self._move_aside(str(exc))  # counted as corrupt: its fixes are in the moved file
            fresh, found = self._open_or_fail(), None
        except SpoolError:
            if self._db is not None:
                self._db.close()
            raise
        self.next_seq = settle(side, found, self.next_seq - 1, fresh, self.path)
        side.opened(self.next_seq, self._first_pending())
        self._room.ballast.restore()

    # --- the contract ---------------------------------------------------------------------------

    def put(self, fix: Fix, trigger: str = "") -> Record | None:
        """Store a fix, committed and synced before returning; None when it was dropped."""
        backlog = self._count - len(self._acked)
        evict, reason = 0, "full_oldest"
        if backlog >= self.max_fixes:
            if self.drop_policy == "newest":
                self._drop("full_newest", 1)
                self.flush()  # the count survives a restart
                return None
            evict = backlog - self.max_fixes + 1
        elif self._room.none_left():  # the ballast's rest is for deletes, not new fixes
            if self.drop_policy == "newest":
                self._drop("disk_full", 1)
                self.flush(retry=False)
                return None
            evict, reason = 1, "disk_full"  # one out, one in: the database does not grow
        record = Record(self.next_seq, fix, trigger)
        self._sidecar.reserve(record.seq + 1)
        try:
            self._insert(record, evict, reason)
        except _Corrupt as exc:
            self._move_aside(str(exc))
            self._reopen_after_recovery()
            try:
                self._insert(record, 0, "full_oldest")
            except (sqlite3.Error, _Corrupt) as again:
                raise SpoolError(
                    f"cannot write the fresh spool {self.path}: {again}; check the disk"
                ) from again
        except sqlite3.DatabaseError as exc:
            if _kind(exc) != "full":
                self.next_seq += 1  # the row may be on disk after all: never hand this seq out
                raise self._error("write", exc) from exc
            if not self._put_on_full_disk(record, evict):
                return None
        self._room.after_put()
        self.next_seq += 1
        return record

    def set_aside(self, seq: int, reason: str) -> None:
        """Move a stored record (ready or in flight) to the `held` table, with `reason`.

        Held records stay on disk (the spool never deletes them) and are never taken again: the
        forwarder quarantines a record it cannot send instead of losing it silently.

        Raises:
            SpoolError: `seq` is not a stored, unacknowledged record, or the write failed.
        """
        moved = 0
        for attempt in range(0 if seq in self._acked else 2):
            try:
                with self._txn() as db:
                    moved = spool_sql.move_to_held(db, seq, reason)
                break
            except sqlite3.DatabaseError as exc:
                if _kind(exc) != "full" or attempt:
                    raise self._error("write", exc) from exc
                self._room.make()
        if moved < 1:
            raise SpoolError(
                f"spool {self.path}: seq {seq} is not a stored record waiting to be sent;"
                " set aside only records taken from the spool"
            )
        self._in_flight.discard(seq)
        self._count -= 1
        self._held.append(seq)

    def take_newest(self) -> Record | None:
        """The newest ready record, now in flight; None when nothing is ready."""
        got = self._select("DESC", 1)
        return got[0] if got else None

    def take_oldest(self, limit: int) -> list[Record]:
        """Up to `limit` oldest ready records in ascending seq, now in flight."""
        if limit <= 0:
            return []
        out = self._select("ASC", limit, self._taken_to)
        if out:
            self._taken_to = out[-1].seq
        return out

    def ack(self, seqs: Iterable[int]) -> None:
        """PUBACK received: the records leave the disk (deletes are batched)."""
        for seq in seqs:
            if seq in self._in_flight:
                self._in_flight.discard(seq)
            elif seq in self._acked or not self._exists(seq):
                continue
            if not self._acked:
                self._acked_since = self._clock.monotonic()
            self._acked.add(seq)
        if len(self._acked) >= self.ack_batch or self._flush_due():
            self.flush()

    def release(self, seqs: Iterable[int]) -> None:
        """Publish failed or link lost: the records are ready again."""
        back = self._in_flight.intersection(seqs)
        if back:
            self._in_flight -= back
            self._taken_to = min(self._taken_to, min(back) - 1)  # served again, oldest first

    def release_all(self) -> None:
        """Every in-flight record is ready again (the connection was lost)."""
        if self._in_flight:
            self._taken_to = min(self._taken_to, min(self._in_flight) - 1)
        self._in_flight.clear()

    def stats(self) -> SpoolStats:
        """Counters for condition messages; cheap (no disk access but two stat calls)."""
        size = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):
                size += p.stat().st_size
        return SpoolStats(
            backlog=self._count - len(self._acked),
            in_flight=len(self._in_flight),
            dropped=dict(self._dropped),
            recovered_corrupt=self._sidecar.recovered,
            next_seq=self.next_seq,
            file_bytes=size,
            lost=self._sidecar.lost,
            lost_ranges=tuple(self._sidecar.lost_ranges),
            held=len(self._held),
            held_seqs=tuple(self._held[-HELD_SEQS:]),
        )

    def flush(self, *, retry: bool = True) -> None:
        """Delete acknowledged rows now (the daemon may call this on its periodic tick)."""
        if not self._acked and not self._dirty_drops:
            return
        done = set(self._acked)
        try:
            with self._txn() as db:
                n = spool_sql.delete_seqs(db, done)
                if self.next_seq - 1 in done:  # the table may lose its max seq: keep a floor
                    spool_sql.set_meta(db, {"seq_floor": self.next_seq})
                if self._dirty_drops:
                    spool_sql.set_drops(db, self._dropped)
        except _Corrupt as exc:
            self._move_aside(str(exc))
            self._reopen_after_recovery()
            return
        except sqlite3.OperationalError as exc:
            if _kind(exc) != "full":
                raise self._error("write", exc) from exc
            if retry:
                self._room.make()
                self.flush(retry=False)
            return  # the deletes and counts wait for the next transaction
        self._count -= n
        self._acked -= done
        self._dirty_drops = False
        self._disk_full = self._disk_full and n == 0  # warn again when it fills up again

    def close(self) -> None:
        """Flush pending deletes and close the file; the spool is unusable afterwards."""
        if self._db is None:
            return
        try:
            self.flush()
            self._stop_cleanly()
        finally:
            self._db.close()
            self._db = None

    def _stop_cleanly(self) -> None:
        """Record in the sidecar, before the WAL goes away, the exact last seq handed out."""
        with contextlib.suppress(sqlite3.Error, _Corrupt):
            if self._db_last() < self.next_seq - 1:  # a failed write used the last seq
                with self._txn() as db:
                    spool_sql.set_meta(db, {"seq_floor": self.next_seq})
        with contextlib.suppress(sqlite3.Error):
            self._sidecar.closed(self._db_last(), self._first_pending())

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------------

    def _insert(self, record: Record, evict: int, reason: str) -> None:
        done = set(self._acked)
        gone: list[int] = []
        dropped = dict(self._dropped)
        with self._txn() as db:
            n = spool_sql.delete_seqs(db, done)
            if evict and (gone := spool_sql.evict_oldest(db, evict)):
                dropped[reason] = dropped.get(reason, 0) + len(gone)
            db.execute(f"INSERT INTO fix ({COLS}) VALUES ({MARKS})", to_row(record))
            if gone or self._dirty_drops:
                spool_sql.set_drops(db, dropped)
        self._count += 1 - n - len(gone)
        self._acked -= done
        self._in_flight.difference_update(gone)
        self._dropped = dropped
        self._dirty_drops = False

    def _put_on_full_disk(self, record: Record, evict: int) -> bool:
        """Disk full: drop by the policy and report; never raise. True when the fix was stored."""
        if not self._disk_full:
            log.warning("spool %s: disk full, dropping %s fixes", self.path, self.drop_policy)
            self._disk_full = True
        n = max(evict, EVICT_ON_DISK_FULL)
        room = False
        while self.drop_policy == "oldest" and self._count > 0:
            # freeing a whole page takes a page's worth of rows: double until the insert fits
            try:
                self._insert(record, min(n, self._count), "disk_full")
                return True
            except _Corrupt as exc:
                self._move_aside(str(exc))
                self._reopen_after_recovery()
                break
            except sqlite3.OperationalError as exc:
                if _kind(exc) != "full":
                    break
                if not room:  # the eviction itself needs WAL space: make some, then try again
                    room = True
                    self._room.make()
                    continue
                if n >= self._count:
                    break
            n *= 2
        self._drop("disk_full", 1)
        self.flush(retry=False)  # the count survives a restart (or waits for the next flush)
        return False

    def _free_pages(self) -> int:
        try:
            return int(self._conn().execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.Error:
            return -1

    def _checkpoint(self) -> bool:
        """Copy the whole WAL into the database so that it starts over; True when it did."""
        try:
            busy, frames, done = self._conn().execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            return False
        return bool(busy == 0 and frames == done)

    def _drop(self, reason: str, n: int) -> None:
        if n:
            self._dropped[reason] = self._dropped.get(reason, 0) + n
            self._dirty_drops = True

    def _flush_due(self) -> bool:
        return bool(self._acked) and (
            self._clock.monotonic() - self._acked_since >= self.ack_flush_s
        )

    # --- reading --------------------------------------------------------------------------------

    def _select(self, order: str, limit: int, after: int = 0) -> list[Record]:
        """Up to `limit` ready records with seq above `after`, in `order`; now in flight."""
        busy, acked = self._in_flight, self._acked
        out: list[Record] = []
        try:
            sql = f"SELECT {COLS} FROM fix WHERE seq > ? ORDER BY seq {order}"
            cur = self._conn().execute(sql, (after,))
            try:
                while len(out) < limit:  # rows are read only as far as needed
                    rows = cur.fetchmany(limit - len(out))
                    if not rows:
                        break
                    out += [to_record(r) for r in rows if r[0] not in busy and r[0] not in acked]
            finally:
                cur.close()
        except sqlite3.DatabaseError as exc:
            if _kind(exc) != "corrupt":
                raise self._error("read", exc) from exc
            self._move_aside(str(exc))
            self._reopen_after_recovery()
            return []
        self._in_flight.update(r.seq for r in out)
        return out

    def _exists(self, seq: int) -> bool:
        try:
            return bool(self._conn().execute("SELECT 1 FROM fix WHERE seq = ?", (seq,)).fetchone())
        except sqlite3.DatabaseError:
            return False

    # --- opening and recovery -------------------------------------------------------------------

    def _open(self) -> bool:
        """Open (or create) the file; True when it was created empty. Raises _Corrupt."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        self._db = db
        try:
            fresh = not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
            version = spool_sql.configure(db, fresh, self.path, self.max_file_bytes)
            if version > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.path} was written by a newer tracker (schema {version});"
                    " upgrade the tracker or move the file away"
                )
            if not fresh and db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _Corrupt("quick_check failed")
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._count, self._held, top, meta = spool_sql.load(db)
        except sqlite3.DatabaseError as exc:
            if _kind(exc) == "corrupt":
                raise _Corrupt(str(exc)) from exc
            raise self._error("open", exc) from exc
        if fresh:
            fsync_dir(self.path.parent)
        self.next_seq = max(self.next_seq, top + 1)
        self._dropped = {k[5:]: v for k, v in meta.items() if k.startswith("drop:")}
        return fresh

    def _db_last(self) -> int:
        return spool_sql.db_last(self._conn())

    def _first_pending(self) -> int:
        try:
            return spool_sql.first_pending(self._conn(), self.next_seq)
        except sqlite3.Error:
            return 1

    def _open_or_fail(self) -> bool:
        try:
            return self._open()
        except _Corrupt as exc:  # a fresh file that is corrupt: stop rather than loop
            raise SpoolError(
                f"spool {self.path} is corrupt again after a fresh start: {exc}; check the disk"
            ) from exc

    def _reopen_after_recovery(self) -> None:
        seq = self.next_seq
        dropped = self._dropped
        self._open_or_fail()
        self.next_seq = max(seq, self.next_seq)
        self._dropped = {**dropped, **self._dropped}
        self._dirty_drops = bool(self._dropped)

    def _move_aside(self, why: str) -> None:
        """Move a corrupt file (and its WAL) to PATH.corrupt-<n> and count it."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        try:
            aside = move_aside(self.path)
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path} is corrupt ({why}) and cannot be moved aside:"
                f" {exc.strerror or exc}; remove it by hand"
            ) from exc
        self._sidecar.recovered += 1
        self._in_flight.clear()
        self._acked.clear()
        self._taken_to = 0
        self._count = 0
        log.error(
            "spool %s is corrupt (%s): moved to %s, starting a fresh one", self.path, why, aside
        )
        self._sidecar.write()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._db

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; corrupt files raise _Corrupt."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError) and _kind(exc) == "corrupt":
                raise _Corrupt(str(exc)) from exc
            raise

    def _error(self, what: str, exc: sqlite3.Error) -> SpoolError:
        return SpoolError(
            f"cannot {what} the spool {self.path}: {exc}; check the disk and"
            " that the tracker's user may write there"
        )
