"""A real Mosquitto broker with mutual TLS on a free loopback port, as a child process.

Owns the broker process of a test: start, stop (SIGTERM), kill (SIGKILL), pause (SIGSTOP) and
restart on the same port; always reaped. Must not import the AWS SDK.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchkit.pki import Identity, Pki
from benchkit.procs import stop_process
from tracker.core.config import AwsConfig

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "localhost"  # sent as SNI and matched against the server certificate's SAN


def free_port() -> int:
    """A TCP port nobody listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Mosquitto process; `start()` returns once it accepts TCP connections."""

    def __init__(
        self,
        pki: Pki,
        directory: Path,
        *,
        persistence: bool = False,
        port: int | None = None,
        acl: str | None = None,
        save_every_change: bool = False,
    ) -> None:
        self.pki = pki
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.save_every_change = save_every_change  # else every autosave_interval (1 s)
        self.acl = acl  # text of a Mosquitto acl_file (users are certificate CNs)
        self.port = port or free_port()
        self.host = HOST
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server.cert}",
            f"keyfile {self.pki.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "set_tcp_nodelay true",
            "max_queued_messages 200000",
            "max_inflight_messages 100",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.save_every_change:  # a SIGKILL then loses (almost) nothing saved
            lines.append("autosave_on_changes true")
        if self.acl is not None:
            acl_file = self.dir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto` and cannot read the 0600 key
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until a TCP connect to its port succeeds."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                tail = self.log.read_text()[-2000:] if self.log.exists() else ""
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not listen on {self.port}") from None
                time.sleep(0.01)

    def _signal(self, sig: int, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None and sig != signal.SIGKILL:
            os.kill(proc.pid, signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        stop_process(proc, sig, timeout)
        self._proc = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """A crash (SIGKILL): nothing is saved beyond the last autosave."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): sockets stay open, nothing is read or acknowledged."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Make sure no process is left behind."""
        self.kill()

    def aws_config(
        self, identity: Identity | None = None, *, ca: Path | None = None, **overrides: Any
    ) -> AwsConfig:
        """An AwsConfig pointing at this broker; flow control off unless asked for."""
        ident = identity or self.pki.client
        cfg = AwsConfig(
            endpoint=self.host,
            port=self.port,
            cert=str(ident.cert),
            key=str(ident.key),
            ca=str(ca or self.pki.ca),
            flow_control=False,
        )
        return replace(cfg, **overrides)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
