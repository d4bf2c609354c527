#!/usr/bin/env python3
"""Rewrite the README's generated tables (configuration reference, remotely settable keys) from
the config metadata; tests/test_config.py and tests/test_shadow.py fail while they are stale."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracker.core.config import reference_markdown  # noqa: E402
from tracker.link.remote_settings import settings_table  # noqa: E402


def replace_after(text: str, marker: str, body: str, ends_at: str) -> str:
    """Replace what follows `marker` up to the first `ends_at` line with `body`."""
    head, sep, tail = text.partition(marker + "\n")
    if not sep:
        raise SystemExit(f"README.md has no {marker} line")
    tail = tail.lstrip("\n")
    end = tail.find(ends_at)
    rest = tail[end:].lstrip("\n") if end >= 0 else ""
    return head + sep + body.rstrip("\n") + "\n\n" + rest


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = replace_after(text, "<!-- config-reference -->", reference_markdown(), "\n## ")
    text = replace_after(text, "<!-- remote-settings-table -->", settings_table(), "\n\n")
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
