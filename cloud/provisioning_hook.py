"""Fleet provisioning pre-provisioning hook: who may register with the claim certificate.

AWS IoT calls this Lambda before it runs the template for a RegisterThing request:

    {"claimCertificateId": "...", "certificateId": "...", "certificatePem": "...",
     "templateArn": "arn:aws:iot:...:provisioningtemplate/tracker-fleet",
     "clientId": "provision-SERIAL", "parameters": {"SerialNumber": "..."}}

and expects {"allowProvisioning": true|false}. Provisioning is allowed only when

- the serial is on the operator's allow-list (a DynamoDB table with partition key `serial`,
  named by the environment variable ALLOWED_SERIALS_TABLE), and
- the thing the template would create (`tracker-<serial>`, see deploy/aws/provisioning-
  template.json) does not already exist with an ACTIVE certificate attached: a second board
  claiming a serial in use is refused. To re-provision a board, deactivate its old certificate
  first (aws iot update-certificate --new-status INACTIVE ...).

Any error (bad event, table missing, throttling, no permission) refuses, with one log line; the
hook never raises.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import boto3

log = logging.getLogger("cloud.provisioning_hook")
log.setLevel(logging.INFO)

THING_PREFIX = "tracker-"  # the template's ThingName is Fn::Join ["", ["tracker-", SerialNumber]]
SERIAL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as tracker.setup.identity checks it on the board
TABLE_ENV = "ALLOWED_SERIALS_TABLE"


class Refused(Exception):
    """Provisioning is refused; the message says why (one line, for the log)."""


def thing_name(serial: str) -> str:
    """The thing the provisioning template registers for this serial."""
    return THING_PREFIX + serial


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Allow or refuse one RegisterThing request; never raises."""
    who = "?"
    try:
        if not isinstance(event, Mapping):
            raise Refused("event is not an object")
        who = f"claim {str(event.get('claimCertificateId'))[:64]}"
        serial = _serial(event)
        who += f" serial {serial}"
        decide(serial)
    except Refused as exc:
        log.warning("provisioning refused: %s: %s", who, exc)
        return {"allowProvisioning": False}
    except Exception as exc:  # the hook must answer, whatever happens
        first = str(exc).splitlines()[0] if str(exc) else ""
        log.error("provisioning refused: %s: error %s: %s", who, type(exc).__name__, first)
        return {"allowProvisioning": False}
    log.info("provisioning allowed: %s thing %s", who, thing_name(serial))
    return {"allowProvisioning": True}


def _serial(event: Mapping[str, Any]) -> str:
    params = event.get("parameters")
    serial = params.get("SerialNumber") if isinstance(params, Mapping) else None
    if not isinstance(serial, str) or not SERIAL_RE.fullmatch(serial):
        raise Refused(f"SerialNumber {str(serial)[:80]!r} is missing or invalid")
    return serial


def decide(serial: str) -> None:
    """Raise Refused unless the serial may provision its thing now."""
    table = os.environ.get(TABLE_ENV, "")
    if not table:
        raise Refused(f"{TABLE_ENV} is not set")
    item = (
        _dynamodb()
        .get_item(TableName=table, Key={"serial": {"S": serial}}, ConsistentRead=True)
        .get("Item")
    )
    if not item:
        raise Refused(f"serial {serial} is not on the allow-list {table}")
    thing = thing_name(serial)
    active = active_certificates(thing)
    if active:
        raise Refused(f"thing {thing} already has an active certificate {active[0]}")


def active_certificates(thing: str) -> list[str]:
    """Ids of the ACTIVE certificates attached to the thing; [] when it does not exist."""
    iot = _iot()
    try:
        principals: list[str] = []
        for page in iot.get_paginator("list_thing_principals").paginate(thingName=thing):
            principals.extend(page.get("principals", []))
    except iot.exceptions.ResourceNotFoundException:
        return []
    active = []
    for arn in principals:
        if ":cert/" not in arn:
            continue  # not an X.509 certificate (e.g. a Cognito identity)
        cert_id = arn.rsplit("/", 1)[1]
        desc = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
        if desc.get("status") == "ACTIVE":
            active.append(cert_id)
    return active


def _dynamodb() -> Any:
    return boto3.client("dynamodb")


def _iot() -> Any:
    return boto3.client("iot")
