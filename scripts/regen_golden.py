#!/usr/bin/env python3
"""Regenerate tests/data/golden/: `tracker replay` output for every recording in tests/data/nmea.

Usage: scripts/regen_golden.py [--check]
Writes <recording name>.jsonl (the JSON lines `tracker replay` prints) and stats.json (epochs,
fixes, sentences and drops per recording), then says what changed. With --check nothing is
written and the exit status is 1 when a golden file is out of date. Review the diff
(`git diff tests/data/golden`) before committing regenerated files.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracker.receiver.replay import fix_json, fixes_of  # noqa: E402

CORPUS = ROOT / "tests/data/nmea"
GOLDEN = ROOT / "tests/data/golden"


def recordings() -> list[Path]:
    """Every recording listed in the corpus' files.txt (the .chk files excluded)."""
    names = (CORPUS / "files.txt").read_text().split()
    return [CORPUS / n for n in names if not n.endswith(".chk")]


def render(path: Path) -> tuple[str, dict[str, object]]:
    """The replay output of one recording and its decode statistics."""
    with path.open("rb") as f:
        fixes, dec = fixes_of(f)
    st = dec.stats
    stats = {
        "epochs": st.epochs,
        "fixes": st.fixes,
        "sentences": st.sentences,
        "dropped": dict(sorted(st.dropped.items())),
    }
    return "".join(fix_json(x) + "\n" for x in fixes), stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report, write nothing")
    a = ap.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    all_stats: dict[str, object] = {}
    stale = 0
    for path in recordings():
        text, stats = render(path)
        all_stats[path.name] = stats
        out = GOLDEN / f"{path.name}.jsonl"
        old = out.read_text() if out.exists() else None
        if old == text:
            continue
        stale += 1
        before = old.splitlines() if old else []
        after = text.splitlines()
        changed = len(set(before) ^ set(after))
        print(
            f"{out.relative_to(ROOT)}: {len(before)} -> {len(after)} fixes, {changed} lines differ"
        )
        if not a.check:
            out.write_text(text)
    stats_path = GOLDEN / "stats.json"
    buf = io.StringIO()
    json.dump(all_stats, buf, indent=1, sort_keys=True)
    buf.write("\n")
    if not stats_path.exists() or stats_path.read_text() != buf.getvalue():
        stale += 1
        print(f"{stats_path.relative_to(ROOT)}: decode statistics changed")
        if not a.check:
            stats_path.write_text(buf.getvalue())
    print(
        f"{stale} golden file(s) {'out of date' if a.check else 'rewritten'}"
        if stale
        else "golden files up to date"
    )
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
