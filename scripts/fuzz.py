#!/usr/bin/env python3
"""Fuzz the decoder, the codec and `tracker decode` with generated receiver output and payloads.

Usage: scripts/fuzz [--inputs N] [--seed S]

One input is one NMEA sentence (any talker, any used type, fields drawn from realistic values,
values no receiver sends and plain junk, with a valid checksum, sometimes damaged after framing)
fed to one long-lived decoder, as a receiver would. Every fix the decoder produces is encoded
live and in batches and decoded again; every 20th input also damages an encoded payload and
hands it to the codec and to `tracker decode`. An escape is any exception other than the ones
the interfaces document (the decoder raises nothing; decoding raises CodecError only; `tracker
decode` exits 0 or 2 with one line per bad file). Exit status 1 when anything escaped or a fix
could not be carried. A release runs 1,000,000 inputs; CI runs a bounded hypothesis test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.core.errors import CodecError  # noqa: E402
from tracker.core.fix import Fix, Record, fix_problem  # noqa: E402
from tracker.link import codec  # noqa: E402
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder  # noqa: E402
from tracker.receiver.nmea import frame  # noqa: E402
from tracker.twin import decode as decode_cli  # noqa: E402

TALKERS = ("GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GQ", "II", "")
# slot kinds per sentence type, after the address field
LAYOUTS = {
    "RMC": "time A lat NS lon EW num num date num EW mode",
    "GGA": "time lat NS lon EW qual int num num M num M num int",
    "GSA": "AM fixtype int int int int int int int int int int int int num num num",
    "GLL": "lat NS lon EW time A mode",
    "GNS": "time lat NS lon EW modes int num num num num int",
    "VTG": "num T num M num N num K mode",
    "ZDA": "time day month year int int",
    "GSV": "int int int int int int int",
}
EVIL = (
    "", "0", "-0", "-1", "1e307", "-1e307", "1e400", "-1e400", "nan", "inf", "-inf", "9" * 30,
    "1" + "0" * 60, "4294967296", "-9223372036854775809", "1_000", " 12", "0x10", "+5", ".",
    "..", "1e", "e5", "٣", "12:34", "A", "Z", "000000", "999999", "235960", "246060.999",
    "8960.0000", "18100.0000", "-4807.038", "0000.0000", "310299", "290200", "000000",
    "1979", "2100", "99999", "1.5e2", "3.4028236e38", "1e-400",
)  # fmt: skip


def realistic(kind: str, rng: random.Random) -> str:
    r = rng.random
    makers: dict[str, Callable[[], str]] = {
        "time": lambda: (
            f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(61):02d}"
            + rng.choice(("", ".00", ".5", ".123"))
        ),
        "lat": lambda: f"{rng.randrange(90):02d}{r() * 60:07.4f}",
        "lon": lambda: f"{rng.randrange(180):03d}{r() * 60:07.4f}",
        "NS": lambda: rng.choice("NS"),
        "EW": lambda: rng.choice("EW"),
        "A": lambda: rng.choice("AAAV"),
        "num": lambda: f"{r() * rng.choice((1, 10, 100, 1000, 20000)):.{rng.randrange(4)}f}",
        "int": lambda: str(rng.randrange(rng.choice((13, 40, 100)))),
        "date": lambda: (
            f"{rng.randrange(1, 32):02d}{rng.randrange(1, 13):02d}{rng.randrange(100):02d}"
        ),
        "day": lambda: f"{rng.randrange(1, 32):02d}",
        "month": lambda: f"{rng.randrange(1, 13):02d}",
        "year": lambda: str(rng.randrange(1980, 2080)),
        "qual": lambda: str(rng.randrange(9)),
        "fixtype": lambda: str(rng.randrange(1, 4)),
        "mode": lambda: rng.choice("ADENSM"),
        "modes": lambda: "".join(rng.choice("ADNRFSME") for _ in range(rng.randrange(1, 5))),
        "AM": lambda: rng.choice("AM"),
        "M": lambda: "M",
        "T": lambda: "T",
        "N": lambda: "N",
        "K": lambda: "K",
    }
    return makers[kind]()


def sentence(rng: random.Random) -> bytes:
    """One framed sentence; sometimes damaged after its checksum was computed."""
    kind = rng.choice(tuple(LAYOUTS))
    fields = []
    for slot in LAYOUTS[kind].split():
        p = rng.random()
        if p < 0.85:
            fields.append(realistic(slot, rng))
        elif p < 0.97:
            fields.append(rng.choice(EVIL))
        else:
            fields.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(8))))
    if rng.random() < 0.05:
        del fields[rng.randrange(len(fields)) :]
    if rng.random() < 0.05:
        fields += [realistic("num", rng) for _ in range(rng.randrange(1, 6))]
    body = ",".join([rng.choice(TALKERS) + kind, *fields]).replace("*", "").replace("$", "")
    try:
        line = frame(body)
    except UnicodeEncodeError:
        line = b"$" + body.encode() + b"*00\r\n"
    if rng.random() < 0.03:  # line noise after framing
        b = bytearray(line)
        b[rng.randrange(len(b))] = rng.randrange(256)
        line = bytes(b)
    return line


def damage(payload: bytes, rng: random.Random) -> bytes:
    b = bytearray(payload)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[i : i + rng.randrange(1, 8)]
        elif op == 1:
            b[i:i] = rng.choice((b"9" * rng.randrange(1, 400), b"-", b"e999", b"[", b"{", b"null"))
        elif op == 2 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 3:
            b = b[:i]
        else:
            b[i:i] = b","
    return bytes(b)


class Campaign:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.decoder = Decoder(date_floor=RECORDING_DATE_FLOOR)
        self.n: Counter[str] = Counter()
        self.escapes: dict[str, str] = {}  # kind -> first example
        self.batch: list[Record] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="tracker-fuzz-"))

    def escape(self, where: str, data: bytes) -> None:
        kind = f"{where}: {traceback.format_exc().strip().splitlines()[-1]}"
        self.n["escapes"] += 1
        self.escapes.setdefault(kind, repr(data[:200]))

    def one(self, i: int) -> None:
        line = sentence(self.rng)
        self.n["inputs"] += 1
        try:
            epochs = self.decoder.feed(line)
        except Exception:
            self.escape("decoder", line)
            return
        for e in epochs:
            if e.fix is not None:
                self.carry(e.fix, i)
        if i % 20 == 0 and self.batch:
            try:
                good = codec.encode_batch(self.batch[-30:])[0]
            except Exception:
                self.escape("batch", repr(self.batch[-30:][:3]).encode())
                self.batch.clear()
                return
            self.payload(good)

    def carry(self, fix: Fix, seq: int) -> None:
        self.n["fixes"] += 1
        problem = fix_problem(fix)
        if problem is not None:
            self.n["fixes_out_of_limits"] += 1
            self.escapes.setdefault(f"fix out of limits: {problem}", repr(fix))
            return
        rec = Record(seq, fix, self.rng.choice(("", "first", "distance")))
        try:
            if codec.decode(codec.encode_live(rec)) != [rec]:
                self.n["live_round_trip_differs"] += 1
        except Exception:
            self.n["live_not_carried"] += 1
            self.escape("live", repr(rec).encode())
        self.batch.append(rec)
        if len(self.batch) >= 40:
            try:
                payload, k = codec.encode_batch(self.batch)
                back = codec.decode(payload)
                if [r.seq for r in back] != [r.seq for r in self.batch[:k]]:
                    self.n["batch_round_trip_differs"] += 1
            except Exception:
                self.n["batch_not_carried"] += 1
                self.escape("batch", repr(self.batch[:3]).encode())
            self.batch = self.batch[-5:]

    def payload(self, good: bytes) -> None:
        bad = damage(good, self.rng)
        self.n["payloads"] += 1
        try:
            for r in codec.decode(bad):
                if fix_problem(r.fix) is not None:
                    self.n["decoded_out_of_limits"] += 1
        except CodecError:
            self.n["payloads_refused"] += 1
        except Exception:
            self.escape("codec.decode", bad)
        if self.n["payloads"] % 10 == 0:
            self.cli(bad)

    def cli(self, payload: bytes) -> None:
        """`tracker decode FILE` in process: exit 0 or 2, one stderr line for a bad file."""
        path = self.tmp / "payload"
        path.write_bytes(payload)
        out, err = io.StringIO(), io.StringIO()
        self.n["cli_runs"] += 1
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = decode_cli.main(argparse.Namespace(files=[str(path)]))
        except Exception:
            self.escape("tracker decode", payload)
            return
        lines = err.getvalue().splitlines()  # one per bad message (a line of a stream)
        if status not in (0, 2) or (status == 2) != (
            1 <= len(lines) <= max(1, len(payload.splitlines()))
        ):
            self.n["escapes"] += 1
            self.escapes.setdefault(f"tracker decode: status {status}, {len(lines)} lines", "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000, help="sentences (default 1,000,000)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.inputs < 1:
        p.error("--inputs must be at least 1")
    c = Campaign(args.seed)
    start = time.perf_counter()
    for i in range(1, args.inputs + 1):
        c.one(i)
    try:
        c.decoder.flush()
    except Exception:
        c.escape("decoder.flush", b"")
    took = time.perf_counter() - start
    n = c.n
    dropped = sum(c.decoder.stats.dropped.values())
    print(f"fuzz: {n['inputs']:,} sentences (seed {args.seed}) in {took:.1f} s")
    print(f"  decoder: {c.decoder.stats.sentences:,} used, {dropped:,} dropped or counted,")
    print(f"           {n['fixes']:,} fixes, {n['fixes_out_of_limits']} outside the field limits")
    print(
        f"  codec:   {n['live_not_carried']} fixes not carried live,"
        f" {n['batch_not_carried']} batches not carried,"
        f" {n['live_round_trip_differs'] + n['batch_round_trip_differs']} round trips differ"
    )
    print(
        f"  damaged payloads: {n['payloads']:,}, {n['payloads_refused']:,} refused with CodecError,"
        f" {n['decoded_out_of_limits']} decoded out of limits; tracker decode runs: {n['cli_runs']}"
    )
    print(f"  escapes: {n['escapes']}")
    for kind, example in list(c.escapes.items())[:20]:
        print(f"    {kind}\n      e.g. {example}")
    bad = (
        n["escapes"]
        + n["fixes_out_of_limits"]
        + n["live_not_carried"]
        + n["batch_not_carried"]
        + n["decoded_out_of_limits"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
