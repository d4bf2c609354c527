"""gpsd:// port: URL and JSON filtering; a real gpsd reading a real pty, stopped and restarted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import reduce
from pathlib import Path

import pytest
import serial
from benchkit.fake_gps import FakeGps
from support.sink import Sink as BaseSink

from hw.gps import GpsReader, open_gps
from hw.protocol_gpsd import DEFAULT_PORT, parse_url, split_nmea
from hw.protocol_replay import split_recording
from tracker.core.errors import GpsError
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder, Epoch

DATA = Path(__file__).parent / "data" / "nmea"
RECORDING = (DATA / "gpsd" / "bu353s4.log").read_bytes()
LINES = split_recording(RECORDING)


def decode(data: bytes) -> list[Epoch]:
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    return [*decoder.feed(data), *decoder.flush()]


def sentence(body: str) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


WARM_UP = sentence("GPTXT,01,01,02,warm-up")


# -- pure parts --------------------------------------------------------------------------------


def test_parse_url_defaults_to_the_local_gpsd() -> None:
    assert parse_url("gpsd://") == ("127.0.0.1", DEFAULT_PORT)
    assert parse_url("gpsd://gps.local") == ("gps.local", DEFAULT_PORT)
    assert parse_url("gpsd://10.0.0.2:2948") == ("10.0.0.2", 2948)
    assert parse_url("gpsd://[::1]:2947/") == ("::1", 2947)
    with pytest.raises(serial.SerialException, match="1-65535"):
        parse_url("gpsd://host:port")


def test_split_nmea_drops_json_and_keeps_a_partial_line() -> None:
    buffer = bytearray(b'{"class":"VERSION"}\r\n$GPGGA,1*00\r\n{"class":"TPV"}\n$GPRMC,')
    assert split_nmea(buffer) == b"$GPGGA,1*00\r\n"
    assert buffer == b"$GPRMC,"
    buffer += b"2*00\r\n"
    assert split_nmea(buffer) == b"$GPRMC,2*00\r\n"
    assert buffer == b""


def test_no_gpsd_listening_is_one_gps_error_line() -> None:
    port = free_port()
    with pytest.raises(GpsError) as info:
        open_gps(f"gpsd://127.0.0.1:{port}")
    message = str(info.value)
    assert message.startswith(f"cannot open GPS port gpsd://127.0.0.1:{port}: ")
    assert "is gpsd running" in message and "\n" not in message


# -- a real gpsd -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Gpsd:
    """gpsd in the foreground as a child process, reading one device read-only."""

    def __init__(self, device: str, log: Path) -> None:
        self.device, self.log = device, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["gpsd", "-N", "-n", "-b", "-S", str(self.port), self.device],
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gpsd did not start: {self.log.read_text()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture
def gpsd(gps: FakeGps, tmp_path: Path) -> Iterator[Gpsd]:
    if shutil.which("gpsd") is None:
        pytest.skip("gpsd is not installed")
    daemon = Gpsd(gps.device, tmp_path / "gpsd.log")
    daemon.start()
    yield daemon
    daemon.stop()


class Sink(BaseSink):
    def nmea(self, start: int = 0) -> bytes:
        """What arrived from `start` on, without the warm-up lines."""
        lines = bytes(self.data[start:]).splitlines(keepends=True)
        return b"".join(line for line in lines if line != WARM_UP)


def warm_up(gps: FakeGps, sink: Sink) -> int:
    """Repeat a harmless sentence until gpsd relays it (it drops input while probing the device)."""
    start = len(sink.data)
    sink.wait(
        lambda: WARM_UP in sink.data[start:], "gpsd relaying NMEA", poke=lambda: gps.write(WARM_UP)
    )
    return len(sink.data)


def test_through_gpsd_the_tracker_gets_the_same_fixes_as_from_the_file(
    gps: FakeGps, gpsd: Gpsd
) -> None:
    sink = Sink()
    reader = GpsReader(f"gpsd://127.0.0.1:{gpsd.port}", sink.on_data, sink.on_status, timeout=0.1)
    reader.start()
    try:
        sink.wait(lambda: sink.states() == [True], "connected")
        start = warm_up(gps, sink)
        gps.write(b"".join(LINES))
        sink.wait(lambda: LINES[-1] in sink.data[start:], "the last sentence")
    finally:
        reader.stop()
    relayed = sink.nmea(start)
    assert relayed == b"".join(LINES)
    assert decode(relayed) == decode(RECORDING)
    assert sum(e.fix is not None for e in decode(relayed)) >= 20


def test_gpsd_stopped_and_started_again_is_survived(gps: FakeGps, gpsd: Gpsd) -> None:
    half = len(LINES) // 2
    first, second = b"".join(LINES[:half]), b"".join(LINES[half:])
    sink = Sink()
    reader = GpsReader(
        f"gpsd://127.0.0.1:{gpsd.port}",
        sink.on_data,
        sink.on_status,
        timeout=0.1,
        backoff_first=0.05,
        backoff_cap=0.2,
    )
    reader.start()
    try:
        sink.wait(lambda: sink.states() == [True], "connected")
        start = warm_up(gps, sink)
        gps.write(first)
        sink.wait(lambda: LINES[half - 1] in sink.data[start:], "the first half")
        gpsd.stop()
        sink.wait(lambda: sink.states() == [True, False], "the loss reported")
        gpsd.start()
        sink.wait(lambda: sink.states() == [True, False, True], "reconnected")
        restart = warm_up(gps, sink)
        gps.write(second)
        sink.wait(lambda: LINES[-1] in sink.data[restart:], "the second half")
    finally:
        reader.stop()
    assert sink.nmea(start).startswith(first)
    resumed = sink.nmea(restart)
    assert resumed == second
    assert decode(resumed) == decode(second)
    assert any(e.fix is not None for e in decode(resumed))
    assert reader.stats.losses == 1
