"""`shelfscout fleet` against a real broker: the carts' own MqttLinks publish their retained status and model state,
and the operator's one-screen view reads them back, problems first, with an exit code a monitor can use."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import ModelRef, OtaState, StatusInfo, model_state_payload
from edge.topics import Topics
from tests.mosquitto import Mosquitto
from tests.test_mqtt import make_cfg

V6 = ModelRef("shelfgap-default", 6)


@contextmanager
def cart(tmp_path: Path, url: str, device: str, ota: OtaState) -> Iterator[MqttLink]:
    """A cart's real MQTT link (its own outbox), connected, with its `model/state` published."""
    cfg = make_cfg(tmp_path / device, url, device=device)
    topics = Topics.from_config(cfg)
    link = MqttLink(cfg, topics, Outbox(cfg.outbox.path), status=lambda: StatusInfo("online", None, V6))
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.publish_model_state(model_state_payload(V6, ota, topics, time.time()))
        yield link
    finally:
        link.stop()
        link.outbox.close()


def fleet(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "fleet", "--broker", url, "--wait", "1", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_fleet_view_lists_every_cart_problems_first_and_exits_3_while_one_has_trouble(
        broker: Mosquitto, tmp_path: Path) -> None:
    bad = OtaState("rolled_back", 7, "probation-garbage: gaps over 60% of the picture", time.time(), "probation")
    with cart(tmp_path, broker.url, "cart-01", OtaState("active", 6)), \
            cart(tmp_path, broker.url, "cart-02", bad) as two, \
            cart(tmp_path, broker.url, "cart-03", OtaState("idle")) as three:
        two.set_status("degraded", "camera /dev/video0: read failed (unplugged or stalled)")
        three.stop()  # a clean stop: retained `offline`, "stopped"
        time.sleep(0.5)
        r = fleet(broker.url, "--json")
        assert r.returncode == 3, r.stderr
        got = json.loads(r.stdout)
        assert [(c["device"], c["state"]) for c in got["carts"]] == [
            ("cart-03", "offline"), ("cart-02", "degraded"), ("cart-01", "online")]
        two_row = got["carts"][1]
        assert two_row["reason"] == "camera /dev/video0: read failed (unplugged or stalled)"
        assert (two_row["model"], two_row["ota_state"], two_row["ota_version"]) == ("shelfgap-default v6",
                                                                                   "rolled_back", 7)
        assert two_row["ota_error"].startswith("probation-garbage: ")
        assert got["carts"][0]["reason"] == "stopped" and not got["healthy"]
        assert got["summary"] == ("3 cart(s): 1 offline, 1 degraded, 1 online; models: shelfgap-default v6 on 3; "
                                  "1 with a failed or rolled-back update")
        table = fleet(broker.url)
        assert table.returncode == 3
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["CART", "STATE", "FOR", "MODEL", "OTA", "REASON"]
        assert [line.split()[:2] for line in lines[1:4]] == [
            ["s042/cart-03", "offline"], ["s042/cart-02", "degraded"], ["s042/cart-01", "online"]]
        assert "rolled_back v7: probation-garbage: gaps over 60% of the picture" in lines[2]
        assert lines[2].endswith("camera /dev/video0: read failed (unplugged or stalled)")
        assert lines[-1] == got["summary"]
        # the trouble is fixed and the stopped cart retired (its retained status cleared): all well, exit 0
        two.set_status("online")
        retire = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
        retire.connect("127.0.0.1", broker.port)
        retire.loop_start()
        for topic in ("status", "model/state"):
            retire.publish(f"shelfscout/s042/cart-03/{topic}", b"", qos=1, retain=True).wait_for_publish(10)
        retire.publish("shelfscout/s042/cart-02/model/state", json.dumps(model_state_payload(
            V6, OtaState("active", 6), Topics("shelfscout", "s042", "cart-02"), time.time())).encode(), qos=1,
            retain=True).wait_for_publish(10)
        retire.disconnect()
        retire.loop_stop()
        time.sleep(0.5)
        well = fleet(broker.url, "--store", "s042")
        assert well.returncode == 0, well.stdout + well.stderr
        assert well.stdout.splitlines()[-1] == "2 cart(s): 2 online; models: shelfgap-default v6 on 2"


def test_a_broker_that_cannot_be_reached_is_exit_1_with_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = fleet(f"mqtt://127.0.0.1:{port}")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"shelfscout fleet: could not connect to mqtt://127.0.0.1:{port} within 10 s: ")


def test_no_cart_under_the_prefix_is_not_a_healthy_fleet(broker: Mosquitto) -> None:
    r = fleet(broker.url, "--prefix", "elsewhere")
    assert r.returncode == 3 and r.stdout == "no carts (no retained status under this prefix)\n"


def test_stats_add_each_carts_pace_queue_and_temperature_and_a_last_will_shows_as_offline() -> None:
    """The `--stats` columns from real `stats` payloads (listening a whole stats period is left to the CLI), and a
    cart that vanished: its last will, `offline` "connection lost", made when its connection began."""
    from edge.fleet import Fleet, render
    from edge.payloads import StatsInfo, encode, stats_payload, status_payload

    t = Topics("shelfscout", "s042", "cart-01")
    gone = Topics("shelfscout", "s042", "cart-09")
    now = time.time()
    f = Fleet()
    f.handle(t.status, encode(status_payload(StatusInfo("online", None, V6), t, now - 30)))
    f.handle(t.stats, encode(stats_payload(StatsInfo(14.96, 3, 7.1, 9.8, 12, 0, V6, 3600.0, 61.2), t, now)))
    f.handle(gone.status, encode(status_payload(StatusInfo("offline", "connection lost", V6), gone, now - 7200)))
    f.handle(gone.stats, b"not json")
    lines = render(f.rows(), now, stats=True).splitlines()
    assert lines[0].split() == ["CART", "STATE", "FOR", "MODEL", "OTA", "FPS", "OUTBOX", "TEMP", "REASON"]
    assert lines[1].split() == ["s042/cart-09", "offline", "2", "h", "shelfgap-default", "v6", "-", "-", "-", "-",
                                "connection", "lost"]
    assert lines[2].split() == ["s042/cart-01", "online", "30", "s", "shelfgap-default", "v6", "-", "15.0", "12",
                                "61C"]
    assert f.invalid == 1 and not f.healthy()
