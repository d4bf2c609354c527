"""`tracker check` run by a user who may not read the board's credentials: one FAIL line saying
so and exit status 2, never a traceback (exit 1 means "warnings only")."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import hw.baud
import hw.gps
import tracker.receiver.nmea
from tracker.setup import check

assert hw.baud and hw.gps and tracker.receiver.nmea  # imported before dropping privileges


def as_nobody(fn: object) -> tuple[int, str]:
    """Run `check.main` as user nobody in a forked child (root) or as ourselves (not root)."""
    args = argparse.Namespace(config=str(fn), online=False)
    if os.geteuid() != 0:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            return check.main(args), out.getvalue()
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        status = 99
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                status = check.main(args)
            os.write(w, out.getvalue().encode())
        except BaseException as exc:
            os.write(w, f"TRACEBACK {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_an_unreadable_certificate_is_one_fail_line_not_a_traceback() -> None:
    with tempfile.TemporaryDirectory(prefix="tracker-check-") as top:
        check_as_nobody(Path(top))


def check_as_nobody(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    key, crt = etc / "device.key", etc / "device.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-subj", "/CN=t1", "-days", "30"],
        check=True, capture_output=True,
    )  # fmt: skip
    etc.chmod(0o700)
    tmp_path.chmod(0o755)
    config = tmp_path / "tracker.toml"
    config.write_text(
        f'[device]\nthing_name = "t1"\n[aws]\nendpoint = "localhost"\ncert = "{crt}"\n'
        f'key = "{key}"\nca = "{crt}"\n[gps]\nurl = "/dev/null"\n'
        f'[spool]\npath = "{tmp_path}/spool/spool.db"\n'
    )
    config.chmod(0o644)
    status, text = as_nobody(config)
    assert "TRACEBACK" not in text and "Traceback" not in text, text
    assert status == 2, text
    lines = [line for line in text.splitlines() if "cannot be read as user" in line]
    assert len(lines) == 1 and lines[0].startswith("FAIL"), text
    assert str(crt) in lines[0] and "sudo tracker check" in lines[0]
