"""`tracker decode`: payload files and stdin expand to one JSON line per fix; bad files named."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracker import cli
from tracker.codec import encode_batch, encode_live
from tracker.fix import Fix, Record

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
