"""Fleet provisioning by claim with the SDK's identity service client (`IotIdentityClient`).

Owns the claim connection and the flow (new key, certificate, RegisterThing, then install through
`tracker.setup.provision`). The one module besides `tracker.link.uplink` that imports the AWS SDK;
only the fleet path of scripts/provision imports it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

from tracker.core.errors import ProvisionError
from tracker.setup import credentials as cred
from tracker.setup import provision

# the claim policy lets only client ids with this prefix connect
CLIENT_ID_PREFIX = "provision-"
SERIAL_SOURCES = (
    "/proc/device-tree/serial-number",
    "/sys/firmware/devicetree/base/serial-number",
    "/etc/machine-id",
)
SERIAL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The claim policy that allows each method's topics (deploy/aws/): CSR is the default and the
# shipped claim-policy.json allows nothing else; CreateKeysAndCertificate needs its own policy.
CLAIM_POLICIES = {"csr": "claim-policy.json", "keys": "claim-policy-keys.json"}
# What to fix, by the status code of a rejection.
_HINTS = {
    400: "the request was malformed: check the template's parameters (--param)",
    401: "the claim certificate is not allowed to do this: check the claim policy",
    403: "the claim certificate is not allowed to do this: check the claim policy and that the "
    "template's role may create things",
    404: "no such provisioning template in this account and region: check --template",
    429: "the service is throttling: try again in a minute",
    500: "the service failed: try again",
    503: "the service is unavailable: try again",
}


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the service created; `private_key` only for CreateKeysAndCertificate."""

    certificate_id: str
    certificate_pem: str
    ownership_token: str = field(repr=False)  # secrets never reach a log or a traceback
    private_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class Registration:
    """The thing the template registered."""

    thing_name: str
    device_configuration: Mapping[str, str]


def _rejection(operation: str, error: Any) -> ProvisionError:
    if error is None:
        return ProvisionError(f"{operation} was rejected with an unreadable answer")
    status = error.status_code
    hint = _HINTS.get(status, "see the message")
    return ProvisionError(
        f"{operation} was rejected ({status} {error.error_code}: {error.error_message}); {hint}"
    )


class IdentitySession:
    """One MQTT connection made with the claim certificate; call `close()` when done."""

    def __init__(self, connection: mqtt.Connection, endpoint: str, timeout_s: float) -> None:
        self._connection = connection
        self._client = iotidentity.IotIdentityClient(connection)
        self._endpoint = endpoint
        self._timeout = timeout_s

    def _wait(self, future: Future[Any], what: str) -> Any:
        try:
            return future.result(self._timeout)
        except FutureTimeout:
            raise ProvisionError(
                f"no answer to {what} from {self._endpoint} within {self._timeout:g} s: check "
                "that the claim policy allows this topic and that the endpoint is the account's "
                "data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)"
            ) from None
        except ProvisionError:
            raise
        except Exception as exc:
            raise ProvisionError(
                f"{what} failed on the connection to {self._endpoint}: {exc}"
            ) from exc

    def _request(
        self,
        what: str,
        subscribe: Callable[[Callable[[Any], None], Callable[[Any], None]], list[Any]],
        publish: Callable[[], Future[Any]],
    ) -> Any:
        answer: Future[Any] = Future()

        def accepted(response: Any) -> None:  # runs on the SDK's thread: only sets the future
            if not answer.done():
                answer.set_result(response)

        def rejected(error: Any) -> None:
            if not answer.done():
                answer.set_exception(_rejection(what, error))

        topics = []
        for sub_future, topic in subscribe(accepted, rejected):
            self._wait(sub_future, f"subscribing to {topic}")
            topics.append(topic)
        try:
            self._wait(publish(), f"publishing {what}")
            response = self._wait(answer, what)
        finally:
            for topic in topics:
                # the answer is what matters; close() follows anyway
                with contextlib.suppress(Exception):
                    self._client.unsubscribe(topic).result(self._timeout)
        if response is None:
            raise ProvisionError(f"{what} was accepted with an unreadable answer")
        return response

    def create_certificate_from_csr(self, csr_pem: str) -> IssuedCertificate:
        """CreateCertificateFromCsr: the service signs our CSR; the key stays on the board."""
        sub = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
        qos = mqtt.QoS.AT_LEAST_ONCE
        c = self._client
        response = self._request(
            "CreateCertificateFromCsr",
            lambda ok, bad: [
                c.subscribe_to_create_certificate_from_csr_accepted(sub, qos, ok),
                c.subscribe_to_create_certificate_from_csr_rejected(sub, qos, bad),
            ],
            lambda: c.publish_create_certificate_from_csr(
                iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem),
                qos,
            ),
        )
        return _issued("CreateCertificateFromCsr", response, "")

    def create_keys_and_certificate(self) -> IssuedCertificate:
        """CreateKeysAndCertificate: the service makes the key too and sends it over TLS."""
        sub = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
        qos = mqtt.QoS.AT_LEAST_ONCE
        c = self._client
        response = self._request(
            "CreateKeysAndCertificate",
            lambda ok, bad: [
                c.subscribe_to_create_keys_and_certificate_accepted(sub, qos, ok),
                c.subscribe_to_create_keys_and_certificate_rejected(sub, qos, bad),
            ],
            lambda: c.publish_create_keys_and_certificate(
                iotidentity.CreateKeysAndCertificateRequest(), qos
            ),
        )
        if not response.private_key:
            raise ProvisionError("CreateKeysAndCertificate answered without a private key")
        return _issued("CreateKeysAndCertificate", response, response.private_key)

    def register_thing(
        self, template: str, ownership_token: str, parameters: Mapping[str, str]
    ) -> Registration:
        """RegisterThing: the template creates the thing and activates the certificate."""
        sub = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
        qos = mqtt.QoS.AT_LEAST_ONCE
        c = self._client
        response = self._request(
            f"RegisterThing with template {template}",
            lambda ok, bad: [
                c.subscribe_to_register_thing_accepted(sub, qos, ok),
                c.subscribe_to_register_thing_rejected(sub, qos, bad),
            ],
            lambda: c.publish_register_thing(
                iotidentity.RegisterThingRequest(
                    template_name=template,
                    certificate_ownership_token=ownership_token,
                    parameters=dict(parameters),
                ),
                qos,
            ),
        )
        if not response.thing_name:
            raise ProvisionError(
                f"RegisterThing with template {template} returned no thing "
                "name: the template must create an AWS::IoT::Thing"
            )
        return Registration(response.thing_name, dict(response.device_configuration or {}))

    def close(self) -> None:
        """Disconnect; waits at most the timeout."""
        # closing after an error must not hide that error
        with contextlib.suppress(Exception):
            self._connection.disconnect().result(self._timeout)


def _issued(what: str, response: Any, private_key: str) -> IssuedCertificate:
    if not (response.certificate_pem and response.certificate_ownership_token):
        raise ProvisionError(f"{what} answered without a certificate or ownership token")
    return IssuedCertificate(
        response.certificate_id or "",
        response.certificate_pem,
        response.certificate_ownership_token,
        private_key,
    )


def connect(
    endpoint: str, port: int, cert: str, key: str, ca: str, client_id: str, timeout_s: float = 20.0
) -> IdentitySession:
    """Connect to the endpoint with the claim certificate (MQTT 3.1.1, mutual TLS).

    Raises:
        ProvisionError: the connection could not be made (with what to check).
    """
    try:
        connection = mqtt_connection_builder.mtls_from_path(
            endpoint=endpoint,
            port=port,
            cert_filepath=cert,
            pri_key_filepath=key,
            ca_filepath=ca,
            client_id=client_id,
            clean_session=True,
            keep_alive_secs=60,
            enable_metrics_collection=False,
        )
    except Exception as exc:  # awscrt raises its own error types for unreadable files
        raise ProvisionError(f"cannot use the claim credentials: {exc}") from exc
    try:
        connection.connect().result(timeout_s)
    except FutureTimeout:
        with contextlib.suppress(Exception):
            connection.disconnect()  # stop the attempt that is still running
        raise ProvisionError(
            f"cannot connect to {endpoint}:{port} within {timeout_s:g} s with the claim "
            "certificate: check the endpoint, port and network"
        ) from None
    except Exception as exc:
        raise ProvisionError(
            f"cannot connect to {endpoint}:{port} with the claim certificate: "
            f"{exc}; check the endpoint, the root CA and that the claim "
            "certificate is registered and active"
        ) from exc
    return IdentitySession(connection, endpoint, timeout_s)


# ------------------------------------------------------------------------------ fleet


def read_serial(root: Path = Path("/")) -> str:
    """The board's serial number: device tree first, then /etc/machine-id."""
    for source in SERIAL_SOURCES:
        try:
            raw = provision.host_path(root, source).read_bytes()
        except OSError:
            continue
        text = raw.replace(b"\x00", b"").decode("ascii", "replace").strip()
        if text:
            if not SERIAL_RE.fullmatch(text):
                raise ProvisionError(
                    f"serial number {text!r} from {source} has characters a "
                    "thing name cannot hold; pass --serial"
                )
            return text
    raise ProvisionError("no serial number found (device tree or /etc/machine-id); pass --serial")


@dataclass(frozen=True)
class Claim:
    """How to reach fleet provisioning: endpoint, claim credentials, template and parameters."""

    endpoint: str
    claim_cert: Path
    claim_key: Path
    ca: Path
    template: str
    port: int = 8883
    parameters: Mapping[str, str] = field(default_factory=dict)
    method: str = "csr"  # csr (key made on the board) or keys (CreateKeysAndCertificate)
    timeout_s: float = 20.0


Connector = Callable[[Claim, str], IdentitySession]


def _connect(claim: Claim, client_id: str) -> IdentitySession:
    return connect(
        claim.endpoint,
        claim.port,
        str(claim.claim_cert),
        str(claim.claim_key),
        str(claim.ca),
        client_id,
        claim.timeout_s,
    )


def check_claim(claim: Claim, now: dt.datetime) -> list[str]:
    """Check the claim credentials before connecting; returns warnings."""
    if claim.method not in ("csr", "keys"):
        raise ProvisionError(f"method {claim.method!r} is unknown; use csr or keys")
    if not claim.template or not re.fullmatch(r"[A-Za-z0-9_-]{1,36}", claim.template):
        raise ProvisionError(
            f"template name {claim.template!r} is invalid; use 1-36 of A-Z a-z 0-9 _ -"
        )
    cert = cred.load_certificate(claim.claim_cert, "claim certificate")
    key = cred.load_private_key(claim.claim_key, "claim key")
    cred.load_ca(claim.ca)
    if not cred.key_matches(cert, key):
        raise ProvisionError(
            f"claim key {claim.claim_key} does not belong to claim certificate {claim.claim_cert}"
        )
    verdict = cred.validity(cert, now, "the claim certificate")
    if verdict.level == cred.FAIL:
        raise ProvisionError(verdict.detail)
    return [verdict.detail] if verdict.level == cred.WARN else []


def fleet_provision(
    claim: Claim,
    root: Path = Path("/"),
    *,
    serial: str | None = None,
    settings: provision.Settings | None = None,
    force: bool = False,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    owner: provision.Owner | str | None = "auto",
    connect: Connector = _connect,
) -> provision.Outcome:
    """Provision by claim: new key and certificate from the service, register the thing, install.

    A board that is already provisioned is left alone unless `force`; a dry run checks the claim
    and shows the layout without asking the service for anything.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    thing = provision.installed_thing(root)
    if thing and not force:
        return provision.Outcome(
            thing,
            [],
            None,
            note=f"{thing} already provisioned; nothing done (pass --force to provision again)",
        )
    warnings = check_claim(claim, now)
    serial = serial or read_serial(root)
    if not SERIAL_RE.fullmatch(serial):
        raise ProvisionError(f"serial number {serial!r} is invalid; use 1-64 of A-Z a-z 0-9 _ -")
    for name in claim.parameters:
        if name == "SerialNumber" or name.startswith("AWS::"):
            what = "--serial" if name == "SerialNumber" else "the service"
            raise ProvisionError(
                f"--param {name} is not allowed: {name} is set by {what}, not by --param"
            )
    params = {**claim.parameters, "SerialNumber": serial}
    ca_pem = claim.ca.read_bytes()
    # settings and the target tree are checked before the service issues anything
    who = provision.service_owner(root) if owner == "auto" else owner
    assert not isinstance(who, str)
    preview = provision.Bundle(
        "provisioning", claim.endpoint, b"", b"", ca_pem, claim.port, settings or {}
    )
    changes = provision.plan(preview, root, who)
    if dry_run:
        return provision.Outcome(
            f"(from template {claim.template})",
            [c if c.kind == "dir" else replace(c, action="create") for c in changes],
            who,
            warnings,
            True,
            note=f"dry run: would connect to {claim.endpoint}:{claim.port}, request a "
            f"certificate ({claim.method}) and register with {params}",
        )
    session = connect(claim, f"{CLIENT_ID_PREFIX}{serial}")
    try:
        if claim.method == "csr":
            key = cred.new_private_key()
            issued = session.create_certificate_from_csr(cred.make_csr(key, serial))
            key_pem = cred.private_key_pem(key)
        else:
            try:
                issued = session.create_keys_and_certificate()
            except ProvisionError as exc:
                raise ProvisionError(
                    f"{exc} (--method keys needs the claim policy from deploy/aws/"
                    f"{CLAIM_POLICIES['keys']}; {CLAIM_POLICIES['csr']} allows only the CSR)"
                ) from exc
            key_pem = issued.private_key.encode()
        registration = session.register_thing(claim.template, issued.ownership_token, params)
    finally:
        session.close()
    bundle = provision.Bundle(
        registration.thing_name,
        claim.endpoint,
        issued.certificate_pem.encode(),
        key_pem,
        ca_pem,
        claim.port,
        settings or {},
    )
    outcome = provision.install(bundle, root, force=True, now=now, owner=who)
    outcome.warnings[:0] = warnings
    return outcome
