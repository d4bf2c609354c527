"""Child processes of the tests and the bench: stop one the way an operator's systemd would."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int | None:
    """Send `sig` and wait; SIGKILL when it does not stop in `timeout`. Its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode
