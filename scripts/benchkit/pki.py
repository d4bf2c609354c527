"""A throw-away test PKI for mutual TLS against Mosquitto (EC P-256, `cryptography`).

Owns key and certificate generation for tests and benchmarks; keys are written 0600 under a
temporary directory only. Must not import the tracker or the AWS SDK.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

THING_NAME = "tracker-test-1"
CLOUD_NAME = "cloud-consumer"
QEMU_HOST = "10.0.2.2"  # the host as seen from a QEMU guest with user networking
_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _new_authority(directory: Path, name: str) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    _write_cert(path, cert)
    return _Authority(name, key, cert, path)


def _issue(
    ca: _Authority,
    directory: Path,
    stem: str,
    cn: str,
    *,
    server: bool,
    expired: bool = False,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 365 * _DAY)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    # this machine as a QEMU guest sees it (user networking): scripts/image-test
                    x509.IPAddress(ipaddress.ip_address(QEMU_HOST)),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    ident = Identity(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_cert(ident.cert, cert)
    _write_key(ident.key, key)
    return ident


class Pki:
    """A CA, a server identity for the broker, client identities, and broken variants."""

    def __init__(self, directory: Path, thing_name: str = THING_NAME) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.thing_name = thing_name
        self._ca = _new_authority(directory, "test-root-ca")
        self._other = _new_authority(directory, "other-root-ca")
        self.ca: Path = self._ca.path
        """The root CA that signed the broker's and the clients' certificates."""
        self.other_ca: Path = self._other.path
        """A CA that signed nothing the broker presents: a client trusting it rejects the server."""
        self.server = _issue(self._ca, directory, "server", "localhost", server=True)
        self.client = _issue(self._ca, directory, "client", thing_name, server=False)
        self.cloud = _issue(self._ca, directory, "cloud", CLOUD_NAME, server=False)

    def client_for(self, name: str) -> Identity:
        """A valid client identity whose CN is `name`."""
        return _issue(self._ca, self.dir, f"client-{name}", name, server=False)

    def issue_for(self, public_key: CertificatePublicKeyTypes, cn: str) -> x509.Certificate:
        """A client certificate for someone else's key (a CSR's, say), signed by the test CA."""
        now = dt.datetime.now(dt.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self._ca.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._ca.key, hashes.SHA256())
        )

    def expired_client(self) -> Identity:
        """A client certificate from the right CA that expired yesterday."""
        return _issue(
            self._ca, self.dir, "client-expired", self.thing_name, server=False, expired=True
        )

    def foreign_client(self) -> Identity:
        """A client certificate signed by another CA: the broker rejects it."""
        return _issue(self._other, self.dir, "client-foreign", self.thing_name, server=False)
