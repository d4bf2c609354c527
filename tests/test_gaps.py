"""`tracker gaps LAKE`: missing seq ranges and silence per device; exit 1 when a seq is missing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracker import cli
from tracker.core.fix import Fix, Record
from tracker.twin.gaps import ranges
from tracker.twin.lake import LakeWriter

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def write(root: Path, thing: str, seqs: list[int]) -> None:
    lake = LakeWriter(root).open()
    for s in seqs:
        fix = Fix(T0 + timedelta(seconds=s), 52.0, 4.3, mode=3)
        lake.add_fix(thing, Record(s, fix, "interval"), T0 + timedelta(seconds=s + 5))
    lake.commit()
    lake.close()


def test_ranges() -> None:
    assert ranges(set()) == []
    assert ranges({5}) == []
    assert ranges({1, 2, 5, 6, 9}) == [(3, 4), (7, 8)]


def test_complete_devices_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "truck-1", list(range(1, 11)))
    assert cli.main(["gaps", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("truck-1: seq 1-10, 10 fixes, missing none; silent ")
    assert "by fix time" in out and "by receive time" in out


def test_missing_seqs_are_listed_per_device_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "truck-1", [1, 2, 3, 7, 8, 10])
    write(tmp_path, "truck-2", [40, 41])
    assert cli.main(["gaps", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("truck-1: seq 1-10, 6 fixes, missing 4-6, 9 (4 fixes); silent ")
    assert out[1].startswith("truck-2: seq 40-41, 2 fixes, missing none")
    assert cli.main(["gaps", str(tmp_path), "--json", "--thing", "truck-1"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["missing"] == [[4, 6], [9, 9]] and d["lost"] == 4
    assert d["newest_fix"] == "2026-11-29T12:00:10Z"
    assert d["newest_received"] == "2026-11-29T12:00:15Z" and d["silent_s"] > 0


def test_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["gaps", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "does not exist" in err
    write(tmp_path, "truck-1", [1])
    assert cli.main(["gaps", str(tmp_path), "--thing", "nope"]) == 2
    assert "no fixes of 'nope'" in capsys.readouterr().err
