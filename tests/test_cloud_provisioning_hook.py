"""Pre-provisioning hook against moto's server: allow-list, a serial in use, never a crash."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.cloud import moto_reset, moto_server
from support.identity_responder import evaluate

from cloud import provisioning_hook as hook

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy/aws/provisioning-template.json"
TABLE = "tracker-allowed-serials"
SERIAL = "10000000c0ffee01"


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    yield from moto_server()


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    moto_reset(moto)
    monkeypatch.setenv(hook.TABLE_ENV, TABLE)
    ddb = boto3.client("dynamodb")
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "serial", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "serial", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield {"dynamodb": ddb, "iot": boto3.client("iot")}


def allow(ddb: Any, serial: str) -> None:
    ddb.put_item(TableName=TABLE, Item={"serial": {"S": serial}})


def event(serial: Any = SERIAL) -> dict[str, Any]:
    """The hook's input as AWS IoT documents it."""
    return {
        "claimCertificateId": "c1a1m" + "0" * 59,
        "certificateId": "5e1f" + "0" * 60,
        "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
        "templateArn": "arn:aws:iot:eu-west-1:123456789012:provisioningtemplate/tracker-fleet",
        "clientId": f"provision-{serial}",
        "parameters": {"SerialNumber": serial, "AWS::IoT::Certificate::Id": "5e1f" + "0" * 60},
    }


def with_cert(iot: Any, serial: str, active: bool) -> str:
    thing = hook.thing_name(serial)
    iot.create_thing(thingName=thing)
    cert = iot.create_keys_and_certificate(setAsActive=active)
    iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
    return str(cert["certificateId"])


def test_thing_name_is_the_templates() -> None:
    template = json.loads(TEMPLATE.read_text())
    expr = template["Resources"]["thing"]["Properties"]["ThingName"]
    assert hook.thing_name(SERIAL) == evaluate(expr, {"SerialNumber": SERIAL})


def test_listed_serial_and_new_thing_is_allowed(aws: dict[str, Any]) -> None:
    allow(aws["dynamodb"], SERIAL)
    assert hook.handler(event()) == {"allowProvisioning": True}


def test_serial_not_listed_is_refused(
    aws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    allow(aws["dynamodb"], "someone-else")
    with caplog.at_level(logging.INFO, "cloud.provisioning_hook"):
        assert hook.handler(event()) == {"allowProvisioning": False}
    (line,) = caplog.messages
    assert "not on the allow-list" in line and SERIAL in line


def test_thing_with_an_active_certificate_is_refused(
    aws: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    allow(aws["dynamodb"], SERIAL)
    cert_id = with_cert(aws["iot"], SERIAL, active=True)
    with caplog.at_level(logging.INFO, "cloud.provisioning_hook"):
        assert hook.handler(event()) == {"allowProvisioning": False}
    assert "already has an active certificate" in caplog.text and cert_id in caplog.text


def test_thing_with_only_an_inactive_certificate_is_allowed(aws: dict[str, Any]) -> None:
    allow(aws["dynamodb"], SERIAL)
    cert_id = with_cert(aws["iot"], SERIAL, active=False)
    assert aws["iot"].describe_certificate(certificateId=cert_id)[
        "certificateDescription"
    ]["status"] == "INACTIVE"  # fmt: skip
    assert hook.handler(event()) == {"allowProvisioning": True}


def test_thing_without_certificates_is_allowed(aws: dict[str, Any]) -> None:
    allow(aws["dynamodb"], SERIAL)
    aws["iot"].create_thing(thingName=hook.thing_name(SERIAL))
    assert hook.handler(event()) == {"allowProvisioning": True}


def test_other_things_certificates_do_not_count(aws: dict[str, Any]) -> None:
    allow(aws["dynamodb"], SERIAL)
    with_cert(aws["iot"], "other", active=True)
    assert hook.handler(event()) == {"allowProvisioning": True}


@pytest.mark.parametrize(
    "bad",
    [None, 7, "", "a/b", "x" * 65, "../../etc", {"S": SERIAL}],
)
def test_bad_serial_parameter_is_refused(aws: dict[str, Any], bad: Any) -> None:
    allow(aws["dynamodb"], SERIAL)
    assert hook.handler(event(bad)) == {"allowProvisioning": False}


@pytest.mark.parametrize("shape", [{}, {"parameters": None}, {"parameters": []}, []])
def test_malformed_events_are_refused(aws: dict[str, Any], shape: Any) -> None:
    assert hook.handler(shape) == {"allowProvisioning": False}


def test_errors_refuse_and_log_one_line(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    allow(aws["dynamodb"], SERIAL)
    monkeypatch.setenv(hook.TABLE_ENV, "no-such-table")
    with caplog.at_level(logging.INFO, "cloud.provisioning_hook"):
        assert hook.handler(event()) == {"allowProvisioning": False}
    (line,) = caplog.messages
    assert "ResourceNotFoundException" in line and "\n" not in line
    monkeypatch.delenv(hook.TABLE_ENV)
    assert hook.handler(event()) == {"allowProvisioning": False}
    monkeypatch.setenv(hook.TABLE_ENV, TABLE)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert hook.handler(event()) == {"allowProvisioning": False}
