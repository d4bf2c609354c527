"""Provisioning a board: check credentials, then install them and the config under /etc/tracker.

Owns the file layout, atomic writes and idempotence (`force`, `dry_run`, staging `root`); fleet
provisioning by claim builds on it in `tracker.setup.identity`. Must not import the AWS SDK.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tracker.core import config as tconfig
from tracker.core.errors import ConfigError, ProvisionError
from tracker.core.files import fsync_dir
from tracker.setup import credentials as cred

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

ETC_DIR = "/etc/tracker"
SPOOL_DIR = "/var/lib/tracker"
CONFIG_FILE = f"{ETC_DIR}/tracker.toml"
CERT_FILE = f"{ETC_DIR}/device.pem.crt"
KEY_FILE = f"{ETC_DIR}/device.pem.key"
CA_FILE = f"{ETC_DIR}/root-ca.pem"
SERVICE_USER = "tracker"
Settings = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Bundle:
    """Everything a board needs: identity, endpoint, credentials (PEM bytes) and other settings."""

    thing_name: str
    endpoint: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # never in a log line or a traceback
    ca_pem: bytes
    port: int = 8883
    settings: Settings = field(default_factory=dict)


@dataclass(frozen=True)
class Owner:
    """The service user files are handed to (uid/gid)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Change:
    """One file or directory and what installing does to it."""

    path: Path  # on this host (under the staging root)
    action: str  # create, replace, unchanged
    mode: int
    kind: str = "file"  # file or dir
    data: bytes = field(default=b"", repr=False)  # may be the private key

    def describe(self, owner: Owner | None) -> str:
        who = owner.name if owner else "root"
        return f"{self.action:<9} {self.kind:<4} {self.mode:04o} {who:<8} {self.path}"


@dataclass
class Outcome:
    """What provisioning did (or, with dry_run, would do)."""

    thing_name: str
    changes: list[Change]
    owner: Owner | None
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    note: str = ""

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def report(self) -> list[str]:
        """Lines for the user: warnings, then each path, then a summary."""
        lines = [f"warning: {w}" for w in self.warnings]
        lines += [c.describe(self.owner) for c in self.changes]
        if self.note:
            lines.append(self.note)
        elif self.dry_run:
            lines.append(f"dry run: nothing written for {self.thing_name}")
        elif self.changed:
            lines.append(f"provisioned {self.thing_name}")
        else:
            lines.append(f"{self.thing_name} already provisioned; nothing changed")
        return lines


def host_path(root: Path, board_path: str) -> Path:
    """Where a board path lands under the staging root."""
    return root / PurePosixPath(board_path).relative_to("/")


def check_root(root: Path) -> None:
    """Raise ProvisionError when the staging root exists but is not a directory."""
    if root.exists() and not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory; pass the staging tree's folder")
    for parent in root.parents:
        if parent.exists() and not parent.is_dir():
            raise ProvisionError(f"--root {root} is under {parent}, which is not a directory")


def service_owner(root: Path, name: str = SERVICE_USER) -> Owner | None:
    """The service user when it exists (in the staging root's /etc/passwd) and we are root."""
    if os.geteuid() != 0:
        return None
    passwd = host_path(root, "/etc/passwd")
    try:
        lines = passwd.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == name:
            try:
                return Owner(name, int(parts[2]), int(parts[3]))
            except ValueError:
                return None
    return None


# ------------------------------------------------------------------------------ checking


AWS_CERT_CN = "AWS IoT Certificate"


def check_bundle(bundle: Bundle, now: dt.datetime) -> list[str]:
    """Validate credentials and settings before anything is written; returns warnings.

    Raises:
        ProvisionError / ConfigError: one line naming what to fix.
    """
    cert = cred.parse_certificate(bundle.cert_pem, "the certificate")
    key = cred.parse_private_key(bundle.key_pem, "the private key")
    cred.parse_ca(bundle.ca_pem, "the root CA")
    if not cred.key_matches(cert, key):
        raise ProvisionError(
            "the private key does not belong to the certificate; "
            "pass the key that was created with it"
        )
    verdict = cred.validity(cert, now, "the certificate")
    if verdict.level == cred.FAIL:
        raise ProvisionError(verdict.detail)
    render_config(bundle)  # validates thing name, endpoint and settings
    warnings = [verdict.detail] if verdict.level == cred.WARN else []
    cn = cred.common_name(cert)
    # certificates AWS IoT creates are all "AWS IoT Certificate"; one made from a CSR (ours put
    # the thing name in it) or by a private CA names its device: a different name is a hint
    if cn and cn != AWS_CERT_CN and cn != bundle.thing_name:
        warnings.append(
            f"the certificate's CN is {cn!r}, not the thing name {bundle.thing_name!r}: fine only"
            f" if the certificate is attached to thing {bundle.thing_name} and its policy allows"
            f" client id {bundle.thing_name}; otherwise every publish is refused (NOT_AUTHORIZED)"
        )
    return warnings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    raise ConfigError(f"setting value {value!r} must be a string, number or boolean")


def _sections(settings: Settings) -> dict[str, dict[str, Any]]:
    """A copy of `settings`; ConfigError when a section is not a table of keys."""
    for name, body in settings.items():
        if not isinstance(body, Mapping):
            raise ConfigError(f"setting {name} = {tconfig.shown(body)} must be a [{name}] table")
    return {name: dict(body) for name, body in settings.items()}


def render_config(bundle: Bundle) -> bytes:
    """The TOML config for the bundle, validated by the same loader the service uses."""
    doc = _sections(bundle.settings)
    doc.setdefault("device", {})["thing_name"] = bundle.thing_name
    doc.setdefault("aws", {}).update(
        endpoint=bundle.endpoint, port=bundle.port, cert=CERT_FILE, key=KEY_FILE, ca=CA_FILE
    )
    tconfig.from_dict(doc)
    out = ["# tracker configuration, written by scripts/provision; check it with `tracker check`"]
    for section in tconfig.SECTION_TYPES:
        values = doc.get(section)
        if not values:
            continue
        out.append(f"\n[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return ("\n".join(out) + "\n").encode()


def load_settings(path: Path) -> dict[str, Any]:
    """A TOML file of extra settings ([gps], [policy], ...) for the config."""
    try:
        doc = tconfig.read_toml(path, what="settings file", option="--settings")
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    for section, body in doc.items():
        if not isinstance(body, dict):
            raise ProvisionError(
                f"settings file {path}: {section} = {tconfig.shown(body)} is not a table; "
                f"write it as [{section}] with its keys below"
            )
    return doc


def parse_settings(pairs: list[str], base: Settings | None = None) -> dict[str, dict[str, Any]]:
    """`section.key=value` pairs (values parsed as TOML, else a bare string) over `base`."""
    out = _sections(base or {})
    for pair in pairs:
        name, sep, text = pair.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"setting {pair!r} must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.setdefault(section, {})[key] = value
    return out


# ------------------------------------------------------------------------------ installing


def _spool_dir(bundle: Bundle) -> str:
    path = _sections(bundle.settings).get("spool", {}).get("path", tconfig.SpoolConfig().path)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(
            f"[spool] path {tconfig.shown(path)} must be an absolute path on the board, "
            "like /var/lib/tracker/spool.db"
        )
    return str(PurePosixPath(path).parent)


def plan(bundle: Bundle, root: Path, owner: Owner | None) -> list[Change]:
    """Every directory and file installing writes, compared with what is there now."""
    wanted: list[tuple[str, str, int, bytes]] = [
        ("dir", ETC_DIR, 0o700, b""),
        ("dir", _spool_dir(bundle), 0o700, b""),
        ("file", CA_FILE, 0o644, bundle.ca_pem),
        ("file", CERT_FILE, 0o644, bundle.cert_pem),
        ("file", KEY_FILE, 0o600, bundle.key_pem),
        ("file", CONFIG_FILE, 0o644, render_config(bundle)),
    ]
    changes = []
    for kind, board_path, mode, data in wanted:
        path = host_path(root, board_path)
        changes.append(Change(path, _compare(path, kind, mode, data, owner), mode, kind, data))
    return changes


def _compare(path: Path, kind: str, mode: int, data: bytes, owner: Owner | None) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "create"
    except OSError as exc:
        raise ProvisionError(f"cannot inspect {path}: {exc.strerror}") from exc
    if (kind == "dir") != stat.S_ISDIR(st.st_mode):
        what = "a directory" if kind == "dir" else "a file"
        raise ProvisionError(f"{path} exists but is not {what}; move it away")
    same_meta = (st.st_mode & 0o7777) == mode and (
        owner is None or (st.st_uid, st.st_gid) == (owner.uid, owner.gid)
    )
    if kind == "dir":
        return "unchanged" if path.is_dir() and same_meta else "replace"
    try:
        same_data = path.is_file() and path.read_bytes() == data
    except OSError as exc:
        raise ProvisionError(f"cannot read {path}: {exc.strerror}") from exc
    return "unchanged" if same_data and same_meta else "replace"


def _make_dir(change: Change, owner: Owner | None) -> None:
    # parents the board lacks are made 0755 whatever the umask (under umask 000 they were 0777)
    for parent in reversed(change.path.parents):
        if not parent.exists():
            parent.mkdir()
            os.chmod(parent, 0o755)
    change.path.mkdir(exist_ok=True)
    if change.path.is_symlink() or not change.path.is_dir():
        raise ProvisionError(f"{change.path} exists and is not a directory; move it away")
    os.chmod(change.path, change.mode)
    if owner:
        os.chown(change.path, owner.uid, owner.gid)


def _write_temp(change: Change, owner: Owner | None) -> Path:
    """Write the file's content next to it (same file system), synced; returns the temp path."""
    fd, name = tempfile.mkstemp(dir=change.path.parent, prefix=f".{change.path.name}.")
    try:
        os.fchmod(fd, change.mode)
        if owner:
            os.fchown(fd, owner.uid, owner.gid)
        view = memoryview(change.data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def apply(changes: list[Change], owner: Owner | None) -> None:
    """Create directories, write every file to a synced temp file, then rename them into place.

    Nothing replaces an installed file until every new one is on disk; the config goes last. When
    a step fails, what was done is undone (old files come back from hard-linked backups, created
    files and directories go), so a board is never left half-provisioned.
    """
    made_dirs: list[Path] = []
    temps: list[tuple[Path, Path]] = []
    backups: list[tuple[Path | None, Path]] = []  # (backup of the old file or None, final)
    try:
        for change in changes:
            if change.kind == "dir" and change.action != "unchanged":
                missing = [p for p in (change.path, *change.path.parents) if not p.exists()]
                _make_dir(change, owner)
                made_dirs += missing
        for change in changes:
            if change.kind == "file" and change.action != "unchanged":
                temps.append((_write_temp(change, owner), change.path))
        for temp, final in temps:
            backup = None
            if final.exists():
                backup = final.with_name(f"{temp.name}.old")
                os.link(final, backup)
            try:
                os.replace(temp, final)
            except BaseException:
                if backup is not None:
                    backup.unlink(missing_ok=True)
                raise
            backups.append((backup, final))
        for parent in {final.parent for _, final in temps}:
            fsync_dir(parent)
    except OSError as exc:
        _undo(temps, backups, made_dirs)
        where = exc.filename or "the target"
        raise ProvisionError(
            f"cannot write {where}: {exc.strerror or exc}; nothing was changed (run as root, "
            "free some space or pick another --root)"
        ) from exc
    except BaseException:  # Ctrl-C or a bug half-way: no stray key copies, nothing half-done
        _undo(temps, backups, made_dirs)
        raise
    for backup, _ in backups:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _undo(
    temps: list[tuple[Path, Path]],
    backups: list[tuple[Path | None, Path]],
    made_dirs: list[Path],
) -> None:
    for backup, final in reversed(backups):
        with contextlib.suppress(OSError):
            if backup is None:
                final.unlink()
            else:
                os.replace(backup, final)
    for temp, _ in temps:
        temp.unlink(missing_ok=True)
    for directory in sorted(made_dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


def installed_thing(root: Path) -> str | None:
    """The thing name of an already provisioned board (its config parses), else None."""
    path = host_path(root, CONFIG_FILE)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return None
    device = doc.get("device")
    name = device.get("thing_name") if isinstance(device, dict) else None
    return name if isinstance(name, str) else None


def install(
    bundle: Bundle,
    root: Path = Path("/"),
    *,
    force: bool = False,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    owner: Owner | str | None = "auto",
) -> Outcome:
    """Check the bundle, then install it under `root` (idempotent; `force` replaces files).

    Raises:
        ProvisionError: bad credentials, a provisioned board with other files (without force),
            or a write failure; nothing is half-written.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    check_root(root)
    warnings = check_bundle(bundle, now)
    who = service_owner(root) if owner == "auto" else owner
    assert not isinstance(who, str)
    if owner == "auto" and who is None:
        warnings.append(
            f"no user {SERVICE_USER} on this board ({host_path(root, '/etc/passwd')}): its files"
            f" stay root's, mode 0600/0700, and the service (User={SERVICE_USER}) cannot read"
            f" them; create the user first (scripts/install) and provision again"
        )
    changes = plan(bundle, root, who)
    differs = [c for c in changes if c.action == "replace"]
    if differs and not force:
        thing = installed_thing(root)
        what = f"already provisioned as {thing}" if thing else "already has tracker files"
        raise ProvisionError(
            f"this board is {what}; {differs[0].path} differs (content, mode or "
            "owner); pass --force to replace it"
        )
    outcome = Outcome(bundle.thing_name, changes, who, warnings, dry_run)
    if not dry_run:
        apply(changes, who)
    return outcome
