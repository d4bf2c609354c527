"""`tracker decode`: payload files and stdin expand to one JSON line per fix; bad files named."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracker import cli
from tracker.core.fix import Fix, Record
from tracker.link.codec import encode_batch, encode_live

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2005, 9, 25, 23, 52, 34, tzinfo=timezone.utc)
RECORDS = [
    Record(
        7 + i,
        Fix(T0 + timedelta(seconds=2 * i), 39.4328367, -119.76559, 1378.6, 23.2, 153.1, 3, 10, 0.8),
        "interval" if i else "",
    )
    for i in range(3)
]


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_batch_and_live_files_expand_to_one_line_per_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch, live = tmp_path / "batch.json", tmp_path / "live.json"
    batch.write_bytes(encode_batch(RECORDS)[0])
    live.write_bytes(encode_live(RECORDS[1]))
    assert cli.main(["decode", str(batch), str(live)]) == 0
    out = lines(capsys.readouterr().out)
    assert [o["seq"] for o in out] == [7, 8, 9, 8]
    v2 = tmp_path / "batch.v2"  # a deflated batch: the same lines
    v2.write_bytes(encode_batch(RECORDS, version=2)[0])
    assert cli.main(["decode", str(v2)]) == 0
    assert lines(capsys.readouterr().out) == out[:3]
    assert "trigger" not in out[0] and out[1]["trigger"] == "interval"
    assert out[0] == {"seq": 7, **RECORDS[0].fix.to_dict()}
    assert out[1] == out[3]  # batch and live agree field for field


def test_bad_files_are_named_in_one_line_and_the_rest_still_decoded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(encode_live(RECORDS[0]))
    bad.write_bytes(b'{"v":1,"d":[["x"]],"tt":[]}')
    missing = tmp_path / "missing.json"
    assert cli.main(["decode", str(bad), str(missing), str(good)]) == 2
    captured = capsys.readouterr()
    assert [o["seq"] for o in lines(captured.out)] == [7]
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"tracker decode: {bad}: batch row 0")
    assert errors[1].startswith(f"tracker decode: {missing}: ")


def test_stdin_payload_through_the_real_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "decode", "-"],
        input=encode_batch(RECORDS)[0],
        capture_output=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [o["seq"] for o in lines(done.stdout.decode())] == [7, 8, 9]


def _capture(tmp_path: Path, lines: list[bytes]) -> Path:
    p = tmp_path / "captured.txt"
    p.write_bytes(b"".join(line + b"\n" for line in lines))
    return p


def test_captured_plain_lines_are_a_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mosquitto_sub -t ...` prints one payload per line: that used to fail with Extra data."""
    p = _capture(tmp_path, [encode_live(RECORDS[0]), encode_batch(RECORDS[1:])[0]])
    assert cli.main(["decode", str(p)]) == 0
    out = lines(capsys.readouterr().out)
    assert [o["seq"] for o in out] == [7, 8, 9] and "thing" not in out[0]


def test_json_envelopes_carry_the_thing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = "dt/tracker/truck-7/location"
    live = encode_live(RECORDS[0]).decode()
    p = _capture(
        tmp_path,
        [
            # -F %j: the payload quoted
            json.dumps({"tst": "2026-11-30T08:00:00.000000Z+0000", "topic": topic, "qos": 1,
                        "retain": 0, "payloadlen": len(live), "payload": live}).encode(),
            # -F %J: the payload as JSON
            json.dumps({"topic": "$aws/rules/R/dt/tracker/truck-8/location",
                        "payload": json.loads(encode_batch(RECORDS[1:])[0])}).encode(),
            json.dumps({"topic": "dt/tracker/truck-7/condition", "payload": "{}"}).encode(),
        ],
    )  # fmt: skip
    assert cli.main(["decode", str(p)]) == 0
    out = lines(capsys.readouterr().out)
    assert [(o["thing"], o["seq"]) for o in out] == [("truck-7", 7), ("truck-8", 8), ("truck-8", 9)]
    assert list(out[0])[:2] == ["thing", "seq"]
    assert {k: v for k, v in out[0].items() if k != "thing"} == {
        "seq": 7,
        **RECORDS[0].fix.to_dict(),
    }


def test_hex_and_verbose_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = encode_batch(RECORDS)[0]
    p = _capture(
        tmp_path,
        [batch.hex().encode(), b"dt/tracker/truck-3/location " + encode_live(RECORDS[2])],
    )
    assert cli.main(["decode", str(p)]) == 0
    out = lines(capsys.readouterr().out)
    assert [(o.get("thing"), o["seq"]) for o in out] == [(None, 7), (None, 8), (None, 9),
                                                         ("truck-3", 9)]  # fmt: skip


def test_a_bad_line_is_named_by_line_number_and_the_rest_decoded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _capture(tmp_path, [encode_live(RECORDS[0]), b'{"v":7,"d":[[1]],"tt":[]}', b"\x00\xff",
                            encode_live(RECORDS[1])])  # fmt: skip
    assert cli.main(["decode", str(p)]) == 2
    captured = capsys.readouterr()
    assert [o["seq"] for o in lines(captured.out)] == [7, 8]
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"tracker decode: {p}:2: batch version 7 is not supported")
    assert errors[1].startswith(f"tracker decode: {p}:3: not JSON")


def test_captured_stream_on_stdin_through_the_real_command() -> None:
    data = encode_live(RECORDS[0]) + b"\n" + encode_live(RECORDS[1]) + b"\n"
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "decode", "-"],
        input=data, capture_output=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [o["seq"] for o in lines(done.stdout.decode())] == [7, 8]
