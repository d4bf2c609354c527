"""Device credentials: certificates, keys and root CAs judged, and their files on a board; new keys.

Shared by provisioning and `tracker check`. Uses `cryptography` only; must not import the AWS SDK.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from tracker.core.errors import ProvisionError
from tracker.core.files import read_file

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
EXPIRY_WARN_DAYS = 30
# A board without an RTC boots in 1970; any clock before this has not been set.
CLOCK_SANE_AFTER = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one judgement: OK, WARN or FAIL and a one-line detail."""

    level: str
    detail: str


MAX_PEM_BYTES = 1 << 20  # certificate bundles are a few KB; anything this big is another file


def read_pem_file(path: str | Path, what: str) -> bytes:
    """A credential file's bytes; ProvisionError names the file and why it cannot be used."""
    data = read_file(
        path, what, ProvisionError, limit=MAX_PEM_BYTES, unreadable_fix=" (run as root)"
    )
    if not data:
        raise ProvisionError(f"{what} {path} is empty; pass the PEM file")
    if len(data) > MAX_PEM_BYTES:
        raise ProvisionError(f"{what} {path} is over {MAX_PEM_BYTES >> 20} MB: not a PEM file")
    return data


def parse_certificate(data: bytes, source: str) -> x509.Certificate:
    """The first certificate of a PEM (or DER) blob."""
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
                raise ProvisionError(
                    f"{source} holds a private key, not a certificate: "
                    "are the certificate and key swapped?"
                )
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ProvisionError(f"{source} is not a PEM certificate") from exc


def parse_private_key(data: bytes, source: str) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1)."""
    if b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
        raise ProvisionError(
            f"{source} holds a certificate, not a private key: are the certificate and key swapped?"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ProvisionError(
            f"{source} is encrypted: the tracker needs an unencrypted key "
            "(openssl pkey -in KEY -out KEY.plain)"
        ) from exc
    except ValueError as exc:
        raise ProvisionError(f"{source} is not a PEM private key") from exc
    if not isinstance(
        key,
        (
            ec.EllipticCurvePrivateKey,
            rsa.RSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise ProvisionError(f"{source} holds an unsupported key type; use RSA or EC")
    return key


def parse_ca(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; at least one, each a CA."""
    if b"PRIVATE KEY-----" in data:
        raise ProvisionError(f"{source} holds a private key, not a root CA certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ProvisionError(
            f"{source} is not a PEM CA certificate (for AWS IoT use AmazonRootCA1.pem)"
        ) from exc
    for cert in certs:
        if not is_ca(cert):
            raise ProvisionError(
                f"{source} is a device certificate, not a root CA "
                "(for AWS IoT use AmazonRootCA1.pem)"
            )
    return certs


def load_certificate(path: str | Path, what: str = "certificate") -> x509.Certificate:
    """Read and parse a certificate file; ProvisionError names the file and the problem."""
    return parse_certificate(read_pem_file(path, what), f"{what} {path}")


def load_private_key(path: str | Path, what: str = "private key") -> PrivateKey:
    """Read and parse an unencrypted private key file."""
    return parse_private_key(read_pem_file(path, what), f"{what} {path}")


def load_ca(path: str | Path, what: str = "root CA") -> list[x509.Certificate]:
    """Read and parse a root CA bundle."""
    return parse_ca(read_pem_file(path, what), f"{what} {path}")


def is_ca(cert: x509.Certificate) -> bool:
    """True when the certificate says it may sign others (basicConstraints CA)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        # v1 roots have no extensions; a self-signed one is still a root
        return cert.issuer == cert.subject
    return bc.ca


def public_der(obj: x509.Certificate | PrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate or of a private key's public half."""
    pub = obj.public_key()
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    """True when the private key belongs to the certificate."""
    return public_der(cert) == public_der(key)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _day(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def validity(
    cert: x509.Certificate,
    now: dt.datetime,
    what: str = "certificate",
    warn_days: int = EXPIRY_WARN_DAYS,
) -> Verdict:
    """Whether `cert` is valid at `now`: FAIL outside its window, WARN when it expires soon."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        hint = (
            f"the clock reads {_day(now)}, it has not been set: wait for NTP "
            "(timedatectl) or set it"
            if now < CLOCK_SANE_AFTER
            else f"the clock reads {_day(now)}: check the time or the certificate"
        )
        return Verdict(FAIL, f"{what} is not valid before {_day(start)}; {hint}")
    if now >= end:
        return Verdict(FAIL, f"{what} expired on {_day(end)}; issue a new one")
    left = end - now
    if left < dt.timedelta(days=warn_days):
        return Verdict(WARN, f"{what} expires in {left.days} days ({_day(end)}); renew it soon")
    return Verdict(OK, f"{what} valid until {_day(end)}")


def clock_verdict(cert: x509.Certificate, now: dt.datetime) -> Verdict:
    """Whether the clock is plausible for TLS: set at all and inside the certificate's window."""
    if now < CLOCK_SANE_AFTER:
        return Verdict(
            FAIL,
            f"clock reads {_day(now)}: it was never set (no RTC); TLS will fail "
            "until NTP sets it (timedatectl set-ntp true)",
        )
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return Verdict(
            FAIL,
            f"clock reads {_day(now)}, before the certificate's start "
            f"{_day(start)}: fix the time (timedatectl)",
        )
    if now >= end:
        return Verdict(FAIL, f"clock reads {_day(now)}, after the certificate's end {_day(end)}")
    return Verdict(OK, f"clock reads {_day(now)}, inside the certificate's validity")


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key, generated here; it never leaves the board."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """A PEM certificate signing request for `key` (AWS IoT ignores the subject but wants one)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


# ------------------------------------------------------------------------------ board checks


@dataclass(frozen=True)
class ServiceUser:
    """The account the service runs as: uid and every group it is in."""

    name: str
    uid: int
    gids: frozenset[int]


def lookup_user(name: str = "tracker") -> ServiceUser | None:
    """The service user with its groups, or None when it does not exist (yet)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return ServiceUser(name, pw.pw_uid, frozenset(os.getgrouplist(name, pw.pw_gid)))


def user_may(user: ServiceUser, st: os.stat_result, bits: tuple[int, int, int]) -> bool:
    """Whether `user` gets all the (owner, group, other) permission `bits` on a file with `st`."""
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return st.st_mode & bits[0] == bits[0]
    if st.st_gid in user.gids:
        return st.st_mode & bits[1] == bits[1]
    return st.st_mode & bits[2] == bits[2]


def user_can_read(user: ServiceUser, path: Path, root: Path | None = None) -> Path | None:
    """None when `user` can read `path`; else the file or directory that stops it. With `root`
    (a staged image), only the directories from the image's root down count."""
    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    for parent in reversed(path.parents):
        if root is not None and not parent.is_relative_to(root):
            continue
        if not user_may(user, parent.stat(), search):
            return parent
    ok = user_may(user, path.stat(), (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH))
    return None if ok else path


Finding = tuple[str, Verdict]  # check name, verdict


def _file(name: str, value: object, out: list[Finding]) -> Path | None:
    if not isinstance(value, str) or not value:
        return None  # the config check reports it
    path = Path(value)
    if not path.exists():
        out.append(
            (name, Verdict(FAIL, f"{path} does not exist; provision the board or fix [aws] {name}"))
        )
        return None
    if path.is_dir():
        out.append((name, Verdict(FAIL, f"{path} is a directory, not a file; fix [aws] {name}")))
        return None
    if not path.is_file() or not os.access(path, os.R_OK):
        out.append((name, Verdict(FAIL, f"{path} is not a readable file; run as root")))
        return None
    return path


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_PEM_BYTES)
    except OSError:
        return b""


def _key_mode(path: Path) -> Verdict:
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        return Verdict(FAIL, f"{path} is mode {mode:04o}, readable by anyone: chmod 600 {path}")
    if mode & 0o070:
        return Verdict(WARN, f"{path} is mode {mode:04o}, group-readable: chmod 600 {path}")
    return Verdict(OK, f"{path} is mode {mode:04o}")


def _key_dir_mode(path: Path) -> Verdict | None:
    """WARN when others may write the key's directory (and so swap or delete the key)."""
    directory = path.resolve().parent
    mode = directory.stat().st_mode & 0o7777
    if mode & 0o022:
        return Verdict(
            WARN,
            f"{directory} (holding the key) is mode {mode:04o}, writable by others who could "
            f"replace the key: chmod 700 {directory}",
        )
    return None


def check_files(
    aws: Mapping[str, object], user: ServiceUser | None, now: dt.datetime, root: Path | None = None
) -> list[Finding]:
    """Certificate, key and CA: present, readable by the service, matching, valid; clock sane."""
    out: list[Finding] = []
    cert_path = _file("cert", aws.get("cert"), out)
    key_path = _file("key", aws.get("key"), out)
    ca_path = _file("ca", aws.get("ca"), out)
    for name, path in (("cert", cert_path), ("key", key_path), ("ca", ca_path)):
        blocker = user_can_read(user, path, root) if (user and path) else None
        if user and blocker is not None:
            out.append(
                (
                    f"{name} access",
                    Verdict(
                        FAIL,
                        f"service user {user.name} cannot read {path} (stopped at {blocker}): "
                        f"chown {user.name}: {blocker}",
                    ),
                )
            )
    cert = key = None
    if key_path:
        try:
            key = load_private_key(key_path, "key")
        except ProvisionError as exc:
            out.append(("key", Verdict(FAIL, str(exc))))
        if key is not None or b"PRIVATE KEY-----" in _head(key_path):
            out.append(("key mode", _key_mode(key_path)))  # modes matter for a key, not a cert
            dir_verdict = _key_dir_mode(key_path)
            if dir_verdict is not None:
                out.append(("key dir", dir_verdict))
    if cert_path:
        try:
            cert = load_certificate(cert_path, "cert")
        except ProvisionError as exc:
            out.append(("cert", Verdict(FAIL, str(exc))))
    if cert is not None and key is not None:
        if key_matches(cert, key):
            v = Verdict(OK, f"key belongs to the certificate (CN {common_name(cert)})")
        else:
            v = Verdict(
                FAIL,
                f"{key_path} does not belong to {cert_path}: install the key "
                "that was created with the certificate",
            )
        out.append(("cert+key", v))
    if cert is not None:
        out.append(("cert expiry", validity(cert, now, f"certificate {cert_path}")))
        out.append(("clock", clock_verdict(cert, now)))
    if ca_path:
        out.append(("ca", _ca_verdict(ca_path, now)))
    return out


SMALL_BUNDLE = 4  # AmazonRootCA1.pem is one certificate; a system bundle holds a hundred


def _ca_verdict(ca_path: Path, now: dt.datetime) -> Verdict:
    try:
        with warnings.catch_warnings():  # old roots in system bundles warn about their encoding
            warnings.simplefilter("ignore")
            cas = load_ca(ca_path, "ca")
    except ProvisionError as exc:
        return Verdict(FAIL, f"{exc}; fix [aws] ca")
    valid = [c for c in cas if c.not_valid_after_utc > now]
    if not valid:
        end = max(c.not_valid_after_utc for c in cas)
        return Verdict(FAIL, f"every CA certificate in {ca_path} expired (last {end:%Y-%m-%d})")
    end = max(c.not_valid_after_utc for c in valid)
    if len(cas) > SMALL_BUNDLE:
        return Verdict(
            WARN,
            f"{ca_path} is a bundle of {len(cas)} CA certificates ({len(valid)} valid): the"
            " tracker then trusts every one of them; for AWS IoT use AmazonRootCA1.pem",
        )
    return Verdict(OK, f"{len(cas)} CA certificate(s) in {ca_path}, valid until {end:%Y-%m-%d}")
