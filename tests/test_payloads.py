"""Payload builders, topics and the published contract files (JSON Schemas, AsyncAPI) agree with each other."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import yaml

from edge.config import OtaConfig
from edge.outbox import OutMessage
from edge.payloads import (
    KINDS,
    ModelRef,
    OtaState,
    StatsInfo,
    StatusInfo,
    alert_messages,
    alert_payload,
    command_reply_payload,
    decode,
    encode,
    event_id,
    model_state_payload,
    read_cpu_temp_c,
    rfc3339,
    schema_path,
    stats_payload,
    status_payload,
)
from edge.topics import Topics, parse_topic, release_topic, subscriber_filters
from edge.types import AlertEvent, Location
from tests.schema_check import validate

ROOT = Path(__file__).resolve().parents[1]
T = Topics("shelfscout", "s042", "cart-07")
MODEL = ModelRef("shelfgap", 3, "ab" * 32)


def _jpeg() -> bytes:
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(img, (10, 10), (40, 30), (0, 0, 255), 2)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _event(kind: str = "opened", jpeg: bytes | None = None, aisle: str | None = "7") -> AlertEvent:
    return AlertEvent(alert_id="s042-cart-07-000012", event=kind, first_seen=1_790_000_000.25,
                      last_seen=1_790_000_003.5, ts=1_790_000_004.0, bbox_norm=(0.1, 0.2, 0.35, 0.5),
                      confidence=0.87, frames=9, frame_index=412,
                      location=Location(aisle, 3.25 if aisle else None, "aruco" if aisle else "odometry"),
                      snapshot_jpeg=jpeg)


def test_schemas_are_valid_draft_2020_12() -> None:
    for kind in KINDS:
        schema = json.loads(schema_path(kind).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_alert_opened_and_cleared_share_id_and_have_distinct_event_ids() -> None:
    jpeg = _jpeg()
    opened = validate("alert", encode(alert_payload(_event("opened", jpeg), T, MODEL)))
    cleared = validate("alert", encode(alert_payload(_event("cleared", None, aisle=None), T, MODEL)))
    assert opened["id"] == cleared["id"] == "s042-cart-07-000012"
    assert (opened["event_id"], cleared["event_id"]) == (event_id(opened["id"], "opened"),
                                                         event_id(opened["id"], "cleared"))
    assert opened["snapshot"] == {"topic": "shelfscout/s042/cart-07/snapshots/s042-cart-07-000012",
                                  "bytes": len(jpeg), "sha256": hashlib.sha256(jpeg).hexdigest()}
    assert cleared["snapshot"] is None
    assert opened["ts"] == rfc3339(1_790_000_004.0) and opened["ts"].endswith("Z")
    assert opened["first_seen"] == "2026-09-21T14:13:20.250Z"
    assert opened["frame"] == 412 and opened["frames"] == 9
    assert opened["location"] == {"aisle": "7", "offset_m": 3.25, "source": "aruco"}
    assert opened["model"] == {"name": "shelfgap", "version": 3}
    assert opened["bbox"] == [0.1, 0.2, 0.35, 0.5]


def test_alert_messages_put_alert_and_snapshot_and_resend_identically() -> None:
    jpeg = _jpeg()
    msgs = alert_messages(_event("opened", jpeg), T, MODEL)
    assert [m.topic for m in msgs] == [T.alerts, T.snapshot("s042-cart-07-000012")]
    assert all(m.qos == 1 and not m.retain for m in msgs)
    assert msgs[1].payload == jpeg
    assert cv2.imdecode(np.frombuffer(msgs[1].payload, np.uint8), cv2.IMREAD_COLOR) is not None
    assert alert_messages(_event("opened", jpeg), T, MODEL) == msgs  # deterministic bytes
    assert len(alert_messages(_event("cleared"), T, MODEL)) == 1


def test_a_duplicate_s_cleared_names_the_alert_that_stays_open() -> None:
    """Only a `cleared` that closes an alert opened twice for one gap carries `duplicate_of`; every other event is
    as before (no new key)."""
    plain = alert_payload(_event("cleared"), T, MODEL)
    assert "duplicate_of" not in plain
    dup = alert_payload(dataclasses.replace(_event("cleared"), duplicate_of="s042-cart-07-000003"), T, MODEL)
    assert dup["duplicate_of"] == "s042-cart-07-000003" and validate("alert", dup) == dup  # strict: the schema declares it
    assert {k: v for k, v in dup.items() if k != "duplicate_of"} == plain


def test_bad_alert_input_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        alert_payload(_event("updated"), T, MODEL)
    ev = _event()
    ev.alert_id = "a/b"
    with pytest.raises(ValueError):
        alert_payload(AlertEvent(**{**ev.__dict__, "snapshot_jpeg": b"x"}), T, MODEL)
    with pytest.raises(ValueError):
        OutMessage("shelfscout/+/x", b"")


def test_broken_payloads_fail_the_schema() -> None:
    good = alert_payload(_event("opened", _jpeg()), T, MODEL)
    for mutate in (lambda p: p.pop("frame"), lambda p: p.update(event="new"), lambda p: p.update(ts="yesterday"),
                   lambda p: p.update(bbox=[0.1, 0.2, 1.5, 0.4]), lambda p: p.update(extra=1)):
        bad = json.loads(encode(good))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate("alert", bad)


def test_a_consumer_using_the_shipped_schemas_accepts_a_field_added_within_the_version() -> None:
    """asyncapi's versioning rule: fields may be added within a version and consumers ignore them. A backend that
    validates with the shipped schemas must therefore accept one (the project's own tests stay strict)."""
    p = json.loads(encode(alert_payload(_event("opened", _jpeg()), T, MODEL)))
    p["heading_deg"] = 12.5
    p["model"]["family"] = "centernet"
    assert validate("alert", p, shipped=True) == p
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        validate("alert", p)
    del p["model"]["family"]
    with pytest.raises(jsonschema.ValidationError, match="heading_deg"):
        validate("alert", p)


def test_status_stats_model_state_and_replies_validate(tmp_path: Path) -> None:
    validate("status", status_payload(StatusInfo("online", None, MODEL), T, 1_790_000_000.0))
    validate("status", status_payload(StatusInfo("degraded", "camera: no frames"), T, 1_790_000_000.0,
                                      outbox_quarantined="/var/lib/shelfscout/outbox.db.corrupt-x"))
    with pytest.raises(ValueError):
        StatusInfo("sleeping")
    s = validate("stats", stats_payload(StatsInfo(14.93, 3, 11.2, 15.75, 2, 0, MODEL, 3600.2, None), T, 1e9))
    assert s["inference_ms"] == {"p50": 11.2, "p95": 15.75} and s["cpu_temp_c"] is None
    validate("stats", stats_payload(StatsInfo(0.0, 0, None, None, 0, 0, None, 0.0, read_cpu_temp_c()), T, 1e9))
    validate("model_state", model_state_payload(MODEL, OtaState("idle"), T, 1e9))
    ms = validate("model_state", model_state_payload(
        MODEL, OtaState("rolled_back", 4, "p95 latency 80 ms > 50 ms", 1e9, "too-slow"), T, 1e9))
    assert ms["ota"] == {"state": "rolled_back", "version": 4, "error": "p95 latency 80 ms > 50 ms",
                         "code": "too-slow", "ts": "2001-09-09T01:46:40.000Z"}
    with pytest.raises(ValueError):
        OtaState("Rolled Back")
    ok = validate("command_reply", command_reply_payload("pause", 1e9, {"paused": True}))
    err = validate("command_reply", command_reply_payload("pause", 1e9, error="payload is not JSON"))
    assert ok["ok"] and not err["ok"] and err["result"] is None
    with pytest.raises(jsonschema.ValidationError):
        validate("command_reply", {**ok, "ok": False})  # not ok needs an error


def test_cpu_temperature_from_thermal_zones(tmp_path: Path) -> None:
    assert read_cpu_temp_c(tmp_path) is None
    for i, (kind, milli) in enumerate((("acpitz", "27800"), ("cpu-thermal", "51234"))):
        z = tmp_path / f"thermal_zone{i}"
        z.mkdir()
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(milli + "\n")
    assert read_cpu_temp_c(tmp_path) == pytest.approx(51.234)


def test_topics() -> None:
    assert T.status == "shelfscout/s042/cart-07/status"
    assert T.snapshot("a1") == "shelfscout/s042/cart-07/snapshots/a1"
    assert T.model_state == "shelfscout/s042/cart-07/model/state"
    assert T.cmd("pause") == "shelfscout/s042/cart-07/cmd/pause" and T.cmd_filter.endswith("/cmd/+")
    assert T.command_name(T.cmd("reload")) == "reload"
    assert T.command_name(T.cmd_reply(T.cmd("reload"))) is None
    assert T.release_topics(OtaConfig()) == ("shelfscout/fleet/model/release", "shelfscout/s042/model/release")
    assert release_topic("s042") == "shelfscout/s042/model/release"
    assert Topics("acme/eu/shelfscout", "s1", "d1").alerts == "acme/eu/shelfscout/s1/d1/alerts"
    assert subscriber_filters(store="s042")[1] == "shelfscout/s042/+/alerts"
    parts = parse_topic(T.snapshot("a1"))
    assert parts is not None and (parts.store, parts.device, parts.kind, parts.arg) == ("s042", "cart-07",
                                                                                          "snapshots", "a1")
    assert parse_topic("shelfscout/s042/model/release") is None
    for bad in (("shelfscout", "s/1", "d"), ("shelfscout", "s", "d#"), ("", "s", "d"), ("x/", "s", "d")):
        with pytest.raises(ValueError):
            Topics(*bad)


def test_asyncapi_describes_every_topic_and_references_the_schemas() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    addresses = {ch["address"] for ch in doc["channels"].values()}
    generic = Topics("{prefix}", "{store}", "{device}")
    expected = {generic.status, generic.alerts, generic.snapshot("{alertId}"), generic.stats, generic.model_state,
                generic.cmd("{command}"), generic.cmd_reply(generic.cmd("{command}")),
                *generic.release_topics(OtaConfig())}  # the config's default templates, as they are
    assert expected <= addresses, expected - addresses
    refs = set(re.findall(r"\$ref:\s*['\"]?([^'\"\s#]+\.json)", (ROOT / "docs" / "asyncapi.yaml").read_text()))
    for kind in KINDS:
        assert f"../edge/schemas/{kind}.json" in refs, kind
    for ref in refs:
        assert (ROOT / "docs" / ref).resolve().is_file(), ref
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")


def test_subscribers_read_a_payload_as_a_json_object_or_learn_why_not() -> None:
    """`shelfscout alerts` and `shelfscout fleet` read every message with `decode`: what they ignore and say."""
    assert decode(encode({"state": "online", "reason": "ü"})) == {"state": "online", "reason": "ü"}
    for payload, why in ((b"\xff\xfe", "not UTF-8"), (b"[1, 2]", "not a JSON object"), (b"not json", "Expecting value")):
        with pytest.raises(ValueError, match=why):
            decode(payload)
