"""Child process for the SIGKILL test: puts fixes and acks some, reporting each after it returns.

Prints `P SEQ` after `put` returned and `A SEQ...` when PUBACKs arrive (before `ack`), flushed.
Usage: python spool_writer.py SPOOL_PATH SEED
"""

from __future__ import annotations

import random
import sys
from datetime import datetime, timedelta, timezone

from tracker.core.fix import Fix
from tracker.spool.store import Spool

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    spool = Spool(path, max_fixes=1_000_000, ack_batch=rng.choice([1, 4, 16]))
    out = sys.stdout
    i = 0
    while True:
        i += 1
        rec = spool.put(Fix(T0 + timedelta(seconds=i), 50.0 + i * 1e-6, 8.0, 100.0), "interval")
        assert rec is not None
        out.write(f"P {rec.seq}\n")
        out.flush()
        roll = rng.random()
        if roll < 0.3:
            taken = spool.take_oldest(rng.randint(1, 8))
            done = [r.seq for r in taken if rng.random() < 0.7]
            out.write("A " + " ".join(map(str, done)) + "\n")  # the PUBACKs arrived
            out.flush()
            spool.ack(done)
            spool.release(r.seq for r in taken if r.seq not in done)
        elif roll < 0.4 and (newest := spool.take_newest()) is not None:
            out.write(f"A {newest.seq}\n")
            out.flush()
            spool.ack([newest.seq])


if __name__ == "__main__":
    main()
