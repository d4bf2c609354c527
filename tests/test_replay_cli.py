"""`tracker replay`: JSON lines and GPX output, summary, errors, stdin, light imports."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracker.cli import main
from tracker.core.fix import Fix
from tracker.receiver.replay import fix_json, write_gpx

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "nmea"
GOLDEN = ROOT / "tests" / "data" / "golden"
LOG = CORPUS / "gpsd" / "ublox-8.log"
GPX = "{http://www.topografix.com/GPX/1/1}"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tracker", "replay", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_jsonl_output_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(LOG)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert out == (GOLDEN / "ublox-8.log.jsonl").read_text()
    for ln in lines:
        d = json.loads(ln)
        assert list(d) == list(Fix.from_dict(d).to_dict())  # exactly Fix.to_dict()'s keys
        assert Fix.from_dict(d).to_dict() == d
    assert err.splitlines() == [
        f"epochs: {len(lines)}",
        f"fixes: {len(lines)}",
        "sentences: 648",
        "dropped binary: 1",
        "dropped comment: 10",
        "dropped no_checksum: 1",
    ]


def test_fix_json_is_compact_json_of_to_dict() -> None:
    t = datetime(2026, 8, 5, 5, 53, 4, 120_000, tzinfo=timezone.utc)
    for f in (
        Fix(t, 1.5, -2.25),
        Fix(t.replace(microsecond=0), -89.99999999, 179.123456789, 12.5, 0.0, 359.9, 3, 0, 0.6),
        Fix(t.replace(microsecond=999), 0.1, 0.2, None, 1e-05, None, 2, 12, None),
    ):
        assert fix_json(f) == json.dumps(f.to_dict(), separators=(",", ":"))


def test_quiet_and_stdin_in_a_real_process() -> None:
    p = run("-", "--quiet", stdin=LOG.read_bytes())
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    assert p.stdout.decode() == (GOLDEN / "ublox-8.log.jsonl").read_text()


def test_replay_does_not_import_the_aws_sdk() -> None:
    code = (
        "import sys; from tracker.cli import main; "
        f"main(['replay', '-q', {str(LOG)!r}]); "
        "sys.stdout.flush(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('awscrt', 'awsiot', 'serial', 'pynmea2')), file=sys.stderr)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
        check=True,
    )
    assert p.stderr.strip() == b"[]"


def test_the_one_gpx_writer_escapes_the_name_and_keeps_full_precision() -> None:
    t0 = datetime(2005, 9, 25, 23, 52, 34, tzinfo=timezone.utc)
    fixes = [
        Fix(time=t0 + timedelta(seconds=5 * i), lat=39.43 - 1e-9 * i, lon=-119.76, alt=1378.6,
            speed=23.2, course=153.1, mode=3, sats=10, hdop=0.8)
        for i in range(3)
    ]  # fmt: skip
    out = io.StringIO()
    write_gpx(fixes, out, "a<b & c")
    root = ET.fromstring(out.getvalue())
    assert root.findtext(f"{GPX}trk/{GPX}name") == "a<b & c"
    pts = root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
    assert [float(p.get("lat", "nan")) for p in pts] == [f.lat for f in fixes]
    assert pts[0].findtext(f"{GPX}time") == "2005-09-25T23:52:34Z"


def test_gpx_is_a_valid_track(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--format", "gpx", "-q", str(LOG)]) == 0
    out = capsys.readouterr().out
    root = ET.fromstring(out)
    assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
    pts = root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
    expected = [json.loads(x) for x in (GOLDEN / "ublox-8.log.jsonl").read_text().splitlines()]
    assert len(pts) == len(expected) > 0
    order = ["ele", "time", "fix", "sat", "hdop"]  # GPX 1.1 schema sequence (wptType)
    for pt, fx in zip(pts, expected, strict=True):
        assert float(pt.get("lat", "nan")) == pytest.approx(fx["lat"], abs=1e-9)
        assert float(pt.get("lon", "nan")) == pytest.approx(fx["lon"], abs=1e-9)
        tags = [c.tag.removeprefix(GPX) for c in pt]
        assert tags == sorted(tags, key=order.index)
        assert pt.findtext(f"{GPX}time") == fx["time"]
        if fx["alt"] is not None:
            assert float(pt.findtext(f"{GPX}ele", "nan")) == pytest.approx(fx["alt"])
        if fx["sats"] is not None:
            assert pt.findtext(f"{GPX}sat") == str(fx["sats"])
        assert pt.findtext(f"{GPX}fix") in ("2d", "3d")


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.nmea"
    p = run(str(missing))
    assert p.returncode == 2
    assert p.stdout == b""
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tracker: error: cannot read recording") and str(missing) in err


def test_directory_is_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracker: error: cannot read recording") and str(tmp_path) in err


def test_allow_no_checksum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "old.nmea"
    rec.write_bytes(
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230314,003.1,W\r\n"
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,\r\n"
    )
    assert main(["replay", str(rec)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "dropped no_checksum: 2" in err
    assert main(["replay", "--allow-no-checksum", "-q", str(rec)]) == 0
    (d,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (d["time"], d["alt"], d["mode"]) == ("2014-03-23T12:35:19Z", 545.4, 3)


def test_empty_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "empty.nmea"
    rec.write_bytes(b"")
    assert main(["replay", str(rec)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[:2] == ["epochs: 0", "fixes: 0"]
