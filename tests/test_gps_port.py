"""open_gps errors and URLs; GpsReader on a real pty (exact bytes, unplug), backoff, baud."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import serial
from benchkit.fake_gps import FakeGps
from support.sink import Sink

from hw.baud import BAUD_RATES, candidate_rates, detect_baudrate
from hw.gps import GpsReader, backoff_delays, open_gps
from hw.protocol_replay import split_recording
from tracker.core.clock import FakeClock
from tracker.core.errors import GpsError
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder, Epoch
from tracker.receiver.nmea import count_valid_sentences

DATA = Path(__file__).parent / "data" / "nmea"
RECORDING = (DATA / "gpsd" / "bu353s4.log").read_bytes()
NMEA = b"".join(split_recording(RECORDING))


def decode(data: bytes) -> list[Epoch]:
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    return [*decoder.feed(data), *decoder.flush()]


# -- open_gps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/dev/ttyGPS-absent", "no such device; check [gps] url and that the receiver is plugged"),
        ("/dev/null", "not a serial port; check [gps] url"),
        ("nmea://x", "unknown scheme 'nmea'"),
        ("", "GPS port is not set"),
        ("gpsd://127.0.0.1:99999", "port must be a number 1-65535"),
        ("gpsd://localhost/dev/ttyUSB0", "takes only HOST:PORT"),
    ],
)
def test_open_errors_are_one_line_naming_the_port_and_the_fix(url: str, expected: str) -> None:
    with pytest.raises(GpsError) as info:
        open_gps(url)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert url in message
    assert isinstance(info.value, OSError)


def test_pyserial_loop_url_opens_through_open_gps() -> None:
    port = open_gps("loop://", timeout=0.5)
    try:
        port.write(b"$GPTXT,x\r\n")
        assert port.read(10) == b"$GPTXT,x\r\n"
    finally:
        port.close()


def test_pyserial_spy_url_wraps_a_real_pty(gps: FakeGps) -> None:
    port = open_gps(f"spy://{gps.path}", timeout=1)
    try:
        gps.write(b"$GPTXT,y\r\n")
        assert port.read(10) == b"$GPTXT,y\r\n"
    finally:
        port.close()


def test_a_plain_path_is_a_real_serial_port_at_the_given_rate(gps: FakeGps) -> None:
    port = open_gps(gps.path, baudrate=38400, timeout=0.25)
    try:
        assert isinstance(port, serial.Serial)
        assert (port.baudrate, port.timeout) == (38400, 0.25)
    finally:
        port.close()


# -- GpsReader on a real pty ------------------------------------------------------------------


def test_reader_on_a_pty_yields_exactly_the_epochs_of_the_file(gps: FakeGps) -> None:
    sink = Sink()
    reader = GpsReader(gps.path, sink.on_data, sink.on_status, timeout=0.1)
    reader.start()
    try:
        sink.wait(lambda: sink.ups() == 1, "port up")
        gps.play(RECORDING)
        sink.wait(lambda: len(sink.data) >= len(NMEA), "the whole recording")
    finally:
        reader.stop()
    assert bytes(sink.data) == NMEA
    assert decode(bytes(sink.data)) == decode(RECORDING)
    assert sum(e.fix is not None for e in decode(bytes(sink.data))) >= 20
    assert reader.stats.detections == 0
    assert not reader.is_alive()


def test_reader_survives_unplug_and_fixes_resume_after_replug(gps: FakeGps) -> None:
    lines = split_recording(RECORDING)
    first, second = b"".join(lines[: len(lines) // 2]), b"".join(lines[len(lines) // 2 :])
    sink = Sink()
    reader = GpsReader(
        gps.path, sink.on_data, sink.on_status, timeout=0.1, backoff_first=0.02, backoff_cap=0.1
    )
    reader.start()
    try:
        sink.wait(lambda: sink.ups() == 1, "port up")
        gps.write(first)
        sink.wait(lambda: len(sink.data) >= len(first), "the first half")
        gps.unplug()
        sink.wait(lambda: sink.downs() == 1, "port down")
        gps.replug()
        sink.wait(lambda: sink.ups() == 2, "port up again")
        received_before = len(sink.data)
        gps.write(second)
        sink.wait(lambda: len(sink.data) >= len(first) + len(second), "the second half")
    finally:
        reader.stop()
    assert received_before == len(first)
    assert bytes(sink.data) == first + second
    assert [e.fix for e in decode(bytes(sink.data)[len(first) :]) if e.fix]
    up, detail = sink.statuses[1]
    assert not up
    assert detail.startswith(f"{gps.path} lost: ") and "\n" not in detail
    assert (reader.stats.opens, reader.stats.losses, reader.stats.errors) == (2, 1, 0)


def test_commands_reach_the_receiver_while_the_port_is_open(gps: FakeGps) -> None:
    sink = Sink()
    reader = GpsReader(gps.path, sink.on_data, sink.on_status, timeout=0.1)
    with pytest.raises(GpsError, match=f"GPS port {gps.path} is not open; command not sent"):
        reader.write(b"$PMTK161,0*28\r\n")
    reader.start()
    try:
        sink.wait(lambda: sink.ups() == 1, "port up")
        reader.write(b"$PMTK161,0*28\r\n")
        received = bytearray()
        for _ in range(2000):  # poll the pty master until the command is there
            received += gps.commands()
            if len(received) >= 15:
                break
            threading.Event().wait(0.01)
    finally:
        reader.stop()
    assert bytes(received) == b"$PMTK161,0*28\r\n"


def test_stop_interrupts_a_blocked_read(gps: FakeGps) -> None:
    sink = Sink()
    reader = GpsReader(gps.path, sink.on_data, sink.on_status, timeout=60)
    reader.start()
    sink.wait(lambda: sink.ups() == 1, "port up")
    reader.stop(timeout=10)  # a 60 s read timeout: only cancel_read() ends the read this early
    assert not reader.is_alive()


def test_reader_plays_a_replay_url_to_the_end() -> None:
    sink = Sink()
    reader = GpsReader(
        f"replay://{DATA / 'gpsd' / 'bu353s4.log'}?speed=0", sink.on_data, sink.on_status
    )
    reader.start()
    try:
        sink.wait(lambda: len(sink.data) >= len(NMEA), "the whole recording")
    finally:
        reader.stop()
    assert bytes(sink.data) == NMEA
    assert sink.statuses[0][0]


# -- backoff and robustness (injected waits, no real time) -------------------------------------


def test_backoff_doubles_from_half_a_second_to_30_with_jitter() -> None:
    top = backoff_delays(rand=lambda: 1.0)
    assert [next(top) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    low = backoff_delays(rand=lambda: 0.0)
    assert [next(low) for _ in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15]


def test_reader_retries_a_missing_port_with_backoff_and_reports_down_once() -> None:
    sink = Sink()
    waits: list[float] = []
    attempts: list[int] = []

    def factory(url: str, *, baudrate: int, timeout: float) -> serial.SerialBase:
        attempts.append(baudrate)
        if len(attempts) <= 8:
            raise GpsError(f"cannot open GPS port {url}: no such device")
        reader.stop()
        port = serial.serial_for_url("loop://", timeout=0)
        return port

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    reader = GpsReader("/dev/ttyUSB0", sink.on_data, sink.on_status, open_port=factory, wait=wait)
    reader.run()
    assert len(waits) == 8
    expected = [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert all(e / 2 <= w <= e for w, e in zip(waits, expected, strict=True))
    assert sink.statuses[0] == (False, "cannot open GPS port /dev/ttyUSB0: no such device")
    assert sink.downs() == 1
    assert reader.stats.open_failures == 8


def test_reader_thread_never_dies_on_unexpected_errors() -> None:
    sink = Sink()
    calls: list[str] = []

    def factory(url: str, *, baudrate: int, timeout: float) -> serial.SerialBase:
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("driver bug")
        port = serial.serial_for_url("loop://", timeout=0)
        port.write(b"$GPTXT,1*00\r\n$GPTXT,2*00\r\n")
        return port

    def on_data(data: bytes) -> None:
        sink.on_data(data)
        if len(sink.data) >= 26:
            reader.stop()
        raise ValueError("handler bug")

    reader = GpsReader("loop://", on_data, sink.on_status, open_port=factory, wait=lambda s: False)
    reader.run()
    assert bytes(sink.data) == b"$GPTXT,1*00\r\n$GPTXT,2*00\r\n"
    assert reader.stats.errors >= 2  # the open and the handler, both logged and survived
    assert len(calls) == 2


# -- baud detection (a pty ignores the rate, so the port is a fake here) -----------------------


class RatePort:
    """A receiver at `right` baud: NMEA at that rate, line noise at any other."""

    def __init__(self, rate: int, right: int, clock: FakeClock, log: list[int]) -> None:
        self.rate, self.right, self.clock = rate, right, clock
        self.closed = False
        self.in_waiting = 0
        log.append(rate)

    def read(self, size: int = 1) -> bytes:
        self.clock.advance(0.5)
        if self.rate == self.right:
            return b"$GPGGA,120000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*67\r\n"
        return b"\xf8\x80\x00\xfe\x1e\xe6\x80\x98x\x00\x80"[:size]

    def close(self) -> None:
        self.closed = True


def rate_factory(right: int, clock: FakeClock, log: list[int], ports: list[RatePort]):  # type: ignore[no-untyped-def]
    def factory(url: str, *, baudrate: int, timeout: float) -> RatePort:
        port = RatePort(baudrate, right, clock, log)
        ports.append(port)
        return port

    return factory


def test_candidate_rates_start_with_the_configured_one() -> None:
    assert candidate_rates(38400) == [38400, 4800, 9600, 115200]
    assert candidate_rates(57600) == [57600, *BAUD_RATES]


def test_detect_baudrate_keeps_the_rate_with_valid_nmea() -> None:
    tried: list[int] = []
    ports: list[RatePort] = []
    found = detect_baudrate(
        "/dev/ttyS0", 9600, open_port=rate_factory(38400, FakeClock(), tried, ports)
    )
    assert found is not None
    assert found.baudrate == 38400
    assert tried == [9600, 4800, 38400]
    assert [p.closed for p in ports] == [True, True, False]
    assert count_valid_sentences(found.data) == 1


def test_detect_baudrate_gives_up_when_no_rate_shows_nmea() -> None:
    tried: list[int] = []
    ports: list[RatePort] = []
    assert (
        detect_baudrate("/dev/ttyS0", 9600, open_port=rate_factory(1, FakeClock(), tried, ports))
        is None
    )
    assert tried == [9600, 4800, 38400, 115200]
    assert all(p.closed for p in ports)


def test_reader_detects_the_rate_after_a_quiet_window_and_passes_nmea_on() -> None:
    clock = FakeClock()
    tried: list[int] = []
    ports: list[RatePort] = []
    sink = Sink()

    def on_data(data: bytes) -> None:
        sink.on_data(data)
        if count_valid_sentences(bytes(sink.data)):
            reader.stop()

    reader = GpsReader(
        "/dev/ttyS0",
        on_data,
        sink.on_status,
        baudrate=9600,
        detect_after=3.0,
        open_port=rate_factory(115200, clock, tried, ports),
        clock=clock,
        wait=lambda s: False,
    )
    reader.run()
    assert tried == [9600, 9600, 4800, 38400, 115200]
    assert reader.stats.baudrate == 115200
    assert reader.stats.detections == 1
    assert count_valid_sentences(bytes(sink.data)) == 1
    assert all(p.closed for p in ports)


def test_no_detection_for_urls() -> None:
    clock = FakeClock()
    tried: list[int] = []
    ports: list[RatePort] = []
    sink = Sink()

    def on_data(data: bytes) -> None:
        sink.on_data(data)
        if clock.monotonic() > 1100:
            reader.stop()

    reader = GpsReader(
        "socket://gps.local:4001",
        on_data,
        sink.on_status,
        open_port=rate_factory(115200, clock, tried, ports),
        clock=clock,
        wait=lambda s: False,
    )
    reader.run()
    assert tried == [9600]
    assert reader.stats.detections == 0
