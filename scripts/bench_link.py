#!/usr/bin/env python3
"""The cellular bill: scenario days through the real daemon, every byte on the TCP link counted.

Each scenario day (parked, commuter, delivery; each also with a one-hour outage; and parked2,
the second of two days parked: no boot and no connect in it) is written as
NMEA, played through a pty into `tracker run` at `[debug] clock_speed`, which connects to
Mosquitto (mutual TLS) through a loopback TCP relay. The relay counts the bytes both ways and
reads the kernel's segment counters (TCP_INFO) of its daemon-side socket when a connection ends;
an outage closes every relayed connection and refuses new ones. A `mosquitto_sub` on the broker
counts AWS messages (5 KB blocks) and decodes the fixes to time their delivery. The shadow
service is played on the broker (`benchkit.shadow`, its documented replies), so its replies to
the device's get, report refusals and deltas cross the counted link as they would on AWS.

Real-time parts on an accelerated clock:
- keep-alive pings: none happen in a run (it lasts about 90 real seconds, the keep-alive is
  120 s or more of real time); they are counted from the keep-alive interval and every silent
  stretch of each connection, in replayed time, at PING_BYTES each;
- TLS handshakes and MQTT connects: measured, per connection, through the relay;
- reconnect backoff: the daemon divides the SDK's backoff (1 s to 120 s) by clock_speed, so a
  reconnect takes as long in replayed time as on a board; a failed attempt during an outage is
  a SYN into a dead cell (not billed) and is not counted;
- a delay is measured on the replayed clock: processing takes milliseconds of real time, which
  the clock speed multiplies (about +-10 s at 1000x); the first handshake takes about 300 s of
  replayed time, so fixes from before the first message arrived are left out of the worst delay;
- the day starts when the daemon has opened the GPS port, before it has connected, and ends
  DRAIN_S of replayed time after the last second (for held fixes and the drain): the relay then
  cuts the link and counting stops;
- a stall of the shared machine of 0.12 s real is 120 s replayed: the fix timeout is raised in
  both columns so that it cannot read as a lost fix (the scenarios' receiver never loses it).

The baseline column is the earlier settings (BASELINE: each fix in its own message, v1 JSON
batches, keep-alive 120 s, the link closed in low power, a condition with every wake, the SDK's
default TLS policy), run side by side with the defaults (or `--settings`) in the same run.
The JSON output (`--json`) has each message's replayed time, kind and size (`timeline`).
Usage: scripts/bench_link.py [--speed 1000] [--only parked,...] [--settings JSON]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in map(str, (REPO, REPO / "scripts")) if p not in sys.path]

from tracker.core.config import AwsConfig  # noqa: E402
from tracker.core.errors import CodecError  # noqa: E402
from tracker.core.fix import Fix  # noqa: E402
from tracker.link import codec  # noqa: E402
from tracker.link.shadow import TOPICS as SHADOW_TOPICS  # noqa: E402
from tracker.receiver.epoch import RECORDING_DATE_FLOOR, Decoder  # noqa: E402
from tracker.receiver.nmea import frame  # noqa: E402

RECORDING = REPO / "tests/data/nmea/nmeaparser/NmeaSampleData.txt"
THING = "bench-tracker-1"
DAY0 = datetime(2026, 6, 1, tzinfo=timezone.utc)  # a Monday
DAY_S = 86_400
TCPIP_HEADER = 40  # bytes per segment: IPv4 20 + TCP 20 (no options)
CELL_MSS = 1360  # a loopback segment carries up to 64 KB; a cellular one about this much
TLS_RECORD = 22  # TLS 1.3 AES-GCM: 5 header + 1 content type + 16 tag
PING_BYTES = 2 * (2 + TLS_RECORD + TCPIP_HEADER) + TCPIP_HEADER  # PINGREQ, PINGRESP, bare ACK
HANDSHAKE_SEGMENTS = 3  # SYN, SYN-ACK, ACK (not on the accepted socket's counters)
AWS_BLOCK = 5 * 1024
CHUNKS_KEPT = 40  # reads of each connection kept for the JSON output (first_chunks)
DRAIN_S = 600  # replayed seconds after the day for held fixes and the drain; counted in the day
PARKED_STEP_S = 5  # a receiver left on while parked sends a fix this often
DRIVE_STEP_S = 2  # the recording's rate


# ---- scenarios ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    t: float  # seconds into the day
    lat: float
    lon: float
    speed: float  # m/s
    course: float
    alt: float


def drive_fixes() -> list[Fix]:
    """The bundled 2.5-hour drive's fixes (one every 2 s)."""
    dec = Decoder(date_floor=RECORDING_DATE_FLOOR)
    epochs = dec.feed(RECORDING.read_bytes()) + dec.flush()
    return [e.fix for e in epochs if e.fix is not None and e.fix.speed is not None]


def _park(at: Fix, start: float, end: float) -> Iterator[Point]:
    t = start
    while t < end:
        yield Point(t, at.lat, at.lon, 0.0, 0.0, at.alt or 0.0)
        t += PARKED_STEP_S


def _drive(
    fixes: list[Fix], start: float, reverse: bool = False, backwards: bool = False
) -> Iterator[Point]:
    """The fixes (reversed: the same road back) every DRIVE_STEP_S from `start`."""
    seq = list(reversed(fixes)) if reverse else fixes
    flip = reverse != backwards
    for i, f in enumerate(seq):
        course = ((f.course or 0.0) + (180.0 if flip else 0.0)) % 360.0
        yield Point(start + i * DRIVE_STEP_S, f.lat, f.lon, f.speed or 0.0, course, f.alt or 0.0)


def scenario_points(name: str, fixes: list[Fix]) -> list[Point]:
    h = 3600.0
    if name == "parked":
        return list(_park(fixes[0], 0, DAY_S))
    if name == "parked2":  # two days parked; the second one is counted (no boot, no connect)
        return list(_park(fixes[0], 0, 2 * DAY_S))
    if name == "commuter":  # 07:30-08:30 to work, 17:00-18:00 home (the same road back)
        leg = fixes[: int(h / DRIVE_STEP_S)]
        return [
            *_park(leg[0], 0, 7.5 * h),
            *_drive(leg, 7.5 * h),
            *_park(leg[-1], 8.5 * h, 17 * h),
            *_drive(leg, 17 * h, reverse=True),
            *_park(leg[0], 18 * h, DAY_S),
        ]
    if name == "delivery":  # 08:00-16:00: 8 minutes driving, 4 minutes at a drop, repeated
        out = list(_park(fixes[0], 0, 8 * h))
        t, i, step = 8 * h, 0, 1
        drive_n = int(480 / DRIVE_STEP_S)
        while t < 16 * h:
            leg, back = [], step < 0
            for _ in range(drive_n):
                leg.append(fixes[i])
                if not 0 <= i + step < len(fixes):
                    step = -step  # back along the road
                i += step
            out += _drive(leg, t, backwards=back)
            t += drive_n * DRIVE_STEP_S
            out += _park(fixes[i], t, min(t + 240, 16 * h))
            t += 240
        out += _park(fixes[i], 16 * h, DAY_S)
        return out
    raise ValueError(name)


OUTAGES = {
    "parked": 12 * 3600, "parked2": DAY_S + 12 * 3600, "commuter": 7.75 * 3600,
    "delivery": 10 * 3600,
}  # fmt: skip
COUNT_FROM = {"parked2": DAY_S}  # replayed second the counted day starts (default 0)


def _dm(value: float, hemis: str, width: int) -> tuple[str, str]:
    a = abs(value)
    deg = int(a)
    return f"{deg:0{width}d}{(a - deg) * 60:07.4f}", hemis[0] if value >= 0 else hemis[1]


def nmea(points: list[Point]) -> bytes:
    """RMC + GGA per point, times from DAY0."""
    out = []
    for p in points:
        t = DAY0 + timedelta(seconds=p.t)
        hms, dmy = t.strftime("%H%M%S.00"), t.strftime("%d%m%y")
        lat, ns = _dm(p.lat, "NS", 2)
        lon, ew = _dm(p.lon, "EW", 3)
        knots = p.speed / 0.514444
        for body in (
            f"GPRMC,{hms},A,{lat},{ns},{lon},{ew},{knots:.2f},{p.course:.1f},{dmy},,,A",
            f"GPGGA,{hms},{lat},{ns},{lon},{ew},1,09,0.9,{p.alt:.1f},M,0.0,M,,",
        ):
            out.append(frame(body).decode())
    return "".join(out).encode()


# ---- the counting relay -------------------------------------------------------------------------


@dataclass
class Conn:
    opened: float  # real monotonic
    closed: float | None = None
    up: int = 0  # bytes daemon -> broker
    down: int = 0
    segs: int = 0  # kernel counters of the daemon-side socket, both ways
    extra_segs: int = 0  # a chunk larger than a cellular segment is several segments
    sends: list[float] = field(default_factory=list)  # real times of daemon -> broker chunks
    handshake: int = 0  # payload bytes both ways before the first 20 ms of quiet
    quiet: bool = False
    before: tuple[int, int] = (0, 0)  # (payload bytes, segments) before the counted day
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (real time, +up / -down)


def _tcp_segments(sock: socket.socket) -> int:
    """tcpi_segs_out + tcpi_segs_in from TCP_INFO (Linux >= 4.2)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < 144:
        return 0
    segs_out, segs_in = struct.unpack_from("II", info, 136)
    return int(segs_out + segs_in)


class Relay:
    """127.0.0.1:port -> the broker; counts what passes; `outage(True)` cuts the link."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns: list[Conn] = []
        self.down = False
        self._live: list[tuple[socket.socket, socket.socket, Conn]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            if self.down:
                client.close()  # no coverage: nothing reaches the network
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(time.monotonic())
            with self._lock:
                self.conns.append(conn)
                self._live.append((client, server, conn))
            for a, b, upward in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, conn, upward), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, conn: Conn, upward: bool) -> None:
        client = src if upward else dst
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                now = time.monotonic()
                last = conn.sends[-1] if conn.sends else conn.opened
                if not conn.quiet and now - last > 0.02 and conn.handshake > 1000:
                    conn.quiet = True
                if not conn.quiet:
                    conn.handshake += len(data) + TCPIP_HEADER * math.ceil(len(data) / CELL_MSS)
                if len(conn.chunks) < CHUNKS_KEPT:
                    conn.chunks.append((now, len(data) if upward else -len(data)))
                if upward:
                    conn.up += len(data)
                    conn.sends.append(time.monotonic())
                else:
                    conn.down += len(data)
                conn.extra_segs += math.ceil(len(data) / CELL_MSS) - 1
            try:
                dst.sendall(data)
            except OSError:
                break
        self._finish(client, conn)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _finish(self, client: socket.socket, conn: Conn) -> None:
        with self._lock:
            if conn.closed is None:
                conn.closed = time.monotonic()
                with contextlib.suppress(OSError):
                    conn.segs = _tcp_segments(client) + HANDSHAKE_SEGMENTS

    def snapshot(self) -> None:
        """What every connection has carried so far is left out of the count from now on."""
        with self._lock:
            live = {id(conn): client for client, _, conn in self._live}
            for conn in self.conns:
                segs = conn.segs
                client = live.get(id(conn))
                if conn.closed is None and client is not None:
                    with contextlib.suppress(OSError):
                        segs = _tcp_segments(client) + HANDSHAKE_SEGMENTS
                conn.before = (conn.up + conn.down, segs + conn.extra_segs)

    def outage(self, on: bool) -> None:
        self.down = on
        if on:
            with self._lock:
                live = list(self._live)
            for client, server, conn in live:
                self._finish(client, conn)
                for s in (client, server):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.outage(True)
        with contextlib.suppress(OSError):  # wake the accept() that is waiting
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self.lsock.close()
        with self._lock:
            for client, server, _ in self._live:
                client.close()
                server.close()


def timed_subscriber(broker: Any, topic: str, client_id: str, into: list[Any]) -> Any:
    """A cloud-side subscriber (tests/support) that also notes each message's arrival time."""
    from benchkit.subscriber import Subscriber

    class Timed(Subscriber):
        def _on_publish(self, data: Any) -> None:
            packet = data.publish_packet
            into.append((time.time(), str(packet.topic), bytes(packet.payload)))

    return Timed(broker, topic, client_id=client_id)


# ---- one run ------------------------------------------------------------------------------------


@dataclass
class Result:
    ip_bytes: int = 0
    payload_bytes: int = 0  # TLS bytes both ways
    segments: int = 0
    pings: int = 0
    connects: int = 0
    aws_messages: int = 0
    fixes_recorded: int = 0
    fixes_delivered: int = 0
    worst_delay_s: float = 0.0
    location_messages: int = 0
    first_connect_bytes: int = 0  # IP bytes of the first connection's first 0.2 s (handshake)
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [messages, payload]
    timeline: list[tuple[int, str, int]] = field(default_factory=list)  # (t, kind, payload)
    # the first connection's first reads, as (replayed s since it opened, bytes: + up, - down):
    # the handshake, session tickets, CONNECT/CONNACK, SUBSCRIBE/SUBACK, the first messages
    first_chunks: list[tuple[int, int]] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)  # the first condition of each reason

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The earlier settings, the baseline column: every fix in its own message, v1 JSON batches
# (low_power_condition_s = 60: a condition with every heartbeat wake, as before), the SDK's
# default TLS policy (a post-quantum key share in every ClientHello)
BASELINE: dict[str, dict[str, Any]] = {
    "policy": {"max_delay_s": 0, "low_power_condition_s": 60},
    "aws": {"compress": False, "keepalive_s": 120, "post_quantum_tls": True},
    "power": {"close_link": True},
}


def config_text(
    work: Path, gps: str, port: int, pki: Any, speed: float, extra: dict[str, dict[str, Any]]
) -> str:
    sections: dict[str, dict[str, Any]] = {
        "device": {"thing_name": THING, "set_clock": False},
        "aws": {"endpoint": "localhost", "port": port, "cert": str(pki.client.cert),
                "key": str(pki.client.key), "ca": str(pki.ca),
                # the SDK's AWS rate limit runs in real time: at 1000x it would hold a wake's
                # few messages for minutes of replayed time
                "flow_control": False},
        "gps": {"url": gps, "detect_baud": False, "date_floor": "1999-08-22"},
        # a stall of the shared machine for 0.12 s real is a 120 s fix timeout at 1000x (a
        # no_fix report, 10 minutes of backoff): the scenarios' receiver never loses its fix
        "policy": {"fix_timeout_s": 600},
        "spool": {"path": str(work / "spool.db")},
        "power": {"gps": "sim://"},
        "sensors": {"battery": "sim://?percent=80"},
        "log": {"level": "info"},
        "debug": {"clock_speed": speed},
    }  # fmt: skip
    for name, keys in extra.items():
        sections.setdefault(name, {}).update(keys)
    return "".join(
        f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )


class Run:
    """One daemon (this tree's or the baseline's) through its own relay, broker and GPS."""

    def __init__(
        self, label: str, settings: dict[str, dict[str, Any]], work: Path, points: list[Point],
        args: Any,
    ) -> None:  # fmt: skip
        from benchkit.broker import Broker
        from benchkit.fake_gps import FakeGps
        from benchkit.pki import Pki

        self.label, self.settings, self.work, self.args = label, settings, work, args
        self.code = REPO
        default = AwsConfig.__dataclass_fields__["keepalive_s"].default
        self.keepalive = int(settings.get("aws", {}).get("keepalive_s", default))
        self.speed = float(args.speed)
        work.mkdir(parents=True)
        self.pki = Pki(work / "pki", thing_name=THING)
        self.broker = Broker(self.pki, work / "broker")
        self.data = nmea(points)
        self.gps = FakeGps(work)
        self.relay: Relay | None = None
        self.subs: list[Any] = []
        self.shadow: Any = None
        self.heard: list[tuple[float, str, bytes]] = []  # (wall time, topic, payload)
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_play = 0.0  # wall time when the day's second 0 was played
        self.count_from = 0.0  # replayed second the counted day starts at (DAY_S: the second)
        self.counted_at: float | None = None  # real monotonic time counting started, if later
        self.seq_before = 0  # fixes recorded before the counted day

    def start(self) -> None:
        from benchkit.shadow import ShadowResponder

        self.broker.start()
        # the shadow service, as AWS plays it: its replies come down the device's link
        aws = self.broker.aws_config(self.pki.cloud, session_expiry_s=0)
        self.shadow = ShadowResponder(aws, "bench-link-shadow", THING)
        self.shadow.start()
        self.relay = Relay(self.broker.port)
        for i, topic in enumerate(("dt/tracker/#", f"$aws/things/{THING}/shadow/#")):
            sub = timed_subscriber(self.broker, topic, f"bench-link-{i}", self.heard)
            self.subs.append(sub.start())
        cfg = self.work / "tracker.toml"
        cfg.write_text(config_text(self.work, self.gps.path, self.relay.port, self.pki,
                                   self.speed, self.settings))  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(self.code), PYTHONDONTWRITEBYTECODE="1")
        env.pop("NOTIFY_SOCKET", None)
        with (self.work / "tracker.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tracker", "run", "--config", str(cfg)], cwd=self.code,
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip

    def wait_gps_open(self, timeout: float = 20.0) -> None:
        """Until the daemon has the GPS port open: the day starts then (a receiver sends from
        power-on; a daemon left without fixes for minutes of replayed time would report no_fix
        and send conditions no real day has)."""
        end = time.monotonic() + timeout
        log = self.work / "tracker.log"
        while b"GPS port up" not in log.read_bytes():
            if time.monotonic() > end or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"{self.label}: the tracker did not start (see {self.work})")
            time.sleep(0.01)

    def wait_connected(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        assert self.relay is not None
        while not self.relay.conns or self.relay.conns[0].down == 0:
            if time.monotonic() > end or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"{self.label}: the tracker did not connect (see {self.work})")
            time.sleep(0.05)

    def play(self) -> None:
        self.t_play = time.time()
        self.gps.play(self.data, speed=self.speed, max_gap=1e9)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(1.0)
        for sub in self.subs:
            sub.stop()
        if self.shadow is not None:
            self.shadow.stop()
        if self.relay is not None:
            self.relay.close()
        self.broker.close()
        self.gps.close()

    def start_counting(self, at: float) -> None:
        """The counted day starts now, `at` replayed seconds after the first one played."""
        assert self.relay is not None
        self.relay.snapshot()
        self.count_from, self.counted_at = at, time.monotonic()
        for _, topic, payload in list(self.heard):
            if topic.endswith("/location"):
                with contextlib.suppress(CodecError):
                    recs = codec.decode(payload)
                    self.seq_before = max(self.seq_before, *(r.seq for r in recs))

    def result(self) -> Result:
        from tracker.spool.store import Spool

        assert self.relay is not None
        r = Result()
        start = self.counted_at or 0.0
        for i, c in enumerate(self.relay.conns):
            if i == 0:
                r.first_connect_bytes = c.handshake
                r.first_chunks = [(round((t - c.opened) * self.speed), n) for t, n in c.chunks]
            end = c.closed or time.monotonic()
            if end <= start:
                continue  # over before the counted day
            r.connects += c.opened >= start
            r.payload_bytes += c.up + c.down - c.before[0]
            r.segments += c.segs + c.extra_segs - c.before[1]
            # keep-alive pings: one per keep-alive interval of replayed silence from the client
            marks = [max(c.opened, start), *(t for t in c.sends if start < t < end), end]
            for a, b in itertools.pairwise(marks):
                r.pings += int((b - a) * self.speed // self.keepalive)
        r.ip_bytes = r.payload_bytes + TCPIP_HEADER * r.segments + PING_BYTES * r.pings
        first: dict[int, float] = {}
        delays: list[float] = []
        # the first handshake runs in real time (about 300 s replayed at 1000x): fixes from
        # before the first message arrived are left out of the worst delay
        linked = min(((at - self.t_play) * self.speed for at, _, _ in self.heard), default=0.0)
        counted = self.t_play + self.count_from / self.speed  # wall time
        for at, topic, payload in list(self.heard):
            if at < counted:
                continue
            kind = topic.rsplit("/", 1)[-1]
            if "/shadow/" in topic:
                op = topic.split("/shadow/", 1)[1]
                if op not in ("get", "update", *SHADOW_TOPICS):
                    continue  # a reply the device does not subscribe to: not on its link
                kind = "shadow " + op
            r.aws_messages += max(1, math.ceil(len(payload) / AWS_BLOCK))
            if kind == "condition":
                with contextlib.suppress(ValueError, AttributeError):
                    kind += " " + str(json.loads(payload).get("reason"))
                    r.samples.setdefault(kind, payload.decode())
            counts = r.by_kind.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += len(payload)
            r.timeline.append((round((at - self.t_play) * self.speed), kind, len(payload)))
            if "/shadow/" in topic:
                continue
            if not topic.endswith("/location"):
                continue
            r.location_messages += 1
            try:
                recs = codec.decode(payload)
            except CodecError:
                continue
            for rec in recs:
                sent = (rec.fix.time - DAY0).total_seconds()
                arrived = (at - self.t_play) * self.speed
                if rec.seq <= self.seq_before:  # delivered before the counted day
                    continue
                if rec.seq not in first:
                    first[rec.seq] = arrived - sent
                    if sent >= linked:
                        delays.append(arrived - sent)
        r.fixes_delivered = len(first)
        r.worst_delay_s = round(max(delays, default=0.0), 1)
        with Spool(self.work / "spool.db") as spool:
            r.fixes_recorded = spool.stats().next_seq - 1 - self.seq_before
        return r


def run_scenario(name: str, outage: bool, fixes: list[Fix], work: Path,
                 args: Any) -> dict[str, Result]:  # fmt: skip
    points = scenario_points(name, fixes)
    tag = f"{name}{'-outage' if outage else ''}"
    runs = [Run("baseline", BASELINE, work / tag / "baseline", points, args),
            Run("new", json.loads(args.settings), work / tag / "new", points, args)]  # fmt: skip
    speed = float(args.speed)
    try:
        for run in runs:
            run.start()
        for run in runs:
            run.wait_gps_open()
            run.play()
        for run in runs:
            run.wait_connected()
        # each run's day (from its first played second), with its outage, then DRAIN_S for what
        # is held (max_delay_s) and the drain; then the link is cut: counting ends there
        ended: set[str] = set()
        count_from = COUNT_FROM.get(name, 0.0)
        while len(ended) < len(runs):
            for run in runs:
                relay = run.relay
                assert relay is not None
                t = (time.time() - run.t_play) * speed  # replayed seconds into the day
                if run.label in ended:
                    continue
                if count_from and run.counted_at is None and t >= count_from:
                    run.start_counting(count_from)
                if t >= count_from + DAY_S + DRAIN_S:
                    relay.outage(True)
                    ended.add(run.label)
                elif outage and (OUTAGES[name] <= t < OUTAGES[name] + 3600) != relay.down:
                    relay.outage(not relay.down)
            time.sleep(0.01)
    finally:
        for run in runs:
            run.stop()
    return {run.label: run.result() for run in runs}


def fmt_kb(n: float) -> str:
    return f"{n / 1000:.1f} KB"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--speed", type=float, default=1000.0, help="clock speed (default 1000)")
    p.add_argument("--only", default="", help="comma-separated scenario names")
    p.add_argument(
        "--settings",
        default="{}",
        help='the new column\'s settings as JSON, e.g. {"aws":{"keepalive_s":1200}}',
    )
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    args = p.parse_args(argv)
    # the daemons run in their own sessions: a SIGTERM must unwind, so that each run stops its
    # daemon, broker and relay instead of leaving them running at 1000x
    signal.signal(signal.SIGTERM, _terminate)
    fixes = drive_fixes()
    work = Path(tempfile.mkdtemp(prefix="tracker-bench-link-"))
    wanted = [s for s in args.only.split(",") if s] or [
        "parked", "parked-outage", "parked2", "commuter", "commuter-outage", "delivery",
        "delivery-outage",
    ]  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    try:
        for tag in wanted:
            name, _, extra = tag.partition("-")
            t = time.monotonic()
            res = run_scenario(name, extra == "outage", fixes, work, args)
            results[tag] = {k: v.row() for k, v in res.items()}
            b, n = res["baseline"], res["new"]
            print(
                f"{tag:16} IP/day {fmt_kb(b.ip_bytes):>9} -> {fmt_kb(n.ip_bytes):>9}  "
                f"AWS msgs {b.aws_messages:5} -> {n.aws_messages:4}  "
                f"fixes {b.fixes_delivered}/{b.fixes_recorded} -> "
                f"{n.fixes_delivered}/{n.fixes_recorded}  "
                f"worst delay {b.worst_delay_s:.0f} s -> {n.worst_delay_s:.0f} s  "
                f"connects {b.connects} -> {n.connects}  pings {b.pings} -> {n.pings}  "
                f"first connect {b.first_connect_bytes} B  "
                f"({time.monotonic() - t:.0f} s)",
                flush=True,
            )
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        if args.keep:
            print(f"bench_link: working folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
