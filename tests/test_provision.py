"""Provisioning with existing credentials: checks, layout, atomic install, idempotence, CLI."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchkit.pki import Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tracker.core import config as tconfig
from tracker.core.errors import ConfigError, ProvisionError, TrackerError
from tracker.setup import provision

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


def self_signed(start: dt.datetime, end: dt.datetime) -> tuple[bytes, bytes]:
    """A certificate valid from `start` to `end` and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def bundle_from(pki: Pki, **kw: object) -> provision.Bundle:
    fields: dict[str, object] = {
        "thing_name": "tracker-0001",
        "endpoint": "abc123-ats.iot.eu-west-1.amazonaws.com",
        "cert_pem": pki.client.cert.read_bytes(),
        "key_pem": pki.client.key.read_bytes(),
        "ca_pem": pki.ca.read_bytes(),
    }
    fields.update(kw)
    return provision.Bundle(**fields)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its mode and inode (to see rewrites)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.lstat().st_mode & 0o7777, p.lstat().st_ino)
        for p in sorted(root.rglob("*"))
    }


def test_install_lays_out_files_with_modes_and_a_loadable_config(
    tmp_path: Path,
    pki: Pki,
) -> None:
    root = tmp_path / "root"
    b = bundle_from(pki, settings={"gps": {"url": "/dev/gps0"}, "policy": {"distance_m": 50}})
    outcome = provision.install(b, root, owner=None)

    assert outcome.changed and {c.action for c in outcome.changes} == {"create"}
    modes = {k: v[0] for k, v in tree(root).items()}
    assert modes["etc/tracker"] == 0o700
    assert modes["var/lib/tracker"] == 0o700
    assert modes["etc/tracker/device.pem.key"] == 0o600
    assert modes["etc/tracker/device.pem.crt"] == 0o644
    assert not [k for k in modes if "/." in k]  # no temp files left
    cfg = tconfig.load(root / "etc/tracker/tracker.toml", environ={})
    assert cfg.device.thing_name == "tracker-0001"
    assert cfg.aws.key == "/etc/tracker/device.pem.key"  # the board's path, not the staging one
    assert cfg.gps.url == "/dev/gps0" and cfg.policy.distance_m == 50
    assert (root / "etc/tracker/device.pem.key").read_bytes() == b.key_pem


def test_rerun_changes_nothing(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    provision.install(bundle_from(pki), root, owner=None)
    before = tree(root)
    again = provision.install(bundle_from(pki), root, owner=None)
    assert not again.changed
    assert tree(root) == before  # same inodes: nothing rewritten
    assert "nothing changed" in again.report()[-1]


def test_different_credentials_need_force(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    provision.install(bundle_from(pki), root, owner=None)
    before = tree(root)
    other = pki.client_for("tracker-0002")
    new = bundle_from(
        pki,
        thing_name="tracker-0002",
        cert_pem=other.cert.read_bytes(),
        key_pem=other.key.read_bytes(),
    )
    with pytest.raises(ProvisionError, match=r"already provisioned as tracker-0001.*--force"):
        provision.install(new, root, owner=None)
    assert tree(root) == before
    outcome = provision.install(new, root, owner=None, force=True)
    assert {c.path.name for c in outcome.changes if c.action == "replace"} == {
        "device.pem.crt",
        "device.pem.key",
        "tracker.toml",
    }
    assert (root / "etc/tracker/device.pem.key").read_bytes() == other.key.read_bytes()


def test_dry_run_writes_nothing(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    outcome = provision.install(bundle_from(pki), root, dry_run=True, owner=None)
    assert not root.exists()
    report = "\n".join(outcome.report())
    assert "create" in report and "device.pem.key" in report and "dry run" in report
    assert "BEGIN" not in report  # never prints key material


def expired_pair() -> tuple[bytes, bytes]:
    return self_signed(NOW - 30 * DAY, NOW - DAY)


def future_pair() -> tuple[bytes, bytes]:
    return self_signed(NOW + DAY, NOW + 30 * DAY)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda p: {"key_pem": p.client_for("x").key.read_bytes()}, "does not belong"),
        (lambda p: {"cert_pem": p.client.key.read_bytes()}, "swapped"),
        (lambda p: {"key_pem": p.client.cert.read_bytes()}, "swapped"),
        (lambda p: {"cert_pem": b"not a cert"}, "not a PEM certificate"),
        (lambda p: {"ca_pem": p.client.cert.read_bytes()}, "not a root CA"),
        (lambda p: {"ca_pem": b"junk"}, "AmazonRootCA1"),
        (lambda p: dict(zip(("cert_pem", "key_pem"), expired_pair(), strict=True)), "expired"),
        (
            lambda p: dict(zip(("cert_pem", "key_pem"), future_pair(), strict=True)),
            "not valid before",
        ),
        (lambda p: {"thing_name": "my thing!"}, "thing_name"),
        (lambda p: {"endpoint": "https://x.iot.amazonaws.com"}, "endpoint"),
        (lambda p: {"settings": {"gps": {"baudrate": 5}}}, "[gps] baudrate"),
        (lambda p: {"settings": {"gsp": {"url": "x"}}}, "unknown section [gsp]"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path,
    pki: Pki,
    change: object,
    words: str,
) -> None:
    root = tmp_path / "root"
    b = bundle_from(pki, **change(pki))  # type: ignore[operator]
    with pytest.raises(TrackerError) as err:
        provision.install(b, root, owner=None)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, (ProvisionError, ConfigError))
    assert not root.exists()


def test_encrypted_key_is_refused(tmp_path: Path, pki: Pki) -> None:
    key = serialization.load_pem_private_key(pki.client.key.read_bytes(), None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ProvisionError, match="encrypted"):
        provision.install(bundle_from(pki, key_pem=locked), tmp_path / "r", owner=None)


def test_unset_clock_is_named(tmp_path: Path, pki: Pki) -> None:
    boot = dt.datetime(1970, 1, 1, 0, 0, 42, tzinfo=dt.timezone.utc)
    with pytest.raises(ProvisionError, match="has not been set"):
        provision.install(bundle_from(pki), tmp_path / "r", owner=None, now=boot)


def test_expiring_soon_is_a_warning(tmp_path: Path, pki: Pki) -> None:
    cert, key = self_signed(NOW - DAY, NOW + 10 * DAY)
    outcome = provision.install(
        bundle_from(pki, cert_pem=cert, key_pem=key), tmp_path / "r", owner=None
    )
    assert outcome.changed
    assert any("expires in" in w for w in outcome.warnings)


def test_failed_rename_rolls_back(
    tmp_path: Path,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "root"
    provision.install(bundle_from(pki), root, owner=None)
    before = {k: (root / k).read_bytes() for k in tree(root) if (root / k).is_file()}
    other = pki.client_for("tracker-0002")
    new = bundle_from(
        pki,
        thing_name="tracker-0002",
        cert_pem=other.cert.read_bytes(),
        key_pem=other.key.read_bytes(),
    )
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "tracker.toml":  # the disk fills up at the last step
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ProvisionError, match=r"No space left.*nothing was changed"):
        provision.install(new, root, owner=None, force=True)
    monkeypatch.undo()
    after = {k: (root / k).read_bytes() for k in tree(root) if (root / k).is_file()}
    assert after == before  # old key and certificate are back, no temp files


def test_a_file_where_a_directory_belongs(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/tracker").write_text("oops")
    with pytest.raises(ProvisionError, match="not a directory; move it away"):
        provision.install(bundle_from(pki), root, owner=None)
    assert sorted(tree(root)) == ["etc", "etc/tracker"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_files_go_to_the_service_user_of_the_image(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\ntracker:x:4242:4243::/:/bin/false\n"
    )
    outcome = provision.install(bundle_from(pki), root)
    assert outcome.owner == provision.Owner("tracker", 4242, 4243)
    for rel in ("etc/tracker", "etc/tracker/device.pem.key", "var/lib/tracker"):
        st = (root / rel).stat()
        assert (st.st_uid, st.st_gid) == (4242, 4243), rel
    assert not provision.install(bundle_from(pki), root).changed


def test_settings_parsing() -> None:
    got = provision.parse_settings(
        ["gps.url=/dev/gps0", "gps.baudrate=38400", "aws.flow_control=false"],
        {"policy": {"distance_m": 10}},
    )
    assert got == {
        "policy": {"distance_m": 10},
        "gps": {"url": "/dev/gps0", "baudrate": 38400},
        "aws": {"flow_control": False},
    }
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        provision.parse_settings(["baudrate=9600"])


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts/provision"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_script_front(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    common = ["existing", "--thing", "tracker-9", "--endpoint", "localhost", "--ca", str(pki.ca)]
    creds = ["--cert", str(pki.client.cert), "--key", str(pki.client.key), "--root", str(root)]
    dry = run_script(*common, *creds, "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and not root.exists()
    done = run_script(*common, *creds, "--set", "gps.url=/dev/gps0")
    assert done.returncode == 0, done.stderr
    assert "provisioned tracker-9" in done.stdout
    assert 'url = "/dev/gps0"' in (root / "etc/tracker/tracker.toml").read_text()
    again = run_script(*common, *creds, "--set", "gps.url=/dev/gps0")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    bad = run_script(
        *common, "--cert", str(pki.cloud.cert), "--key", str(pki.client.key), "--root", str(root)
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("provision: error: ")
    missing = run_script(
        *common, "--cert", str(tmp_path / "none.crt"), "--key", str(pki.client.key)
    )
    assert missing.returncode == 2 and "none.crt" in missing.stderr


def test_under_umask_000_new_parent_directories_are_0755_not_0777(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    old = os.umask(0)
    try:
        provision.install(bundle_from(pki), root, owner=None)
    finally:
        os.umask(old)
    modes = {k: v[0] for k, v in tree(root).items()}
    assert modes["etc"] == modes["var"] == modes["var/lib"] == 0o755
    assert modes["etc/tracker"] == 0o700
    assert not [k for k, m in modes.items() if m & 0o002]  # nothing world-writable


def test_a_board_without_the_service_user_is_warned_about(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    outcome = provision.install(bundle_from(pki), root)
    assert outcome.owner is None
    said = [w for w in outcome.warnings if "no user tracker" in w]
    assert len(said) == 1 and "cannot read them" in said[0]


def test_tracker_check_root_checks_a_staged_image(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracker import cli

    root = tmp_path / "root"
    provision.install(bundle_from(pki), root, owner=None)
    (root / "etc/passwd").write_text("tracker:x:990:990::/var/lib/tracker:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("tracker:x:990:\ndialout:x:20:tracker\n")
    status = cli.main(["check", "--root", str(root)])
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()[:-1]}
    assert lines["config"].startswith("OK") and str(root / "etc/tracker") in lines["config"]
    assert lines["cert+key"].startswith("OK")
    assert lines["gps"].startswith("SKIP")
    # provisioned without the image's user: its files are root's, as the warning said
    access = [line for line in out.splitlines() if " access " in f" {line} "]
    assert len(access) == 3
    assert all(f"chown tracker: {root / 'etc/tracker'}" in a for a in access), access
    assert status == 2 and out.splitlines()[-1].endswith("1 SKIP")
    assert cli.main(["check", "--root", str(root), "--online"]) == 2
    assert "cannot check a staged image" in capsys.readouterr().err


def test_a_thing_name_that_differs_from_the_certificate_cn_is_warned_about(
    tmp_path: Path, pki: Pki
) -> None:
    other = provision.install(bundle_from(pki), tmp_path / "a", owner=None)
    hint = [w for w in other.warnings if "CN is 'tracker-test-1'" in w]
    assert len(hint) == 1 and "not the thing name 'tracker-0001'" in hint[0]
    assert "NOT_AUTHORIZED" in hint[0]
    same = provision.install(
        bundle_from(pki, thing_name=pki.thing_name), tmp_path / "b", owner=None
    )
    assert not [w for w in same.warnings if "CN is" in w]
