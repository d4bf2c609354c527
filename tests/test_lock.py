"""deploy/requirements.lock: every runtime dependency pinned with hashes, and it installs."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "deploy" / "requirements.lock"


def pins() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in LOCK.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"([a-z0-9_.-]+)==(\S+) \\$", line)
        if m:
            current = m.group(1)
            out[current] = []
            continue
        h = re.match(r"\s+--hash=sha256:([0-9a-f]{64})( \\)?$", line)
        assert h and current, f"unexpected line in {LOCK.name}: {line!r}"
        out[current].append(h.group(1))
    return out


def test_every_runtime_dependency_is_pinned_with_hashes() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {
        re.split(r"[<>=;\[ ]", d, maxsplit=1)[0].lower()
        for d in deps
        if "python_version <" not in d
    }
    locked = pins()
    assert names <= set(locked), names - set(locked)
    assert all(locked.values())
    # x86_64 and aarch64 wheels, and the source: awscrt has no armv7 wheel, a Pi 2 builds it
    assert len(locked["awscrt"]) >= 3


@pytest.mark.slow
def test_the_lock_installs_with_hash_checking_and_satisfies_the_package(tmp_path: Path) -> None:
    venv.create(tmp_path / "v", with_pip=True)
    py = str(tmp_path / "v" / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--require-hashes", "-r", str(LOCK)], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=600)
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout
    done = subprocess.run(
        [py, "-c", "import awscrt, serial, transitions, tracker.link.uplink; print('ok')"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == "ok", done.stderr
