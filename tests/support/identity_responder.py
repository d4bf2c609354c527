"""A stand-in for AWS IoT fleet provisioning on the test broker, with its own MQTT client.

Answers CreateCertificateFromCsr, CreateKeysAndCertificate and RegisterThing like the service:
signs with the test CA, evaluates the shipped template's thing name, and can reject or stay
silent on purpose. Must not import the tracker.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from awscrt import mqtt
from awsiot import mqtt_connection_builder
from benchkit.broker import Broker
from benchkit.pki import Pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

CREATE_FROM_CSR = "$aws/certificates/create-from-csr/json"
CREATE_KEYS = "$aws/certificates/create/json"
REGISTER = "$aws/provisioning-templates/{}/provision/json"
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "aws" / "provisioning-template.json"
TEMPLATE_NAME = "tracker-fleet"
Rejection = tuple[int, str, str]  # statusCode, errorCode, errorMessage


def evaluate(node: Any, params: dict[str, str]) -> Any:
    """The value of a template expression: a literal, {"Ref": P} or {"Fn::Join": [sep, parts]}."""
    if isinstance(node, dict) and "Ref" in node:
        name = node["Ref"]
        if name not in params:
            raise KeyError(name)
        return params[name]
    if isinstance(node, dict) and "Fn::Join" in node:
        sep, parts = node["Fn::Join"]
        return sep.join(str(evaluate(p, params)) for p in parts)
    return node


class IdentityResponder:
    """Plays the fleet provisioning service for one template; `start()`, then `stop()`."""

    def __init__(
        self,
        broker: Broker,
        pki: Pki,
        *,
        template_name: str = TEMPLATE_NAME,
        template: Path = TEMPLATE,
    ) -> None:
        self.broker = broker
        self.pki = pki
        self.template_name = template_name
        self.template = json.loads(template.read_text())
        self.reject: dict[str, Rejection] = {}  # operation (csr, keys, register) -> rejection
        self.silent: set[str] = set()  # operations left unanswered (the device times out)
        self.requests: list[tuple[str, bytes]] = []
        self.registered: dict[str, str] = {}  # thing name -> certificate id
        self._tokens: dict[str, str] = {}  # ownership token -> certificate id
        self._lock = threading.Lock()
        ident = pki.client_for("identity-service")
        self._conn = mqtt_connection_builder.mtls_from_path(
            endpoint=broker.host,
            port=broker.port,
            cert_filepath=str(ident.cert),
            pri_key_filepath=str(ident.key),
            ca_filepath=str(pki.ca),
            client_id=f"identity-service-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            enable_metrics_collection=False,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> IdentityResponder:
        self._conn.connect().result(10)
        # '#' does not match '$' topics: each request topic is subscribed to by name
        for topic, handler in (
            (CREATE_FROM_CSR, self._on_csr),
            (CREATE_KEYS, self._on_keys),
            (REGISTER.format("+"), self._on_register),
        ):
            future, _ = self._conn.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, handler)
            future.result(10)
        return self

    def stop(self) -> None:
        self._conn.disconnect().result(10)

    def __enter__(self) -> IdentityResponder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering (runs on the SDK's thread: publish only, never wait) ------------------------

    def _reply(self, request_topic: str, ok: bool, body: dict[str, Any]) -> Future[Any]:
        topic = f"{request_topic}/{'accepted' if ok else 'rejected'}"
        future: Future[Any] = self._conn.publish(topic, json.dumps(body), mqtt.QoS.AT_LEAST_ONCE)[0]
        return future

    def _answer(self, operation: str, topic: str, payload: bytes) -> bool:
        """Record the request; False when the reply is a rejection or silence."""
        with self._lock:
            self.requests.append((topic, payload))
        if operation in self.silent:
            return False
        if operation in self.reject:
            status, code, message = self.reject[operation]
            self._reply(
                topic, False, {"statusCode": status, "errorCode": code, "errorMessage": message}
            )
            return False
        return True

    def _issue(self, public_key: CertificatePublicKeyTypes) -> tuple[str, str, str]:
        # the test CA signs what the service would sign with Amazon's
        cert = self.pki.issue_for(public_key, "AWS IoT Certificate")
        cert_id = cert.fingerprint(hashes.SHA256()).hex()
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = cert_id
        return cert_id, cert.public_bytes(serialization.Encoding.PEM).decode(), token

    def _on_csr(self, topic: str, payload: bytes, **_: Any) -> None:
        if not self._answer("csr", topic, payload):
            return
        try:
            pem = json.loads(payload)["certificateSigningRequest"]
            csr = x509.load_pem_x509_csr(pem.encode())
            if not csr.is_signature_valid:
                raise ValueError("bad signature")
        except (ValueError, KeyError, TypeError):
            self._reply(
                topic,
                False,
                {
                    "statusCode": 400,
                    "errorCode": "InvalidPayload",
                    "errorMessage": "certificateSigningRequest is invalid",
                },
            )
            return
        cert_id, cert_pem, token = self._issue(csr.public_key())
        self._reply(
            topic,
            True,
            {
                "certificateId": cert_id,
                "certificatePem": cert_pem,
                "certificateOwnershipToken": token,
            },
        )

    def _on_keys(self, topic: str, payload: bytes, **_: Any) -> None:
        if not self._answer("keys", topic, payload):
            return
        key = ec.generate_private_key(ec.SECP256R1())
        cert_id, cert_pem, token = self._issue(key.public_key())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        self._reply(
            topic,
            True,
            {
                "certificateId": cert_id,
                "certificatePem": cert_pem,
                "privateKey": key_pem,
                "certificateOwnershipToken": token,
            },
        )

    def _on_register(self, topic: str, payload: bytes, **_: Any) -> None:
        if not self._answer("register", topic, payload):
            return
        name = topic.split("/")[2]
        if name != self.template_name:
            self._reply(
                topic,
                False,
                {
                    "statusCode": 404,
                    "errorCode": "ResourceNotFound",
                    "errorMessage": f"template {name} does not exist",
                },
            )
            return
        try:
            body = json.loads(payload)
            token = body["certificateOwnershipToken"]
            params = {str(k): str(v) for k, v in body.get("parameters", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            self._reply(
                topic,
                False,
                {
                    "statusCode": 400,
                    "errorCode": "InvalidPayload",
                    "errorMessage": "malformed request",
                },
            )
            return
        with self._lock:
            cert_id = self._tokens.pop(token, None)
        if cert_id is None:
            self._reply(
                topic,
                False,
                {
                    "statusCode": 400,
                    "errorCode": "InvalidParameters",
                    "errorMessage": "certificate ownership token is invalid",
                },
            )
            return
        params["AWS::IoT::Certificate::Id"] = cert_id
        try:
            thing = evaluate(self.template["Resources"]["thing"]["Properties"]["ThingName"], params)
        except KeyError as exc:
            self._reply(
                topic,
                False,
                {
                    "statusCode": 400,
                    "errorCode": "InvalidParameters",
                    "errorMessage": f"missing parameter {exc.args[0]}",
                },
            )
            return
        with self._lock:
            self.registered[thing] = cert_id
        self._reply(
            topic,
            True,
            {
                "thingName": thing,
                "deviceConfiguration": self.template.get("DeviceConfiguration", {}),
            },
        )
