"""Decoder: epoch grouping, validity gates, fix fields, time policy, robustness properties."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.receiver.epoch import DEFAULT_DATE_FLOOR, RECORDING_DATE_FLOOR, Decoder, Epoch

CORPUS = Path(__file__).parent / "data" / "nmea"
UTC = timezone.utc


def s(body: str) -> bytes:
    """A sentence with its checksum and CRLF."""
    ck = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{ck:02X}\r\n".encode("ascii")


def rmc(t: str = "123519", status: str = "A", d: str = "230314", talker: str = "GP",
        mode: str = "A", lat: str = "4807.038", lon: str = "01131.000") -> bytes:  # fmt: skip
    return s(f"{talker}RMC,{t},{status},{lat},N,{lon},E,022.4,084.4,{d},003.1,W,{mode}")


def gga(t: str = "123519", q: str = "1", alt: str = "545.4", talker: str = "GP",
        lat: str = "4807.038", lon: str = "01131.000") -> bytes:  # fmt: skip
    return s(f"{talker}GGA,{t},{lat},N,{lon},E,{q},08,0.9,{alt},M,46.9,M,,")


def gsa(fix: str = "3", talker: str = "GP") -> bytes:
    return s(f"{talker}GSA,A,{fix},04,05,,09,12,,,24,,,,,2.5,1.3,2.1")


def decode(data: bytes, **kw: object) -> list[Epoch]:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR, **kw)  # type: ignore[arg-type]
    return dec.feed(data) + dec.flush()


def fixes(data: bytes, **kw: object) -> list[object]:
    return [e.fix for e in decode(data, **kw) if e.fix is not None]


def test_one_cycle_merges_into_a_fix() -> None:
    (ep,) = decode(rmc() + gga() + gsa() + s("GPVTG,084.4,T,,M,022.4,N,041.5,K,A"))
    f = ep.fix
    assert f is not None
    assert f.time == datetime(2014, 3, 23, 12, 35, 19, tzinfo=UTC)
    assert f.lat == pytest.approx(48 + 7.038 / 60)
    assert f.lon == pytest.approx(11 + 31.0 / 60)
    assert f.alt == 545.4
    assert f.speed == pytest.approx(22.4 * 1852 / 3600)
    assert f.course == 84.4
    assert (f.mode, f.sats, f.hdop) == (3, 8, 0.9)
    assert (ep.sats_used, ep.hdop, ep.time) == (8, 0.9, f.time)


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "IN"])
def test_talker_does_not_matter(talker: str) -> None:
    base = fixes(rmc() + gga() + gsa())
    assert fixes(rmc(talker=talker) + gga(talker=talker) + gsa(talker=talker)) == base


def test_a_new_time_closes_the_epoch_and_untimed_sentences_join_the_open_one() -> None:
    data = gsa("2") + rmc("120000") + gga("120000") + gsa("3") + rmc("120001") + gga("120001")
    eps = decode(data)
    assert [e.fix.mode for e in eps if e.fix] == [3, 3]  # the leading GSA(2) joins, GSA(3) wins
    eps = decode(rmc("120000") + gga("120000") + gsa("2") + rmc("120001") + gga("120001"))
    assert [e.fix.mode for e in eps if e.fix] == [2, 3]


def test_milliseconds_are_kept() -> None:
    data = b"".join(rmc(f"120000.{ms:02d}") + gga(f"120000.{ms:02d}") for ms in (0, 10, 20))
    times = [f.time.microsecond for f in fixes(data)]  # type: ignore[attr-defined]
    assert times == [0, 100_000, 200_000]


# ---------------------------------------------------------------- validity gates


@pytest.mark.parametrize(
    "data",
    [
        rmc(status="V") + gga(),  # RMC says no fix
        rmc() + gga(q="0"),  # GGA says no fix
        rmc() + gga(q="7"),  # manual input
        rmc() + gga(q="8"),  # simulator
        rmc(mode="S") + gga(),  # demo / simulator mode
        rmc(mode="N") + gga(),  # mode indicator: not valid
        rmc() + gga() + gsa("1"),  # GSA: no fix
        rmc() + gga() + s("GPGLL,4807.038,N,01131.000,E,123519,V,N"),
        rmc(lat="0000.000", lon="00000.000") + gga(lat="0000.000", lon="00000.000"),
        rmc(lat="9100.000"),  # latitude out of range
        rmc(lon="18100.000"),  # longitude out of range
    ],
    ids=[
        "rmc_v",
        "gga_0",
        "gga_7",
        "gga_8",
        "sim",
        "mode_n",
        "gsa_1",
        "gll_v",
        "zero",
        "lat",
        "lon",
    ],
)
def test_gates_reject(data: bytes) -> None:
    eps = decode(data)
    assert eps and all(e.fix is None for e in eps)


@pytest.mark.parametrize("q", ["1", "2", "4", "5", "6"])
def test_gga_qualities_1_to_6_are_fixes(q: str) -> None:
    assert len(fixes(rmc() + gga(q=q))) == 1


def test_a_receiver_in_simulator_mode_never_gives_a_fix() -> None:
    sim = b"".join(rmc(f"1200{i:02d}", mode="S") + gga(f"1200{i:02d}") for i in range(30))
    assert fixes(sim) == []
    sim = b"".join(rmc(f"1200{i:02d}") + gga(f"1200{i:02d}", q="8") for i in range(30))
    assert fixes(sim) == []


def test_mode_follows_the_receiver() -> None:
    (f2,) = fixes(rmc() + gga() + gsa("2"))
    assert (f2.mode, f2.alt) == (2, None)  # type: ignore[attr-defined]
    (f3,) = fixes(rmc() + gga())
    assert f3.mode == 3  # type: ignore[attr-defined]
    (f_rmc,) = fixes(rmc())
    assert (f_rmc.mode, f_rmc.alt) == (2, None)  # type: ignore[attr-defined]


def test_gns_and_gll_positions() -> None:
    gns = s("GNGNS,123519.00,4807.038,N,01131.000,E,AAN,10,1.2,545.4,46.9,,")
    (f,) = fixes(rmc() + gns)
    assert (f.sats, f.alt, f.mode) == (10, 545.4, 3)  # type: ignore[attr-defined]
    assert fixes(rmc() + s("GNGNS,123519.00,4807.038,N,01131.000,E,NN,10,1.2,545.4,,,")) == []


# ---------------------------------------------------------------- time policy


def test_no_fix_before_the_date_is_known() -> None:
    # GGA-only fix cycles before any RMC/ZDA: time of day without a date
    eps = decode(gga("120000") + gga("120001") + rmc("120002") + gga("120002"))
    assert [e.time for e in eps[:2]] == [None, None]
    assert [e.fix is None for e in eps] == [True, True, False]


def test_placeholder_dates_before_the_first_fix_are_not_trusted() -> None:
    cold = rmc("000012", status="V", d="060180") + gga("000012", q="0")  # 1980-01-06
    eps = decode(cold + gga("120000") + rmc("120001", d="260514") + gga("120001"))
    assert [e.fix is None for e in eps] == [True, True, False]
    assert eps[1].time is None  # the 1980 date from the no-fix cycle was not used
    assert eps[2].time == datetime(2014, 5, 26, 12, 0, 1, tzinfo=UTC)


def test_date_from_zda_and_midnight() -> None:
    zda = s("GPZDA,235959.05,31,12,2015,00,00")
    eps = decode(gga("235959") + zda + gga("000000") + gga("000001"))
    assert [e.fix.time for e in eps if e.fix] == [
        datetime(2015, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2016, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2016, 1, 1, 0, 0, 1, tzinfo=UTC),
    ]
    # ZDA sent 50 ms after the cycle's time does not open a cycle of its own
    assert len(eps) == 3


def test_week_rollover_is_undone_against_the_floor() -> None:
    true_day = DEFAULT_DATE_FLOOR + timedelta(days=25)
    reported = true_day - timedelta(weeks=1024)  # a receiver hit by the 2019 rollover
    d = reported.strftime("%d%m%y")
    live = Decoder()  # the device: default floor
    (ep,) = live.feed(rmc(d=d) + gga()) + live.flush()
    assert ep.fix is not None and ep.fix.time.date() == true_day
    # a recording keeps its own date
    (f,) = fixes(rmc(d=d) + gga())
    assert f.time.date() == reported  # type: ignore[attr-defined]
    # two rollovers (a receiver whose week counter wrapped in 1999 and again in 2019)
    dec = Decoder()
    eps = dec.feed(rmc(d=(true_day - timedelta(weeks=2048)).strftime("%d%m%y"))) + dec.flush()
    assert eps[-1].fix is not None and eps[-1].fix.time.date() == true_day


def test_floor_dates() -> None:
    assert date(2026, 1, 1) <= DEFAULT_DATE_FLOOR <= date(2030, 1, 1)
    assert date(1999, 8, 22) == RECORDING_DATE_FLOOR  # the first GPS week rollover


# ---------------------------------------------------------------- robustness


def test_truncated_last_line_is_not_a_fix() -> None:
    data = rmc("120000") + gga("120000") + rmc("120001")[:-20]  # log cut mid-sentence
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    eps = dec.feed(data) + dec.flush()
    assert len([e for e in eps if e.fix]) == 1
    assert dec.stats.dropped == {"no_checksum": 1}


def test_checksumless_sentences_only_when_allowed() -> None:
    bare = b"".join(x.split(b"*")[0] + b"\r\n" for x in (rmc(), gga()))
    assert fixes(bare) == []
    assert len(fixes(bare, allow_no_checksum=True)) == 1


def test_a_receiver_without_fix_still_produces_epochs() -> None:
    empty = s("GPRMC,,V,,,,,,,,,,N") + s("GPGGA,,,,,,0,,,,M,,M,,") + s("GPGSV,1,1,02,13,00,000,39")
    eps = decode(empty * 5)
    assert len(eps) == 5
    assert all(e.fix is None and e.time is None for e in eps)
    assert eps[0].sats_in_view == 2


def test_stats_count_sentences_drops_and_unused_types() -> None:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    data = rmc() + gga() + b"# comment\r\n" + s("GPTXT,01,01,02,hi") + s("GPRMC,1x,A,,,,,,,,,")
    dec.feed(data)
    dec.flush()
    st_ = dec.stats
    assert (st_.sentences, st_.epochs, st_.fixes) == (2, 1, 1)
    assert st_.dropped == {"comment": 1, "parse_error_RMC": 1}
    assert st_.unknown_types == {"TXT": 1}


SAMPLE = (CORPUS / "gpsd" / "bu353-glonass.log").read_bytes()
SAMPLE_FIXES = fixes(SAMPLE)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=12))
def test_chunking_does_not_change_the_epochs(cuts: list[int]) -> None:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    eps: list[Epoch] = []
    prev = 0
    for c in sorted(cuts):
        eps += dec.feed(SAMPLE[prev:c])
        prev = max(prev, c)
    eps += dec.feed(SAMPLE[prev:]) + dec.flush()
    assert [e.fix for e in eps if e.fix] == SAMPLE_FIXES


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR, allow_no_checksum=True)
    dec.feed(data)
    dec.flush()
    assert dec.stats.fixes <= dec.stats.epochs


CYCLES = [rmc(f"1200{i:02d}") + gga(f"1200{i:02d}") + gsa() for i in range(6)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=6, max_size=6))
def test_junk_between_cycles_keeps_their_fixes(junk: list[bytes]) -> None:
    clean = fixes(b"".join(CYCLES))
    assert len(clean) == 6
    assert fixes(b"".join(c + j for c, j in zip(CYCLES, junk, strict=True))) == clean


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(CYCLES) - 1), st.integers(1, 60), st.binary(max_size=10))
def test_a_truncated_sentence_never_becomes_a_fix(i: int, keep: int, junk: bytes) -> None:
    clean = {f.time: f for f in fixes(b"".join(CYCLES))}  # type: ignore[attr-defined]
    cycles = list(CYCLES)
    cycles[i] = cycles[i][: min(keep, len(rmc()) - 3)] + junk + cycles[i][len(rmc()) :]
    got = fixes(b"".join(cycles))
    for f in got:  # every fix is a real one: the cut RMC contributes nothing
        c = clean[f.time]  # type: ignore[attr-defined]
        assert (f.lat, f.lon, f.alt) == (c.lat, c.lon, c.alt)  # type: ignore[attr-defined]
    others = [f for t, f in clean.items() if t.second != i]
    assert [f for f in got if f.time.second != i] == others  # type: ignore[attr-defined]
