"""Power-cut safety: a writer killed with SIGKILL at random points never loses or reuses a seq."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from support.spool_child import run_until_killed

from tracker.spool.store import Spool

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

KILLS = 30


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_reuses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    path = tmp_path / "spool.db"
    put: list[int] = []
    acked: set[int] = set()
    for run in range(KILLS):
        # 0 kills during start-up or the very first put; others land mid-stream
        said = run_until_killed(path, seed=run, lines=rng.choice([0, 1, *range(2, 80)]))
        for line in said:
            kind, *seqs = line.split()
            if kind == "P":
                (seq,) = map(int, seqs)
                assert not put or seq > put[-1], f"seq {seq} reused or going back after {put[-1]}"
                put.append(seq)
            else:
                acked.update(map(int, seqs))
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            on_disk = {r[0] for r in db.execute("SELECT seq FROM fix")}
        finally:
            db.close()
        lost = set(put) - acked - on_disk
        assert not lost, (
            f"run {run}: reported put, never acked, not on disk: {sorted(lost)}"
            f" files {sorted(p.name for p in tmp_path.iterdir())} said {said}"
        )
    assert len(put) > KILLS  # the test did exercise the spool
    with Spool(path) as spool:
        stats = spool.stats()
        assert stats.recovered_corrupt == 0
        assert stats.lost == 0  # intact files after a kill: no loss reported, no seq gap
        assert put[-1] < stats.next_seq <= put[-1] + 2  # at most one put committed, not reported
    assert not list(tmp_path.glob("*.corrupt-*"))
