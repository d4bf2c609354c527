"""NMEA sentences -> receiver epochs -> `Fix`: epoch grouping, validity gates and time policy.

Pure: no I/O, no threads, no clock; used by `tracker replay` and the daemon's GPS reader.
Must not import serial, awsiot or awscrt.

Epochs. One receiver cycle is keyed by its UTC time of day. A sentence carrying a new time of
day (RMC, GGA, GLL, GNS) closes the open epoch; sentences without a time (GSA, VTG, GSV) and
ZDA (whose time is when it was sent, up to 50 ms after the cycle's) belong to the open epoch,
as in gpsd, so a GSA sent before a log's first timed sentence joins
the first epoch. Before its first fix a receiver sends these types with an empty time: an
empty time after a time (or the reverse) also starts a cycle, and so does a type repeating
while the time stays empty, so a receiver without a fix still produces epochs and its last
no-fix RMC never vetoes the first fix.

Validity gates (an epoch is a fix only if all hold):
  1. at least one sentence gives a position and says it is valid: RMC/GLL status A, GGA
     quality 1-6 (0 no fix, 7 manual input and 8 simulator are not fixes), GNS with a mode
     character other than N/S/M;
  2. no sentence of the epoch says "no fix": RMC/GLL status V, GGA quality 0/7/8, a mode
     indicator N (not valid), S (simulator) or M (manual), GSA fix type 1;
  3. the receiver is not in demo or simulator mode (mode indicator S, GGA quality 8):
     such an epoch is never a fix, whatever its status fields say;
  4. coordinates in range (|lat| <= 90, |lon| <= 180) and not exactly 0/0;
  5. the epoch's UTC date is known (see the time policy).
Bounds: a value no real receiver reports (an altitude of 1e307 m, 300 satellites: see
`tracker.core.fix.FIELD_LIMITS`) is dropped from the epoch and counted as `out_of_range_<field>`;
the position stays. So every fix can be encoded and decoded again.
Mode: the receiver's GSA fix type (2 or 3) when the epoch has a GSA; otherwise 3 when GGA/GNS
carries an altitude, else 2. Altitude only in 3D.

Time policy. Receivers send placeholder dates before their first fix (1980-01-06, firmware
dates) and, after a GPS week-number rollover (every 1024 weeks: 1999-08-22, 2019-04-07), dates
1024 weeks in the past. So:
  * a date (RMC ddmmyy read as 1980-2079, or ZDA) is trusted only in an epoch that passed the
    position gates: a date from a no-fix epoch is never used;
  * a trusted date before `date_floor` is moved forward by 1024 weeks until it is not (the
    receiver's week counter wrapped); `date_floor` defaults to `DEFAULT_DATE_FLOOR` (the
    release date: nothing the device sees can be older) and `tracker replay` passes
    `RECORDING_DATE_FLOOR` (1999-08-22, the first rollover) to keep old recordings' dates;
  * an epoch without a date of its own inherits the last trusted one, one day later when its
    time of day wrapped past midnight;
  * until a date is known, epochs have `time` None and are not fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

from tracker.core.fix import Fix, in_limits
from tracker.receiver.nmea import LineFramer
from tracker.receiver.sentences import TIMED_TYPES, USED_TYPES, Sentence, parse_sentence

ROLLOVER = timedelta(weeks=1024)
DEFAULT_DATE_FLOOR = date(2026, 11, 1)  # bump at each release: no fix can be older than this
RECORDING_DATE_FLOOR = date(1999, 8, 22)  # first GPS week rollover
_DAY_MS = 86_400_000
_UTC = timezone.utc
_N = TypeVar("_N", int, float)


@dataclass(frozen=True, slots=True)
class Epoch:
    """One receiver cycle, merged from its sentences."""

    time: datetime | None  # aware UTC of the receiver cycle; None while date/time unknown
    fix: Fix | None  # the cycle's position when it passed the validity gates
    sats_used: int | None
    sats_in_view: int | None
    hdop: float | None


@dataclass(slots=True)
class DecodeStats:
    """Counters over the whole input."""

    sentences: int = 0  # verified sentences of the types the decoder uses
    epochs: int = 0
    fixes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # framing and parse errors by reason
    unknown_types: dict[str, int] = field(default_factory=dict)  # types not used, not verified
    rolled_over: int = 0  # trusted dates moved forward by the week-rollover rule
    first_rollover: tuple[date, date] | None = None  # the first such date: (sent, used)


class _Cycle:
    """The sentences of the open epoch, folded as they arrive."""

    __slots__ = (
        "alt", "course", "date", "gsa_mode", "gsa_sats", "hdop", "hdop_gsa", "in_view", "kinds",
        "lat", "lon", "no_fix", "sats", "simulated", "speed", "timed", "tod", "valid_pos",
        "zda_date", "zda_tod",
    )  # fmt: skip

    def __init__(self) -> None:
        self.tod: int | None = None
        self.date: date | None = None
        self.kinds: set[str] = set()
        self.timed = False  # holds an RMC, GGA, GLL or GNS (with or without a time)
        self.lat: float | None = None
        self.lon: float | None = None
        self.valid_pos = False
        self.no_fix = False
        self.simulated = False
        self.alt: float | None = None
        self.speed: float | None = None
        self.course: float | None = None
        self.gsa_mode: int | None = None
        self.gsa_sats: int | None = None
        self.sats: int | None = None
        self.hdop: float | None = None
        self.hdop_gsa: float | None = None
        self.in_view: int | None = None
        self.zda_tod: int | None = None
        self.zda_date: date | None = None

    def add(self, s: Sentence) -> None:
        kind = s.kind
        self.kinds.add(kind)
        if kind == "GSA":  # one per constellation on multi-GNSS receivers
            if s.mode is not None:
                self.gsa_mode = s.mode if self.gsa_mode is None else max(self.gsa_mode, s.mode)
            self.gsa_sats = (self.gsa_sats or 0) + (s.sats_used or 0)
            if s.hdop is not None:
                self.hdop_gsa = s.hdop
            return
        if kind == "GSV":  # one group per constellation
            if s.sats_in_view is not None:
                self.in_view = (self.in_view or 0) + s.sats_in_view
            return
        if kind == "ZDA":
            self.zda_tod, self.zda_date = s.tod_ms, s.date
            return
        # RMC, GGA, GLL, GNS, VTG
        if s.tod_ms is not None:
            self.tod = s.tod_ms
        if s.date is not None:
            self.date = s.date
        if s.simulated:
            self.simulated = True
        if s.valid is False:
            self.no_fix = True
        elif s.valid and s.lat is not None and s.lon is not None:
            self.lat, self.lon, self.valid_pos = s.lat, s.lon, True
        if s.alt is not None:
            self.alt = s.alt
        if s.speed is not None and (self.speed is None or kind == "RMC"):
            self.speed = s.speed
        if s.course is not None and (self.course is None or kind == "RMC"):
            self.course = s.course
        if s.sats_used is not None:
            self.sats = s.sats_used
        if s.hdop is not None:
            self.hdop = s.hdop

    def day(self) -> date | None:
        """The receiver's date for this cycle: RMC's, else ZDA's across midnight if need be."""
        if self.date is not None or self.zda_date is None:
            return self.date
        if self.tod is not None and self.zda_tod is not None:
            if self.tod - self.zda_tod > _DAY_MS // 2:
                return self.zda_date - timedelta(days=1)
            if self.zda_tod - self.tod > _DAY_MS // 2:
                return self.zda_date + timedelta(days=1)
        return self.zda_date

    def position_ok(self) -> bool:
        if not self.valid_pos or self.no_fix or self.simulated or self.gsa_mode == 1:
            return False
        lat, lon = self.lat, self.lon
        assert lat is not None and lon is not None
        return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and (lat != 0.0 or lon != 0.0)


class Decoder:
    """Bytes in, epochs out: framing, sentence parsing, epoch merging, gates, time policy."""

    def __init__(
        self, *, allow_no_checksum: bool = False, date_floor: date = DEFAULT_DATE_FLOOR
    ) -> None:
        self._framer = LineFramer(allow_no_checksum=allow_no_checksum, only=USED_TYPES)
        self._floor = date_floor
        self._cycle = _Cycle()
        self._started = False  # the open cycle holds at least one sentence
        self._last_date: date | None = None  # last trusted date and the time of day it was at
        self._last_tod = 0
        self._midnight_day: date | None = None  # cache: midnight UTC of the last epoch's day
        self._midnight = datetime(1970, 1, 1, tzinfo=_UTC)
        self._parse_errors: dict[str, int] = {}
        self.stats = DecodeStats()

    @property
    def date_floor(self) -> date:
        """Trusted dates before this one are taken as GPS week rollovers."""
        return self._floor

    def feed(self, data: bytes) -> list[Epoch]:
        """Epochs completed by this chunk of receiver output."""
        return self._run(self._framer.bodies(data))

    def flush(self) -> list[Epoch]:
        """End of input: frame the last line and close the open epoch."""
        out = self._run(self._framer.bodies(b"\n"))  # the last line, even without its end
        if self._started:
            out.append(self._close())
        self._sync_dropped()
        return out

    def _run(self, bodies: list[str]) -> list[Epoch]:
        out: list[Epoch] = []
        errors = self._parse_errors
        used = 0
        for body in bodies:
            try:
                s = parse_sentence(body)
            except Exception:  # one sentence, even through a bug, must never stop the reader
                kind = body.split(",", 1)[0][-3:]
                key = f"parse_error_{kind}"
                errors[key] = errors.get(key, 0) + 1
                continue
            if s is None:
                continue
            used += 1
            cyc = self._cycle
            if s.kind in TIMED_TYPES:
                # A new time of day starts a cycle; so does a change between an empty time and
                # a time (the first fix), and, while the time stays empty, a repeated type.
                if cyc.timed and (
                    s.tod_ms != cyc.tod or (s.tod_ms is None and s.kind in cyc.kinds)
                ):
                    out.append(self._close())
                    cyc = self._cycle
                cyc.timed = True
            cyc.add(s)
        if used:
            self._started = True
            self.stats.sentences += used
        self._sync_dropped()
        return out

    def _sync_dropped(self) -> None:
        d = dict(self._framer.counters)
        for k, v in self._parse_errors.items():
            d[k] = d.get(k, 0) + v
        self.stats.dropped = d
        self.stats.unknown_types = self._framer.skipped

    def _close(self) -> Epoch:
        cyc = self._cycle
        self._cycle = _Cycle()
        self._started = False
        self.stats.epochs += 1
        ok = cyc.position_ok()
        when = self._time_of(cyc, ok)
        bounded = self._bounded
        sats = bounded("sats", cyc.sats if cyc.sats is not None else cyc.gsa_sats or None)
        hdop = bounded("hdop", cyc.hdop if cyc.hdop is not None else cyc.hdop_gsa)
        in_view = bounded("sats", cyc.in_view, "out_of_range_in_view")
        fix = None
        if ok and when is not None:
            assert cyc.lat is not None and cyc.lon is not None
            alt = bounded("alt", cyc.alt)
            mode = cyc.gsa_mode if cyc.gsa_mode in (2, 3) else 3 if alt is not None else 2
            # positional: Fix(time, lat, lon, alt, speed, course, mode, sats, hdop)
            fix = Fix(
                when, cyc.lat, cyc.lon, alt if mode == 3 else None, bounded("speed", cyc.speed),
                bounded("course", cyc.course), mode, sats, hdop,
            )  # fmt: skip
            self.stats.fixes += 1
        return Epoch(when, fix, sats, in_view, hdop)

    def _bounded(self, name: str, v: _N | None, key: str = "") -> _N | None:
        """The value, or None (counted) when no real receiver reports it."""
        if v is None or in_limits(name, v):
            return v
        key = key or f"out_of_range_{name}"
        self._parse_errors[key] = self._parse_errors.get(key, 0) + 1
        return None

    def _time_of(self, cyc: _Cycle, trusted: bool) -> datetime | None:
        """The epoch's UTC time under the time policy (module docstring), or None."""
        tod = cyc.tod
        if tod is None:
            return None
        day: date | None = None
        own = cyc.day()
        if trusted and own is not None:
            day = self._unroll(own)
        elif self._last_date is not None:
            day = self._last_date
            if tod < self._last_tod - _DAY_MS // 2:
                day += timedelta(days=1)
            elif tod > self._last_tod + _DAY_MS // 2:
                day -= timedelta(days=1)
        if day is None:
            return None
        if trusted:
            self._last_date, self._last_tod = day, tod
        if day != self._midnight_day:
            self._midnight_day = day
            self._midnight = datetime(day.year, day.month, day.day, tzinfo=_UTC)
        return self._midnight + timedelta(milliseconds=tod)

    def _unroll(self, d: date) -> date:
        """Undo GPS week-number rollovers: move a date before the floor by 1024 weeks."""
        sent = d
        for _ in range(4):
            if d >= self._floor:
                break
            d += ROLLOVER
        if d != sent:
            self.stats.rolled_over += 1
            if self.stats.first_rollover is None:
                self.stats.first_rollover = (sent, d)
        return d
