"""Golden tests: `tracker replay` against gpsd's expected output, and against its own golden files.

1. For every gpsd recording with a `.chk`, the fixes agree with gpsd's TPV reports (mode >= 2)
   epoch by epoch: same time to the millisecond, position within 1e-6 deg, altitude within
   0.1 m and speed within 0.01 m/s where both give them, same mode, and never a fix where gpsd
   has none. Each deliberate difference is listed below with the epoch it concerns and why.
2. For every recording in tests/data/nmea (files.txt), the replay output equals
   tests/data/golden/<name>.jsonl exactly. Regenerate with `scripts/regen_golden.py` (or run
   this file with TRACKER_REGEN_GOLDEN=1) and review `git diff tests/data/golden`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest

from tracker.core.fix import Fix, format_time, parse_time
from tracker.receiver.replay import fix_json, fixes_of

# also run on arm64 under qemu-user (scripts/test-arm64, part of CI)
pytestmark = pytest.mark.arm64

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "nmea"
GOLDEN = DATA / "golden"
POS_TOL, ALT_TOL, SPEED_TOL = 1e-6, 0.1, 0.01

# Fixes gpsd does not report, by recording and epoch (UTC, as printed by `tracker replay`).
UNREPORTED = {
    "blumax-gps009.log": {"2008-07-18T14:28:19.299Z": "gpsd prints the first fix cycle untimed"},
    "haicom-305N.log": {"2007-04-08T09:53:04.802Z": "gpsd prints the first fix cycle untimed"},
    "mtk-3301.log": {"2008-08-23T08:14:36Z": "gpsd prints the first fix cycle untimed"},
    "humminbird-M37.log": {
        "2006-09-16T19:41:03Z": "one position sentence per second: gpsd skips this epoch",
        "2006-09-16T19:41:04Z": "one position sentence per second: gpsd skips this epoch",
    },
    "neo-m8n.log": {"2015-03-18T17:19:48Z": "last epoch of the log: gpsd never closes it"},
    "quectel-l76k-nmea.log": {"2026-08-05T05:53:04Z": "last epoch: gpsd never closes it"},
    "ublox-lea-4h.log": {"2006-08-10T03:15:18Z": "log ends mid-cycle: gpsd never closes it"},
    "venus634lp.log": {"2010-02-05T08:50:38Z": "last epoch of the log: gpsd never closes it"},
}
# Epochs where the receiver's GSA says 2D (or the epoch has neither GSA nor altitude) and gpsd
# says 3D because it holds an altitude from GGA, possibly from an earlier cycle: we follow the
# receiver.
_HUMMINBIRD_2D = [f"2006-09-16T19:41:{s:02d}Z" for s in (5, 6, 7, 9, 10, 11, 12, 13, 15, 16, 17)]
_HUMMINBIRD_2D += [f"2006-09-16T19:41:{s:02d}Z" for s in (19, 21, 22, 23)]
MODE_2D = {
    "haicom-305N.log": {"2007-04-08T09:53:07.801Z"},
    "mtk-3301.log": {"2008-08-23T08:14:39Z"},
    "ublox-lea-4h.log": {f"2006-08-10T03:{t}Z" for t in ("08:58", "08:59", "09:00", "09:01")},
    "humminbird-M37.log": set(_HUMMINBIRD_2D),  # RMC- or GLL-only epochs: no GSA, no altitude
}
# gpsd derives speed from successive positions where the epoch has no RMC (GLL only).
NO_SPEED_CHECK = {"humminbird-M37.log": {"2006-09-16T19:41:02Z"}}
# gpsd's week-rollover guess moves this receiver's date (2015-03-18) to 2034-11-01.
GPSD_DATE_SHIFT = {"neo-m8n.log": (date(2034, 11, 1), date(2015, 3, 18))}

CHK_LOGS = sorted(p.with_suffix("") for p in (CORPUS / "gpsd").glob("*.log.chk"))


@dataclass
class GpsdFix:
    lat: float
    lon: float
    alt: float | None
    speed: float | None
    mode: int


def load_chk(path: Path) -> tuple[dict[datetime, GpsdFix], set[datetime]]:
    """gpsd's fixes by exact time (last TPV of the epoch, max mode) and its no-fix times."""
    fixes: dict[datetime, GpsdFix] = {}
    nofix: set[datetime] = set()
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("class") != "TPV" or "time" not in d:
            continue
        t = parse_time(d["time"])
        mode = d.get("mode", 0)
        if d.get("status") == 8 or mode < 2 or "lat" not in d or "lon" not in d:
            nofix.add(t)  # status 8: simulated
            continue
        alt = d.get("altMSL", d.get("alt"))
        prev = fixes.get(t)
        speed = d.get("speed")
        if prev is not None:
            alt = prev.alt if alt is None else alt
            speed = prev.speed if speed is None else speed
            mode = max(mode, prev.mode)
        fixes[t] = GpsdFix(d["lat"], d["lon"], alt, speed, mode)
    return fixes, nofix


def replay(path: Path) -> list[Fix]:
    with path.open("rb") as f:
        fixes, _ = fixes_of(f)
    return fixes


def stamp(t: datetime) -> str:
    return format_time(t)


@pytest.mark.parametrize("log", CHK_LOGS, ids=lambda p: p.name)
def test_agrees_with_gpsd(log: Path) -> None:
    name = log.name
    gpsd, gpsd_nofix = load_chk(log.with_name(name + ".chk"))
    if name in GPSD_DATE_SHIFT:
        theirs, ours_day = GPSD_DATE_SHIFT[name]
        assert {t.date() for t in gpsd} == {theirs}
        gpsd = {datetime.combine(ours_day, t.timetz()): v for t, v in gpsd.items()}
        gpsd_nofix = {datetime.combine(ours_day, t.timetz()) for t in gpsd_nofix}
    ours = {f.time: f for f in replay(log)}
    assert gpsd, "gpsd reports no fix: nothing to compare"
    problems: list[str] = []
    missing = sorted(stamp(t) for t in gpsd.keys() - ours.keys())
    if missing:
        problems.append(f"gpsd fixes we do not report: {missing}")
    for t in sorted(ours.keys() - gpsd.keys()):
        why = UNREPORTED.get(name, {}).get(stamp(t))
        if t in gpsd_nofix:
            problems.append(f"{stamp(t)}: FALSE FIX, gpsd reports no fix")
        elif why is None:
            problems.append(f"{stamp(t)}: a fix gpsd does not report, no documented reason")
    mode_2d: set[str] = set()
    for t in sorted(gpsd.keys() & ours.keys()):
        g, f, s = gpsd[t], ours[t], stamp(t)
        if abs(f.lat - g.lat) > POS_TOL or abs(f.lon - g.lon) > POS_TOL:
            problems.append(f"{s}: position {f.lat},{f.lon} vs gpsd {g.lat},{g.lon}")
        if f.alt is not None and g.alt is not None and abs(f.alt - g.alt) > ALT_TOL:
            problems.append(f"{s}: alt {f.alt} vs gpsd {g.alt}")
        both = f.speed is not None and g.speed is not None
        if both and s not in NO_SPEED_CHECK.get(name, set()):
            assert f.speed is not None and g.speed is not None
            if abs(f.speed - g.speed) > SPEED_TOL:
                problems.append(f"{s}: speed {f.speed} vs gpsd {g.speed}")
        if f.mode == 2 and g.mode == 3:
            mode_2d.add(s)
        elif f.mode != g.mode:
            problems.append(f"{s}: mode {f.mode} vs gpsd {g.mode}")
    listed = MODE_2D.get(name, set())
    if mode_2d != listed:
        problems.append(
            f"2D where gpsd says 3D: undocumented {sorted(mode_2d - listed)}, "
            f"listed but not seen {sorted(listed - mode_2d)}"
        )
    stale = set(UNREPORTED.get(name, {})) - {stamp(t) for t in ours.keys() - gpsd.keys()}
    if stale:
        problems.append(f"documented differences no longer seen: {sorted(stale)}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_false_fix_would_be_caught(tmp_path: Path) -> None:
    """The comparison itself: a fix at a time gpsd calls no-fix is reported."""
    chk = tmp_path / "x.log.chk"
    chk.write_text(
        '{"class":"TPV","mode":1,"time":"2020-01-01T00:00:00.000Z"}\n'
        '{"class":"TPV","mode":3,"time":"2020-01-01T00:00:01.000Z","lat":1.0,"lon":2.0}\n'
        '{"class":"TPV","status":8,"mode":3,"time":"2020-01-01T00:00:02.000Z","lat":1,"lon":2}\n'
    )
    fixes, nofix = load_chk(chk)
    assert list(fixes) == [parse_time("2020-01-01T00:00:01Z")]
    assert parse_time("2020-01-01T00:00:00Z") in nofix
    assert parse_time("2020-01-01T00:00:02Z") in nofix  # simulated is not a fix


# ------------------------------------------------------------------ own golden files


def recordings() -> list[Path]:
    names = (CORPUS / "files.txt").read_text().split()
    return [CORPUS / n for n in names if not n.endswith(".chk")]


def explain(expected: list[str], actual: list[str]) -> str:
    """What changed, epoch by epoch: fixes gained, lost, and fields that moved."""
    exp = {json.loads(x)["time"]: json.loads(x) for x in expected}
    act = {json.loads(x)["time"]: json.loads(x) for x in actual}
    out = [f"{len(expected)} -> {len(actual)} fixes"]
    for t in sorted(exp.keys() | act.keys()):
        if t not in act:
            out.append(f"  lost   {t}")
        elif t not in exp:
            out.append(f"  gained {t}")
        elif exp[t] != act[t]:
            moved = {k: (exp[t].get(k), act[t].get(k)) for k in exp[t] if exp[t][k] != act[t][k]}
            out.append(f"  {t}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in moved.items()))
        if len(out) > 25:
            out.append("  ...")
            break
    if len(out) == 1:
        out.append("  same fixes, different order or formatting")
    return "\n".join(out)


@pytest.mark.parametrize("rec", recordings(), ids=lambda p: p.name)
def test_matches_golden_file(rec: Path) -> None:
    with rec.open("rb") as fh:
        fixes, dec = fixes_of(fh)
    text = "".join(fix_json(f) + "\n" for f in fixes)
    st = dec.stats
    stats = {"epochs": st.epochs, "fixes": st.fixes, "sentences": st.sentences}
    stats["dropped"] = dict(sorted(st.dropped.items()))  # type: ignore[assignment]
    expected_stats = json.loads((GOLDEN / "stats.json").read_text())[rec.name]
    assert stats == expected_stats, "decode statistics changed: scripts/regen_golden.py"
    golden = GOLDEN / f"{rec.name}.jsonl"
    if os.environ.get("TRACKER_REGEN_GOLDEN") == "1":
        golden.write_text(text)
        pytest.skip("golden file regenerated")
    assert golden.exists(), f"no golden file {golden}: run scripts/regen_golden.py"
    expected = golden.read_text()
    if text != expected:
        pytest.fail(
            f"{rec.name} differs from {golden.name} (scripts/regen_golden.py regenerates it "
            f"if the change is intended):\n{explain(expected.splitlines(), text.splitlines())}",
            pytrace=False,
        )


def test_every_recording_has_a_golden_file() -> None:
    have = {p.name for p in GOLDEN.glob("*.jsonl")}
    assert have == {f"{r.name}.jsonl" for r in recordings()}
    assert len(have) == 27


def test_explain_names_the_epoch() -> None:
    a = '{"time":"2020-01-01T00:00:00Z","lat":1.0}'
    b = '{"time":"2020-01-01T00:00:00Z","lat":1.5}'
    c = '{"time":"2020-01-01T00:00:01Z","lat":1.0}'
    text = explain([a, c], [b])
    assert "2020-01-01T00:00:00Z: lat 1.0 -> 1.5" in text
    assert "lost   2020-01-01T00:00:01Z" in text
