"""`tracker export`: one device's track from a lake (as `tracker collect` or an S3 sync leaves it),
one point per seq in seq order, by UTC day, by day in a time zone, or between two times."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracker import cli
from tracker.core.fix import Fix, Record
from tracker.twin.lake import LakeWriter

T0 = datetime(2026, 11, 29, 22, 0, 0, tzinfo=timezone.utc)  # 23:00 in Amsterdam
GPX = {"g": "http://www.topografix.com/GPX/1/1"}


def rec(seq: int, minutes: float) -> Record:
    t = T0 + timedelta(minutes=minutes)
    return Record(seq, Fix(t, 52.0 + seq * 1e-4, 4.3 + seq * 1e-4, 5.0, 1.0, 90.0, 3, 8, 1.1),
                  "interval")  # fmt: skip


def make_lake(root: Path) -> Path:
    """truck-1: seqs 1-6 every 30 min from 22:00 UTC on 29 Nov, written in a shuffled order,
    seq 3 twice (in two files, as two collector runs or a redelivering Firehose would)."""
    received = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    first = LakeWriter(root).open()
    for s in (4, 1, 3):
        first.add_fix("truck-1", rec(s, 30 * (s - 1)), received)
    first.add_fix("truck-2", rec(1, 0), received)
    first.commit()
    first.close()
    second = LakeWriter(root)
    second.file_name = "part-second.jsonl"
    second.open().seqs.clear()  # forget: write seq 3 again
    for s in (6, 2, 3, 5):
        second.add_fix("truck-1", rec(s, 30 * (s - 1)), received + timedelta(seconds=s))
    second.commit()
    second.close()
    # a torn last line (power cut while writing) is not a fix
    part = next((root / "fixes" / "thing=truck-1" / "day=2026-11-30").glob("part-second.jsonl"))
    with part.open("ab") as fh:
        fh.write(b'{"thing":"truck-1","seq":99,"time":"2026-11-30T')
    return root


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["export", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_jsonl_is_one_line_per_seq_in_seq_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = make_lake(tmp_path / "lake")
    status, out, _ = export(capsys, str(lake), "--thing", "truck-1")
    lines = [json.loads(x) for x in out.splitlines()]
    assert status == 0 and [d["seq"] for d in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[2]["received"] == "2026-11-30T09:00:00Z"  # the first copy of seq 3 wins
    assert {d["thing"] for d in lines} == {"truck-1"}


def test_day_is_utc_unless_a_zone_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = make_lake(tmp_path / "lake")
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--day", "2026-11-29")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [1, 2, 3, 4]
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--day", "2026-11-29",
                       "--tz", "Europe/Amsterdam")  # fmt: skip
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [1, 2]  # before 00:00 local
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--day", "2026-11-30",
                       "--tz", "America/New_York")  # fmt: skip
    assert out == ""  # 05:00 UTC on the 30th onward: nothing


def test_from_to_is_half_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = make_lake(tmp_path / "lake")
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--from", "2026-11-29T23:00:00Z",
                       "--to", "2026-11-30T00:30:00+00:00")  # fmt: skip
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [3, 4, 5]  # 00:30 excluded


def test_formats_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = make_lake(tmp_path / "lake")
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--format", "gpx")
    pts = ET.fromstring(out).findall(".//g:trkpt", GPX)
    assert [float(p.get("lat", "0")) for p in pts] == pytest.approx(
        [52.0 + s * 1e-4 for s in range(1, 7)]
    )
    assert ET.fromstring(out).find(".//g:trk/g:name", GPX).text == "truck-1"  # type: ignore[union-attr]
    _, out, _ = export(capsys, str(lake), "--thing", "truck-1", "--format", "geojson")
    doc = json.loads(out)
    line = doc["features"][0]
    assert line["geometry"]["type"] == "LineString" and len(line["geometry"]["coordinates"]) == 6
    for f in doc["features"][1:]:
        lon, lat = f["geometry"]["coordinates"]
        assert -180 <= lon <= 180 and -90 <= lat <= 90 and f["properties"]["lat"] == lat
    out_file = tmp_path / "t.csv"
    status, out, err = export(capsys, str(lake), "--thing", "truck-1", "--format", "csv",
                              "--out", str(out_file))  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert status == 0 and out == "" and "6 fixes" in err
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5, 6] and rows[0]["mode"] == "3"


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--day", "2026-13-01"], "--day '2026-13-01' is not a date: use YYYY-MM-DD"),
        (["--day", "yesterday"], "is not a date"),
        (["--day", "2026-11-29", "--tz", "Mars/Olympus"], "is not a known time zone"),
        (["--tz", "UTC"], "--tz goes with --day"),
        (["--day", "2026-11-29", "--from", "2026-11-29"], "exclude each other"),
        (["--from", "noon"], "--from 'noon' is not an ISO time"),
        (["--from", "2026-11-30", "--to", "2026-11-29"], "is not after"),
    ],
)
def test_option_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], wanted: str
) -> None:
    lake = make_lake(tmp_path / "lake")
    status, out, err = export(capsys, str(lake), "--thing", "truck-1", *args)
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and wanted in err, err


def test_missing_lake_and_unknown_thing_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = export(capsys, str(tmp_path / "nowhere"), "--thing", "truck-1")
    assert status == 2 and err.strip().endswith(
        "does not exist; pass the folder `tracker collect` writes"
    )
    lake = make_lake(tmp_path / "lake")
    status, _, err = export(capsys, str(lake), "--thing", "truck-9")
    assert status == 2 and "no fixes of truck-9" in err and "truck-1, truck-2" in err
    assert len(err.splitlines()) == 1
