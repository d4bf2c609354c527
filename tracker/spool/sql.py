"""The spool's SQL: schema, queries and statements on an open connection.

Typed against a small protocol so that `tracker.spool.store` stays the only module importing
sqlite3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tracker.spool.files import size_caps
from tracker.spool.rows import COLS

SCHEMA_VERSION = 2  # 2: the `held` table (version 1 files gain it on open)
FIELDS = """seq INTEGER PRIMARY KEY, t_us INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
    alt REAL, speed REAL, course REAL, mode INTEGER NOT NULL, sats INTEGER, hdop REAL,
    trigger TEXT NOT NULL"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS fix ({FIELDS});
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held ({FIELDS}, reason TEXT NOT NULL);
"""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


def configure(db: Conn, fresh: bool, path: Path, max_bytes: int | None) -> int:
    """WAL, synced commits, 1 KB pages for a new file, the size cap; returns the schema version."""
    if fresh:
        db.execute("PRAGMA page_size = 1024")  # a WAL frame per put: 1 KB, not 4 KB
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA secure_delete = OFF")
    db.execute("PRAGMA journal_size_limit = 4194304")
    if max_bytes:
        apply_caps(db, path, max_bytes)
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def load(db: Conn) -> tuple[int, list[int], int, dict[str, int]]:
    """Rows queued, seqs held, the highest seq used, the meta values."""
    count = int(db.execute("SELECT count(*) FROM fix").fetchone()[0])
    held = [r[0] for r in db.execute("SELECT seq FROM held ORDER BY seq").fetchall()]
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return count, held, db_last(db), meta


def apply_caps(db: Conn, path: Path, max_bytes: int) -> None:
    """Keep the database and its WAL under `max_bytes`: a small WAL, the rest for pages."""
    page = db.execute("PRAGMA page_size").fetchone()[0]
    wal_frames, wal_bytes, pages = size_caps(path, max_bytes, page)
    db.execute(f"PRAGMA wal_autocheckpoint = {wal_frames}")
    db.execute(f"PRAGMA journal_size_limit = {wal_bytes}")
    db.execute(f"PRAGMA max_page_count = {pages}")


def db_last(db: Conn) -> int:
    """The highest seq the database knows was handed out (rows, held rows, the seq floor)."""
    top = db.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM fix), 0),"
        " coalesce((SELECT max(seq) FROM held), 0),"
        " coalesce((SELECT value - 1 FROM meta WHERE key = 'seq_floor'), 0))"
    ).fetchone()[0]
    return int(top)


def first_pending(db: Conn, default: int) -> int:
    """The lowest seq stored and not yet acknowledged (`default` when there is none)."""
    low = db.execute("SELECT min(seq) FROM fix").fetchone()[0]
    return int(low) if low is not None else default


def move_to_held(db: Conn, seq: int, reason: str) -> int:
    """Move row `seq` from the queue to `held`; the number of rows moved (0 or 1)."""
    sql = f"INSERT INTO held ({COLS}, reason) SELECT {COLS}, ? FROM fix WHERE seq = ?"
    moved = db.execute(sql, (reason, seq)).rowcount
    db.execute("DELETE FROM fix WHERE seq = ?", (seq,))
    return moved


def evict_oldest(db: Conn, n: int) -> list[int]:
    """Delete the `n` oldest queued rows; their seqs."""
    gone = [r[0] for r in db.execute("SELECT seq FROM fix ORDER BY seq LIMIT ?", (n,)).fetchall()]
    if gone:
        db.execute("DELETE FROM fix WHERE seq <= ?", (gone[-1],))
    return gone


def delete_seqs(db: Conn, seqs: set[int]) -> int:
    """Delete these rows from the queue; how many there were."""
    ordered = sorted(seqs)
    n = 0
    for i in range(0, len(ordered), 500):  # stay under SQLite's bound-parameter limit
        chunk = ordered[i : i + 500]
        marks = ",".join("?" * len(chunk))
        n += db.execute(f"DELETE FROM fix WHERE seq IN ({marks})", chunk).rowcount
    return n


def set_meta(db: Conn, values: dict[str, int]) -> None:
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items())


def set_drops(db: Conn, dropped: dict[str, int]) -> None:
    set_meta(db, {"drop:" + k: v for k, v in dropped.items()})
