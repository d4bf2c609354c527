"""User mistakes at the command line end as one line and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracker import cli

ROOT = Path(__file__).resolve().parents[1]


def tracker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRACKER_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def config(tmp_path: Path, **aws: str) -> Path:
    files = {"cert": "missing-cert.pem", "key": "missing-key.pem", "ca": "missing-ca.pem", **aws}
    path = tmp_path / "tracker.toml"
    path.write_text(f"""
[device]
thing_name = "truck-1"
set_clock = false
[aws]
endpoint = "localhost"
cert = "{tmp_path / files["cert"]}"
key = "{tmp_path / files["key"]}"
ca = "{tmp_path / files["ca"]}"
[gps]
url = "{tmp_path / "no-such-port"}"
[spool]
path = "{tmp_path / "state" / "spool.db"}"
""")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "-c", "missing.toml"), "config file missing.toml not found; pass --config FILE"),
        (("replay", "missing.nmea"), "missing.nmea"),
        (("decode", "missing.json"), "missing.json"),
    ],
)
def test_missing_files_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = tracker(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tracker")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_with_a_missing_certificate_names_the_file_and_the_key(tmp_path: Path) -> None:
    proc = tracker("run", "-c", str(config(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        f"tracker: error: [aws] cert file {tmp_path / 'missing-cert.pem'} does not exist"
        in proc.stderr.splitlines()
    )
    assert "Traceback" not in proc.stderr


def test_run_with_a_bad_value_names_the_key(tmp_path: Path) -> None:
    path = config(tmp_path)
    path.write_text(path.read_text().replace("[gps]", "[gps]\nbaudrate = 12"))
    proc = tracker("run", "-c", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tracker: error: [gps] baudrate = 12 is out of range: allowed 1200 to 921600 baud"
    )


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_explains_itself_with_examples(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: tracker {name}")
    assert len(rest.split("\n\n")[0]) > 80  # a description, not just the option list
    examples = text.split("examples:\n", 1)[1]
    assert examples.strip().startswith("tracker ") or f"tracker {name}" in examples
    assert "%%" not in text and "(default: None)" not in text


def test_decode_help_says_what_a_file_holds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["decode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "A FILE holds either one message payload" in text
    assert "mosquitto_sub output with one message per line" in text
