#!/usr/bin/env python3
"""Print the device state machine as a Mermaid diagram and its trigger/guard table (Markdown).

Both are generated from `tracker.device.machine` itself, so the README cannot drift from the code:
    PYTHONPATH=. python scripts/diagram.py > /tmp/machine.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracker.device.machine import mermaid, trigger_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("diagram", "table"), help="print just one of the two")
    args = parser.parse_args()
    if args.only != "table":
        print("```mermaid")
        print(mermaid(), end="")
        print("```")
    if args.only is None:
        print()
    if args.only != "diagram":
        print(trigger_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
