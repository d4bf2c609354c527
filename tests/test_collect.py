"""`tracker collect` against a real Mosquitto with mutual TLS: the lake layout, dedupe by
(thing, seq), a persistent session across a stop, bad payloads to rejected/, and user mistakes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchkit.broker import Broker
from benchkit.collector import Collector
from benchkit.fixes import synthetic_fix
from benchkit.pki import Pki
from benchkit.subscriber import Subscriber

from tracker import cli
from tracker.core.fix import Record
from tracker.link.codec import encode_batch, encode_live
from tracker.twin.collect import thing_of
from tracker.twin.lake import read_fixes

LOC = "dt/tracker/{}/location"


def records(first: int, n: int) -> list[Record]:
    return [Record(i, synthetic_fix(i), "interval") for i in range(first, first + n)]


@pytest.fixture
def publisher(broker: Broker, pki: Pki) -> Iterator[Subscriber]:
    """A device-side client that publishes whatever a test hands it (QoS 1)."""
    pub = Subscriber(broker, "unused/+", identity=pki.client, client_id="test-publisher")
    try:
        yield pub.start()
    finally:
        pub.stop()


@pytest.fixture
def collector(broker: Broker, tmp_path: Path) -> Iterator[Collector]:
    c = Collector(broker, tmp_path / "lake", tmp_path / "collect")
    try:
        yield c.start()
    finally:
        c.kill()


def wait_stats(c: Collector, key: str, n: int, timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while c.stats().get(key, 0) < n:
        assert c.alive(), c.log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{key} < {n}: {c.stats()}"
        time.sleep(0.05)
    return c.stats()


def lake_lines(lake: Path, kind: str) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for f in sorted((lake / kind).rglob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def test_live_and_batch_land_once_per_seq_in_the_firehose_layout(
    collector: Collector, publisher: Subscriber
) -> None:
    recs = records(1, 30)
    publisher.publish(LOC.format("truck-1"), encode_live(recs[29]))
    publisher.publish(LOC.format("truck-1"), encode_batch(recs)[0])  # repeats seq 30
    publisher.publish(LOC.format("truck-2"), encode_live(recs[0]))  # another device's seq 1
    publisher.publish(
        "dt/tracker/truck-1/condition", b'{"reason":"interval","time":"2026-11-26T12:00:00Z"}'
    )
    st = wait_stats(collector, "messages", 4)
    assert st["fixes_written"] == 31 and st["duplicates"] == 1 and st["conditions_written"] == 1
    lake = collector.lake
    day = lake / "fixes" / "thing=truck-1" / "day=2026-11-26"
    assert len(list(day.glob("*.jsonl"))) == 1
    lines = [json.loads(x) for x in next(day.glob("*.jsonl")).read_text().splitlines()]
    assert sorted(int(d["seq"]) for d in lines) == list(range(1, 31))
    assert list(lines[0]) == ["thing", "seq", "trigger", "time", "lat", "lon", "alt", "speed",
                              "course", "mode", "sats", "hdop", "received"]  # fmt: skip
    assert [f.record.seq for f in read_fixes(lake, "truck-2")] == [1]
    cond = lake_lines(lake, "conditions")
    assert cond[0]["thing"] == "truck-1" and cond[0]["reason"] == "interval"
    assert (lake / "conditions" / "thing=truck-1" / "day=2026-11-26").is_dir()


def test_messages_sent_while_stopped_arrive_after_restart_without_duplicates(
    collector: Collector, publisher: Subscriber
) -> None:
    recs = records(1, 40)
    publisher.publish(LOC.format("truck-1"), encode_batch(recs[:20])[0])
    wait_stats(collector, "fixes_written", 20)
    assert collector.stop() == 0
    for r in recs[10:]:  # 10 already stored, 20 new, sent while the collector is down
        publisher.publish(LOC.format("truck-1"), encode_live(r))
    collector.start()
    st = wait_stats(collector, "messages", 30)
    assert st["fixes_written"] == 20 and st["duplicates"] == 10
    seqs = [f.record.seq for f in read_fixes(collector.lake, "truck-1")]
    assert sorted(seqs) == list(range(1, 41))


HOSTILE: list[tuple[str, bytes]] = [
    ("truncated", encode_batch(records(1, 5))[0][:-7]),
    ("binary", bytes(range(256)) * 4),
    ("oversized", b'{"seq":1,"pad":"' + b"x" * 200_000 + b'"}'),
    ("wrong version", b'{"v":2,"d":[[1,2,3]],"tt":["interval"]}'),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("huge number", b'{"seq":1,"time":"2026-11-26T12:00:00Z","lat":1e999,"lon":0,"mode":3}'),
    ("negative seq", b'{"seq":-5,"time":"2026-11-26T12:00:00Z","lat":1,"lon":2,"mode":3}'),
    ("bad row", b'{"v":1,"d":[[1,"x"]],"tt":[]}'),
    ("not an object", b"[1,2,3]"),
    ("empty", b""),
    ("latin-1", '{"seq":1,"trigger":"é"}'.encode("latin-1")),
    ("out of range", b'{"seq":9,"time":"2026-11-26T12:00:00Z","lat":91,"lon":2,"mode":3}'),
]


def test_bad_payloads_each_give_one_rejected_line_and_never_stop_the_collector(
    collector: Collector, publisher: Subscriber
) -> None:
    for _, payload in HOSTILE:
        publisher.publish(LOC.format("truck-1"), payload)
    publisher.publish("dt/tracker/truck-1/condition", b"\xff\xfe not json")
    publisher.publish(LOC.format("truck-1"), encode_live(records(7, 1)[0]))
    st = wait_stats(collector, "messages", len(HOSTILE) + 2)
    assert collector.alive()
    assert st["rejected"] == len(HOSTILE) + 1 and st["fixes_written"] == 1
    rejected = lake_lines(collector.lake, "rejected")
    assert len(rejected) == len(HOSTILE) + 1
    for line, (name, payload) in zip(rejected, HOSTILE, strict=False):
        assert line["topic"] == LOC.format("truck-1"), name
        assert isinstance(line["reason"], str) and line["reason"] and "\n" not in line["reason"]
        kept = base64.b64decode(str(line["payload_b64"]))
        assert payload.startswith(kept) and line["bytes"] == len(payload), name
    assert [f.record.seq for f in read_fixes(collector.lake, "truck-1")] == [7]


def test_topics_outside_the_layout_are_not_taken_for_a_thing() -> None:
    assert thing_of("dt/tracker/truck-1/location", "dt/tracker") == ("truck-1", "location")
    assert thing_of("dt/tracker/truck-1/condition", "dt/tracker") == ("truck-1", "condition")
    assert thing_of("dt/tracker/../location", "dt/tracker") is None
    assert thing_of("dt/tracker/a b/location", "dt/tracker") is None
    assert thing_of("dt/tracker/t/shadow", "dt/tracker") is None
    assert thing_of("other/t/location", "dt/tracker") is None


def _config(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


GOOD = (
    '[aws]\nendpoint = "localhost"\ncert = "c.pem"\nkey = "k.pem"\nca = "ca.pem"\n'
    '[collect]\nlake = "{lake}"\n'
)


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        (GOOD.replace('endpoint = "localhost"\n', ""), "missing key [aws] endpoint"),
        (GOOD.replace('lake = "{lake}"\n', ""), "missing key [collect] lake"),
        (GOOD + "port = 0\n", None),  # [collect] port: unknown key
        (GOOD.replace("[aws]\n", "[aws]\nport = 0\n"), "[aws] port = 0 is out of range"),
        (GOOD + 'client_id = "a/b"\n', "[collect] client_id 'a/b' is invalid"),
        (GOOD + 'topic_prefix = "dt/+"\n', "[collect] topic_prefix 'dt/+' is invalid"),
        (GOOD + "[device]\n", "unknown section [device]"),
        ("[aws\n", "is not valid TOML"),
        (GOOD.replace("[aws]\n", "[aws]\nsession_expiry_s = 0\n"), "session_expiry_s = 0"),
    ],
)
def test_config_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, wanted: str | None
) -> None:
    cfg = _config(tmp_path, text.replace("{lake}", str(tmp_path / "lake")))
    assert cli.main(["collect", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("tracker: error: ")
    assert wanted is None or wanted in err, err
    assert not (tmp_path / "lake").exists()


def test_missing_config_and_unwritable_lake_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["collect", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "not found; pass --config FILE" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = _config(tmp_path, GOOD.replace("{lake}", str(blocker / "lake")))
    assert cli.main(["collect", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot write the lake folder" in err


def test_a_second_collector_on_the_same_lake_is_refused(
    collector: Collector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["collect", "--config", str(collector.config)]) == 2
    assert "another collector is writing the lake" in capsys.readouterr().err
