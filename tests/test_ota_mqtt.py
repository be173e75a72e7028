"""OTA over a real broker: a retained release reaches the device's MqttLink, the updater installs it, and the
retained `model/state` (schema-valid) says so. Measures publish → new model active."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from convert.release import publish_release
from edge.config import MqttConfig, OutboxConfig
from edge.topics import release_topic
from tests.mosquitto import Mosquitto, first_messages
from tests.schema_check import validate
from tests.test_ota_support import Device, tiny_models, wait_for


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


def _retained_state(port: int, topic: str) -> dict[str, Any] | None:
    got = first_messages(port, topic)
    return json.loads(got[-1]) if got else None


@pytest.mark.parametrize("prefix", ["shelfscout", "acme/retail"])
def test_retained_release_over_mqtt_installs_and_reports(tmp_path: Path, models: dict[str, bytes],
                                                         broker: Mosquitto, prefix: str) -> None:
    """Also under another `mqtt.topic_prefix`: the release topics followed it (`shelfscout publish --prefix`), but
    the cart kept listening under `shelfscout/`, so such a fleet never got an update."""
    from edge.mqtt import MqttLink
    from edge.outbox import Outbox
    from edge.payloads import ModelRef, OtaState, model_state_payload
    from edge.topics import Topics

    dev = Device(tmp_path, models)
    dev.install(1)
    cfg = dev.cfg.replace(mqtt=dataclasses.replace(MqttConfig(), url=broker.url, topic_prefix=prefix),
                          outbox=dataclasses.replace(OutboxConfig(), path=str(tmp_path / "outbox.db")))
    topics = Topics.from_config(cfg)
    outbox = Outbox(tmp_path / "outbox.db")
    holder: dict[str, Any] = {}

    def report(r: dict[str, Any]) -> None:
        dev.reports.append(r)
        m, o = r["model"], r["ota"]
        payload = model_state_payload(ModelRef(m["name"], m["version"]) if m else None,
                                      OtaState(o["state"], o["version"], o["error"], time.time()), topics,
                                      time.time())
        if "link" in holder:
            holder["link"].publish_model_state(payload)

    from edge.ota.updater import Updater

    up = Updater(cfg, report=report, swap=dev.swaps.append)
    assert up.active_bundle_path().name.startswith("v1-")
    rel = dev.release(dev.bundle(2))
    t_publish = time.monotonic()
    publish_release(rel, broker.url, release_topic(None, prefix))  # retained, before the device connects
    link = MqttLink(cfg, topics, outbox, on_release=up.on_release)
    holder["link"] = link
    stop = threading.Event()

    def frames() -> None:  # the pipeline: one frame every 10 ms feeds probation
        while not stop.is_set():
            up.observe_frame(3.0, True)
            time.sleep(0.01)

    feeder = threading.Thread(target=frames, daemon=True)
    try:
        link.start()
        up.start()
        feeder.start()
        assert wait_for(lambda: dev.states() and dev.states()[-1] == "active" and dev.current().startswith("v2-"),
                        timeout=30)
        dt = time.monotonic() - t_publish
        assert dev.swaps == [dev.models_dir / dev.current()]
        assert wait_for(lambda: (_retained_state(broker.port, topics.model_state) or {}).get("ota", {})
                        .get("state") == "active", timeout=10)
        state = validate("model_state", _retained_state(broker.port, topics.model_state))
        assert state["model"]["version"] == 2 and state["ota"]["version"] == 2 and state["ota"]["error"] is None
        print(f"\nretained release published -> v2 active over MQTT (incl. connect, download, smoke child, "
              f"5-frame probation at 100 fps): {dt:.2f} s")
        # the retained release is delivered again on reconnect: nothing is redone
        n = len(dev.reports)
        link.stop()
        delivered: list[str] = []

        def on_release(topic: str, payload: bytes) -> None:
            delivered.append(topic)
            up.on_release(topic, payload)

        link = MqttLink(cfg, topics, outbox, on_release=on_release)
        holder["link"] = link
        link.start()
        assert link.wait_connected(10)
        assert wait_for(lambda: bool(delivered), timeout=10), "the retained release was not delivered again"
        # the updater handles releases one by one on its own thread: once a malformed one sent after the repeat
        # is reported, the repeat has been handled, and it reported nothing
        up.on_release(release_topic(None, prefix), b"not a release")
        assert wait_for(lambda: len(dev.reports) > n, timeout=10)
        assert [r["ota"]["state"] for r in dev.reports[n:]] == ["rejected"]
    finally:
        stop.set()
        up.stop()
        link.stop()
        outbox.close()
