"""Amazon Location feed: real botocore requests, checked against the service model.

moto has no Amazon Location Service, so the client talks to a small recording HTTP server on
loopback: botocore validates every request against the service model before it sends it,
serializes it as it would for AWS, and the test reads the wire requests back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ParamValidationError
from botocore.validate import ParamValidator
from support.cloud import FAKE_ENV, batches, drive_records, live, rule_output

from cloud import location
from cloud.message import parse
from tracker.link.codec import decode


class Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    reject: ClassVar[set[str]] = set()  # seq values to answer with an error
    url: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        errors = [
            {"DeviceId": u["DeviceId"], "SampleTime": u["SampleTime"],
             "Error": {"Code": "ValidationException", "Message": "rejected"}}
            for u in body["Updates"] if u["PositionProperties"]["seq"] in self.reject
        ]  # fmt: skip
        data = json.dumps({"Errors": errors}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[type[Recorder]]:
    Recorder.requests, Recorder.reject = [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, name="location-recorder")
    thread.start()
    Recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def client(url: str) -> Any:
    return boto3.client(
        "location",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),  # no tracking.HOST
    )


def test_25_fixes_make_3_calls_with_the_fix_times(recorder: type[Recorder]) -> None:
    records = drive_records()[100:125]
    payload, n = batches(records)[0]
    assert n == 25
    msg = parse(rule_output(payload))
    got = location.feed(client(recorder.url), "tracker-map", msg, decode(payload))
    assert got == {"updated": 25, "calls": 3, "errors": 0}
    assert [len(b["Updates"]) for _, b in recorder.requests] == [10, 10, 5]
    sent = [u for _, b in recorder.requests for u in b["Updates"]]
    for path, body in recorder.requests:
        assert path == "/tracking/v0/trackers/tracker-map/positions"
        assert set(body) == {"Updates"}
    for u, r in zip(sent, decode(payload), strict=True):
        assert u["DeviceId"] == msg.thing
        assert u["Position"] == [r.fix.lon, r.fix.lat]
        assert datetime.fromisoformat(u["SampleTime"].replace("Z", "+00:00")) == r.fix.time
        assert u["PositionProperties"] == {"seq": str(r.seq), "trigger": r.trigger}


def test_rejected_updates_are_counted_not_raised(recorder: type[Recorder]) -> None:
    recorder.reject = {"1001", "1003"}
    payload, _ = batches(drive_records()[:12])[0]
    got = location.feed(client(recorder.url), "t", parse(rule_output(payload)), decode(payload))
    assert got == {"updated": 10, "calls": 2, "errors": 2}


def test_updates_match_the_service_model() -> None:
    model = botocore.session.get_session().get_service_model("location")
    shape = model.operation_model("BatchUpdateDevicePosition").input_shape
    assert shape.members["Updates"].metadata["max"] == location.MAX_UPDATES
    rec = drive_records()[0]
    payload = live(rec)
    ups = location.updates(parse(rule_output(payload)), decode(payload))
    report = ParamValidator().validate({"TrackerName": "tracker-map", "Updates": ups}, shape)
    assert not report.has_errors(), report.generate_report()
    # botocore checks minimums only: the maximum (10 updates) is the feed's job, tested above
    props = shape.members["Updates"].member.members["PositionProperties"]
    assert len(ups[0]["PositionProperties"]) <= props.metadata["max"]


def test_handler_ignores_undecodable_payloads_without_calling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(location.TRACKER_ENV, "tracker-map")
    assert location.handler(rule_output(b"garbage")) == {"updated": 0, "calls": 0, "errors": 1}
    assert location.handler(rule_output(live(drive_records()[0]), "condition"))["calls"] == 0
    assert location.handler({"nope": 1})["errors"] == 1


def test_handler_uses_the_environment(
    recorder: type[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", recorder.url)
    monkeypatch.setenv(location.TRACKER_ENV, "tracker-map")
    monkeypatch.setattr(location, "_client_config", Config(inject_host_prefix=False))
    payload, n = batches(drive_records()[:30])[0]
    assert location.handler(rule_output(payload)) == {"updated": n, "calls": 3, "errors": 0}
    with pytest.raises(ParamValidationError):
        client(recorder.url).batch_update_device_position(TrackerName="t", Updates=[])
