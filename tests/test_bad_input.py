"""What real receivers and damaged payloads send must never stop the tracker or lose a fix.

Each test pins one case of a fault campaign against the daemon: a value no receiver produces
used to crash the batch encoder (and the daemon, again after every restart), to make a whole
batch unreadable to the cloud, or to escape the sentence parser as an OverflowError.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_app import Harness, make_app

from tracker.core.errors import CodecError
from tracker.core.events import GpsEpoch, LinkDown, LinkUp
from tracker.core.fix import FIELD_LIMITS, Fix, Record, fix_problem
from tracker.link import codec
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder
from tracker.receiver.nmea import frame

DRIVE = Path(__file__).parent / "data" / "nmea" / "nmeaparser" / "NmeaSampleData.txt"
RMC = "GPRMC,235600,A,3924.2309,N,11944.8224,W,44.6,153.5,250905,15.2,E,A"
HUGE_ALT_GGA = "GPGGA,235600,3924.2309,N,11944.8224,W,1,10,0.9,1e307,M,-22.1,M,,"
T0 = datetime(2005, 9, 25, 23, 56, tzinfo=timezone.utc)


def decode_all(data: bytes) -> tuple[list[Fix], Decoder]:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    epochs = dec.feed(data) + dec.flush()
    return [e.fix for e in epochs if e.fix is not None], dec


def test_the_huge_altitude_gga_is_checked_against_its_exact_checksum() -> None:
    # the sentence of the campaign, byte for byte: its checksum is valid
    assert frame(HUGE_ALT_GGA) == b"$" + HUGE_ALT_GGA.encode() + b"*39\r\n"


@pytest.mark.parametrize(
    ("gga", "field"),
    [
        (HUGE_ALT_GGA, "alt"),
        ("GPGGA,235600,3924.2309,N,11944.8224,W,1,300,0.9,1378.6,M,-22.1,M,,", "sats"),
        ("GPGGA,235600,3924.2309,N,11944.8224,W,1,10,1e300,1378.6,M,-22.1,M,,", "hdop"),
        ("GPGGA,235600,3924.2309,N,11944.8224,W,1,10,0.9,-99999,M,-22.1,M,,", "alt"),
    ],
)
def test_a_value_no_receiver_reports_is_dropped_and_counted_the_fix_stays(
    gga: str, field: str
) -> None:
    fixes, dec = decode_all(frame(RMC) + frame(gga) + frame(RMC.replace("235600", "235601")))
    assert len(fixes) == 2
    first = fixes[0]
    assert getattr(first, field) is None
    assert (first.lat, first.lon) == pytest.approx((39.40385, -119.74704), abs=1e-5)
    assert dec.stats.dropped == {f"out_of_range_{field}": 1}
    assert fix_problem(first) is None
    rec = Record(1, first, "first")
    assert codec.decode(codec.encode_live(rec)) == [rec]
    assert codec.decode(codec.encode_batch([rec])[0]) == [Record(1, codec.quantize(first), "first")]


@pytest.mark.parametrize(
    "rmc",
    [
        "GPRMC,235600,A,3924.2309,N,11944.8224,W,9e300,153.5,250905,,,A",  # speed huge
        "GPRMC,235600,A,3924.2309,N,11944.8224,W,-5,153.5,250905,,,A",  # negative speed
        "GPRMC,235600,A,3924.2309,N,11944.8224,W,4.0,7e100,250905,,,A",  # course
    ],
)
def test_huge_or_negative_speed_and_course_are_dropped(rmc: str) -> None:
    fixes, dec = decode_all(frame(rmc))
    assert len(fixes) == 1 and fix_problem(fixes[0]) is None
    assert sum(dec.stats.dropped.values()) == 1


def test_a_non_finite_number_rejects_its_sentence_and_is_counted() -> None:
    fixes, dec = decode_all(frame("GPRMC,235600,A,3924.2309,N,11944.8224,W,1e400,153.5,250905,,,A"))
    assert fixes == [] and dec.stats.dropped == {"parse_error_RMC": 1}


def test_a_zda_with_a_thirty_digit_field_is_one_counted_parse_error() -> None:
    zda = "GPZDA,235600,25,09," + "9" * 30 + ",00,00"
    fixes, dec = decode_all(frame(RMC) + frame(zda) + frame(RMC.replace("235600", "235601")))
    assert len(fixes) == 2  # the epochs of the chunk are not lost
    assert dec.stats.dropped == {"parse_error_ZDA": 1}


def test_zda_years_outside_gps_time_are_refused() -> None:
    for year in ("1979", "2100", "0000", "12345"):
        _, dec = decode_all(frame(f"GPZDA,235600,25,09,{year},00,00"))
        assert dec.stats.dropped == {"parse_error_ZDA": 1}, year


def test_a_parser_bug_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracker.receiver.epoch

    def broken(body: str) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(tracker.receiver.epoch, "parse_sentence", broken)
    _, dec = decode_all(frame(RMC))
    assert dec.stats.dropped == {"parse_error_RMC": 1}


def test_the_codec_refuses_what_no_receiver_produces_with_the_seq_named() -> None:
    bad = Record(42, Fix(T0, 39.4, -119.7, alt=1e307, mode=3), "first")
    for encode in (codec.encode_live, lambda r: codec.encode_batch([r])[0]):
        with pytest.raises(CodecError, match=r"^fix 42 cannot be encoded: alt 1e\+307 is outside"):
            encode(bad)
    good = Record(41, Fix(T0, 39.4, -119.7), "first")
    with pytest.raises(CodecError, match="fix 42"):  # never an OverflowError
        codec.encode_batch([good, bad])


def test_a_batch_with_300_satellites_can_no_longer_be_made() -> None:
    # it used to go out, get its PUBACK, leave the spool and be unreadable in the cloud
    recs = [Record(s, Fix(T0, 39.4, -119.7, sats=300 if s == 3 else 10), "") for s in range(1, 6)]
    with pytest.raises(CodecError, match="fix 3 cannot be encoded: sats 300"):
        codec.encode_batch(recs)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"seq":1,"time":"2005-09-25T23:56:00Z","lat":1,"lon":2,"alt":1' + b"0" * 400 + b"}",
        b'{"seq":1,"time":"2005-09-25T23:56:00Z","lat":1e999,"lon":2}',
        b'{"seq":' + b"9" * 5000 + b',"time":"2005-09-25T23:56:00Z","lat":1,"lon":2}',
        b'{"v":1,"d":[[1' + b"0" * 400 + b',1,1]],"tt":[""]}',
        b'{"v":1,"d":[[1,1,1,1' + b"0" * 400 + b']],"tt":[""]}',
        b'{"seq":1,"time":"9999-12-31T23:59:59Z","lat":1,"lon":2}',
    ],
)
def test_tracker_decode_gives_one_line_for_out_of_range_numbers(
    tmp_path: Path, payload: bytes
) -> None:
    with pytest.raises(CodecError):
        codec.decode(payload)
    f = tmp_path / "payload.json"
    f.write_bytes(payload)
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "decode", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracker decode: "), done.stderr
    assert len(lines[0]) < 300


def test_every_field_limit_is_encodable_at_both_ends() -> None:
    for name, (lo, hi) in FIELD_LIMITS.items():
        for v in (lo, hi):
            kw = {name: int(v) if name == "sats" else v}
            rec = Record(7, Fix(T0, 89.9, -179.9, mode=3, **kw), "x")  # type: ignore[arg-type]
            assert codec.decode(codec.encode_live(rec)) == [rec]
            (back,) = codec.decode(codec.encode_batch([rec])[0])
            assert getattr(back.fix, name) == pytest.approx(v % 360 if name == "course" else v)


def test_the_daemon_delivers_a_backlog_holding_the_huge_altitude_fix(tmp_path: Path) -> None:
    """Campaign case 1, whole app: the bad GGA recorded during an outage, then the link returns."""
    harness = Harness(make_app(tmp_path))
    harness.event(LinkUp())
    harness.event(LinkDown("broker gone"))
    drive = DRIVE.read_bytes()
    cut = drive.index(b"$GPGGA,235600")
    end = drive.index(b"\n", cut) + 1
    data = drive[:cut] + frame(HUGE_ALT_GGA) + drive[end:]
    decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
    epochs = decoder.feed(data) + decoder.flush()
    assert decoder.stats.dropped.get("out_of_range_alt") == 1
    start = harness.clock.monotonic()
    t0 = next(e.time for e in epochs if e.time is not None)
    for epoch in epochs:
        if epoch.time is not None:
            harness.advance_to(start + (epoch.time - t0).total_seconds())
        harness.event(GpsEpoch(epoch))
    total = harness.app.reports
    assert total > 20
    assert harness.uplink.on("/location") == []  # all of it waits in the spool
    harness.event(LinkUp())
    received = harness.uplink.records()
    assert sorted({r.seq for r in received}) == list(range(1, total + 1))
    assert harness.app.spool.stats().backlog == 0
    assert harness.app.internal_errors == 0


def test_a_bug_while_handling_one_event_does_not_stop_the_loop(tmp_path: Path) -> None:
    harness = Harness(make_app(tmp_path, max_delay_s=0))  # each fix in its own message
    harness.event(LinkUp())
    app = harness.app
    calls = {"n": 0}
    real = app.session.on_puback

    def flaky(token: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError("a bug")
        real(token)

    app.session.on_puback = flaky  # type: ignore[method-assign]
    harness.play("qtpositioning/nmealog.txt", limit=40)
    assert app.internal_errors == 1
    assert app.reports > 3
    # the fix whose PUBACK hit the bug stays in the spool and goes again, nothing is lost
    assert {r.seq for r in harness.uplink.records()} == set(range(1, app.reports + 1))
    assert app.condition_fields("test")["internal_errors"] == 1


def test_a_date_moved_by_the_rollover_rule_is_said_once_with_its_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path)
    app.decoder = Decoder()  # the release-date floor a board runs with: 2005 is "a rollover"
    harness = Harness(app)
    harness.event(LinkUp())
    epochs = app.decoder.feed(DRIVE.read_bytes()[:20_000])
    for epoch in epochs:
        harness.event(GpsEpoch(epoch))
    said = [r.getMessage() for r in caplog.records if "week-rollover" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith("GPS date 2005-09-25 taken as 2044-12-25 ")  # moved twice
    assert "[gps] date_floor = 1999-08-22" in said[0]
    assert app.condition_fields("test")["gps"]["dates_rolled_over"] == app.decoder.stats.rolled_over
    assert app.decoder.stats.rolled_over > 10


def test_a_stored_record_no_codec_can_carry_is_set_aside_and_the_rest_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool written by an older tracker holds a 1e307 m altitude: it used to crash-loop."""
    from tracker.spool.store import Spool

    with Spool(tmp_path / "spool.db") as spool:
        for i in range(30):
            alt = 1e307 if i in (4, 29) else 100.0 + i
            spool.put(Fix(T0, 39.4 + i * 1e-4, -119.7, alt=alt, mode=3), "distance")
    harness = Harness(make_app(tmp_path))
    harness.event(LinkUp())
    app = harness.app
    assert {r.seq for r in harness.uplink.records()} == set(range(1, 31)) - {5, 30}
    st = app.spool.stats()
    assert st.backlog == 0 and st.held == 2 and set(st.held_seqs) == {5, 30}
    held = app.condition_fields("test")["spool"]
    assert held["held"] == 2 and set(held["held_seqs"]) == {5, 30}
    said = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(said) == 2 and all("alt 1e+307 is outside" in s for s in said)
    assert app.internal_errors == 0
    # the held records stay on disk for the operator
    app.spool.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "spool.db") as db:
        rows = db.execute("SELECT seq FROM held ORDER BY seq").fetchall()
    assert rows == [(5,), (30,)]
