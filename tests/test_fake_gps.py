"""benchkit.fake_gps.FakeGps: a real pty pyserial opens like a receiver; unplug, replug, leaks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serial
from benchkit.fake_gps import FakeGps

from hw.protocol_replay import split_recording

DATA = Path(__file__).parent / "data" / "nmea"


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def read_exactly(port: serial.Serial, n: int) -> bytes:
    got = b""
    for _ in range(200):  # each read waits up to the port timeout
        got += port.read(n - len(got))
        if len(got) >= n:
            break
    return got


def test_path_is_a_stable_link_to_a_real_tty(gps: FakeGps) -> None:
    assert os.path.islink(gps.path)
    assert os.readlink(gps.path) == gps.device
    assert gps.device.startswith("/dev/pts/")
    assert gps.plugged


def test_a_played_recording_arrives_byte_for_byte(gps: FakeGps) -> None:
    data = (DATA / "gpsd" / "ublox-8.log").read_bytes()  # binary junk and all
    expected = b"".join(split_recording(data))
    with serial.Serial(gps.path, 9600, timeout=1) as port:
        gps.play(data)
        got = read_exactly(port, len(expected))
        assert gps.wait_played(10)
    assert got == expected
    assert gps.written == len(expected)


def test_unplug_fails_the_reader_and_removes_the_path(gps: FakeGps) -> None:
    port = serial.Serial(gps.path, 9600, timeout=1)
    try:
        gps.write(b"$GPTXT,01,01,02,hello*00\r\n")
        assert read_exactly(port, 26) == b"$GPTXT,01,01,02,hello*00\r\n"
        gps.unplug()
        assert not gps.plugged
        assert not os.path.lexists(gps.path)
        with pytest.raises(serial.SerialException):
            port.read(1)
        with pytest.raises(OSError):
            gps.write(b"lost\r\n")
    finally:
        port.close()


def test_replug_makes_a_new_device_behind_the_same_path(gps: FakeGps) -> None:
    gps.unplug()
    with pytest.raises(serial.SerialException):
        serial.Serial(gps.path, 9600, timeout=1)
    gps.replug()
    assert os.readlink(gps.path) == gps.device
    with serial.Serial(gps.path, 9600, timeout=1) as port:
        gps.write(b"$GPGGA,1\r\n")
        assert read_exactly(port, 10) == b"$GPGGA,1\r\n"


def test_writes_from_the_app_never_block_the_fake(gps: FakeGps) -> None:
    with serial.Serial(gps.path, 9600, timeout=1) as port:
        for _ in range(40):
            port.write(b"$PMTK314,0,1,0,1,1,5,0,0,0,0,0,0,0,0,0,0,0,0,0*28\r\n" * 50)
            gps.write(b"$GPTXT\r\n")
            assert read_exactly(port, 8) == b"$GPTXT\r\n"


def test_close_leaves_no_fd_thread_or_file(tmp_path: Path) -> None:
    before = open_fds()
    fake = FakeGps(link_dir=tmp_path, name="ttyGPS")
    assert fake.path == str(tmp_path / "ttyGPS")
    fake.play(b"$GPRMC,120000.00,A\r\n$GPRMC,120001.00,A\r\n", speed=1)
    fake.unplug()
    fake.replug()
    fake.close()
    fake.close()  # twice is harmless
    assert open_fds() == before
    assert list(tmp_path.iterdir()) == []
    own = FakeGps()
    directory = Path(own.path).parent
    own.close()
    assert not directory.exists()
