"""A minimal MQTT 5 broker over mutual TLS that answers with the reason codes a test chooses.

A virtual peer for what Mosquitto never sends: a PUBACK with an unknown reason code (0xFF), or
a SUBACK that refuses. It speaks just enough MQTT 5 for one client: CONNECT -> CONNACK,
PUBLISH (QoS 1) -> PUBACK, SUBSCRIBE -> SUBACK, PINGREQ -> PINGRESP.
"""

from __future__ import annotations

import socket
import ssl
import threading

from benchkit.pki import Pki

from tracker.core.config import AwsConfig


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


class RawBroker:
    """`puback_code` answers every PUBLISH; `suback_code` every subscription."""

    def __init__(self, pki: Pki, puback_code: int = 0x00, suback_code: int = 0x01) -> None:
        self.puback_code = puback_code
        self.suback_code = suback_code
        self.published: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        ctx.load_verify_locations(str(pki.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx = ctx
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def aws_config(self, pki: Pki) -> AwsConfig:
        """The device's [aws] settings for this peer (the test PKI's client, flow control off)."""
        return AwsConfig(
            endpoint="localhost", port=self.port, cert=str(pki.client.cert),
            key=str(pki.client.key), ca=str(pki.ca), flow_control=False,
        )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(None)
            try:
                with self._ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(1.0)
                    self._session(conn)
            except (OSError, ssl.SSLError):
                continue

    def _read(self, conn: ssl.SSLSocket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = conn.recv(n - len(data))
            except TimeoutError:
                if self._stop.is_set():
                    raise OSError("stopped") from None
                continue
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _session(self, conn: ssl.SSLSocket) -> None:
        while not self._stop.is_set():
            head = self._read(conn, 1)[0]
            length, shift = 0, 0
            while True:
                b = self._read(conn, 1)[0]
                length += (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            body = self._read(conn, length)
            kind = head >> 4
            if kind == 1:  # CONNECT
                conn.sendall(_packet(0x20, b"\x00\x00\x00"))
            elif kind == 3:  # PUBLISH, QoS 1
                tlen = int.from_bytes(body[:2], "big")
                self.published.append(body[2 : 2 + tlen].decode())
                pid = body[2 + tlen : 4 + tlen]
                conn.sendall(_packet(0x40, pid + bytes([self.puback_code]) + b"\x00"))
            elif kind == 8:  # SUBSCRIBE
                pid, rest = body[:2], body[2:]
                plen = rest[0]  # properties length (one byte is enough for a client's)
                rest = rest[1 + plen :]
                codes = bytearray()
                while rest:
                    flen = int.from_bytes(rest[:2], "big")
                    rest = rest[2 + flen + 1 :]
                    codes.append(self.suback_code)
                conn.sendall(_packet(0x90, pid + b"\x00" + bytes(codes)))
            elif kind == 12:  # PINGREQ
                conn.sendall(_packet(0xD0, b""))
            elif kind == 14:  # DISCONNECT
                return
