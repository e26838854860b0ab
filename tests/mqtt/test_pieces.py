"""Unit tests of the pure pieces: payload encoding, batching, watermarks, URLs, topics, schemas."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclerctl.errors import ConfigError
from cyclerctl.mqtt import payloads, schemas
from cyclerctl.mqtt.client import parse_url
from cyclerctl.mqtt.outbox import Watermark
from cyclerctl.mqtt.topics import Topics, topic_id

COLUMNS = ["ch", "seq", "test_time_second", "voltage_volt", "current_ampere", "cycle_count", "step_count",
           "step_id"]


def rows_from_steps(steps: list[int]) -> list[tuple]:
    return [("a1", i, 0.1 * i, 0.5, -1e-4 if s % 2 else 1e-4, 1 + s // 2, s, 1 + s % 2)
            for i, s in enumerate(steps)]


def test_dumps_writes_null_for_nan_and_infinity():
    body = payloads.dumps({"a": float("nan"), "b": [1.0, float("inf"), None], "c": {"d": -float("inf")}})
    assert json.loads(body) == {"a": None, "b": [1.0, None, None], "c": {"d": None}}
    assert b"NaN" not in body and b"Infinity" not in body


@settings(deadline=None, max_examples=10)
@given(st.lists(st.integers(min_value=1, max_value=450), min_size=1, max_size=12))
def test_batches_cover_every_sample_once_never_span_a_step_and_hold_at_most_200(step_lengths):
    steps = [k + 1 for k, n in enumerate(step_lengths) for _ in range(n)]
    rows = rows_from_steps(steps)
    covered = []
    for lo, hi, body in payloads.encode_batches("run", "a1", 7, COLUMNS, rows):
        batch = json.loads(body)
        assert schemas.errors("data", batch) == []
        assert batch["seq"] == lo and batch["seq"] + batch["n"] - 1 == hi and 1 <= batch["n"] <= 200
        assert {steps[s] for s in range(lo, hi + 1)} == {batch["step_count"]}
        covered += range(lo, hi + 1)
    assert covered == list(range(len(rows)))


def test_a_column_null_throughout_a_batch_is_left_out():
    rows = [("a1", i, 0.1 * i, None, 1e-4, 1, 1, 1) for i in range(5)]
    (_, _, body), = payloads.encode_batches("run", "a1", 1, COLUMNS, rows)
    assert set(json.loads(body)["cols"]) == {"test_time_second", "current_ampere"}


def test_watermark_advances_only_over_contiguous_acks():
    wm = Watermark()
    wm.ack(10, 19)
    wm.ack(30, 39)
    assert wm.through == -1 and wm.missing(45) == [(0, 9), (20, 29), (40, 45)]
    wm.ack(0, 9)
    assert wm.through == 19
    wm.ack(20, 29)
    assert wm.through == 39 and wm.above == [] and wm.missing(39) == []
    wm.ack(5, 15)  # an old duplicate changes nothing
    assert wm.through == 39


@pytest.mark.parametrize("url, host, port, user, tls, v5", [
    ("mqtt://127.0.0.1", "127.0.0.1", 1883, None, False, True),
    ("mqtt://op%40lab:p%3Ass@broker.lab:1884", "broker.lab", 1884, "op@lab", False, True),
    ("mqtts://node:pw@broker.lab?ca=/etc/ca.crt", "broker.lab", 8883, "node", True, True),
    ("mqtt://127.0.0.1:5000?protocol=3.1.1", "127.0.0.1", 5000, None, False, False),
])
def test_broker_urls(url, host, port, user, tls, v5):
    a = parse_url(url)
    assert (a.host, a.port, a.username, a.tls, a.v5) == (host, port, user, tls, v5)
    assert "p:ss" not in a.url() and a.authenticated == bool(user)


@pytest.mark.parametrize("url, words", [
    ("http://broker", "unknown scheme"), ("mqtt://", "no host"), ("mqtt://h:99999", "bad broker URL"),
    ("mqtt://h?protocol=4", "protocol"), ("mqtt://h?qos=2", "unknown option"), ("mqtt://h?ca=x", "mqtts"),
])
def test_bad_broker_urls_say_what_to_fix(url, words):
    with pytest.raises(ConfigError, match=words):
        parse_url(url)


def test_topic_tree_and_command_topics():
    t = Topics("rack-1")
    assert t.data("Ch_01") == "cycler/v1/rack-1/ch/ch-01/data" and topic_id("A07") == "a07"
    assert t.metric_latest("a1", "gitt") == "cycler/v1/rack-1/ch/a1/metric/gitt/latest"
    assert t.parse_command("cycler/v1/rack-1/ch/a1/cmd/pause") == ("a1", "pause")
    assert t.parse_command("cycler/v1/rack-1/cmd/replay") == (None, "replay")
    assert t.parse_command("cycler/v1/rack-2/cmd/replay") is None
    with pytest.raises(ConfigError, match="node name"):
        Topics("Rack 1")


def test_every_schema_is_valid_and_topics_map_to_them():
    for name in schemas.NAMES:
        assert schemas.validator(name) is not None
    assert schemas.kind_of_topic("ch/a1/replay") == "data"
    assert schemas.kind_of_topic("ch/a1/metric/cycle/latest") == "metric"
    assert schemas.kind_of_topic("ch/a1/cmd/pause") == "command"
    assert schemas.kind_of_topic("ch/a1/unknown") is None


def test_every_example_in_the_mqtt_reference_validates():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
    examples = re.findall(r"<!-- schema: (\w+) -->\s*```json\n(.*?)```", text, re.S)
    assert {name for name, _ in examples} == set(schemas.NAMES)
    for name, body in examples:
        assert schemas.errors(name, json.loads(body)) == [], (name, body)
