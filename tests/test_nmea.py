"""LineFramer (bytes -> verified sentence lines), count_valid_sentences and the field parsers."""

from __future__ import annotations

import math
from functools import reduce
from pathlib import Path

import pynmea2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.receiver.nmea import MAX_PENDING, LineFramer, _xor, count_valid_sentences
from tracker.receiver.sentences import USED_TYPES, parse_sentence

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

CORPUS = Path(__file__).parent / "data" / "nmea"
RMC = "GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E"
GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
GSV = "GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"


def line(body: str, end: str = "\r\n") -> bytes:
    ck = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{ck:02X}{end}".encode("ascii")


def test_crlf_and_lf_give_the_same_lines() -> None:
    data_crlf = line(RMC) + line(GGA)
    data_lf = line(RMC, "\n") + line(GGA, "\n")
    assert LineFramer().feed(data_crlf) == LineFramer().feed(data_lf)
    assert LineFramer().feed(data_lf) == [line(RMC, "").decode(), line(GGA, "").decode()]


def test_partial_lines_across_reads() -> None:
    data = line(RMC) + line(GGA)
    framer = LineFramer()
    got: list[str] = []
    for i in range(len(data)):
        got += framer.feed(data[i : i + 1])
    assert got == LineFramer().feed(data)
    assert framer.counters == {}


def test_binary_between_sentences_is_counted_and_skipped() -> None:
    ubx = b"\xb5\x62\x01\x07\x5c\x00\x00\xff\x10\x0a\x00"
    framer = LineFramer()
    out = framer.feed(line(RMC) + ubx + line(GGA) + ubx + b"\n" + line(RMC))
    assert out == [line(b, "").decode() for b in (RMC, GGA, RMC)]
    assert framer.counters == {"binary": 4}  # each blob holds a 0x0a: two pieces each


def test_comments_banners_and_empty_lines() -> None:
    framer = LineFramer()
    data = b"# Name: test\r\n\r\n\r\nSkytraq boot v1.2\r\n" + line(GGA)
    assert framer.feed(data) == [line(GGA, "").decode()]
    assert framer.counters == {"comment": 1, "not_nmea": 1}


def test_checksums() -> None:
    framer = LineFramer()
    bad = line(GGA).replace(b"*", b"0*")  # one more character, same checksum
    nock = b"$" + GGA.encode() + b"\r\n"
    lower = line(GGA).lower().replace(b"$gpgga", b"$GPGGA")  # hex digits in lower case
    out = framer.feed(bad + nock + line(GGA) + b"$GPGGA,1*zz\r\n")
    assert out == [line(GGA, "").decode()]
    assert framer.counters == {"bad_checksum": 2, "no_checksum": 1}
    assert LineFramer(allow_no_checksum=True).feed(nock) == [line(GGA, "").decode()]
    if lower.split(b"*")[0] == line(GGA).split(b"*")[0]:
        assert LineFramer().feed(lower) == [line(GGA, "").decode()]


def test_lowercase_checksum_digits() -> None:
    body = "GPGLL,4916.45,N,12311.12,W,225444,A"  # checksum 31... any with a letter works
    ck = reduce(lambda a, c: a ^ ord(c), body, 0)
    data = f"${body}*{ck:02x}\r\n".encode()
    assert LineFramer().feed(data) == [f"${body}*{ck:02X}"]


def test_overlong_lines_and_endless_garbage() -> None:
    framer = LineFramer()
    long_body = "GPGGA," + "1" * 300
    assert framer.feed(line(long_body)) == []
    assert framer.counters == {"overlong": 1}
    # no line end for a long while, then a sentence: the framer keeps going
    framer = LineFramer()
    assert framer.feed(b"\x00" * (MAX_PENDING + 10)) == []
    assert framer.feed(b"\n" + line(GGA)) == [line(GGA, "").decode()]
    assert framer.counters["overlong"] == 1


def test_fused_sentences_keep_the_complete_one() -> None:
    framer = LineFramer()
    truncated = line(GGA)[:30]  # receiver reset mid-sentence, no line end
    assert framer.feed(truncated + line(RMC)) == [line(RMC, "").decode()]
    assert framer.counters == {"no_checksum": 1}


def test_last_line_without_end_needs_flush() -> None:
    framer = LineFramer()
    assert framer.feed(line(GGA, "")) == []
    assert framer.flush() == [line(GGA, "").decode()]
    assert framer.flush() == []


def test_only_skips_unused_types_without_verifying() -> None:
    framer = LineFramer(only=USED_TYPES)
    gsv2 = GSV.replace("GPGSV,3,1,", "GPGSV,3,2,")
    txt = "GPTXT,01,01,02,ANTSTATUS=OK"
    out = framer.bodies(line(GSV) + line(gsv2) + line(txt) + line("PGRME,15.0,M,45.0,M,25.0,M"))
    assert out == [GSV]
    assert framer.skipped == {"GSV": 1, "TXT": 1, "RME": 1}


def test_skipped_types_stay_few() -> None:
    framer = LineFramer(only=USED_TYPES)
    data = b"".join(line(f"GP{a}{b}Q,1") for a in "ABCDEFGHIJ" for b in "KLMNOPQRST")
    assert framer.bodies(data + b"x$\xff\xfe\xfd,1*00\r\n") == []
    assert len(framer.skipped) <= 64
    assert sum(framer.skipped.values()) == 101


def test_count_valid_sentences() -> None:
    data = (CORPUS / "gpsd" / "ublox-8.log").read_bytes()[:4000]
    want = 0
    for raw in data.split(b"\n"):
        body, _, ck = raw.strip().partition(b"*")
        body = body[body.rfind(b"$") :]  # a sentence may follow binary bytes on its line
        if body.startswith(b"$") and len(ck) == 2:
            want += reduce(lambda a, c: a ^ c, body[1:], 0) == int(ck, 16)
    assert want > 40
    assert count_valid_sentences(data) == want
    # the same bytes read at a wrong baud rate look like noise
    assert count_valid_sentences(bytes((b * 7 + 3) & 0xFF for b in data)) == 0
    assert count_valid_sentences(b"") == 0
    assert count_valid_sentences(line(GGA, "")) == 1  # a last line without its line end


# ---------------------------------------------------------------- field parsers


def test_parse_rmc_fields() -> None:
    s = parse_sentence("GNRMC,081411.250,A,5541.1955,N,03737.2872,W,1.00,301.29,260514,,,A")
    assert s is not None and s.kind == "RMC"
    assert s.tod_ms == ((8 * 60 + 14) * 60 + 11) * 1000 + 250
    assert s.date is not None and s.date.isoformat() == "2014-05-26"
    assert s.valid is True
    assert s.lat == pytest.approx(55 + 41.1955 / 60)
    assert s.lon == pytest.approx(-(37 + 37.2872 / 60))
    assert s.speed == pytest.approx(0.514444, abs=1e-6)


def test_parse_rejects_malformed_fields() -> None:
    for body in (
        "GPRMC,12x519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
        "GPRMC,123519,A,nan,N,01131.000,E,022.4,084.4,230394,003.1,W",
        "GPRMC,123519,A,-4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,inf,M,46.9,M,,",
        "GPRMC,123519,A,4807.038,N",
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W",
    ):
        with pytest.raises(ValueError):
            parse_sentence(body)
    assert parse_sentence("PUBX,00,081350.00,4717.113210,N") is None
    assert parse_sentence("GPTXT,01,01,02,hello") is None


def _corpus_lines() -> list[str]:
    out: list[str] = []
    for rel in (CORPUS / "files.txt").read_text().split():
        if rel.endswith(".chk"):
            continue
        framer = LineFramer()
        out += framer.feed((CORPUS / rel).read_bytes()) + framer.flush()
    return out


def test_fields_agree_with_pynmea2_on_the_corpus() -> None:
    """Every RMC/GGA/GLL/GNS/VTG/GSA of the recordings reads as pynmea2 reads it."""
    checked = 0
    for text in _corpus_lines():
        body = text[1:].split("*")[0]
        kind = body.split(",")[0][-3:]
        if kind not in ("RMC", "GGA", "GLL", "GNS", "VTG", "GSA") or body.startswith("P"):
            continue
        try:
            ours = parse_sentence(body)
        except ValueError:
            continue  # counted by the decoder; pynmea2 may read it differently
        try:
            ref = pynmea2.parse(text)
        except pynmea2.ParseError:
            continue
        assert ours is not None
        if kind in ("RMC", "GGA", "GLL", "GNS") and ours.lat is not None:
            assert ours.lat == pytest.approx(ref.latitude, abs=1e-9), text
            assert ours.lon == pytest.approx(ref.longitude, abs=1e-9), text
        if kind == "GGA" and ref.altitude is not None:
            assert ours.alt == pytest.approx(ref.altitude), text
        if kind == "RMC" and ref.spd_over_grnd is not None:
            assert ours.speed == pytest.approx(ref.spd_over_grnd * 1852 / 3600), text
        if kind == "RMC" and ref.timestamp is not None and ours.tod_ms is not None:
            t = ref.timestamp
            ms = ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000
            assert ours.tod_ms == ms, text
        if kind == "GSA" and ref.mode_fix_type:
            assert ours.mode == int(ref.mode_fix_type), text
        checked += 1
    assert checked > 20_000


# ---------------------------------------------------------------- properties

SENTENCES = [
    RMC,
    GGA,
    GSV,
    GSV.replace(",3,1,", ",3,2,"),
    "GNGSA,A,3,01,11,31,14,22,32,04,25,03,,,,1.56,0.91,1.27",
    "PGRME,15.0,M,45.0,M,25.0,M",
]
junk = st.binary(max_size=120)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_arbitrary_bytes_never_raise_and_chunking_does_not_matter(
    data: bytes, cuts: list[int]
) -> None:
    whole = LineFramer()
    expected = whole.feed(data)
    framer = LineFramer()
    got: list[str] = []
    prev = 0
    for c in sorted(set(cuts)):
        got += framer.feed(data[prev:c])
        prev = max(prev, c)
    got += framer.feed(data[prev:])
    assert got == expected
    assert all(ln.startswith("$") and ln.isprintable() for ln in got)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SENTENCES), junk), min_size=1, max_size=6))
def test_valid_sentences_survive_junk_spliced_between(parts: list[tuple[str, bytes]]) -> None:
    data = b"".join(line(s) + j for s, j in parts)
    framer = LineFramer()
    out = framer.feed(data) + framer.flush()
    want = [line(s, "").decode() for s, _ in parts]
    it = iter(out)
    assert all(any(w == o for o in it) for w in want), (want, out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SENTENCES), junk), min_size=1, max_size=6))
def test_only_filter_keeps_exactly_the_wanted_sentences(parts: list[tuple[str, bytes]]) -> None:
    data = b"".join(line(s) + j for s, j in parts)
    every = LineFramer().bodies(data)
    wanted = [
        b
        for b in every
        if b.split(",")[0][-3:] in USED_TYPES
        and not b.startswith("P")
        and not (b.split(",")[0].endswith("GSV") and b.split(",")[2:3] != ["1"])
    ]
    assert LineFramer(only=USED_TYPES).bodies(data) == wanted


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SENTENCES), st.integers(1, 60))
def test_truncated_sentences_are_dropped(body: str, keep: int) -> None:
    full = line(body, "")
    cut = full[: min(keep, len(full) - 1)]
    framer = LineFramer()
    assert framer.feed(cut + b"\r\n") == []
    assert sum(framer.counters.values()) == 1
    assert math.isfinite(sum(framer.counters.values()))


@given(st.binary(max_size=256))
def test_checksum_fold_equals_a_byte_loop(body: bytes) -> None:
    assert _xor(body) == reduce(lambda a, c: a ^ c, body, 0)
