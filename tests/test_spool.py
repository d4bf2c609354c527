"""The spool on a real SQLite file: order, ack/release, restarts, bounds, disk full, corruption."""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.core.clock import FakeClock
from tracker.core.errors import SpoolError
from tracker.core.fix import Fix, Record
from tracker.spool.store import Spool

T0 = datetime(2005, 9, 25, 23, 52, 34, 250_001, tzinfo=timezone.utc)


def fix(i: int) -> Fix:
    return Fix(
        T0 + timedelta(seconds=i),
        39.43283666666667 + i * 1e-5,
        -119.76559,
        1378.6,
        23.201444444444448,
        153.1,
        3,
        10,
        0.8,
    )


def fill(spool: Spool, n: int, trigger: str = "interval") -> list[Record]:
    out = []
    for i in range(n):
        rec = spool.put(fix(i), trigger)
        assert rec is not None
        out.append(rec)
    return out


def rows(path: Path) -> list[int]:
    """Seqs on disk, read through a second connection (what a crash right now would leave)."""
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM fix ORDER BY seq")]
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


def test_put_assigns_growing_seqs_and_is_on_disk_before_returning(path: Path) -> None:
    with Spool(path) as spool:
        recs = fill(spool, 3)
        assert [r.seq for r in recs] == [1, 2, 3]
        assert rows(path) == [1, 2, 3]


def test_newest_first_then_backlog_oldest_first(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 10)
        newest = spool.take_newest()
        assert newest is not None and newest.seq == 10
        assert [r.seq for r in spool.take_oldest(4)] == [1, 2, 3, 4]
        assert [r.seq for r in spool.take_oldest(100)] == [5, 6, 7, 8, 9]
        assert spool.take_oldest(5) == [] and spool.take_newest() is None
        assert spool.stats().in_flight == 10


def test_records_come_back_exactly_as_put(path: Path) -> None:
    odd = Fix(T0, -0.1 + 0.2, 179.99999999, None, None, None, 2, None, None)
    with Spool(path) as spool:
        a = spool.put(fix(1), "distance")
        b = spool.put(odd)
    with Spool(path) as spool:
        assert spool.take_oldest(2) == [a, b]


def test_ack_removes_release_returns_to_ready(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 5)
        taken = spool.take_oldest(3)
        spool.ack([taken[0].seq])
        spool.release([taken[1].seq])
        assert [r.seq for r in spool.take_oldest(10)] == [2, 4, 5]
        spool.release_all()
        assert [r.seq for r in spool.take_oldest(10)] == [2, 3, 4, 5]
        assert spool.stats().backlog == 4
        spool.ack([2, 3, 4, 5, 99])  # 99 never existed: ignored
        assert spool.stats().backlog == 0
    assert rows(path) == []


def test_late_puback_after_release_still_removes_the_record(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 2)
        spool.take_oldest(2)
        spool.release_all()  # link lost, then the PUBACK arrives anyway
        spool.ack([1])
        assert [r.seq for r in spool.take_oldest(10)] == [2]


def test_released_records_come_back_oldest_first_past_later_in_flight_ones(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 8)
        first, second = spool.take_oldest(3), spool.take_oldest(3)  # 1-3 and 4-6 in flight
        spool.release([first[2].seq, first[1].seq])
        assert (newest := spool.take_newest()) is not None and newest.seq == 8
        assert [r.seq for r in spool.take_oldest(10)] == [2, 3, 7]
        spool.release([second[0].seq, 99])  # 99 was never in flight: ignored
        assert [r.seq for r in spool.take_oldest(10)] == [4]
        assert spool.take_oldest(10) == []
        assert spool.stats().in_flight == 8


def test_restart_keeps_unacked_and_in_flight_and_seq_continues(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 6)
        spool.take_oldest(4)  # in flight when the process stops
        spool.ack([1, 2])
    with Spool(path) as spool:
        assert spool.stats().backlog == 4
        assert [r.seq for r in spool.take_oldest(10)] == [3, 4, 5, 6]
        assert spool.put(fix(7)) == Record(7, fix(7))


def test_seq_continues_when_everything_was_acked(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 3)
        spool.ack(r.seq for r in spool.take_oldest(3))
    assert rows(path) == []
    with Spool(path) as spool:
        assert spool.stats().next_seq == 4
        assert fill(spool, 1)[0].seq == 4


def test_acks_are_deleted_in_batches_and_a_crash_resends_rather_than_loses(path: Path) -> None:
    clock = FakeClock()
    with Spool(path, ack_batch=3, ack_flush_s=10, clock=clock) as spool:
        fill(spool, 6)
        spool.ack([1, 2])
        assert rows(path) == [1, 2, 3, 4, 5, 6]  # acked in memory only: a crash resends 1, 2
        assert spool.stats().backlog == 4
        spool.ack([3])  # third ack: one delete transaction
        assert rows(path) == [4, 5, 6]
        spool.ack([4])
        clock.advance(10)
        spool.ack([5])  # the oldest pending ack is 10 s old: flush
        assert rows(path) == [6]


def test_next_put_carries_pending_deletes(path: Path) -> None:
    with Spool(path, ack_batch=100) as spool:
        fill(spool, 2)
        spool.ack([1])
        assert rows(path) == [1, 2]
        spool.put(fix(3))
        assert rows(path) == [2, 3]


def test_drop_oldest_when_full_is_counted_and_persisted(path: Path) -> None:
    with Spool(path, max_fixes=5) as spool:
        fill(spool, 8)
        assert spool.stats().backlog == 5
        assert spool.stats().dropped == {"full_oldest": 3}
        assert [r.seq for r in spool.take_oldest(10)] == [4, 5, 6, 7, 8]
    with Spool(path, max_fixes=5) as spool:
        assert spool.stats().dropped == {"full_oldest": 3}


def test_acked_records_do_not_count_against_the_bound(path: Path) -> None:
    with Spool(path, max_fixes=3, ack_batch=100) as spool:
        fill(spool, 3)
        spool.ack([1, 2])
        fill(spool, 2)
        assert spool.stats().dropped == {}
        assert [r.seq for r in spool.take_oldest(10)] == [3, 4, 5]


def test_drop_newest_when_full_keeps_the_old_and_does_not_use_a_seq(path: Path) -> None:
    with Spool(path, max_fixes=3, drop_policy="newest") as spool:
        fill(spool, 3)
        assert spool.put(fix(4)) is None
        assert spool.put(fix(5)) is None
        assert spool.stats().dropped == {"full_newest": 2}
        spool.ack(r.seq for r in spool.take_oldest(1))
        assert spool.put(fix(6)) == Record(4, fix(6))
    with Spool(path, max_fixes=3, drop_policy="newest") as spool:
        assert spool.stats().dropped == {"full_newest": 2}


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_disk_full_keeps_running_drops_by_policy_and_reports(
    path: Path, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(path, drop_policy=policy, max_file_bytes=30_000) as spool:
        results, sizes = [], []
        for i in range(500):  # about 3 times what fits
            results.append(spool.put(fix(i)))
            sizes.append(spool.stats().file_bytes)
        stored = [r for r in results if r is not None]
        stats = spool.stats()
        assert max(sizes) <= 30_000  # the WAL counts
        assert 0 < stats.dropped["disk_full"] == 500 - stats.backlog
        on_disk = rows(path)
        if policy == "oldest":
            assert len(stored) == 500 and on_disk[-1] == 500  # the newest fixes are kept
        else:
            assert len(stored) == len(on_disk) and on_disk == list(range(1, len(stored) + 1))
        assert [r.seq for r in stored] == sorted({r.seq for r in stored})
    assert sum("disk full" in r.message for r in caplog.records) == 1  # one line, not a flood
    with Spool(path, drop_policy=policy) as spool:
        assert spool.stats().dropped == stats.dropped


def test_garbage_file_is_moved_aside_and_seq_stays_monotonic(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 5)
    path.write_bytes(b"this is not a database" * 300)
    with Spool(path) as spool:
        stats = spool.stats()
        assert stats.recovered_corrupt == 1 and stats.backlog == 0
        assert fill(spool, 1)[0].seq > 5
    assert (path.parent / "spool.db.corrupt-1").read_bytes().startswith(b"this is not")
    path.write_bytes(b"\0" * 5000 + b"again")
    with Spool(path) as spool:
        assert spool.stats().recovered_corrupt == 2
    assert (path.parent / "spool.db.corrupt-2").exists()


def test_malformed_pages_are_detected_on_open(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 300)
        last = spool.stats().next_seq - 1
    data = bytearray(path.read_bytes())
    assert len(data) >= 8 * 1024
    data[1024 * 3 : 1024 * 6] = b"\xa5" * 3072  # smash three b-tree pages, keep the header
    path.write_bytes(bytes(data))
    with Spool(path) as spool:
        assert spool.stats().recovered_corrupt == 1
        assert fill(spool, 1)[0].seq > last
    assert (path.parent / "spool.db.corrupt-1").exists()


def test_corrupt_file_and_lost_sidecar_still_never_reuse_known_seqs(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 3)
    path.unlink()  # the file is gone, the sidecar still remembers the reservation
    with Spool(path) as spool:
        assert fill(spool, 1)[0].seq > 3


@pytest.mark.parametrize("make", ["parent_is_a_file", "path_is_a_directory"])
def test_unwritable_place_is_one_line_spool_error(tmp_path: Path, make: str) -> None:
    if make == "parent_is_a_file":
        (tmp_path / "blocker").write_text("x")
        target = tmp_path / "blocker" / "spool.db"
    else:
        target = tmp_path / "dir.db"
        target.mkdir()
    with pytest.raises(SpoolError) as info:
        Spool(target)
    message = str(info.value)
    assert (
        "\n" not in message
        and str(target.parent if make != "path_is_a_directory" else target) in message
    )


def test_bad_policy_is_spool_error(path: Path) -> None:
    with pytest.raises(SpoolError, match="drop policy"):
        Spool(path, drop_policy="random")


def test_closed_spool_refuses_with_spool_error(path: Path) -> None:
    spool = Spool(path)
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(SpoolError, match="closed"):
        spool.take_newest()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from(["put", "newest", "oldest", "ack", "release", "reopen"]), max_size=40)
)
def test_model_every_unacked_record_survives(tmp_path: Path, ops: list[str]) -> None:
    """Against a model: whatever happens, unacked records are on disk and seqs never repeat."""
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.db"
    spool = Spool(path, ack_batch=2)
    model: dict[int, Record] = {}
    flying: list[int] = []
    seen: set[int] = set()
    try:
        for i, op in enumerate(ops):
            if op == "put":
                rec = spool.put(fix(i))
                assert rec is not None and rec.seq not in seen
                seen.add(rec.seq)
                model[rec.seq] = rec
            elif op == "newest" and (got := spool.take_newest()):
                assert got.seq == max(s for s in model if s not in flying)
                flying.append(got.seq)
            elif op == "oldest":
                got_list = spool.take_oldest(2)
                assert [r.seq for r in got_list] == sorted(s for s in model if s not in flying)[:2]
                flying += [r.seq for r in got_list]
            elif op == "ack" and flying:
                spool.ack([flying[0]])
                del model[flying.pop(0)]
            elif op == "release":
                spool.release_all()
                flying.clear()
            elif op == "reopen":
                spool.close()
                spool = Spool(path, ack_batch=2)
                flying.clear()
        assert set(model) <= set(rows(path))
        assert spool.stats().backlog == len(model)
    finally:
        spool.close()


def test_logging_names_the_moved_file(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    with caplog.at_level(logging.ERROR), Spool(path):
        pass
    assert "spool.db.corrupt-1" in caplog.text


def test_write_error_is_spool_error_and_the_seq_is_not_reused(path: Path) -> None:
    with Spool(path) as spool:
        fill(spool, 1)
        spool._conn().execute("PRAGMA query_only = ON")  # SQLITE_READONLY, as a failing card gives
        with pytest.raises(SpoolError, match=str(path)) as info:
            spool.put(fix(2))
        assert "\n" not in str(info.value)
        spool._conn().execute("PRAGMA query_only = OFF")
        assert fill(spool, 1)[0].seq == 3
