"""Golden files: compare a run's text with the file checked in beside the recordings.

TRACKER_REGEN_GOLDEN=1 rewrites the files instead (review the diff before committing); a missing
file is written and the test fails, so a new case is never silently accepted.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

REGEN = os.environ.get("TRACKER_REGEN_GOLDEN") == "1"


def check_golden(path: Path, text: str, what: str) -> None:
    """Fail with a unified diff when `text` differs from the golden file at `path`."""
    if REGEN or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not REGEN:
            pytest.fail(f"created missing golden file {path}; check it in")
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), str(path), "this run", n=2
            )
        )
        pytest.fail(
            f"{what} differs from {path.name} (TRACKER_REGEN_GOLDEN=1 to accept):\n{diff[:4000]}"
        )
