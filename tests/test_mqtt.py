"""MqttLink against real brokers: delivery from the outbox, presence, broker outages, auth, TLS, commands, 3.1.1."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.broker import tls_context
from edge.config import Config, parse
from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import (
    ModelRef,
    OtaState,
    StatsInfo,
    StatusInfo,
    alert_messages,
    model_state_payload,
    stats_payload,
)
from edge.topics import Topics
from edge.types import AlertEvent, Location
from tests.mosquitto import Mosquitto, first_messages
from tests.pipes import killed_after
from tests.pki import make_pki
from tests.schema_check import ValidatingSubscriber, validate

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelRef("shelfgap", 2, "cd" * 32)
RUN_AS_ROOT = "user root\n"  # mosquitto started as root drops to user `mosquitto`, which cannot read tmp_path


def _jpeg(i: int) -> bytes:
    img = np.full((60, 80, 3), (i * 7) % 255, np.uint8)
    cv2.rectangle(img, (10, 10), (50, 40), (255, 0, 0), 2)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def make_event(i: int, kind: str = "opened") -> AlertEvent:
    now = time.time()
    return AlertEvent(alert_id=f"a{i:05d}", event=kind, first_seen=now - 2, last_seen=now, ts=now,
                      bbox_norm=(0.1, 0.2, 0.3, 0.4), confidence=0.9, frames=4, frame_index=i,
                      location=Location(None, 0.5 * i, "odometry"),
                      snapshot_jpeg=_jpeg(i) if kind == "opened" else None)


def make_cfg(tmp_path: Path, url: str, device: str = "cart-07", **mqtt: Any) -> Config:
    """Cart `device` of store s042 on the broker at `url`, its outbox in `tmp_path`; `mqtt`: more [mqtt] keys."""
    settings: dict[str, Any] = {"url": url, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 5}
    settings.update(mqtt)
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    text = (f'[device]\nid = "{device}"\nstore = "s042"\n[mqtt]\n' + "\n".join(lines) +
            f'\n[outbox]\npath = "{tmp_path / "outbox.db"}"\ninflight = 8\n')
    return parse(text, env={})


def persistent(workdir: Path) -> str:
    """Broker config so a backend's session (and its queued messages) survive a broker restart."""
    return f"{RUN_AS_ROOT}persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"


class Putter:
    """Puts alert events into the outbox from a thread, like the pipeline; records what was committed."""

    def __init__(self, outbox: Outbox, topics: Topics, start: int = 0, every_s: float = 0.02):
        self.outbox, self.topics, self.next, self.every_s = outbox, topics, start, every_s
        self.committed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def put(self, n: int) -> None:
        for _ in range(n):
            self._put_one()

    def _put_one(self) -> None:
        kind = "cleared" if self.next % 5 == 4 else "opened"
        ev = make_event(self.next, kind)
        self.outbox.put(alert_messages(ev, self.topics, MODEL))
        self.committed.append(f"{ev.alert_id}:{kind}")
        self.next += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._put_one()
            time.sleep(self.every_s)

    def start(self) -> Putter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def received_ids(sub: ValidatingSubscriber) -> list[str]:
    return [p["event_id"] for p in sub.json_on("/alerts")]


def check_delivery(sub: ValidatingSubscriber, committed: list[str], timeout: float = 30.0) -> int:
    """Every committed event arrives (at least once), valid, with its snapshot; returns the duplicate count."""
    want = set(committed)
    ok = sub.wait_for(lambda: want <= set(received_ids(sub)), timeout)
    missing = want - set(received_ids(sub))
    assert ok and not missing, f"{len(missing)} of {len(want)} committed alerts never arrived: {sorted(missing)[:5]}"
    assert not sub.invalid, sub.invalid[:3]
    by_event: dict[str, set[bytes]] = {}
    for m in sub.on("/alerts"):
        by_event.setdefault(json.loads(m.payload)["event_id"], set()).add(bytes(m.payload))
    assert all(len(v) == 1 for v in by_event.values()), "a resend differed from the original"
    snaps = {m.topic.rsplit("/", 1)[1]: bytes(m.payload) for m in sub.containing("/snapshots/")}
    for p in sub.json_on("/alerts"):
        if p["snapshot"] is not None:
            assert sub.wait_for(lambda p=p: p["id"] in {m.topic.rsplit("/", 1)[1]
                                                        for m in sub.containing("/snapshots/")}, 10), p["id"]
            snaps = {m.topic.rsplit("/", 1)[1]: bytes(m.payload) for m in sub.containing("/snapshots/")}
            assert hashlib.sha256(snaps[p["id"]]).hexdigest() == p["snapshot"]["sha256"]
    return len(received_ids(sub)) - len(by_event)


@pytest.fixture
def links() -> Iterator[Callable[..., MqttLink]]:
    """Makes MqttLinks and stops them (and closes their outboxes) after the test."""
    made: list[MqttLink] = []

    def make(cfg: Config, **kw: Any) -> MqttLink:
        ob = kw.pop("outbox", None) or Outbox(cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_bytes)
        link = MqttLink(cfg, Topics.from_config(cfg), ob, **kw)
        made.append(link)
        return link

    yield make
    for link in made:
        link.stop()
        link.outbox.close()


def _sub(url: str, topics: Topics, **kw: Any) -> ValidatingSubscriber:
    return ValidatingSubscriber(url, [f"{topics.base}/#"], **kw)


def test_delivers_outbox_with_presence_stats_and_clean_offline(broker: Mosquitto, tmp_path: Path,
                                                               links: Callable[..., MqttLink]) -> None:
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    sub = _sub(broker.url, t).start()
    link = links(cfg, status=lambda: StatusInfo("online", None, MODEL))
    link.start()
    assert link.wait_connected(10)
    assert link.protocol == "MQTT 5"  # protocol "auto" picks 5 when the broker speaks it
    putter = Putter(link.outbox, t)
    putter.put(30)
    assert check_delivery(sub, putter.committed) == 0
    assert link.wait_idle(10) and link.outbox.depth() == 0
    status = sub.json_on("/status")
    assert status[0]["state"] == "online" and status[0]["model"] == {"name": "shelfgap", "version": 2}
    assert link.publish_stats(stats_payload(StatsInfo(12.5, 4, 20.1, 31.0, link.outbox.depth(),
                                                      link.outbox.dropped(), MODEL, 12.0), t, time.time()))
    assert sub.wait_for(lambda: len(sub.on("/stats")) == 1, 10)
    link.stop()
    assert sub.wait_for(lambda: any(p["state"] == "offline" for p in sub.json_on("/status")), 10)
    assert sub.json_on("/status")[-1]["reason"] == "stopped"
    late = ValidatingSubscriber(broker.url, [t.status], client_id="late").start()
    assert late.wait_for(lambda: len(late.on("/status")) == 1, 10)
    assert late.on("/status")[0].retain and late.json_on("/status")[0]["state"] == "offline"
    assert not sub.invalid and not late.invalid
    late.stop()
    sub.stop()


def test_an_outbox_moved_from_memory_to_disk_while_sending_loses_nothing(
    broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    """An outbox that started in memory (a full disk at start; for real in test_disk_full) moves to disk while the
    link is sending, and renumbers its messages: the link drops the ids it read before, sends again from the start,
    and every committed alert arrives; none of the late PUBACKs deletes a message it does not name."""
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    sub = _sub(broker.url, t).start()
    outbox = Outbox(cfg.outbox.path, memory_reason="the disk was full at start")

    def status() -> StatusInfo:  # as the service says it
        return StatusInfo("degraded", "kept in memory", MODEL) if outbox.memory_reason else StatusInfo("online", None,
                                                                                                      MODEL)

    link = links(cfg, outbox=outbox, status=status)
    link.start()
    assert link.wait_connected(10)
    assert sub.wait_for(lambda: [s["state"] for s in sub.json_on("/status")] == ["degraded"], 10)
    putter = Putter(outbox, t, every_s=0.005).start()
    assert sub.wait_for(lambda: len(received_ids(sub)) >= 5, 10)  # sending
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # no PUBACK comes back meanwhile: what was sent stays in flight
    try:
        deadline = time.monotonic() + 10
        while link.info().inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.info().inflight > 0
        assert outbox.move_to_disk(force=True)  # with messages in flight, for sure
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    time.sleep(0.3)  # puts on the disk outbox too
    putter.stop()
    check_delivery(sub, putter.committed)
    assert link.wait_idle(15) and outbox.depth() == 0
    assert any("outbox moved to disk" in r.message for r in caplog.records)
    assert sub.json_on("/status")[-1]["state"] == "online"  # said at the move, not at the next stats tick
    with Outbox(cfg.outbox.path) as on_disk:  # nothing stranded in the file either
        assert on_disk.depth() == 0
    sub.stop()


def test_broker_down_at_start_then_everything_arrives(tmp_path: Path, links: Callable[..., MqttLink],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    b = Mosquitto(tmp_path / "broker", extra=persistent(tmp_path / "broker"))
    cfg = make_cfg(tmp_path, b.url)
    t = Topics.from_config(cfg)
    b.start()
    _sub(b.url, t, client_id="backend", persistent=True).start().stop()  # the backend's session exists
    b.stop()
    try:
        link = links(cfg)
        link.start()  # returns at once although nothing listens
        putter = Putter(link.outbox, t)
        putter.put(20)
        link.publish_model_state(model_state_payload(MODEL, OtaState("idle"), t, time.time()))
        deadline = time.monotonic() + 15
        while link.info().connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not link.connected and link.info().connect_failures >= 2
        assert "Connection refused" in (link.info().last_error or "")
        assert any("cannot connect to MQTT broker" in r.message and "Connection refused" in r.message
                   for r in caplog.records)
        assert link.outbox.depth() == 36  # 20 alerts and the snapshots of the 16 opened ones, all held
        b.start()
        sub = _sub(b.url, t, client_id="backend", persistent=True).start()
        check_delivery(sub, putter.committed)
        assert sub.wait_for(lambda: len(sub.on("/model/state")) >= 1, 10)  # retained state set while offline
        assert link.wait_idle(10)
        sub.stop()
    finally:
        b.stop()


def test_five_broker_restarts_while_putting_lose_nothing(tmp_path: Path, links: Callable[..., MqttLink],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    b = Mosquitto(tmp_path / "broker", extra=persistent(tmp_path / "broker")).start()
    try:
        cfg = make_cfg(tmp_path, b.url)
        t = Topics.from_config(cfg)
        sub = _sub(b.url, t, client_id="backend", persistent=True).start()
        link = links(cfg)
        link.start()
        assert link.wait_connected(10)
        putter = Putter(link.outbox, t, every_s=0.01).start()
        for _ in range(5):
            connects = link.info().connects
            time.sleep(0.4)
            # SIGTERM, so mosquitto keeps what it already acknowledged (it saves the backend's session): what is
            # under test is the device. To the device a terminated broker and a killed one look the same: the
            # connection drops. The next test kills a frozen broker.
            b.stop()
            time.sleep(0.4)
            b.start()
            # each restart is reconnected to before the next one (not left to the backoff's timing)
            deadline = time.monotonic() + 20
            while link.info().connects <= connects and time.monotonic() < deadline:
                time.sleep(0.05)
            assert link.info().connects > connects, link.info()
        time.sleep(0.5)
        putter.stop()
        dups = check_delivery(sub, putter.committed, timeout=40)
        assert link.wait_idle(15)
        assert link.info().connects >= 6
        print(f"{len(putter.committed)} alert events committed across 5 broker restarts, all delivered, "
              f"{dups} duplicates (same bytes), {link.info().connects} connects")
        sub.stop()
    finally:
        b.stop()


def test_unacknowledged_messages_are_resent_with_the_same_bytes(tmp_path: Path,
                                                                 links: Callable[..., MqttLink]) -> None:
    """Freeze the broker (SIGSTOP) so nothing is acknowledged, then kill it: the in-flight messages were never
    processed, so only the device re-sending them after the reconnect gets them to the backend."""
    b = Mosquitto(tmp_path / "broker", extra=persistent(tmp_path / "broker")).start()
    try:
        cfg = make_cfg(tmp_path, b.url)
        t = Topics.from_config(cfg)
        sub = _sub(b.url, t, client_id="backend", persistent=True).start()
        link = links(cfg)
        link.start()
        assert link.wait_connected(10)
        putter = Putter(link.outbox, t)
        putter.put(3)
        assert link.wait_idle(10)
        assert b.proc is not None
        db = tmp_path / "broker" / "mosquitto.db"
        saved = db.stat().st_mtime_ns if db.exists() else 0
        os.kill(b.proc.pid, signal.SIGUSR1)  # mosquitto writes its persistence file: the backend's session
        deadline = time.monotonic() + 10
        while (not db.exists() or db.stat().st_mtime_ns == saved) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(b.proc.pid, signal.SIGSTOP)
        putter.put(12)
        deadline = time.monotonic() + 10
        while link.info().inflight < cfg.outbox.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.info().inflight == cfg.outbox.inflight  # published, none acknowledged: the window is full
        assert link.outbox.depth() >= 12
        before = len(received_ids(sub))
        b.kill()
        b.start()
        check_delivery(sub, putter.committed)
        assert len(received_ids(sub)) > before
        assert link.wait_idle(10)
        sub.stop()
    finally:
        if b.proc is not None:
            os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()


def test_unauthorised_is_logged_retried_and_nothing_lost(tmp_path: Path, links: Callable[..., MqttLink],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    wd = tmp_path / "broker"
    b = Mosquitto(wd, extra=persistent(wd))
    pw = wd / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "backend", "backend-pw"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "cart", "old-secret"], check=True)
    b.listener_block = f"listener {b.port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
    b.start()
    try:
        (tmp_path / "mqtt-password").write_text("new-secret\n")
        cfg = make_cfg(tmp_path, b.url, username="cart", password_file=str(tmp_path / "mqtt-password"))
        t = Topics.from_config(cfg)
        sub = _sub(b.url, t, client_id="backend", persistent=True, username="backend", password="backend-pw").start()
        link = links(cfg)
        link.start()
        putter = Putter(link.outbox, t)
        putter.put(10)
        deadline = time.monotonic() + 15
        while link.info().connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not link.connected and link.info().connect_failures >= 2
        refusals = [r.message for r in caplog.records if "refused the connection" in r.message]
        assert refusals and ("Not authorized" in refusals[0] or "Bad user name or password" in refusals[0])
        assert link.outbox.depth() > 0
        # The operator fixes the broker's password file and restarts the broker.
        subprocess.run(["mosquitto_passwd", "-b", str(pw), "cart", "new-secret"], check=True)
        b.stop()
        b.start()
        assert link.wait_connected(15)
        check_delivery(sub, putter.committed)
        assert link.wait_idle(10)
        sub.stop()
    finally:
        b.stop()


def test_acl_refused_alerts_are_kept_reported_and_retried(tmp_path: Path, links: Callable[..., MqttLink],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    acl = tmp_path / "acl"
    allow = ("topic readwrite shelfscout/s042/cart-07/status\ntopic readwrite shelfscout/s042/cart-07/cmd/#\n"
             "topic read shelfscout/#\n")
    acl.write_text(allow)
    b = Mosquitto(tmp_path / "broker", extra=f"{RUN_AS_ROOT}acl_file {acl}\n").start()
    try:
        cfg = make_cfg(tmp_path, b.url)
        t = Topics.from_config(cfg)
        sub = _sub(b.url, t).start()
        link = links(cfg)
        link.start()
        putter = Putter(link.outbox, t)
        putter.put(3)
        assert sub.wait_for(lambda: any(p["state"] == "degraded" for p in sub.json_on("/status")), 10)
        st = [p for p in sub.json_on("/status") if p["state"] == "degraded"][0]
        assert "refused" in st["reason"] and "Not authorized" in st["reason"]
        assert any("broker refused outbox message" in r.message for r in caplog.records)
        assert link.outbox.depth() == 6 and received_ids(sub) == []  # nothing lost, nothing delivered yet
        acl.write_text(allow + "topic readwrite shelfscout/s042/cart-07/#\n")  # the operator fixes the ACL
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGHUP)
        check_delivery(sub, putter.committed)
        assert link.wait_idle(10)
        assert sub.wait_for(lambda: sub.json_on("/status")[-1]["state"] == "online", 10)
        sub.stop()
    finally:
        b.stop()


def test_tls_with_ca_and_client_certificate(tmp_path: Path, links: Callable[..., MqttLink],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    pki = make_pki(tmp_path / "pki")
    b = Mosquitto(tmp_path / "broker", extra=RUN_AS_ROOT)
    b.listener_block = (f"listener {b.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server}\n"
                        f"keyfile {pki.server_key}\nrequire_certificate true\nuse_identity_as_username true\n"
                        "allow_anonymous false\n")
    b.start()
    try:
        url = f"mqtts://127.0.0.1:{b.port}"
        cfg = make_cfg(tmp_path, url, ca_file=str(pki.ca), cert_file=str(pki.client),
                       key_file=str(pki.client_key))
        t = Topics.from_config(cfg)
        sub = _sub(f"mqtt://127.0.0.1:{b.port}", t, client_id="backend",
                   tls=tls_context(str(pki.ca), str(pki.backend), str(pki.backend_key))).start()
        link = links(cfg)
        link.start()
        assert link.wait_connected(10)
        putter = Putter(link.outbox, t)
        putter.put(10)
        check_delivery(sub, putter.committed)

        # A device that trusts another CA refuses the broker, says why, and keeps its messages.
        (tmp_path / "bad").mkdir()
        bad_cfg = dataclasses.replace(make_cfg(tmp_path / "bad", url, ca_file=str(pki.other_ca),
                                               cert_file=str(pki.client), key_file=str(pki.client_key)),
                                      device=dataclasses.replace(cfg.device, id="cart-08"))
        bad = links(bad_cfg)
        bad.start()
        deadline = time.monotonic() + 10
        while bad.info().connect_failures < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not bad.connected
        assert "certificate verify failed" in (bad.info().last_error or "").lower().replace("_", " ")
        sub.stop()
    finally:
        b.stop()


WILL_CHILD = r"""
import sys, time
from edge.config import parse
from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.topics import Topics
from tests.test_mqtt import MODEL, Putter, make_cfg
from pathlib import Path
cfg = make_cfg(Path(sys.argv[1]), sys.argv[2])
t = Topics.from_config(cfg)
ob = Outbox(cfg.outbox.path)
link = MqttLink(cfg, t, ob)
link.start()
link.wait_connected(10)
p = Putter(ob, t)
while True:
    p.put(1)
    print(p.committed[-1], flush=True)
    time.sleep(0.01)
"""


def test_sigkilled_client_leaves_retained_offline_will_and_resends_after_restart(
        broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink]) -> None:
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    sub = _sub(broker.url, t).start()
    proc = subprocess.Popen([sys.executable, "-c", WILL_CHILD, str(tmp_path), broker.url], stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    committed: list[str] = []
    assert proc.stdout is not None
    try:
        with killed_after(proc, 120):
            while len(committed) < 60:
                line = proc.stdout.readline()
                assert line, "the device process died"
                committed.append(line.decode().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert sub.wait_for(lambda: any(p["state"] == "offline" for p in sub.json_on("/status")), 10)
    will = sub.json_on("/status")[-1]
    assert will["state"] == "offline" and will["reason"] == "connection lost"
    late = ValidatingSubscriber(broker.url, [t.status], client_id="late").start()
    assert late.wait_for(lambda: len(late.on("/status")) == 1, 10)
    assert late.on("/status")[0].retain and late.json_on("/status")[0]["state"] == "offline"
    late.stop()
    # The service comes back on the same outbox: whatever was not acknowledged goes out again, same ids.
    link = links(cfg)
    link.start()
    check_delivery(sub, committed)
    assert link.wait_idle(10)
    assert sub.wait_for(lambda: sub.json_on("/status")[-1]["state"] == "online", 10)
    sub.stop()


def _request(url: str, topic: str, payload: bytes, corr: bytes | None, response_topic: str | None,
             retain: bool = False, client: Any = None) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic:
        props.ResponseTopic = response_topic
    if corr is not None:
        props.CorrelationData = corr
    client.publish(topic, payload, qos=1, retain=retain, properties=props).wait_for_publish(5)


def test_commands_reply_on_mqtt5_response_topic_and_survive_bad_payloads(
        broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink]) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def on_command(name: str, args: dict[str, Any]) -> dict[str, Any]:
        calls.append((name, args))
        if name == "snapshot":
            raise RuntimeError("camera is busy")
        if name == "reload" and "bundle" in args and not isinstance(args["bundle"], str):
            raise ValueError("bundle must be a path")
        return {"paused": name == "pause"}

    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    link = links(cfg, on_command=on_command)
    link.start()
    assert link.wait_connected(10)
    replies = ValidatingSubscriber(broker.url, ["backend/replies/#"], client_id="backend").start()
    req = replies.client
    cases = [
        ("pause", b'{"reason": "restock"}', True, None),
        ("resume", b"{not json", False, "not valid UTF-8 JSON"),
        ("resume", b"\xff\xfe\x00", False, "not valid UTF-8 JSON"),
        ("resume", b"[1, 2]", False, "JSON object"),
        ("explode", b"{}", False, "unknown command 'explode'"),
        ("snapshot", b"", False, "internal error: RuntimeError: camera is busy"),
        ("reload", b'{"bundle": 5}', False, "bundle must be a path"),
        ("resume", b"", True, None),
    ]
    for i, (name, payload, _, _) in enumerate(cases):
        _request(broker.url, t.cmd(name), payload, f"corr-{i}".encode(), f"backend/replies/{i}", client=req)
    assert replies.wait_for(lambda: len(replies.on("")) == len(cases), 15), replies.on("")
    for i, (name, _, ok, err) in enumerate(cases):
        (m,) = [m for m in replies.on("") if m.topic == f"backend/replies/{i}"]
        p = validate("command_reply", m.payload)
        assert m.properties.CorrelationData == f"corr-{i}".encode()
        assert p["command"] == name and p["ok"] is ok, p
        if err:
            assert err in p["error"], p
    assert calls[0] == ("pause", {"reason": "restock"})
    assert [c[0] for c in calls] == ["pause", "snapshot", "reload", "resume"]
    # Without a response topic the reply goes to cmd/{name}/reply.
    fallback = ValidatingSubscriber(broker.url, ["shelfscout/s042/+/cmd/+/reply"], client_id="watch").start()
    _request(broker.url, t.cmd("pause"), b"{}", None, None, client=req)
    assert fallback.wait_for(lambda: len(fallback.on("/reply")) == 1, 10)
    assert json.loads(fallback.on("/reply")[0].payload)["ok"] is True
    assert fallback.on("/reply")[0].topic == t.cmd_reply(t.cmd("pause"))
    # A retained command (delivered again on every subscribe) is refused, not executed on each reconnect.
    t8 = Topics("shelfscout", "s042", "cart-08")
    req.publish(t8.cmd("reload"), b"{}", qos=1, retain=True).wait_for_publish(5)
    (tmp_path / "c8").mkdir()
    cfg8 = dataclasses.replace(make_cfg(tmp_path / "c8", broker.url), device=dataclasses.replace(cfg.device,
                                                                                                  id="cart-08"))
    n_calls = len(calls)
    links(cfg8, on_command=on_command).start()
    assert fallback.wait_for(lambda: len(fallback.on("/reply")) == 2, 10)
    reply8 = fallback.on("/reply")[1]
    assert reply8.topic == t8.cmd_reply(t8.cmd("reload"))
    assert "retained" in json.loads(reply8.payload)["error"] and len(calls) == n_calls
    assert not fallback.invalid
    # Sent retained to a cart that is already subscribed (the broker then delivers it without the retain flag
    # unless the subscription asked for it as published): refused as well, not executed.
    req.publish(t.cmd("pause"), b"{}", qos=1, retain=True).wait_for_publish(5)
    assert fallback.wait_for(lambda: len(fallback.on("/reply")) == 3, 10)
    live_retained = fallback.on("/reply")[2]
    assert "retained" in json.loads(live_retained.payload)["error"] and len(calls) == n_calls
    # Clearing a retained command (an empty retained payload) is neither a command nor worth an error reply.
    req.publish(t8.cmd("reload"), b"", qos=1, retain=True).wait_for_publish(5)
    req.publish(t.cmd("pause"), b"", qos=1, retain=True).wait_for_publish(5)
    _request(broker.url, t.cmd("resume"), b"{}", None, None, client=req)  # a live command after them, in order
    assert fallback.wait_for(lambda: len(fallback.on("/reply")) == 4, 10)
    assert json.loads(fallback.on("/reply")[3].payload)["command"] == "resume"
    assert [c[0] for c in calls[n_calls:]] == ["resume"]
    # Still alive: alerts keep flowing.
    sub = _sub(broker.url, t, client_id="alerts").start()
    putter = Putter(link.outbox, t)
    putter.put(5)
    check_delivery(sub, putter.committed)
    assert link.connected
    for s in (sub, fallback, replies):
        s.stop()


def test_mqtt_311_explicitly(broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink]) -> None:
    cfg = make_cfg(tmp_path, broker.url, protocol="3.1.1")
    t = Topics.from_config(cfg)
    sub = ValidatingSubscriber(broker.url, [f"{t.base}/#"], protocol=mqtt.MQTTv311).start()
    link = links(cfg, on_command=lambda name, args: {"done": name})
    link.start()
    assert link.wait_connected(10) and link.protocol == "MQTT 3.1.1"
    putter = Putter(link.outbox, t)
    putter.put(10)
    check_delivery(sub, putter.committed)
    sub.client.publish(t.cmd("reload"), b"{}", qos=1).wait_for_publish(5)
    assert sub.wait_for(lambda: len(sub.on("/cmd/reload/reply")) == 1, 10)
    assert validate("command_reply", sub.on("/cmd/reload/reply")[0].payload)["result"] == {"done": "reload"}
    sub.stop()


def test_auto_falls_back_to_311_on_a_broker_without_mqtt5(tmp_path: Path, links: Callable[..., MqttLink],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """amqtt (the demo's embedded broker) only speaks 3.1.1 and refuses an MQTT 5 CONNECT."""
    pytest.importorskip("amqtt")
    from edge.embedded_broker import EmbeddedBroker

    caplog.set_level(logging.INFO, logger="edge.mqtt")
    eb = EmbeddedBroker().start()
    try:
        cfg = make_cfg(tmp_path, eb.url, keepalive_s=30)  # the fallback must not wait for a keepalive timeout
        t = Topics.from_config(cfg)
        sub = ValidatingSubscriber(eb.url, [t.alerts, t.status], protocol=mqtt.MQTTv311).start()
        link = links(cfg)
        link.start()
        assert link.wait_connected(15), link.info()
        assert link.protocol == "MQTT 3.1.1"
        assert any("MQTT 3.1.1" in r.message and r.levelno == logging.WARNING for r in caplog.records)
        putter = Putter(link.outbox, t)
        putter.put(5)
        want = set(putter.committed)
        assert sub.wait_for(lambda: want <= set(received_ids(sub)), 15)
        assert not sub.invalid
        assert link.wait_idle(10)
        sub.stop()
    finally:
        eb.stop()


def test_a_row_that_cannot_be_published_is_discarded_and_counted_not_retried_forever(
        broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    with Outbox(cfg.outbox.path) as ob:
        putter = Putter(ob, t)
        putter.put(2)
    with sqlite3.connect(cfg.outbox.path) as db:  # written by something other than Outbox.put
        db.execute("INSERT INTO messages(topic, payload, qos, retain, created, size) VALUES (?, ?, 1, 0, 0, 10)",
                   (f"{t.base}/alerts/#", b"{}"))
    db.close()
    ob = Outbox(cfg.outbox.path)
    putter.outbox = ob
    putter.put(2)
    sub = _sub(broker.url, t).start()
    link = links(cfg, outbox=ob)
    link.start()
    check_delivery(sub, putter.committed)
    assert link.wait_idle(10) and ob.dropped() == 1
    assert any("discarded" in r.message for r in caplog.records)
    sub.stop()


def test_corrupt_outbox_is_reported_in_status(broker: Mosquitto, tmp_path: Path,
                                              links: Callable[..., MqttLink]) -> None:
    cfg = make_cfg(tmp_path, broker.url)
    Path(cfg.outbox.path).write_bytes(b"garbage, not a database" * 100)
    t = Topics.from_config(cfg)
    sub = _sub(broker.url, t).start()
    link = links(cfg, status=lambda: StatusInfo("online", None, MODEL))
    link.start()
    assert sub.wait_for(lambda: len(sub.on("/status")) >= 1, 10)
    st = sub.json_on("/status")[0]
    assert st["state"] == "degraded" and "corrupt" in st["reason"]
    assert st["outbox_quarantined"] and Path(st["outbox_quarantined"]).exists()
    putter = Putter(link.outbox, t)
    putter.put(3)
    check_delivery(sub, putter.committed)
    assert link.set_status("online")
    assert link.wait_idle(10)
    # the quarantine stays visible until a restart: a backend that subscribes now is told the cart is degraded
    (held,) = first_messages(broker.port, t.status, retained_only=True)
    assert json.loads(held)["state"] == "degraded" and "corrupt" in json.loads(held)["reason"]
    sub.stop()


def test_a_reply_the_broker_acl_refuses_is_logged_with_where_to_ask_for_it(
        tmp_path: Path, links: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture) -> None:
    """The shipped ACL lets a cart publish only under its own root, so an MQTT 5 response topic elsewhere never
    gets its reply. The cart says so when it replies and again when the broker refuses it; a response topic under
    its root gets the reply, with the correlation data."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite shelfscout/s042/cart-07/#\ntopic read backend/#\ntopic read shelfscout/#\n")
    b = Mosquitto(tmp_path / "broker", extra=f"{RUN_AS_ROOT}acl_file {acl}\n").start()
    try:
        cfg = make_cfg(tmp_path, b.url, protocol="5")
        t = Topics.from_config(cfg)
        link = links(cfg, on_command=lambda name, args: {"paused": name == "pause"})
        link.start()
        assert link.wait_connected(10)
        replies = ValidatingSubscriber(b.url, ["backend/replies/#", f"{t.base}/cmd/+/reply"],
                                       client_id="backend").start()
        _request(b.url, t.cmd("pause"), b"{}", b"c1", "backend/replies/1", client=replies.client)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("refused the reply" in r.message for r in caplog.records):
            time.sleep(0.05)
        (warned,) = [r.message for r in caplog.records if "asks for its reply on backend/replies/1" in r.message]
        assert f"under {t.base}/" in warned
        (refused,) = [r.message for r in caplog.records if "refused the reply" in r.message]
        assert "command pause on backend/replies/1" in refused and "Not authorized" in refused
        _request(b.url, t.cmd("resume"), b"{}", b"c2", t.cmd_reply(t.cmd("resume")), client=replies.client)
        assert replies.wait_for(lambda: len(replies.on("/reply")) == 1, 10)
        (m,) = replies.on("/reply")
        assert m.properties.CorrelationData == b"c2" and validate("command_reply", m.payload)["ok"] is True
        assert replies.on("backend/") == []
        assert sum("refused the reply" in r.message for r in caplog.records) == 1
        replies.stop()
    finally:
        b.stop()


def test_a_response_topic_on_the_carts_own_messages_or_commands_gets_the_reply_on_cmd_reply(
        broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture) -> None:
    """A reply published where the cart sends its alerts or status would reach every backend that reads them as
    one, and one published on a command topic would come back as a command. Such response topics are answered on
    `cmd/NAME/reply`, with the correlation data, and a warning says why."""
    cfg = make_cfg(tmp_path, broker.url, protocol="5")
    t = Topics.from_config(cfg)
    calls: list[str] = []

    def on_command(name: str, args: dict[str, Any]) -> dict[str, Any]:
        calls.append(name)
        return {"paused": name == "pause"}

    link = links(cfg, on_command=on_command)
    link.start()
    assert link.wait_connected(10)
    watch = ValidatingSubscriber(broker.url, [f"{t.base}/#"], client_id="watch").start()
    assert watch.wait_for(lambda: len(watch.on("/status")) >= 1, 10)
    asked = [t.alerts, t.status, t.snapshot("a1"), t.cmd("pause"), t.cmd("resume")]
    for i, target in enumerate(asked):
        _request(broker.url, t.cmd("resume"), b"{}", f"c{i}".encode(), target, client=watch.client)
    assert watch.wait_for(lambda: len(watch.on("/cmd/resume/reply")) == len(asked), 15), watch.on("")
    got = sorted(m.properties.CorrelationData for m in watch.on("/cmd/resume/reply"))
    assert got == [f"c{i}".encode() for i in range(len(asked))]
    for m in watch.on("/cmd/resume/reply"):
        assert validate("command_reply", m.payload)["ok"] is True
    assert watch.on("/alerts") == [] and watch.on("/snapshots/") == []
    assert all(json.loads(m.payload).get("command") is None for m in watch.on("/status"))
    assert calls == ["resume"] * len(asked)  # no reply came back as a command
    warned = [r.message for r in caplog.records if "answering on" in r.message]
    assert len(warned) == len(asked) and all(t.cmd_reply(t.cmd("resume")) in w for w in warned)
    watch.stop()


def test_a_command_sent_the_moment_the_cart_says_online_is_answered(
        broker: Mosquitto, tmp_path: Path, links: Callable[..., MqttLink]) -> None:
    """A backend that sends a command as soon as it sees `online` must reach the cart: the cart subscribes before
    it publishes `online` (it published first, so such a command could arrive before the subscription and be
    lost; CI's fresh-clone run lost one that way). Five connections, the command sent from the status callback."""
    from paho.mqtt.enums import CallbackAPIVersion

    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    replies: list[str] = []
    sent = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == t.status and not msg.retain and json.loads(msg.payload)["state"] == "online":
            c.publish(t.cmd("resume"), b"{}", qos=1)
            sent.set()
        elif msg.topic.endswith("/reply"):
            replies.append(msg.topic)

    backend = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="eager-backend")
    backend.on_message = on_message
    backend.connect("127.0.0.1", broker.port)
    backend.subscribe([(t.status, 1), (f"{t.base}/cmd/+/reply", 1)])
    backend.loop_start()
    try:
        time.sleep(0.3)  # the backend's own subscription (not what is tested)
        for n in range(1, 6):
            sent.clear()
            link = links(cfg, on_command=lambda name, args: {"paused": False})
            link.start()
            assert sent.wait(10), "the cart never said online"
            deadline = time.monotonic() + 10
            while len(replies) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(replies) == n, f"connection {n}: the command sent on `online` was not answered"
            link.stop()
    finally:
        backend.loop_stop()
        backend.disconnect()


def test_each_outage_counts_its_connection_attempts_from_one(tmp_path: Path, links: Callable[..., MqttLink],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The log said "retrying (attempt 20)" at the first failure of a cart's eighth broker outage: the count ran
    over the whole run. Each outage counts from 1 now (the link's own counter still totals them)."""
    caplog.set_level(logging.INFO, logger="edge.mqtt")
    with Mosquitto(tmp_path / "broker") as b:
        link = links(make_cfg(tmp_path, b.url))
        link.start()
        assert link.wait_connected(15)
        for _outage in range(2):
            b.stop()
            deadline = time.monotonic() + 15
            start = link.info().connect_failures
            while link.info().connect_failures < start + 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            b.start()
            assert link.wait_connected(15)
    attempts = [int(r.message.rsplit("(attempt ", 1)[1].rstrip(")")) for r in caplog.records
                if "(attempt " in r.message]
    assert link.info().connect_failures >= 4
    starts = [i for i, n in enumerate(attempts) if n == 1]
    assert len(starts) == 2 and attempts == sorted(attempts[:starts[1]]) + sorted(attempts[starts[1]:]), attempts
