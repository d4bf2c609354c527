"""The AWS documents in deploy/aws cover exactly the topics the code uses, nothing more."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import awsiot
import pytest
from support.identity_responder import evaluate

from tracker.core.config import THING_NAME_RE, AwsConfig
from tracker.link import shadow
from tracker.setup import identity

AWS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "aws"
SDK = Path(awsiot.__file__).parent
THING = "tracker-0000abcd"
TEMPLATE = "tracker-fleet"
ARN = "arn:aws:iot:eu-west-1:123456789012:"
THING_VAR = "${iot:Connection.Thing.ThingName}"


def resources(policy_file: str, **subst: str) -> dict[str, set[str]]:
    """Action -> resources with the placeholders filled in, as plain topic/client names."""
    text = (AWS_DIR / policy_file).read_text().replace("arn:aws:iot:REGION:ACCOUNT_ID:", ARN)
    for old, new in subst.items():
        text = text.replace(old, new)
    doc = json.loads(text)
    assert doc["Version"] == "2012-10-17"
    out: dict[str, set[str]] = {}
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        res = statement["Resource"]
        for action in actions:
            assert action in {"iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"}
            for r in [res] if isinstance(res, str) else res:
                assert r.startswith(ARN), r
                out.setdefault(action, set()).add(r[len(ARN) :])
    return out


def sdk_topics(module: str) -> set[str]:
    """Every topic template the SDK's service client publishes or subscribes to."""
    return set(re.findall(r"topic='(\$aws/[^']+)'", (SDK / module).read_text()))


def shadow_topics(thing: str) -> tuple[set[str], set[str]]:
    """The classic shadow topics the tracker uses: (requests, replies)."""
    base = f"$aws/things/{thing}/shadow"
    requests = {f"{base}/get", f"{base}/update"}
    replies = {f"{base}/{t}" for t in shadow.TOPICS}  # what the tracker subscribes to
    assert f"{base}/update/accepted" not in replies  # every report's echo: not wanted
    named_by_sdk = {t.format(_Thing(thing)) for t in sdk_topics("iotshadow.py")}
    assert requests | replies <= named_by_sdk  # the names are the service's own
    return requests, replies


class _Thing:
    def __init__(self, name: str) -> None:
        self.thing_name = name
        self.template_name = TEMPLATE
        self.shadow_name = "NAMED"  # named shadows: not used by the tracker


def test_tracker_policy_covers_exactly_the_code_topics() -> None:
    got = resources("tracker-policy.json", **{THING_VAR: THING})
    aws = AwsConfig(endpoint="x-ats.iot.eu-west-1.amazonaws.com", cert="c", key="k", ca="a")
    shadow_requests, shadow_replies = shadow_topics(THING)
    published = {aws.topic(THING, "location"), aws.topic(THING, "condition")} | shadow_requests

    assert got["iot:Connect"] == {f"client/{THING}"}
    assert got["iot:Publish"] == {f"topic/{t}" for t in published}
    assert got["iot:Subscribe"] == {f"topicfilter/{t}" for t in shadow_replies}
    assert got["iot:Receive"] == {f"topic/{t}" for t in shadow_replies}
    every = set().union(*got.values())
    assert not [r for r in every if any(c in r for c in "*+#")]  # no wildcards at all


def test_tracker_policy_binds_the_thing_name() -> None:
    doc = json.loads((AWS_DIR / "tracker-policy.json").read_text())
    connect = next(s for s in doc["Statement"] if s["Action"] == "iot:Connect")
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    text = json.dumps(doc)
    # every topic resource is scoped to the connected thing
    for statement in doc["Statement"]:
        res = statement["Resource"]
        for r in [res] if isinstance(res, str) else res:
            assert THING_VAR in r, r
    assert "iot:*" not in text


CERT_TOPIC = {
    "csr": "$aws/certificates/create-from-csr/json",
    "keys": "$aws/certificates/create/json",
}


@pytest.mark.parametrize("method", sorted(identity.CLAIM_POLICIES))
def test_claim_policy_allows_only_fleet_provisioning(method: str) -> None:
    """Each claim policy allows its method's certificate request and RegisterThing, no more."""
    got = resources(identity.CLAIM_POLICIES[method], TEMPLATE_NAME=TEMPLATE)
    topics = {t.format(_Thing(THING)) for t in sdk_topics("iotidentity.py")}
    requests = {t for t in topics if t.endswith("/json")}
    assert CERT_TOPIC[method] in requests
    requests = {t for t in requests if "/certificates/" not in t or t == CERT_TOPIC[method]}
    replies = {f"{t}/{r}" for t in requests for r in ("accepted", "rejected")}
    assert replies <= topics and len(requests) == 2

    assert got["iot:Publish"] == {f"topic/{t}" for t in requests}
    assert got["iot:Subscribe"] == {f"topicfilter/{t}" for t in replies}
    assert got["iot:Receive"] == {f"topic/{t}" for t in replies}
    (connect,) = got["iot:Connect"]
    assert fnmatch.fnmatchcase(f"client/{identity.CLIENT_ID_PREFIX}10000000c0ffee01", connect)
    assert not fnmatch.fnmatchcase(f"client/{THING}", connect)


def test_default_claim_policy_does_not_offer_create_keys() -> None:
    """The shipped claim policy matches the default method: the service never makes the key."""
    text = (AWS_DIR / "claim-policy.json").read_text()
    assert "$aws/certificates/create/" not in text
    assert identity.Claim("e", Path("c"), Path("k"), Path("a"), "t").method == "csr"
    assert identity.CLAIM_POLICIES["csr"] == "claim-policy.json"


def test_template_registers_a_valid_thing_with_the_tracker_policy() -> None:
    template = json.loads((AWS_DIR / "provisioning-template.json").read_text())
    assert set(template["Parameters"]) == {"SerialNumber", "AWS::IoT::Certificate::Id"}
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert kinds == {"AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"}
    policy = next(r for r in template["Resources"].values() if r["Type"] == "AWS::IoT::Policy")
    assert policy["Properties"]["PolicyName"] == "tracker-policy"
    name = evaluate(
        template["Resources"]["thing"]["Properties"]["ThingName"], {"SerialNumber": "0000abcd"}
    )
    assert name == THING and THING_NAME_RE.fullmatch(name)
