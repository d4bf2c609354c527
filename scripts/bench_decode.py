#!/usr/bin/env python3
"""Benchmark NMEA decoding: CPU seconds for a recording, side by side with pynmea2 and gpsd.

Usage: scripts/bench_decode.py [FILE] [--runs N]
(default FILE: tests/data/nmea/nmeaparser/NmeaSampleData.txt, a 2.5-hour drive). Prints CPU
seconds (user + system, best of N runs) for the file and per hour of recording for
  (a) a bare loop of pynmea2.parse over the file's sentence lines,
  (b) the tracker's input path in-process (bytes -> lines -> sentences -> epochs -> fixes),
  (c) the whole `python -m tracker replay FILE > /dev/null` process,
  (d) gpsd's C decoder, `gpsdecode < FILE`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder  # noqa: E402

DEFAULT_FILE = ROOT / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"


def cpu_in_process(fn: Callable[[], object], runs: int) -> float:
    """Best CPU seconds of `runs` calls."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def cpu_child(cmd: list[str], stdin_path: Path | None, runs: int, pycache: str) -> float:
    """Best user+system CPU seconds of a child process over `runs` runs (after a warm-up)."""
    best = float("inf")
    # An installed package has its bytecode compiled; PYTHONDONTWRITEBYTECODE would make every
    # run compile the tracker's modules again, so bytecode goes to a scratch folder.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(os.devnull, "wb") as out:
            stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                subprocess.run(cmd, stdin=stdin, stdout=out, stderr=out, check=True, env=env)
            finally:
                if stdin_path:
                    stdin.close()  # type: ignore[union-attr]
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if i:
            best = min(best, cpu)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    data = a.file.read_bytes()
    lines = [ln.strip() for ln in data.decode("ascii", "replace").splitlines()]
    lines = [ln for ln in lines if ln.startswith("$")]

    import pynmea2

    def bare_pynmea2() -> None:
        for ln in lines:
            try:  # noqa: SIM105 - the bare loop, as cheap as it gets
                pynmea2.parse(ln)
            except pynmea2.ParseError:
                pass

    def tracker_path() -> list[object]:
        dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
        eps = dec.feed(data) + dec.flush()
        return [e.fix for e in eps if e.fix is not None]

    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    epochs = [e for e in dec.feed(data) + dec.flush() if e.time is not None]
    hours = (epochs[-1].time - epochs[0].time).total_seconds() / 3600 if epochs else 0.0  # type: ignore[operator]
    print(
        f"file: {a.file.name}: {len(data)} bytes, {len(lines)} sentence lines, "
        f"{dec.stats.epochs} epochs, {dec.stats.fixes} fixes, {hours:.2f} h of recording"
    )
    print(f"CPU seconds, best of {a.runs} runs")

    replay = [sys.executable, "-m", "tracker", "replay", "-q", str(a.file)]
    gpsdecode = shutil.which("gpsdecode")
    with tempfile.TemporaryDirectory() as pycache:
        rows: list[tuple[str, float | None]] = [
            ("(a) pynmea2.parse loop", cpu_in_process(bare_pynmea2, a.runs)),
            ("(b) tracker input path, in-process", cpu_in_process(tracker_path, a.runs)),
            ("(c) python -m tracker replay FILE", cpu_child(replay, None, a.runs, pycache)),
            (
                "(d) gpsdecode < FILE",
                cpu_child([gpsdecode], a.file, a.runs, pycache) if gpsdecode else None,
            ),
        ]
    for label, secs in rows:
        if secs is None:
            print(f"  {label:38} n/a (apt-get install gpsd-clients)")
            continue
        per_h = f"{secs / hours:8.3f} s/h" if hours else "n/a"
        print(f"  {label:38} {secs:8.3f} s  {per_h}")
    a_s, b_s, c_s, d_s = (r[1] for r in rows)
    assert a_s is not None and b_s is not None and c_s is not None
    print(f"(b)/(a) = {b_s / a_s:.2f} (target <= 1.0)", end="")
    print(f"; (c)/(d) = {c_s / d_s:.2f} (target <= 1.5)" if d_s else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
