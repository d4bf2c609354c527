"""scripts/faults end to end with tiny numbers: the real daemon, broker outage and crash, a kill."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "faults"


@pytest.mark.slow
def test_a_tiny_fault_run_loses_nothing_and_prints_the_summary() -> None:
    args = ["--kills", "1", "--outages", "2", "--duration", "10", "--seed", "2"]
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=110
    )
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "1 outage" in out and "1 broker-crash" in out and "1 kill" in out
    for line in ("fixes recorded", "fixes received", "lost             0", "duplicated",
                 "seqs reused      0", "tracker said", "time taken", "faults: PASS"):  # fmt: skip
        assert line in out, out


def test_help_shows_examples() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--kills 400" in r.stdout


def test_a_bad_option_is_a_usage_error() -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--kills", "-1"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--kills" in r.stderr
