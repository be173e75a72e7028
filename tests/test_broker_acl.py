"""The production broker config (deploy/mosquitto) on a real mosquitto: TLS with per-device certificates, the ACL.

Certificates come from deploy/mosquitto/make-certs.sh (real openssl). The config and ACL are the shipped files with
only their /etc paths and the port rewritten for a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import Config, parse
from edge.mqtt import MqttLink
from edge.outbox import Outbox, OutMessage
from edge.topics import Topics
from tests.mosquitto import MOSQUITTO, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
MOSQ_DIR = REPO / "deploy" / "mosquitto"
MAKE_CERTS = MOSQ_DIR / "make-certs.sh"
NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10  # accepted; nobody subscribed yet
QUIET_S = 0.8  # how long "nothing arrives" is watched for, after a positive control has shown delivery works

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists() or shutil.which("openssl") is None,
                                reason="needs Debian's mosquitto and openssl")


def certs(pki: Path, *args: str) -> None:
    r = subprocess.run(["bash", str(MAKE_CERTS), "-d", str(pki), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@dataclass
class Broker:
    mosq: Mosquitto
    pki: Path
    rogue: Path

    @property
    def port(self) -> int:
        return self.mosq.port


def production_conf(etc: Path, port: int) -> str:
    """deploy/mosquitto/shelfscout.conf with its paths under `etc` and the TLS listener on a loopback port."""
    out = []
    for line in (MOSQ_DIR / "shelfscout.conf").read_text().splitlines():
        if line.startswith("per_listener_settings"):
            continue  # tests.mosquitto writes it in its header
        line = line.replace("/etc/mosquitto/shelfscout/", f"{etc}/")
        if line == "listener 8883":
            line = f"listener {port} 127.0.0.1"
        out.append(line)
    text = "\n".join(out) + "\n"
    assert f"listener {port} 127.0.0.1" in text and "allow_anonymous false" in text
    return text


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("broker_acl")
    pki, rogue, etc = tmp / "pki", tmp / "rogue", tmp / "etc"
    certs(pki, "ca")
    certs(pki, "server", "localhost", "127.0.0.1")
    for store, dev in (("s042", "cart-a"), ("s042", "cart-b"), ("s043", "cart-c")):
        certs(pki, "device", store, dev)
    certs(pki, "backend", "s042")
    certs(pki, "client", "release-publisher")
    certs(rogue, "ca")  # another CA issuing a certificate with a real cart's name
    certs(rogue, "device", "s042", "cart-a")
    etc.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(pki / name, etc / name)
    shutil.copy(MOSQ_DIR / "acl", etc / "acl")
    port = free_port()
    # Started as root (CI), mosquitto would drop to the `mosquitto` user, which cannot read pytest's 0700 temp dirs.
    extra = "user root\n" if os.geteuid() == 0 else ""
    mosq = Mosquitto(tmp / "mosq", listener_block=production_conf(etc, port), port=port, extra=extra)
    mosq.start()
    try:
        yield Broker(mosq, pki, rogue)
    finally:
        mosq.stop()


@dataclass
class Peer:
    """One MQTT 5 client with what it received and the reason codes the broker answered with."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, list[int]] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def subscribe(self, topic: str) -> list[int]:
        result, mid = self.client.subscribe(topic, qos=1)
        if mid is None:
            raise AssertionError(f"subscribe {topic} failed: {result}")
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.subacks, 5), f"no SUBACK for {topic}"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, 5), f"no PUBACK for {topic}"
            rc = self.pubacks[info.mid]
            return 0 if rc == NO_MATCHING_SUBSCRIBERS else rc

    def wait_for(self, topic: str, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, p in list(self.messages):
                if t == topic:
                    return p
            time.sleep(0.02)
        raise AssertionError(f"{topic} did not arrive; got {self.topics()}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def peer(b: Broker, cert: Path | None, key: Path | None, ca: Path | None = None, name: str = "",
         timeout: float = 5.0) -> Peer | None:
    """Connect over TLS with a client certificate; None if the broker refuses (no CONNACK success in time)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name or f"t-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ca or b.pki / "ca.crt"), certfile=str(cert) if cert else None,
              keyfile=str(key) if key else None)
    p = Peer(c)

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode,
                   props: Properties | None) -> None:
        if not rc.is_failure:
            p.connected.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        p.messages.append((msg.topic, bytes(msg.payload)))

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: Properties) -> None:
        with p.acked:
            p.pubacks[mid] = rc.value
            p.acked.notify_all()

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, rcs: list[ReasonCode],
                     props: Properties) -> None:
        with p.acked:
            p.subacks[mid] = [r.value for r in rcs]
            p.acked.notify_all()

    c.on_connect, c.on_message, c.on_publish, c.on_subscribe = on_connect, on_message, on_publish, on_subscribe
    try:
        c.connect("127.0.0.1", b.port, keepalive=10)
    except (OSError, ssl.SSLError):
        return None
    c.loop_start()
    if not p.connected.wait(timeout):
        c.loop_stop()
        c.disconnect()
        return None
    return p


def device(b: Broker, store: str, dev: str) -> Peer:
    p = peer(b, b.pki / f"devices/{store}/{dev}.crt", b.pki / f"devices/{store}/{dev}.key", name=f"{store}-{dev}")
    assert p is not None, f"{store}/{dev} could not connect"
    return p


def backend(b: Broker) -> Peer:
    p = peer(b, b.pki / "backends/backend-s042.crt", b.pki / "backends/backend-s042.key", name="backend-s042")
    assert p is not None
    return p



def test_cart_a_cannot_publish_as_cart_b(broker: Broker) -> None:
    be, a = backend(broker), device(broker, "s042", "cart-a")
    try:
        assert be.subscribe("shelfscout/s042/+/#") == [1]
        # Positive control: A's own topics reach the store backend (the CN "s042/cart-a" fills %u in the ACL).
        assert a.publish("shelfscout/s042/cart-a/alerts", b'{"id": "a1"}') == 0
        assert be.wait_for("shelfscout/s042/cart-a/alerts") == b'{"id": "a1"}'
        # Forgeries: B's alerts and B's retained status, another store, and a model release.
        for topic in ("shelfscout/s042/cart-b/alerts", "shelfscout/s042/cart-b/status", "shelfscout/s043/cart-c/alerts",
                      "shelfscout/s042/model/release", "shelfscout/s042/cart-a-evil/alerts"):
            assert a.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        time.sleep(QUIET_S)
        assert be.topics() == ["shelfscout/s042/cart-a/alerts"]
    finally:
        be.close()
        a.close()


def test_cart_a_cannot_read_cart_b_commands(broker: Broker) -> None:
    be, a, bb = backend(broker), device(broker, "s042", "cart-a"), device(broker, "s042", "cart-b")
    try:
        assert bb.subscribe("shelfscout/s042/cart-b/cmd/+") == [1]
        assert a.subscribe("shelfscout/s042/cart-a/cmd/+") == [1]
        # mosquitto 2.0 grants the subscription and checks `read` on every delivery: nothing of B's arrives.
        a.subscribe("shelfscout/s042/cart-b/cmd/+")
        a.subscribe("shelfscout/#")
        assert be.publish("shelfscout/s042/cart-b/cmd/pause", b'{"reason": "test"}') == 0
        assert bb.wait_for("shelfscout/s042/cart-b/cmd/pause") == b'{"reason": "test"}'
        assert be.publish("shelfscout/s042/cart-a/cmd/resume", b"{}") == 0
        a.wait_for("shelfscout/s042/cart-a/cmd/resume")
        time.sleep(QUIET_S)
        assert "shelfscout/s042/cart-b/cmd/pause" not in a.topics()
        # B answers its command under its own root, and the backend reads the reply.
        assert be.subscribe("shelfscout/s042/cart-b/cmd/pause/reply") == [1]
        assert bb.publish("shelfscout/s042/cart-b/cmd/pause/reply", b'{"ok": true}') == 0
        assert be.wait_for("shelfscout/s042/cart-b/cmd/pause/reply") == b'{"ok": true}'
        # A cart cannot command another cart, nor itself through someone else's root.
        assert a.publish("shelfscout/s042/cart-b/cmd/pause", b"{}") == NOT_AUTHORIZED
    finally:
        for p in (be, a, bb):
            p.close()


def test_backend_reads_its_store_only(broker: Broker) -> None:
    be, b, c = backend(broker), device(broker, "s042", "cart-b"), device(broker, "s043", "cart-c")
    try:
        assert be.subscribe("shelfscout/s042/+/alerts") == [1]
        assert be.subscribe("shelfscout/s042/+/snapshots/+") == [1]
        be.subscribe("shelfscout/s043/+/alerts")  # granted, but the ACL filters every delivery
        be.subscribe("shelfscout/#")
        b.publish("shelfscout/s042/cart-b/alerts", b'{"id": "b1"}')
        b.publish("shelfscout/s042/cart-b/snapshots/b1", b"\xff\xd8jpeg")
        c.publish("shelfscout/s043/cart-c/alerts", b'{"id": "c1"}')
        assert be.wait_for("shelfscout/s042/cart-b/alerts") == b'{"id": "b1"}'
        assert be.wait_for("shelfscout/s042/cart-b/snapshots/b1") == b"\xff\xd8jpeg"
        time.sleep(QUIET_S)
        assert not [t for t in be.topics() if t.startswith("shelfscout/s043/")]
        # The backend may command its store's carts only.
        assert be.publish("shelfscout/s043/cart-c/cmd/pause", b"{}") == NOT_AUTHORIZED
        assert be.publish("shelfscout/s042/cart-b/alerts", b"forged") == NOT_AUTHORIZED
    finally:
        for p in (be, b, c):
            p.close()


def test_carts_read_releases_only_the_publisher_writes_them(broker: Broker) -> None:
    rel = peer(broker, broker.pki / "clients/release-publisher.crt", broker.pki / "clients/release-publisher.key")
    assert rel is not None
    a = device(broker, "s042", "cart-a")
    try:
        assert rel.publish("shelfscout/s042/model/release", b'{"version": 7}', retain=True) == 0
        assert rel.publish("shelfscout/fleet/model/release", b'{"version": 6}', retain=True) == 0
        assert a.subscribe("shelfscout/s042/model/release") == [1]
        assert a.subscribe("shelfscout/fleet/model/release") == [1]
        assert a.wait_for("shelfscout/s042/model/release") == b'{"version": 7}'
        assert a.wait_for("shelfscout/fleet/model/release") == b'{"version": 6}'
        assert a.publish("shelfscout/fleet/model/release", b'{"version": 99}', retain=True) == NOT_AUTHORIZED
    finally:
        rel.publish("shelfscout/s042/model/release", b"", retain=True)  # clear the retained messages
        rel.publish("shelfscout/fleet/model/release", b"", retain=True)
        rel.close()
        a.close()


def test_anonymous_plaintext_and_wrong_ca_clients_are_refused(broker: Broker) -> None:
    # TLS but no client certificate.
    assert peer(broker, None, None, timeout=2) is None
    # A certificate with a real cart's name, issued by another CA.
    assert peer(broker, broker.rogue / "devices/s042/cart-a.crt", broker.rogue / "devices/s042/cart-a.key",
                timeout=2) is None
    # Plain MQTT on the TLS port: no CONNACK ever comes back.
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    ok = threading.Event()
    c.on_connect = lambda *a: ok.set() if not a[3].is_failure else None
    try:
        c.connect("127.0.0.1", broker.port, keepalive=10)
        c.loop_start()
        assert not ok.wait(1.5)
    except OSError:
        pass
    finally:
        c.loop_stop()
    # And there is no plain-text listener at all besides the TLS one.
    conf = broker.mosq.conf.read_text()
    assert conf.count("\nlistener ") == 1 and "require_certificate true" in conf
    # The broker says why in its log (the installer reads it when a cart cannot connect).
    log = broker.mosq.log.read_text()
    assert "peer did not return a certificate" in log
    assert "certificate verify failed" in log
    assert "wrong version number" in log


def test_make_certs_refuses_a_cart_name_that_would_widen_the_acl(tmp_path: Path) -> None:
    certs(tmp_path, "ca")
    # ... including the names whose topic root holds a release topic (fleet/model/release, STORE/model/release)
    for store, dev in (("s042", "a/b"), ("s042", "+"), ("s042", "#"), ("", "cart-1"), ("s042", ""),
                       ("fleet", "cart-1"), ("s042", "model")):
        r = subprocess.run(["bash", str(MAKE_CERTS), "-d", str(tmp_path), "device", store, dev],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, (store, dev)
    assert not (tmp_path / "devices/s042/a").exists()


def test_the_shipped_conf_listens_on_tls_only() -> None:
    conf = (MOSQ_DIR / "shelfscout.conf").read_text()
    active = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    assert [ln for ln in active if ln.startswith("listener")] == ["listener 8883"]
    assert "allow_anonymous false" in active and "require_certificate true" in active
    assert "use_identity_as_username true" in active
    # Sanity of the plain socket helper used above: the port we reserve is free.
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def _cart_config(b: Broker, tmp: Path, store: str, device_id: str, cert_as: str) -> Config:
    crt = b.pki / f"devices/{store}/{cert_as}"
    return parse(f"""
        [device]
        id = "{device_id}"
        store = "{store}"
        [camera]
        source = "unused.mp4"
        [mqtt]
        url = "mqtts://127.0.0.1:{b.port}"
        ca_file = "{b.pki / 'ca.crt'}"
        cert_file = "{crt}.crt"
        key_file = "{crt}.key"
        [outbox]
        path = "{tmp / f'{device_id}-outbox.db'}"
        """, env={})


def test_the_device_mqtt_link_works_through_the_production_broker(broker: Broker, tmp_path: Path) -> None:
    """The real MqttLink with a cart certificate: status, last-will-backed offline and an alert reach the backend;
    the same cart configured with another cart's id is refused by the ACL."""
    be = backend(broker)
    good_cfg = _cart_config(broker, tmp_path, "s042", "cart-a", cert_as="cart-a")
    liar_cfg = _cart_config(broker, tmp_path, "s042", "cart-b", cert_as="cart-a")  # cart-a's cert, cart-b's id
    links: list[MqttLink] = []
    try:
        be.subscribe("shelfscout/s042/+/#")
        for cfg in (good_cfg, liar_cfg):
            link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path))
            links.append(link)
            link.start()
            assert link.wait_connected(10), link.info()
            topics = Topics.from_config(cfg)
            link.outbox.put([OutMessage(topics.alerts, b'{"id": "%s-1"}' % cfg.device.id.encode())])
        good, liar = links
        status = json.loads(be.wait_for("shelfscout/s042/cart-a/status"))
        assert status["state"] == "online"
        assert be.wait_for("shelfscout/s042/cart-a/alerts") == b'{"id": "cart-a-1"}'
        assert good.wait_idle(10)
        time.sleep(QUIET_S)
        assert not [t for t in be.topics() if "/cart-b/" in t], be.topics()
        # The device sees the broker's "not authorized" and keeps the alert rather than losing it.
        assert liar.info().rejected >= 1 and liar.outbox.depth() == 1, liar.info()
        good.stop()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = [json.loads(p)["state"] for t, p in be.messages if t == "shelfscout/s042/cart-a/status"]
            if states[-1] == "offline":
                break
            time.sleep(0.05)
        assert states[-1] == "offline"
    finally:
        for link in links:
            link.stop()
            link.outbox.close()
        be.close()


def test_the_optional_password_listener(broker: Broker, tmp_path: Path) -> None:
    """Uncommenting the password listener gives a second TLS port with passwords, under the same ACL, and the
    certificate port keeps working for carts (their CN is not in the password file)."""
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        pytest.skip("mosquitto_passwd is missing (Debian package `mosquitto`)")
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(broker.pki / name, etc / name)
    shutil.copy(MOSQ_DIR / "acl", etc / "acl")
    passwd = etc / "passwd"
    for i, (user, pw) in enumerate((("backend-s042", "store-secret"), ("s042/cart-b", "cart-secret"))):
        subprocess.run([passwd_tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw], check=True,
                       capture_output=True, timeout=30)
    cert_port, pw_port = free_port(), free_port()
    conf = production_conf(etc, cert_port)
    # Uncomment the settings ("#key value"), not the prose ("# text"), as an admin would.
    conf = "\n".join(ln[1:] if re.match(r"#[a-z]", ln) else ln for ln in conf.splitlines())
    conf = conf.replace("listener 8884", f"listener {pw_port} 127.0.0.1")
    assert f"password_file {etc}/passwd" in conf and f"listener {pw_port} 127.0.0.1" in conf
    extra = "user root\n" if os.geteuid() == 0 else ""
    mosq = Mosquitto(tmp_path / "mosq", listener_block=conf, port=cert_port, extra=extra).start()
    second = Broker(mosq, broker.pki, broker.rogue)
    clients: list[mqtt.Client] = []

    def pw_client(user: str, password: str) -> tuple[mqtt.Client, list[tuple[str, bytes]], threading.Event]:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pw-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(broker.pki / "ca.crt"))
        c.username_pw_set(user, password)
        got: list[tuple[str, bytes]] = []
        ok = threading.Event()
        c.on_connect = lambda cl, ud, fl, rc, pr: ok.set() if not rc.is_failure else None
        c.on_message = lambda cl, ud, msg: got.append((msg.topic, bytes(msg.payload)))
        c.connect("127.0.0.1", pw_port, keepalive=10)
        c.loop_start()
        clients.append(c)
        return c, got, ok

    try:
        be, got, ok = pw_client("backend-s042", "store-secret")
        assert ok.wait(5), "the backend could not log in with its password"
        be.subscribe("shelfscout/s042/+/alerts", qos=1)
        _, _, bad = pw_client("backend-s042", "wrong")
        time.sleep(0.3)
        cart = device(second, "s042", "cart-a")  # the certificate port still lets carts in
        time.sleep(0.2)
        assert cart.publish("shelfscout/s042/cart-a/alerts", b'{"id": "pw"}') == 0
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [("shelfscout/s042/cart-a/alerts", b'{"id": "pw"}')]
        assert not bad.wait(1.0), "a wrong password was accepted"
        # A cart with a password uses its cart name as user name: the same patterns confine it to its root.
        pw_cart, _, cart_ok = pw_client("s042/cart-b", "cart-secret")
        assert cart_ok.wait(5)
        pw_cart.publish("shelfscout/s042/cart-a/alerts", b"forged", qos=1).wait_for_publish(5)
        pw_cart.publish("shelfscout/s042/cart-b/alerts", b'{"id": "b"}', qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(QUIET_S)
        assert got[1:] == [("shelfscout/s042/cart-b/alerts", b'{"id": "b"}')]
        cart.close()
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        mosq.stop()


def test_a_store_backend_cannot_reach_the_carts_updater_nor_flood_it(broker: Broker, tmp_path: Path) -> None:
    """The shipped ACL lets a backend write `<store>/+/cmd/+`, and `+` matches an empty level: `.../cmd/` reached
    the cart's `cmd/+` subscription and, not being a command, went to the OTA updater (any old signed release could
    be injected that way, and a malformed one ended the updater). Only the release topics reach it now. And one
    retained 8 MB message on a command topic was delivered on every connect (the shipped broker now refuses
    packets over 4 MB; the cart tells MQTT 5 brokers it takes nothing over 65 kB and drops what still comes)."""
    be = backend(broker)
    cfg = _cart_config(broker, tmp_path, "s042", "cart-a", cert_as="cart-a")
    got: list[str] = []
    link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path), on_release=lambda t, p: got.append(t))
    link.start()
    try:
        assert link.wait_connected(10), link.info()
        time.sleep(QUIET_S)  # subscribed
        assert be.publish("shelfscout/s042/cart-a/cmd/", b'{"release": {"sha256": "../../*"}}') == 0  # allowed by
        # the ACL, delivered by the broker: the cart must not take it for a release
        big = be.client.publish("shelfscout/s042/cart-a/cmd/pause", b"x" * (8 << 20), qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):  # the broker drops a client that sends such a packet
            big.wait_for_publish(5)
        publisher = peer(broker, broker.pki / "clients/release-publisher.crt",
                         broker.pki / "clients/release-publisher.key")
        assert publisher is not None
        assert publisher.publish("shelfscout/fleet/model/release", b"{}") == 0  # the positive control
        publisher.close()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["shelfscout/fleet/model/release"]  # and nothing from cmd/
        assert link.connected
        fresh = peer(broker, broker.pki / "backends/backend-s042.crt", broker.pki / "backends/backend-s042.key")
        assert fresh is not None
        fresh.subscribe("shelfscout/s042/cart-a/cmd/#")
        time.sleep(QUIET_S)
        assert [t for t, p in fresh.messages if len(p) > 1 << 20] == []  # the broker kept no 8 MB retained message
        fresh.close()
    finally:
        link.stop()
        link.outbox.close()
        be.close()
