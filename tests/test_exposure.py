"""What the daemon says at start about files others may read or change, and the modes it creates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tracker.daemon.exposure import exposure_warnings

ROOT = Path(__file__).resolve().parents[1]


def test_a_world_readable_key_through_a_symlink_and_a_writable_config(tmp_path: Path) -> None:
    key = tmp_path / "real" / "device.key"
    key.parent.mkdir()
    key.write_text("k")
    key.chmod(0o644)
    link = tmp_path / "device.key"
    link.symlink_to(key)
    cfg = tmp_path / "conf" / "tracker.toml"
    cfg.parent.mkdir()
    cfg.write_text("")
    cfg.chmod(0o666)
    cfg.parent.chmod(0o755)
    said = exposure_warnings(link, cfg)
    assert said[0] == (
        f"private key {key} (via {link}) is mode 0644, readable by other users: chmod 600 {key}"
    )
    assert said[1].startswith(f"{cfg} is mode 0666, writable by other users")
    assert len(said) == 2
    key.chmod(0o600)
    cfg.chmod(0o644)
    assert exposure_warnings(link, cfg) == []


def test_the_daemon_creates_its_files_for_its_owner_only(tmp_path: Path) -> None:
    """Outside systemd (no UMask=) the spool and its WAL hold location history: 0600."""
    code = (
        "import sys, os; sys.argv=['tracker']; os.umask(0o022)\n"
        "from tracker.daemon import main as daemon\n"
        "class Stop(Exception): pass\n"
        "def boom(app): raise Stop()\n"
        "daemon.build_parts = boom\n"
        "import argparse\n"
        f"try: daemon.main(argparse.Namespace(config={str(tmp_path / 'tracker.toml')!r},"
        " gps_url=None, log_level=None))\n"
        "except Stop: pass\n"
    )
    (tmp_path / "tracker.toml").write_text(
        '[device]\nthing_name = "t1"\nset_clock = false\n[aws]\nendpoint = "localhost"\n'
        'cert = "c"\nkey = "k"\nca = "a"\n[gps]\nurl = "/dev/null"\n'
        f'[spool]\npath = "{tmp_path / "state" / "spool.db"}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = [p for p in (tmp_path / "state").iterdir() if p.is_file()]
    assert any(p.name == "spool.db" for p in made)
    for p in made:
        assert p.stat().st_mode & 0o077 == 0, f"{p.name} is {p.stat().st_mode & 0o777:04o}"
