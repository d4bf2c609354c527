"""NMEA 0183 sentence fields: a verified sentence body -> `Sentence` (RMC, GGA, GLL, GNS, VTG...).

Pure and standard-library only (no serial, no pynmea2, no I/O); framing lives in
`tracker.receiver.nmea`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache

KNOTS_TO_MPS = 1852.0 / 3600.0
KMH_TO_MPS = 1.0 / 3.6

# The sentence types the decoder uses (talker ignored). Others are counted, not verified.
USED_TYPES = frozenset({"RMC", "GGA", "GSA", "GLL", "GNS", "VTG", "ZDA", "GSV"})
# Types whose time of day keys the receiver cycle (ZDA's is the output time: 50 ms later on
# some receivers, so it dates the cycle but does not delimit it).
TIMED_TYPES = frozenset({"RMC", "GGA", "GLL", "GNS"})
# NMEA 2.3+ mode indicators that are not a fix: N not valid, S simulator, M manual input.
_NOT_FIX_MODES = frozenset("NSM")


@dataclass(slots=True)
class Sentence:
    """What one sentence says about its cycle; None = the sentence does not say."""

    kind: str  # sentence type without talker: "RMC", "GGA", ...
    tod_ms: int | None = None  # UTC time of day, milliseconds
    date: date | None = None
    valid: bool | None = None  # the sentence's own fix verdict (status, quality, mode)
    simulated: bool = False  # receiver in demo/simulator mode
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None  # metres MSL
    speed: float | None = None  # m/s
    course: float | None = None
    mode: int | None = None  # GSA fix type: 1 none, 2 2D, 3 3D
    sats_used: int | None = None
    sats_in_view: int | None = None
    hdop: float | None = None


def parse_sentence(body: str) -> Sentence | None:
    """Fields of a verified sentence body ("GPRMC,...") or None for a type not used.

    Raises ValueError on a malformed field (the caller counts and skips the sentence).
    """
    if body[:1] == "P":
        return None
    # the first GSV of a group only matters for its count in view: no need to split it all
    f = body.split(",", 4) if body[2:6] == "GSV," else body.split(",")
    kind = f[0][-3:]
    parser = _PARSERS.get(kind)
    return None if parser is None else parser(kind, f)


@lru_cache(maxsize=32)  # the sentences of one cycle repeat its time
def _tod(v: str) -> int | None:
    """hhmmss[.sss] -> milliseconds of the day."""
    if not v:
        return None
    if len(v) < 6 or not v[:6].isdigit():
        raise ValueError(f"bad time {v!r}")
    h, m, s = int(v[0:2]), int(v[2:4]), int(v[4:6])
    if h > 23 or m > 59 or s > 60:
        raise ValueError(f"bad time {v!r}")
    ms = 0
    if len(v) > 7 and v[6] == ".":
        frac = v[7:10]
        if not frac.isdigit():
            raise ValueError(f"bad time {v!r}")
        ms = int(frac.ljust(3, "0"))
    return ((h * 60 + m) * 60 + s) * 1000 + ms


@lru_cache(maxsize=4)
def _ddmmyy(d: str) -> date | None:
    """RMC date; two-digit years read as 1980-2079 (GPS time starts in 1980)."""
    if not d:
        return None
    if len(d) != 6 or not d.isdigit():
        raise ValueError(f"bad date {d!r}")
    yy = int(d[4:6])
    return date(1900 + yy if yy >= 80 else 2000 + yy, int(d[2:4]), int(d[0:2]))


@lru_cache(maxsize=16)  # RMC, GGA and GLL of one cycle repeat its position
def _coord(v: str, hemi: str, neg: str) -> float | None:
    """ddmm.mmmm (or dddmm.mmmm) and a hemisphere letter -> signed decimal degrees."""
    if not v:
        return None
    x = float(v)
    if x < 0.0 or x - x != 0.0:  # negative, nan or inf: the sign is the hemisphere's
        raise ValueError(f"bad coordinate {v!r}")
    deg = int(x // 100)
    val = deg + (x - deg * 100) / 60.0  # MTK's cold-start 8960.0 (89 deg 60') is 90 deg
    return -val if hemi == neg else val


def _opt_float(v: str) -> float | None:
    if not v:
        return None
    x = float(v)
    if x - x != 0.0:  # nan or inf
        raise ValueError(f"bad number {v!r}")
    return x


def _opt_int(v: str) -> int | None:
    return int(v) if v else None


def _at(f: list[str], i: int) -> str:
    return f[i] if len(f) > i else ""


# Parsers build `Sentence` positionally (5x faster than by keyword): kind, tod_ms, date, valid,
# simulated, lat, lon, alt, speed, course, mode, sats_used, sats_in_view, hdop.


def _rmc(kind: str, f: list[str]) -> Sentence:
    if len(f) < 10:
        raise ValueError("RMC too short")
    mode = _at(f, 12)[:1]
    knots = _opt_float(f[7])
    speed = None if knots is None else knots * KNOTS_TO_MPS
    valid = f[2] == "A" and mode not in _NOT_FIX_MODES
    lat, lon = _coord(f[3], f[4], "S"), _coord(f[5], f[6], "W")
    return Sentence(
        kind, _tod(f[1]), _ddmmyy(f[9]), valid, mode == "S", lat, lon,
        None, speed, _opt_float(f[8]), None, None, None, None,
    )  # fmt: skip


def _gga(kind: str, f: list[str]) -> Sentence:
    if len(f) < 10:
        raise ValueError("GGA too short")
    q = _opt_int(f[6])
    valid = q is not None and 1 <= q <= 6
    lat, lon = _coord(f[2], f[3], "S"), _coord(f[4], f[5], "W")
    return Sentence(
        kind, _tod(f[1]), None, valid, q == 8, lat, lon,
        _opt_float(f[9]), None, None, None, _opt_int(f[7]), None, _opt_float(f[8]),
    )  # fmt: skip


def _gll(kind: str, f: list[str]) -> Sentence:
    if len(f) < 7:
        raise ValueError("GLL too short")
    mode = _at(f, 7)[:1]
    valid = f[6] == "A" and mode not in _NOT_FIX_MODES
    lat, lon = _coord(f[1], f[2], "S"), _coord(f[3], f[4], "W")
    return Sentence(
        kind, _tod(f[5]), None, valid, mode == "S", lat, lon,
        None, None, None, None, None, None, None,
    )  # fmt: skip


def _gns(kind: str, f: list[str]) -> Sentence:
    if len(f) < 10:
        raise ValueError("GNS too short")
    modes = f[6]  # one character per constellation
    # empty: a per-constellation GNS without a position of its own, says nothing
    valid = any(c in "ADPRFE" for c in modes) if modes else None
    lat, lon = _coord(f[2], f[3], "S"), _coord(f[4], f[5], "W")
    return Sentence(
        kind, _tod(f[1]), None, valid, "S" in modes, lat, lon,
        _opt_float(f[9]), None, None, None, _opt_int(f[7]), None, _opt_float(f[8]),
    )  # fmt: skip


def _vtg(kind: str, f: list[str]) -> Sentence:
    if len(f) < 5:
        raise ValueError("VTG too short")
    if _at(f, 2) == "T" or len(f) >= 9:  # NMEA 2.x: value,unit pairs
        knots, kmh = _opt_float(_at(f, 5)), _opt_float(_at(f, 7))
        mode = _at(f, 9)[:1]
    else:  # NMEA 1.5: course true, course magnetic, knots, km/h
        knots, kmh, mode = _opt_float(f[3]), _opt_float(f[4]), ""
    speed = knots * KNOTS_TO_MPS if knots is not None else None
    if speed is None and kmh is not None:
        speed = kmh * KMH_TO_MPS
    valid = False if mode and mode in _NOT_FIX_MODES else None
    return Sentence(
        kind, None, None, valid, mode == "S", None, None,
        None, speed, _opt_float(f[1]), None, None, None, None,
    )  # fmt: skip


def _gsa(kind: str, f: list[str]) -> Sentence:
    if len(f) < 18:
        raise ValueError("GSA too short")
    used = 12 - f[3:15].count("")
    return Sentence(
        kind, None, None, None, False, None, None,
        None, None, None, _opt_int(f[2]), used, None, _opt_float(f[16]),
    )  # fmt: skip


def _zda(kind: str, f: list[str]) -> Sentence:
    if len(f) < 5:
        raise ValueError("ZDA too short")
    day = None
    if f[2] and f[3] and f[4]:
        if not (len(f[4]) == 4 and len(f[3]) <= 2 and len(f[2]) <= 2):
            raise ValueError(f"bad ZDA date {f[2]!r} {f[3]!r} {f[4]!r}")
        year = int(f[4])
        if not 1980 <= year <= 2099:  # GPS time starts in 1980; RMC's two digits end in 2079
            raise ValueError(f"ZDA year {year} is out of range")
        day = date(year, int(f[3]), int(f[2]))
    return Sentence(
        kind, _tod(f[1]), day, None, False, None, None,
        None, None, None, None, None, None, None,
    )  # fmt: skip


def _gsv(kind: str, f: list[str]) -> Sentence:
    # only the first message of a group carries news; its field 3 is the count in view
    if len(f) < 4:
        raise ValueError("GSV too short")
    n = _opt_int(f[3]) if f[2] == "1" else None
    return Sentence(
        kind, None, None, None, False, None, None,
        None, None, None, None, None, n, None,
    )  # fmt: skip


_PARSERS = {
    "RMC": _rmc,
    "GGA": _gga,
    "GLL": _gll,
    "GNS": _gns,
    "VTG": _vtg,
    "GSA": _gsa,
    "ZDA": _zda,
    "GSV": _gsv,
}
