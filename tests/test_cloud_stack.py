"""deploy/aws/stack.yaml: lint-clean, and in step with the device, the policies and the handlers."""

from __future__ import annotations

import base64
import importlib
import json
import re
import shutil
import sqlite3
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from support.cloud import batches, drive_records, firehose_event, lines, live, rule_record

from cloud import transform
from tracker.core.config import AwsConfig

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy/aws/stack.yaml"
AWS_DIR = ROOT / "deploy/aws"
THING_VAR = "${iot:Connection.Thing.ThingName}"


def stack() -> Any:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.load(str(STACK))


def resources(kind: str) -> dict[str, Any]:
    return {k: v for k, v in stack()["Resources"].items() if v["Type"] == kind}


def sub(node: Any, values: dict[str, str]) -> str:
    """A plain string or a Fn::Sub with these parameter values filled in."""
    text = node["Fn::Sub"] if isinstance(node, dict) else node
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return text.replace("${!", "${")  # Fn::Sub's escape for a literal ${


def default(name: str) -> str:
    return str(stack()["Parameters"][name]["Default"])


def test_cfn_lint_is_clean() -> None:
    exe = shutil.which("cfn-lint") or str(Path(__import__("sys").executable).parent / "cfn-lint")
    if not Path(exe).exists():
        pytest.skip("cfn-lint is not installed")
    done = subprocess.run([exe, str(STACK)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_topic_prefix_default_is_the_devices() -> None:
    (prefix,) = [f.default for f in fields(AwsConfig) if f.name == "topic_prefix"]
    assert default("TopicPrefix") == prefix


def test_rules_listen_on_exactly_the_topics_devices_may_publish() -> None:
    values = {"TopicPrefix": default("TopicPrefix")}
    filters = {}
    for name, rule in resources("AWS::IoT::TopicRule").items():
        sql = sub(rule["Properties"]["TopicRulePayload"]["Sql"], values)
        m = re.fullmatch(
            r"SELECT topic\(\) AS topic, encode\(\*, 'base64'\) AS payload_b64, "
            r"timestamp\(\) AS received FROM '([^']+)'",
            sql,
        )
        assert m, sql
        filters[name] = m.group(1)
    aws = AwsConfig(endpoint="x", cert="c", key="k", ca="a")
    assert filters == {
        "LocationRule": aws.topic("+", "location"),
        "ConditionRule": aws.topic("+", "condition"),
        "LocationFeedRule": aws.topic("+", "location"),
    }
    policy = (AWS_DIR / "tracker-policy.json").read_text()
    published = {
        r.split(":topic/", 1)[1]
        for s in json.loads(policy)["Statement"]
        if s["Action"] == "iot:Publish"
        for r in s["Resource"]
        if "/shadow/" not in r
    }
    assert published == {f.replace("+", THING_VAR) for f in filters.values()}


def test_handlers_named_in_the_stack_exist() -> None:
    handlers = {v["Properties"]["Handler"] for v in resources("AWS::Lambda::Function").values()}
    assert handlers == {
        "cloud.transform.handler",
        "cloud.provisioning_hook.handler",
        "cloud.location.handler",
    }
    for h in handlers:
        module, func = h.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), func))


def test_provisioning_template_body_is_the_shipped_one() -> None:
    (template,) = resources("AWS::IoT::ProvisioningTemplate").values()
    props = template["Properties"]
    shipped = json.loads((AWS_DIR / "provisioning-template.json").read_text())
    assert json.loads(props["TemplateBody"]) == shipped
    assert props["PreProvisioningHook"]["TargetArn"] == {"Fn::GetAtt": ["HookFunction", "Arn"]}
    assert props["PreProvisioningHook"]["PayloadVersion"] == "2020-04-01"


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["Statement"])


def test_iam_roles_allow_no_wildcard_action_or_resource() -> None:
    for name, role in resources("AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        for policy in role["Properties"]["Policies"]:
            for s in _statements(policy["PolicyDocument"]):
                assert s["Effect"] == "Allow", name
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                assert not [a for a in actions if "*" in a], (name, actions)
                res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                assert "*" not in res, name
                for r in res:
                    text = json.dumps(r)
                    # account-wide only where IoT has no narrower name: certificates
                    assert not text.endswith(':*"') and "::*" not in text, (name, r)


def test_firehose_partitions_by_the_transform_keys() -> None:
    (stream,) = resources("AWS::KinesisFirehose::DeliveryStream").values()
    dest = stream["Properties"]["ExtendedS3DestinationConfiguration"]
    keys = re.findall(r"!\{partitionKeyFromLambda:(\w+)\}", dest["Prefix"])
    payload, _ = batches(drive_records()[:5])[0]
    (result,) = transform.handler(firehose_event([rule_record(payload)]))["records"]
    assert keys == list(result["metadata"]["partitionKeys"]) == ["kind", "thing", "day"]
    assert dest["Prefix"].endswith("/")
    assert "!{firehose:error-output-type}" in dest["ErrorOutputPrefix"]
    assert dest["ErrorOutputPrefix"].startswith("errors/")
    assert dest["DynamicPartitioningConfiguration"]["Enabled"] is True
    (processor,) = dest["ProcessingConfiguration"]["Processors"]
    params = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}
    assert params["LambdaArn"] == {"Fn::GetAtt": ["TransformFunction", "Arn"]}


def _columns(table: str) -> tuple[list[str], list[str]]:
    t = stack()["Resources"][table]["Properties"]["TableInput"]
    return [c["Name"] for c in t["StorageDescriptor"]["Columns"]], [
        c["Name"] for c in t.get("PartitionKeys", [])
    ]


def test_glue_tables_read_the_transform_lines() -> None:
    payload, _ = batches(drive_records()[:5])[0]
    out = transform.handler(firehose_event([rule_record(payload)]))["records"]
    columns, partitions = _columns("FixesTable")
    assert partitions == ["thing", "day"]
    assert list(lines(out[0])[0]) == [
        "kind", "thing", *[c for c in columns if c != "kind"],
    ]  # fmt: skip
    body = b'{"reason":"periodic","time":"2008-03-03T22:26:16Z"}'
    (cond,) = transform.handler(firehose_event([rule_record(body, "condition")]))["records"]
    columns, partitions = _columns("ConditionsTable")
    assert set(lines(cond)[0]) == {*columns, "thing"}
    assert partitions == ["thing", "day"]
    for table, prefix in (("FixesTable", "fixes"), ("ConditionsTable", "conditions")):
        params = stack()["Resources"][table]["Properties"]["TableInput"]["Parameters"]
        location = sub(params["storage.location.template"], {"DataBucket": "B"})
        assert location == f"s3://B/{prefix}/thing=${{thing}}/day=${{day}}/"


def _view() -> tuple[dict[str, Any], list[str]]:
    t = stack()["Resources"]["FixesDedupView"]["Properties"]["TableInput"]
    parts = t["ViewOriginalText"]["Fn::Join"][1]
    assert parts[0] == "/* Presto View: " and parts[2] == " */"
    doc = json.loads(sub(parts[1]["Fn::Base64"], {"DatabaseName": "tracker"}))
    base64.b64encode(json.dumps(doc).encode())  # what Fn::Base64 will store
    return doc, [c["Name"] for c in t["StorageDescriptor"]["Columns"]]


def test_dedup_view_keeps_one_row_per_thing_and_seq() -> None:
    doc, columns = _view()
    assert [c["name"] for c in doc["columns"]] == columns
    assert doc["schema"] == "tracker" and doc["catalog"] == "awsdatacatalog"
    # run the view's SQL on the transform's own lines, duplicates included (SQLite has the
    # same window functions; "tracker"."fixes" is an attached schema there)
    recs = drive_records()[:40]
    payloads = [p for p, _ in batches(recs, 600)] + [live(recs[3]), live(recs[39])]
    out = transform.handler(firehose_event([rule_record(p) for p in payloads * 2]))["records"]
    db = sqlite3.connect(":memory:")
    db.execute("ATTACH ':memory:' AS tracker")
    table_cols, _ = _columns("FixesTable")
    quoted = ", ".join(f'"{c}"' for c in [*table_cols, "thing", "day"])
    db.execute(f"CREATE TABLE tracker.fixes ({quoted})")
    rows = 0
    for result in out:
        day = result["metadata"]["partitionKeys"]["day"]
        for line in lines(result):
            db.execute(
                "INSERT INTO tracker.fixes VALUES (" + ",".join("?" * (len(table_cols) + 2)) + ")",
                [line[c] for c in table_cols] + [line["thing"], day],
            )
            rows += 1
    assert rows == 2 * (40 + 2)
    got = db.execute(doc["originalSql"]).fetchall()
    assert sorted(r[2] for r in got) == [r.seq for r in recs]
    db.close()


def test_day_track_query_reads_the_dedup_columns() -> None:
    (query,) = resources("AWS::Athena::NamedQuery").values()
    sql = query["Properties"]["QueryString"]
    assert "FROM fixes" in sql and "PARTITION BY seq" in sql and "LineString" in sql
    assert "thing = '" in sql  # the injected partition needs an equality
