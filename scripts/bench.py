"""The bench: a recorded drive replayed through the real daemon into a local Mosquitto, with faults.

Owns the orchestration only (PKI, broker, pty GPS, daemon child, faults, status line); the cloud
side is the product's own `tracker collect` (a child process writing the lake into the output
folder) and `tracker export` reads the track back from it; the plan is `bench_plan`, the report
`benchkit.report` and `benchkit.report_svg`. Imports the tracker's public API and benchkit,
never the daemon's internals.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
# scripts/ too, for bench_plan and benchkit (on sys.path when run as a script, not when a test
# loads this file)
sys.path[:0] = [p for p in map(str, (REPO, REPO / "scripts")) if p not in sys.path]

from bench_plan import THING, bench_config, kill_moments, parse_args, schedule  # noqa: E402
from benchkit import report  # noqa: E402
from benchkit.procs import stop_process  # noqa: E402
from benchkit.report_svg import timeline_svg, track_svg  # noqa: E402

RESTART_AFTER_S = 0.5  # real seconds between a kill and the restart
READY_TIMEOUT_S = 30.0


class Daemon:
    """`tracker run` as a child process, with $NOTIFY_SOCKET as systemd would set it."""

    def __init__(self, config: Path, notify: Path, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "tracker", "run", "--config", str(config)]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.env = dict(os.environ, NOTIFY_SOCKET=str(notify), PYTHONPATH=path)
        self.env.pop("JOURNAL_STREAM", None)  # plain log lines, not journald's
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as fh:  # its own session: a Ctrl-C reaches the bench only
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=fh, start_new_session=True)  # fmt: skip
        self.starts += 1

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal it and wait (SIGTERM: it closes its spool); SIGKILL if it does not stop."""
        return stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class StatusLine:
    """One `\\r`-rewritten line on a terminal; event lines above it; quiet when not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self.shown = True

    def event(self, text: str) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((80, 24)).columns - 1) + "\r")
            self.shown = False
        self.stream.write(text + "\n")
        self.stream.flush()


def read_status(sock: socket.socket, now: float) -> list[report.Status]:
    """Every STATUS= datagram waiting on the notify socket."""
    out: list[report.Status] = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return out
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("STATUS="):
                s = report.parse_status(line[7:], now)
                if s is not None:
                    out.append(s)


class Bench:
    """One run: the parts it started, what it saw, the faults it injected."""

    def __init__(self, args: argparse.Namespace, work: Path, out: Path, ui: StatusLine) -> None:
        self.args, self.work, self.out, self.ui = args, work, out, ui
        self.data = Path(args.recording).read_bytes()
        self.speed = float(args.speed)
        if args.duration:
            self.speed = min(max(schedule(self.data, 1.0).length / args.duration, 1.0), 1000.0)
        self.sched = schedule(self.data, self.speed)
        self.kills = kill_moments(args.kill, self.sched.rec, args.outage)
        # (recording second, action, outage length); an outage ends once the recording is past
        # its end and it lasted its length in real time (recorded gaps play in 2 s at most)
        self.plan = sorted(
            [(o.at, "outage", o.length) for o in args.outage]
            + [(k, "kill", 0.0) for k in self.kills]
        )
        self.restore: tuple[float, float] | None = None  # (recording second, bench second)
        self.outage: dict[str, Any] = {}  # the outage going on, as summary.json shows it
        self.injected: list[dict[str, Any]] = []  # what happened, at which recording second
        self.statuses: list[report.Status] = []
        self.received = 0  # messages the collector has taken in so far (its --stats)
        self.collector_stats: dict[str, Any] = {}  # its counters once stopped
        self.faults: list[report.Fault] = []
        self.problems: list[str] = []
        self.samples: list[tuple[float, float]] = []  # (bench second, recording second played)
        self.outage_since: float | None = None
        self.restart_at: float | None = None
        self.t0 = time.monotonic()
        self.wall0 = time.time()  # the same moment on the wall clock (the lake's receive times)
        self.played = 0.0  # bench second when the pty had sent the whole recording

    def now(self) -> float:
        return time.monotonic() - self.t0

    def collect(self, sock: socket.socket, collector: Any) -> None:
        """STATUS lines from the notify socket; how many messages the collector has taken in."""
        self.statuses += read_status(sock, self.now())
        self.received = int(collector.stats().get("messages", self.received))

    def position(self, gps: Any) -> float:
        """The recording second the pty has sent so far."""
        rec = self.sched.rec_at_byte(gps.written)
        if not self.samples or rec > self.samples[-1][1]:
            self.samples.append((self.now(), rec))
        return rec

    def inject(self, rec: float, broker: Any, daemon: Daemon, *, finish: bool = False) -> None:
        """Run the faults due at recording second `rec` (all that are left when `finish`)."""
        now = self.now()
        if self.restore is not None and (
            finish or (rec >= self.restore[0] and now >= self.restore[1])
        ):
            broker.start()
            assert self.outage_since is not None
            self.faults.append(report.Fault("outage", self.outage_since, now))
            self.outage["until_s"] = rec
            self.outage_since = self.restore = None
            self.ui.event(f"  {rec:6.0f} s  broker started again")
        while not finish and self.plan and self.plan[0][0] <= rec:
            at, action, length = self.plan.pop(0)
            if action == "outage" and self.outage_since is None:
                broker.stop()
                self.outage_since = now
                self.restore = (at + length, now + length / self.speed)
                self.outage = {"kind": "outage", "at_s": rec, "until_s": None}
                self.injected.append(self.outage)
                self.ui.event(f"  {rec:6.0f} s  broker stopped")
            elif action == "kill" and self.restart_at is None:
                daemon.kill()
                self.faults.append(report.Fault("kill", now, now))
                self.restart_at = now + RESTART_AFTER_S
                self.injected.append({"kind": "kill", "at_s": rec})
                self.ui.event(f"  {rec:6.0f} s  tracker killed (SIGKILL), restarting")
        if self.restart_at is not None and (finish or now >= self.restart_at):
            daemon.start()
            self.restart_at = None

    def show(self, rec: float) -> None:
        if self.statuses:
            s = self.statuses[-1]
            self.ui.show(
                f"{self.now():4.0f}s  rec {rec:5.0f}/{self.sched.length:.0f}s  "
                f"{s.state:<13} fixes {s.fixes}  reports {s.reports}  "
                f"backlog {s.backlog}  link {s.link}  received {self.received}"
                + ("  [broker down]" if self.outage_since is not None else "")
            )

    def run(self) -> int:
        from benchkit.broker import Broker
        from benchkit.collector import Collector
        from benchkit.fake_gps import FakeGps
        from benchkit.pki import Pki

        from tracker.spool.store import Spool

        sched, work, out = self.sched, self.work, self.out
        self.ui.event(
            f"bench: {Path(self.args.recording).name}: {sched.length:.0f} s of "
            f"recording at {self.speed:g}x (~{sched.play[-1]:.0f} s); output in {out}"
        )
        pki = Pki(work / "pki", thing_name=THING)
        broker = Broker(pki, work / "broker", persistence=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(work / "notify.sock"))
        sock.setblocking(False)
        gps = FakeGps(work)
        config = out / "tracker.toml"
        config.write_text(
            bench_config(work, gps.path, broker.port, pki, self.speed, self.args.log_level)
        )
        daemon = Daemon(config, work / "notify.sock", out / "tracker.log")
        self.lake = out / "lake"
        shutil.rmtree(self.lake, ignore_errors=True)
        collector = Collector(broker, self.lake, work / "collect")
        try:
            broker.start()
            collector.start()  # `tracker collect`, subscribed with a persistent session
            daemon.start()
            while not self.statuses and daemon.exited() is None:
                self.collect(sock, collector)
                if self.now() > READY_TIMEOUT_S:
                    raise RuntimeError(f"the tracker did not start in {READY_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
            if daemon.exited() is not None:
                raise RuntimeError(f"the tracker exited at start with status {daemon.exited()}")
            gps.play(self.data, speed=self.speed)
            self.t0, self.wall0 = time.monotonic(), time.time()
            self.statuses = [dataclasses.replace(s, at=0.0) for s in self.statuses]
            self.replay(sock, collector, gps, broker, daemon)
            self.played = self.now()
            while self.restore is not None and self.now() < self.restore[1]:
                time.sleep(0.05)  # let an outage at the very end last its time
            self.inject(sched.length, broker, daemon, finish=True)
            self.drain(sock, collector)
            rc = daemon.stop()
            if rc not in (0, None):
                self.problems.append(f"the tracker stopped with status {rc}")
            self.settle(sock, collector)
            if (rc := collector.stop()) != 0:
                self.problems.append(f"tracker collect stopped with status {rc}")
            self.collector_stats = collector.stats()
        finally:
            daemon.kill()
            collector.kill()
            with contextlib.suppress(OSError):
                shutil.copyfile(collector.log, out / "collect.log")
            broker.close()
            gps.close()
            sock.close()
        with Spool(work / "spool.db") as spool:
            self.stats = spool.stats()
        if self.stats.backlog:
            self.problems.append(
                f"{self.stats.backlog} fixes still in the spool: the backlog "
                f"did not drain in {self.args.drain_timeout:g} s"
            )
        return self.report(daemon.starts - 1)

    def replay(
        self, sock: socket.socket, collector: Any, gps: Any, broker: Any, daemon: Daemon
    ) -> None:
        """Until the pty has sent the whole recording: collect, inject faults, show status."""
        while not gps.wait_played(0):
            self.collect(sock, collector)
            rec = self.position(gps)
            self.inject(rec, broker, daemon)
            if self.restart_at is None and (rc := daemon.exited()) is not None:
                raise RuntimeError(f"the tracker exited by itself with status {rc}")
            self.show(rec)
            time.sleep(0.05)
        self.position(gps)

    def drain(self, sock: socket.socket, collector: Any) -> None:
        """Wait (bounded) until the daemon says its backlog is empty and the link up; a daemon
        that went quiet while nothing arrives for 2 s counts as drained (the spool says)."""
        deadline = self.now() + self.args.drain_timeout
        quiet_since, seen = self.now(), self.received
        while self.now() < deadline:
            self.collect(sock, collector)
            now = self.now()
            if self.received != seen:
                quiet_since, seen = now, self.received
            last = self.statuses[-1]
            if last.link == "up" and (
                (last.at >= self.played and last.backlog == 0)
                or (now - last.at > 3.0 and now - quiet_since > 2.0)
            ):
                return
            self.show(self.sched.length)
            time.sleep(0.05)

    def settle(self, sock: socket.socket, collector: Any, quiet_s: float = 1.0) -> None:
        """Wait (at most 5 s) until the collector has taken nothing in for `quiet_s`."""
        end = self.now() + 5.0
        quiet_since, seen = self.now(), self.received
        while self.now() < end and self.now() - quiet_since < quiet_s:
            time.sleep(0.1)
            self.collect(sock, collector)
            if self.received != seen:
                quiet_since, seen = self.now(), self.received

    def export(self, fmt: str) -> str:
        """`tracker export LAKE --thing THING --format FMT`, as a user would run it."""
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        done = subprocess.run(
            [sys.executable, "-m", "tracker", "export", str(self.lake), "--thing", THING,
             "--format", fmt],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            self.problems.append(f"tracker export failed: {done.stderr.strip()}")
            return ""
        return done.stdout

    def received_points(self, lines: str) -> report.Received:
        """The lake's track (one point per seq, first arrival) and the collector's counters."""
        from tracker.twin.lake import parse_fix_line

        st = self.collector_stats
        out = report.Received(
            messages=int(st.get("location_messages", 0)),
            wire_bytes=int(st.get("location_wire_bytes", 0)),
            payload_bytes=int(st.get("location_payload_bytes", 0)),
            decode_errors=["rejected"] * int(st.get("rejected", 0)),
        )
        for line in lines.splitlines():
            lf = parse_fix_line(json.loads(line))
            if lf is not None:
                at = lf.received.timestamp() - self.wall0 if lf.received else self.now()
                out.points.append(report.Point(lf.record.seq, lf.record.fix, lf.record.trigger, at))
        return out

    def report(self, restarts: int) -> int:
        extra = {
            "recording": str(self.args.recording),
            "speed": round(self.speed, 2),
            "recording_s": round(self.sched.length, 1),
            "run_s": round(self.now(), 1),
            "faults": self.injected,
            "restarts": restarts,
            "backlog_left": self.stats.backlog,
            "spool_dropped": self.stats.dropped,
            "problems": self.problems,
        }
        located = self.received_points(self.export("jsonl"))
        st = self.collector_stats
        first = located.points[0].fix if located.points else None
        origin = self.sched.origin(first) if first else None
        # bench seconds -> GPS time, from how far the pty had got; else from STATUS lines
        base = [(at, origin + rec) for at, rec in self.samples] if origin is not None else None
        statuses = report.fill_times(self.statuses, base) if base else self.statuses
        during = report.clip(statuses, self.played)  # the replay itself, not the drain
        summary = report.summarize(
            located,
            during,
            first_seq=1,
            fixes_recorded=self.stats.next_seq - 1,
            conditions=int(st.get("conditions", 0)),
            extra=extra,
        )
        # the lake holds each seq once: duplicates are what the collector recognised and dropped
        records = int(st.get("records", 0))
        summary["records_received"] = records
        summary["duplicates"] = int(st.get("duplicates", 0))
        summary["fixes_per_message"] = (
            round(records / located.messages, 2) if located.messages else None
        )
        track = report.unique_track(located.points)
        files = {
            "summary.json": report.dumps(summary),
            "track.gpx": self.export("gpx"),
            "track.geojson": report.dumps(report.to_geojson(track, statuses)),
            "track.svg": track_svg(track, statuses, self.faults, base),
            # fixes received within half a real second are not backlog
            "timeline.svg": timeline_svg(during, self.faults, track, base, self.speed / 2),
        }
        for name, text in files.items():
            (self.out / name).write_text(text)
        self.ui.event("bench summary:\n" + report.format_summary(summary))
        for problem in self.problems:
            self.ui.event(f"bench: {problem}")
        ok = not summary["gaps"] and not self.problems and summary["fixes_recorded"] > 0
        self.ui.event(f"bench: {'PASS' if ok else 'FAIL'}: report in {self.out}")
        return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPO / "bench-out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracker.log").write_bytes(b"")
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    ui = StatusLine(sys.stdout)
    try:
        return Bench(args, work, out, ui).run()
    except KeyboardInterrupt:
        ui.event("bench: interrupted")
        return 130
    except ImportError as exc:
        ui.event(f"bench: error: {exc}: run scripts/bench, or scripts/setup --test first")
        return 2
    except RuntimeError as exc:
        ui.event(f"bench: error: {exc} (see {out / 'tracker.log'})")
        return 1
    finally:
        if args.keep:
            ui.event(f"bench: working folder kept: {work}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
