"""gpsd:// against a real gpsd fed by gpsd's own `gpsfake` on loopback (Debian gpsd-clients).

The fixes the tracker derives through gpsd must equal those decoded from the same recording.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pytest

from hw.gps import open_gps
from hw.protocol_replay import split_recording
from tracker.core.fix import Fix
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder

DATA = Path(__file__).parent / "data" / "nmea" / "gpsd"
# Clean recordings (no bad checksums or junk, which gpsd drops) whose first sentence is unique.
RECORDINGS = ["bu353s4.log", "nl2008u.log"]
# Seconds gpsfake waits before each sentence: a cycle of the log takes about 0.5-0.7 s, so a
# whole one arrives soon after the client joins, without flooding gpsd or its client.
PACE = "0.005"
WAIT = 30.0  # generous bound for every wait on a condition; never reached when things work


def decode_fixes(data: bytes) -> list[Fix]:
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    return [e.fix for e in (*decoder.feed(data), *decoder.flush()) if e.fix is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gpsfake_command() -> list[str]:
    """gpsfake run by its own interpreter (the venv's Python lacks the system `gps` module)."""
    script = shutil.which("gpsfake")
    gpsd = shutil.which("gpsd", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if script is None or gpsd is None:
        pytest.skip("gpsfake or gpsd is not installed (Debian packages gpsd-clients and gpsd)")
    with open(script, "rb") as f:
        shebang = f.readline()
    words = shebang[2:].decode().split() if shebang.startswith(b"#!") else []
    interpreter = words[0] if words and Path(words[0]).name != "env" else "/usr/bin/python3"
    probe = subprocess.run(
        [interpreter, "-c", "import gps.fake"], env=system_env(), capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"{interpreter} cannot import gps.fake (Debian package python3-gps)")
    return [interpreter, script]


def system_env(**extra: str) -> dict[str, str]:
    """The environment without the test run's Python paths, which could shadow system modules."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End gpsfake and the gpsd it started: TERM to the group, KILL if that is not enough."""
    pgid = process.pid  # start_new_session made gpsfake the leader of its own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + 5
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            continue
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not group_alive(pgid):
            return
    process.wait()
    assert not group_alive(pgid), "gpsd started by gpsfake survived SIGKILL"


def remove_shm(key: int) -> None:
    """Drop the shared-memory export gpsd leaves behind (it cannot remove it once it has dropped
    privileges); gpsfake keys it by port, so each run would leak one otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(ctypes.c_int(key), ctypes.c_size_t(0), ctypes.c_int(0))
    if shmid >= 0:
        libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(0), None)  # 0 = IPC_RMID


@contextmanager
def gpsfake(recording: Path, log: Path) -> Iterator[int]:
    """gpsfake cycling `recording` into a gpsd on a free loopback port; yields that port."""
    command = gpsfake_command()
    port = free_port()
    # -q: no per-cycle chatter; -n: gpsd opens (and spends about 0.8 s probing) the fake pty at
    # once rather than when the client watches; -c: pace the sentences; -P: the daemon's port,
    # on loopback only. The log repeats (no -1: gpsd drops what it reads while probing), so
    # wherever the client joins, a whole cycle follows.
    args = [*command, "-q", "-n", "-c", PACE, "-P", str(port), str(recording)]
    with tempfile.TemporaryDirectory(prefix="gpsfake-") as sockets, log.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=system_env(TMPDIR=sockets),  # gpsd's control socket goes there
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + WAIT
            while True:  # ready when gpsd accepts a connection
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"gpsfake did not start: {log.read_text()}") from None
                    time.sleep(0.02)
            yield port
        finally:
            stop_group(process)
            remove_shm(0x47700000 + port)


def first_cycle(relayed: bytes | bytearray, lines: list[bytes]) -> bytes | None:
    """The relayed bytes from the first whole copy of the recording's first sentence on, as
    long as the recording; None until that much has arrived."""
    start = relayed.find(lines[0])
    size = sum(map(len, lines))
    if start < 0 or len(relayed) < start + size:
        return None
    return bytes(relayed[start : start + size])


@pytest.mark.parametrize("name", RECORDINGS)
def test_through_gpsfake_and_gpsd_the_fixes_equal_the_recordings(name: str, tmp_path: Path) -> None:
    recording = (DATA / name).read_bytes()
    lines = split_recording(recording)
    assert lines.count(lines[0]) == 1, "the first sentence must mark the start of a cycle"
    relayed = bytearray()
    log = tmp_path / "gpsfake.log"
    with gpsfake(DATA / name, log) as port, closing(open_gps(f"gpsd://127.0.0.1:{port}")) as gps:
        deadline = time.monotonic() + WAIT
        while (cycle := first_cycle(relayed, lines)) is None:
            assert time.monotonic() < deadline, (
                f"no whole cycle of {name} through gpsd in {WAIT} s; got {len(relayed)} "
                f"bytes; gpsfake said: {log.read_text()}"
            )
            relayed += gps.read(4096)

    assert cycle == b"".join(lines)  # gpsd relayed every sentence, byte for byte
    expected = decode_fixes(recording)
    got = decode_fixes(cycle)
    assert len(expected) >= 5
    assert [f.time for f in got] == [f.time for f in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.lat == pytest.approx(e.lat, abs=1e-9)
        assert g.lon == pytest.approx(e.lon, abs=1e-9)
        assert (g.alt, g.speed, g.course, g.mode, g.sats, g.hdop) == (
            e.alt,
            e.speed,
            e.course,
            e.mode,
            e.sats,
            e.hdop,
        )
