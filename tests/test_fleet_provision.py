"""Fleet provisioning by claim against Mosquitto (mutual TLS) and the identity responder."""

from __future__ import annotations

import dataclasses
import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.pki import Pki
from support.identity_responder import TEMPLATE_NAME, IdentityResponder

from tracker.core import config as tconfig
from tracker.core.errors import ConfigError, ProvisionError
from tracker.core.events import LinkDown, LinkUp
from tracker.setup import credentials as cred
from tracker.setup import identity, provision

SERIAL = "10000000c0ffee01"
AWS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "aws"


@pytest.fixture
def responder(broker: Broker, pki: Pki) -> Iterator[IdentityResponder]:
    with IdentityResponder(broker, pki) as r:
        yield r


@pytest.fixture
def claim(broker: Broker, pki: Pki) -> identity.Claim:
    ident = pki.client_for("claim")
    return identity.Claim(
        broker.host, ident.cert, ident.key, pki.ca, TEMPLATE_NAME, port=broker.port, timeout_s=5.0
    )


def board(tmp_path: Path) -> Path:
    """A staging root with a device-tree serial number, like a Raspberry Pi."""
    root = tmp_path / "board"
    serial = root / "proc/device-tree/serial-number"
    serial.parent.mkdir(parents=True, exist_ok=True)
    serial.write_bytes(SERIAL.encode() + b"\x00")
    return root


def installed_tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "proc" not in p.parts)


def test_csr_flow_installs_a_working_identity(
    tmp_path: Path,
    claim: identity.Claim,
    responder: IdentityResponder,
    broker: Broker,
) -> None:
    root = board(tmp_path)
    outcome = identity.fleet_provision(claim, root)

    assert outcome.thing_name == f"tracker-{SERIAL}"  # from the shipped template's Fn::Join
    assert responder.registered.keys() == {outcome.thing_name}
    cfg = tconfig.load(provision.host_path(root, provision.CONFIG_FILE), environ={})
    assert cfg.device.thing_name == outcome.thing_name
    cert = cred.load_certificate(provision.host_path(root, provision.CERT_FILE))
    key_file = provision.host_path(root, provision.KEY_FILE)
    assert cred.key_matches(cert, cred.load_private_key(key_file))
    assert key_file.stat().st_mode & 0o777 == 0o600
    # the private key was made here and never went over the wire
    key_pem = key_file.read_bytes()
    body = b"".join(key_pem.splitlines()[1:-1])
    assert responder.requests and all(
        body not in p.replace(b"\\n", b"") for _, p in responder.requests
    )
    register = [p for t, p in responder.requests if t.endswith("/provision/json")]
    assert SERIAL.encode() in register[0]

    # the tracker connects with the new certificate
    from tracker.link.uplink import Uplink

    aws = dataclasses.replace(broker.aws_config(), cert=str(cert_path(root)), key=str(key_file))
    events: queue.Queue[object] = queue.Queue()
    uplink = Uplink(aws, outcome.thing_name, events.put)
    uplink.start()
    try:
        event = events.get(timeout=10)
        while not isinstance(event, (LinkUp, LinkDown)):
            event = events.get(timeout=10)
        assert isinstance(event, LinkUp), event
    finally:
        uplink.stop()


def cert_path(root: Path) -> Path:
    return provision.host_path(root, provision.CERT_FILE)


def test_rerun_on_a_provisioned_board_asks_nothing(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    root = board(tmp_path)
    first = identity.fleet_provision(claim, root)
    before = cert_path(root).read_bytes()
    asked = len(responder.requests)

    again = identity.fleet_provision(claim, root)

    assert again.thing_name == first.thing_name and not again.changed
    assert len(responder.requests) == asked
    assert cert_path(root).read_bytes() == before
    forced = identity.fleet_provision(claim, root, force=True)
    assert forced.changed and cert_path(root).read_bytes() != before


def test_create_keys_and_certificate_alternative(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    root = board(tmp_path)
    outcome = identity.fleet_provision(
        dataclasses.replace(claim, method="keys"), root, serial="bench-7"
    )
    assert outcome.thing_name == "tracker-bench-7"
    assert any(t == "$aws/certificates/create/json" for t, _ in responder.requests)
    assert not any("create-from-csr" in t for t, _ in responder.requests)


@pytest.mark.parametrize("method", ["csr", "keys"])
def test_each_method_publishes_only_what_its_claim_policy_allows(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder, method: str
) -> None:
    identity.fleet_provision(dataclasses.replace(claim, method=method), board(tmp_path))
    policy = json.loads((AWS_DIR / identity.CLAIM_POLICIES[method]).read_text())
    (publish,) = [s for s in policy["Statement"] if s["Action"] == "iot:Publish"]
    allowed = {r.split(":topic/", 1)[1].replace("TEMPLATE_NAME", TEMPLATE_NAME)
               for r in publish["Resource"]}  # fmt: skip
    assert {t for t, _ in responder.requests} == allowed


def test_keys_method_rejected_names_its_claim_policy(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    responder.reject["keys"] = (403, "AccessDenied", "not authorized")
    with pytest.raises(ProvisionError, match=r"claim-policy-keys\.json") as err:
        identity.fleet_provision(dataclasses.replace(claim, method="keys"), board(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["SerialNumber", "AWS::IoT::Certificate::Id"])
def test_params_cannot_override_the_serial_or_service_values(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder, name: str
) -> None:
    root = board(tmp_path)
    sneaky = dataclasses.replace(claim, parameters={name: "someone-elses"})
    with pytest.raises(ProvisionError, match=f"--param {name} is not allowed"):
        identity.fleet_provision(sneaky, root, serial="mine")
    assert responder.requests == [] and installed_tree(root) == []
    # other parameters go through, and SerialNumber is always the board's
    extra = dataclasses.replace(claim, parameters={"Site": "depot-3"})
    identity.fleet_provision(extra, root, serial="mine")
    register = [json.loads(p) for t, p in responder.requests if t.endswith("/provision/json")]
    assert register[0]["parameters"] == {"Site": "depot-3", "SerialNumber": "mine"}
    key = cred.load_private_key(provision.host_path(root, provision.KEY_FILE))
    assert cred.key_matches(cred.load_certificate(cert_path(root)), key)


@pytest.mark.parametrize(
    ("operation", "rejection", "words"),
    [
        ("csr", (403, "AccessDenied", "not authorized"), "claim policy"),
        ("register", (400, "InvalidParameters", "SerialNumber is invalid"), "--param"),
        ("register", (500, "InternalFailure", "boom"), "try again"),
    ],
)
def test_rejections_say_what_to_fix_and_write_nothing(
    tmp_path: Path,
    claim: identity.Claim,
    responder: IdentityResponder,
    operation: str,
    rejection: tuple[int, str, str],
    words: str,
) -> None:
    root = board(tmp_path)
    responder.reject[operation] = rejection
    with pytest.raises(ProvisionError) as err:
        identity.fleet_provision(claim, root)
    message = str(err.value)
    assert "\n" not in message
    assert f"rejected ({rejection[0]} {rejection[1]}" in message and words in message
    assert installed_tree(root) == []


def test_unknown_template_is_named(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    with pytest.raises(ProvisionError, match=r"no such provisioning template.*--template"):
        identity.fleet_provision(dataclasses.replace(claim, template="nope"), board(tmp_path))


def test_silence_times_out_with_a_hint(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    root = board(tmp_path)
    responder.silent.add("register")
    with pytest.raises(ProvisionError, match=r"no answer to RegisterThing.*claim policy"):
        identity.fleet_provision(dataclasses.replace(claim, timeout_s=0.5), root)
    assert installed_tree(root) == []


def test_claim_certificate_refused_by_the_broker(
    tmp_path: Path,
    claim: identity.Claim,
    pki: Pki,
    broker: Broker,
) -> None:
    foreign = pki.foreign_client()
    bad = dataclasses.replace(claim, claim_cert=foreign.cert, claim_key=foreign.key)
    with pytest.raises(ProvisionError, match="cannot connect to localhost"):
        identity.fleet_provision(bad, board(tmp_path))


def test_claim_checked_before_connecting(
    tmp_path: Path,
    claim: identity.Claim,
    pki: Pki,
) -> None:
    def no_connect(c: identity.Claim, client_id: str) -> identity.IdentitySession:
        raise AssertionError("must not connect")

    other = pki.client_for("other")
    mismatched = dataclasses.replace(claim, claim_key=other.key)
    with pytest.raises(ProvisionError, match="does not belong"):
        identity.fleet_provision(mismatched, board(tmp_path), connect=no_connect)
    expired = pki.expired_client()
    old = dataclasses.replace(claim, claim_cert=expired.cert, claim_key=expired.key)
    with pytest.raises(ProvisionError, match="expired"):
        identity.fleet_provision(old, board(tmp_path), connect=no_connect)
    with pytest.raises(ProvisionError, match="template name"):
        identity.fleet_provision(
            dataclasses.replace(claim, template="a/b"), board(tmp_path), connect=no_connect
        )


def test_bad_settings_are_refused_before_asking_the_service(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder
) -> None:
    root = board(tmp_path)
    with pytest.raises(ConfigError, match=r"\[gps\] baudrate"):
        identity.fleet_provision(claim, root, settings={"gps": {"baudrate": 7}})
    assert responder.requests == []
    assert installed_tree(root) == []


def test_dry_run_contacts_nothing(tmp_path: Path, claim: identity.Claim) -> None:
    def no_connect(c: identity.Claim, client_id: str) -> identity.IdentitySession:
        raise AssertionError("must not connect")

    root = board(tmp_path)
    outcome = identity.fleet_provision(claim, root, dry_run=True, connect=no_connect)
    assert outcome.dry_run and SERIAL in outcome.note
    assert installed_tree(root) == []


def test_serial_number_sources(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with pytest.raises(ProvisionError, match="--serial"):
        identity.read_serial(root)
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123abcd\n")
    assert identity.read_serial(root) == "0123abcd"
    dt_serial = root / "sys/firmware/devicetree/base/serial-number"
    dt_serial.parent.mkdir(parents=True)
    dt_serial.write_bytes(b"00000000deadbeef\x00")
    assert identity.read_serial(root) == "00000000deadbeef"
    dt_serial.write_bytes(b"bad serial!\x00")
    with pytest.raises(ProvisionError, match="pass --serial"):
        identity.read_serial(root)


def test_script_front_fleet(
    tmp_path: Path, claim: identity.Claim, responder: IdentityResponder, broker: Broker
) -> None:
    root = tmp_path / "board"
    args = [
        sys.executable, str(Path(__file__).resolve().parent.parent / "scripts/provision"),
        "fleet", "--endpoint", broker.host, "--port", str(broker.port), "--ca", str(claim.ca),
        "--claim-cert", str(claim.claim_cert), "--claim-key", str(claim.claim_key),
        "--template", TEMPLATE_NAME, "--serial", "cli-1", "--root", str(root),
        "--set", "gps.url=/dev/gps0",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "provisioned tracker-cli-1" in done.stdout
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "nothing done" in again.stdout
    bad = subprocess.run(
        [*args[:-6], "--template", "missing", "--serial", "cli-2", "--root", str(tmp_path / "b2")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "provision: error: RegisterThing with template missing was rejected (404" in bad.stderr
    assert not (tmp_path / "b2").exists()
    sneaky = subprocess.run(
        [*args[:-6], "--serial", "cli-3", "--param", "SerialNumber=cli-4",
         "--root", str(tmp_path / "b3")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sneaky.returncode == 2 and sneaky.stderr.count("\n") == 1
    assert sneaky.stderr.startswith("provision: error: --param SerialNumber is not allowed")
    assert not (tmp_path / "b3").exists()


def test_endpoint_silent_or_down(tmp_path: Path, claim: identity.Claim, broker: Broker) -> None:
    quick = dataclasses.replace(claim, timeout_s=0.5)
    broker.pause()  # accepts TCP, never answers TLS
    try:
        with pytest.raises(ProvisionError, match=r"cannot connect to localhost:\d+ within 0.5 s"):
            identity.fleet_provision(quick, board(tmp_path))
    finally:
        broker.resume()
    broker.stop()
    with pytest.raises(ProvisionError, match="cannot connect to localhost"):
        identity.fleet_provision(quick, board(tmp_path))
    assert installed_tree(tmp_path / "board") == []
