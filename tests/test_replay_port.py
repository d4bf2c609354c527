"""replay:// port: the pacing schedule exactly, URL parameters, reads that honour the timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
import serial

from hw.gps import open_gps
from hw.protocol_replay import (
    cycle_gap,
    line_time,
    pacing,
    parse_url,
    recorded_gap,
    split_recording,
)
from tracker.core.clock import FakeClock
from tracker.core.errors import GpsError
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder

DATA = Path(__file__).parent / "data" / "nmea"
BU353 = DATA / "gpsd" / "bu353s4.log"


def decode(data: bytes) -> list[object]:
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    return [*decoder.feed(data), *decoder.flush()]


# -- time of day from a line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"$GPRMC,030721.000,A,3747.0876,S,17518.8934,E,0.89,181.39,311214,,,A*71\r\n", 11241.0),
        (b"$GNGGA,000941.00,4404.13387,N,12118.85628,W,1,12,1.01,1144.8,M,-21.4,M,,*4D", 581.0),
        (b"$GNGLL,4404.13387,N,12118.85628,W,000941.50,A,A*69\r\n", 581.5),
        (b"$GNGNS,235959.00,4404.1,N,12118.8,W,AA,12,1.0,1144.8,-21.4,,*00\r\n", 86399.0),
        (b"$GNZDA,120000.00,10,01,2017,00,00*70\r\n", 43200.0),
        (
            b"\x00\xb5b junk$GNRMC,000941.00,A,4404.13387,N,12118.85628,W,0.029,,100117,,,A*7D",
            581.0,
        ),
    ],
)
def test_line_time_reads_the_utc_field_of_each_timed_sentence(line: bytes, expected: float) -> None:
    assert line_time(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"$GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5*33\r\n",
        b"$GPRMC,,V,,,,,,,,,,N*53\r\n",
        b"$GPGGA,256000.00,,,,,0,00,99.99,,,,,,*00\r\n",
        b"$GPGLL,4404.1,N,12118.8,W*00\r\n",
        b"# comment 120000\n",
    ],
)
def test_line_time_is_none_without_a_valid_time(line: bytes) -> None:
    assert line_time(line) is None


# -- the pacing schedule (pure) ----------------------------------------------------------------


TIMES = [None, 100.0, None, None, 101.0, None, 102.5, 110.0]


def test_pacing_at_real_time_follows_the_recorded_gaps_and_caps_long_ones() -> None:
    assert pacing(TIMES, speed=1, max_gap=2.0) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.5, 4.5]


def test_pacing_at_speed_10_divides_every_gap() -> None:
    assert pacing(TIMES, speed=10, max_gap=2.0) == pytest.approx(
        [0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.25, 1.0]
    )


def test_pacing_at_speed_0_sends_everything_at_once() -> None:
    assert pacing(TIMES, speed=0, max_gap=2.0) == [0.0] * len(TIMES)


def test_pacing_caps_gaps_in_playback_seconds() -> None:
    assert pacing([0.0, 60.0, 61.0], speed=10, max_gap=0.5) == [0.0, 0.5, 0.6]


def test_pacing_crosses_midnight_and_ignores_time_going_backwards() -> None:
    assert pacing([86399.0, 0.0, 1.0, 0.5, 2.0], speed=1) == [0.0, 1.0, 2.0, 2.0, 3.5]
    assert recorded_gap(86399.5, 0.5) == 1.0
    assert recorded_gap(10.0, 5.0) == 0.0


def test_cycle_gap_is_one_epoch_scaled_and_capped() -> None:
    assert cycle_gap(speed=1) == 1.0
    assert cycle_gap(speed=4) == 0.25
    assert cycle_gap(speed=0.1, max_gap=2.0) == 2.0
    assert cycle_gap(speed=0) == 0.0


def test_split_recording_drops_gpsd_comment_lines_and_keeps_endings() -> None:
    assert split_recording(b"# Name: x\n$A*00\r\n#x\n$B\n") == [b"$A*00\r\n", b"$B\n"]


# -- URL parameters ----------------------------------------------------------------------------


def test_parse_url_reads_every_parameter() -> None:
    options = parse_url("replay:///var/log/drive.nmea?speed=2.5&loop=1&max_gap=0.5")
    assert (options.path, options.speed, options.loop, options.max_gap) == (
        "/var/log/drive.nmea",
        2.5,
        True,
        0.5,
    )
    assert parse_url("replay://rel/x.log").path == "rel/x.log"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("speed=fast", "'speed'"),
        ("speed=-1", "'speed'"),
        ("speed=nan", "'speed'"),
        ("max_gap=0", "'max_gap'"),
        ("loop=yes", "'loop'"),
        ("sped=2", "'sped'"),
    ],
)
def test_bad_url_parameter_is_one_gps_error_line_naming_it(query: str, name: str) -> None:
    with pytest.raises(GpsError) as info:
        open_gps(f"replay://{BU353}?{query}")
    message = str(info.value)
    assert "\n" not in message
    assert name in message
    assert message.startswith(f"cannot open GPS port replay://{BU353}?{query}: ")


def test_missing_recording_is_one_gps_error_line(tmp_path: Path) -> None:
    with pytest.raises(
        GpsError,
        match=r"^cannot open GPS port .*missing\.nmea: .*No such file.*check the file path",
    ):
        open_gps(f"replay://{tmp_path}/missing.nmea")
    with pytest.raises(GpsError, match="no file path"):
        open_gps("replay://?speed=1")


# -- the port --------------------------------------------------------------------------------


def open_paced(path: Path, query: str, clock: FakeClock) -> serial.SerialBase:
    port = serial.serial_for_url(f"replay://{path}?{query}", timeout=0, do_not_open=True)
    port.monotonic = clock.monotonic
    port.open()
    return port


def test_port_at_speed_0_delivers_the_recording_byte_for_byte() -> None:
    data = BU353.read_bytes()
    port = open_gps(f"replay://{BU353}?speed=0", timeout=0.01)
    try:
        got = b""
        while chunk := port.read(1000):
            got += chunk
        assert port.finished
        assert port.read(10) == b""  # a silent receiver after the end
    finally:
        port.close()
    assert got == b"".join(split_recording(data))
    assert decode(got) == decode(data)


def test_port_delivers_each_line_when_it_is_due(tmp_path: Path) -> None:
    rec = tmp_path / "r.nmea"
    rec.write_bytes(
        b"$GPGGA,120000.00,x\r\n$GPGSA,A,3\r\n$GPGGA,120001.00,x\r\n$GPGGA,120011.00,x\r\n"
    )
    clock = FakeClock()
    port = open_paced(rec, "speed=1&max_gap=2", clock)
    try:
        assert port.read(1000) == b"$GPGGA,120000.00,x\r\n$GPGSA,A,3\r\n"
        clock.advance(0.999)
        assert port.in_waiting == 0
        assert port.read(1000) == b""
        clock.advance(0.001)
        assert port.read(1000) == b"$GPGGA,120001.00,x\r\n"
        assert not port.finished
        clock.advance(1.999)  # the 10 s gap is capped at 2 s
        assert port.read(1000) == b""
        clock.advance(0.001)
        assert port.read(5) == b"$GPGG"
        assert not port.finished
        assert port.read(1000) == b"A,120011.00,x\r\n"
        assert port.finished
    finally:
        port.close()


def test_looping_port_restarts_one_epoch_after_the_end_across_midnight(tmp_path: Path) -> None:
    rec = tmp_path / "midnight.nmea"
    a, b = b"$GPRMC,235959.00,A\r\n", b"$GPRMC,000000.00,A\r\n"
    rec.write_bytes(a + b)
    clock = FakeClock()
    port = open_paced(rec, "speed=2&loop=1", clock)
    try:
        expected = [(0.0, a), (0.5, b), (1.0, a), (1.5, b), (2.0, a), (2.5, b), (3.0, a)]
        now = 0.0
        for at, line in expected:
            clock.advance(at - now)
            now = at
            assert port.read(1000) == line, at
        assert not port.finished
    finally:
        port.close()


def test_looping_port_at_speed_0_repeats_the_recording(tmp_path: Path) -> None:
    rec = tmp_path / "r.nmea"
    rec.write_bytes(b"$GPGGA,120000.00\r\n")
    port = open_gps(f"replay://{rec}?speed=0&loop=1", timeout=0.01)
    try:
        assert port.read(18 * 300) == b"$GPGGA,120000.00\r\n" * 300
    finally:
        port.close()


def test_port_accepts_and_drops_writes_and_a_cancelled_read_returns() -> None:
    port = open_gps(f"replay://{BU353}?speed=1", timeout=None)
    try:
        assert port.write(b"$PMTK220,1000*1F\r\n") == 18
        port.read(port.in_waiting)
        port.cancel_read()
        assert port.read(10**6) == b""
    finally:
        port.close()
