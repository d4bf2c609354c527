"""Fuzzing in CI (bounded): no sentence stops the decoder, every fix it makes can be carried, and
no payload gets past the codec or `tracker decode` as anything but a one-line refusal.

`scripts/fuzz` runs the same promises over a million generated sentences for a release.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.core.errors import CodecError
from tracker.core.fix import Record, fix_problem
from tracker.link import codec
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder
from tracker.receiver.nmea import frame
from tracker.twin import decode as decode_cli

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("RMC", "GGA", "GSA", "GLL", "GNS", "VTG", "ZDA", "GSV")
EVIL = st.sampled_from(
    ["", "0", "-1", "1e307", "-1e307", "1e400", "nan", "inf", "9" * 30, "1_000", " 12", "12:34",
     "8960.0000", "246060", "310299", "1979", "2100", "A", "V", "N", "S", "W", "E", "M"]
)  # fmt: skip
NUMBERS = st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.integers().map(str)
FIELD = EVIL | NUMBERS | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
SENTENCE = st.builds(
    lambda talker, kind, fields: frame(",".join([talker + kind, *fields]).replace("*", "")),
    st.sampled_from(["GP", "GN", "GL", "BD", ""]),
    st.sampled_from(TYPES),
    st.lists(FIELD, max_size=20),
)
# real sentences with one field replaced: they reach the epoch logic and the fix gates
TEMPLATES = [
    "GPRMC,235600,A,3924.2309,N,11944.8224,W,44.6,153.5,250905,15.2,E,A",
    "GPGGA,235600,3924.2309,N,11944.8224,W,1,10,0.9,1378.6,M,-22.1,M,,",
    "GPZDA,235600,25,09,2005,00,00",
    "GPGSA,A,3,02,04,05,07,,09,24,,28,,,,1.8,0.9,1.5",
    "GPVTG,153.5,T,138.3,M,44.6,N,82.6,K,A",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    fields = draw(st.sampled_from(TEMPLATES)).split(",")
    for _ in range(draw(st.integers(1, 3))):
        fields[draw(st.integers(1, len(fields) - 1))] = draw(FIELD)
    return frame(",".join(fields).replace("*", ""))


def carried(dec: Decoder, data: list[bytes]) -> None:
    epochs = [e for chunk in data for e in dec.feed(chunk)] + dec.flush()
    recs = [Record(i, e.fix, "fuzz") for i, e in enumerate(epochs, 1) if e.fix is not None]
    for rec in recs:
        assert fix_problem(rec.fix) is None
        assert codec.decode(codec.encode_live(rec)) == [rec]
    if recs:
        payload, n = codec.encode_batch(recs)
        assert [r.seq for r in codec.decode(payload)] == [r.seq for r in recs[:n]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SENTENCE | mutated(), min_size=1, max_size=30))
def test_no_sentence_stops_the_decoder_and_every_fix_is_carried(data: list[bytes]) -> None:
    carried(Decoder(date_floor=RECORDING_DATE_FLOOR), data)


@settings(max_examples=200, deadline=None)
@given(st.lists(mutated(), min_size=1, max_size=10), st.sampled_from(TEMPLATES[:2]))
def test_real_fixes_with_damaged_fields_are_carried(data: list[bytes], good: str) -> None:
    # a good sentence before and after, so the damaged ones land inside real epochs
    carried(Decoder(date_floor=RECORDING_DATE_FLOOR), [frame(good), *data, frame(good)])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)
KEYS = st.sampled_from(["seq", "time", "lat", "lon", "alt", "sats", "mode", "v", "d", "tt"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, JSON, max_size=8))
def test_hostile_documents_are_refused_with_codec_error_only(doc: dict[str, object]) -> None:
    try:
        payload = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        records = codec.decode(payload)
    except CodecError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
        return
    assert all(fix_problem(r.fix) is None for r in records)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.integers(0, 3))
def test_damaged_real_payloads_go_through_tracker_decode_as_one_line(
    tmp_path_factory: pytest.TempPathFactory, noise: bytes, at: int, which: int
) -> None:
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    data = (ROOT / "tests/data/nmea/qtpositioning/nmealog.txt").read_bytes()[:20_000]
    fixes = [e.fix for e in dec.feed(data) if e.fix is not None]
    recs = [Record(i, f, "distance") for i, f in enumerate(fixes[:20], 1)]
    good = codec.encode_live(recs[0]) if which == 0 else codec.encode_batch(recs)[0]
    bad = good[:at] + noise + good[at + len(noise) // 2 :]
    path = tmp_path_factory.mktemp("decode") / "payload"
    path.write_bytes(bad)
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        status = decode_cli.main(argparse.Namespace(files=[str(path)]))
    out, err = o.getvalue(), e.getvalue()
    assert status in (0, 2)
    if status == 2:  # one line per bad message: a damaged payload may have become several lines
        lines = err.splitlines()
        assert 1 <= len(lines) <= max(1, len(bad.splitlines()))
        assert all(line.startswith(f"tracker decode: {path}") for line in lines)
    else:
        assert err == "" and all(json.loads(line)["seq"] >= 0 for line in out.splitlines())


def test_the_release_fuzz_script_runs_clean_on_a_small_budget() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/fuzz.py"), "--inputs", "20000", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "20,000 sentences" in done.stdout
    assert "escapes: 0" in done.stdout
