"""`tracker collect` as a child process with a real config file, for tests and the bench.

Owns the collector process: writes its TOML (the broker's address, the cloud identity's
certificate, a lake folder), starts it, waits for its subscription through its `--stats` file,
stops it (SIGTERM) or kills it (SIGKILL); always reaped. Must not import the AWS SDK.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit.broker import Broker
from benchkit.pki import Identity
from benchkit.procs import stop_process

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "tracker-collector"


def collect_config(
    broker: Broker,
    lake: Path,
    *,
    identity: Identity | None = None,
    client_id: str = CLIENT_ID,
    reconnect_max_s: float = 0.5,
) -> str:
    """The TOML text of a collector config for `broker`."""
    ident = identity or broker.pki.cloud
    return (
        "[aws]\n"
        f'endpoint = "{broker.host}"\nport = {broker.port}\n'
        f'cert = "{ident.cert}"\nkey = "{ident.key}"\nca = "{broker.pki.ca}"\n'
        "session_expiry_s = 3600\n\n"
        "[collect]\n"
        f'client_id = "{client_id}"\nlake = "{lake}"\nreconnect_max_s = {reconnect_max_s}\n'
    )


class Collector:
    """One `tracker collect` child; `start()` returns once it is subscribed."""

    def __init__(self, broker: Broker, lake: Path, work: Path, **config: Any) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.lake = lake
        self.config = work / "collect.toml"
        self.config.write_text(collect_config(broker, lake, **config))
        self.stats_path = work / "collect-stats.json"
        self.log = work / "collect.log"
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = dict(os.environ, PYTHONPATH=path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> Collector:
        self.stats_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "tracker", "collect", "--config", str(self.config),
               "--stats", str(self.stats_path)]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=fh, start_new_session=True)  # fmt: skip
        self.starts += 1
        if wait:
            self.wait_subscribed(timeout)
        return self

    def stats(self) -> dict[str, Any]:
        """This run's counters (empty before the collector wrote them)."""
        try:
            data: dict[str, Any] = json.loads(self.stats_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.stats().get("subscribed"):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"tracker collect exited with status {self.proc.returncode}: "
                    + self.log.read_text()[-1000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"tracker collect not subscribed in {timeout} s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
