"""MqttLink's TLS file errors (one line naming the key) and the retained status / last will after a model swap."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

import edge.mqtt
from edge.config import ConfigError
from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import ModelRef, StatusInfo
from edge.topics import Topics
from tests.mosquitto import Mosquitto, first_messages
from tests.pki import make_pki
from tests.schema_check import ValidatingSubscriber
from tests.test_mqtt import make_cfg

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "shelfgap-default.bundle"


def _link_error(tmp_path: Path, **mqtt: Any) -> str:
    cfg = make_cfg(tmp_path, "mqtts://127.0.0.1:1", **mqtt)
    ob = Outbox(cfg.outbox.path)
    try:
        with pytest.raises(ConfigError) as e:
            MqttLink(cfg, Topics.from_config(cfg), ob)
    finally:
        ob.close()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_tls_file_problems_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ca, cert, key = str(pki.ca), str(pki.client), str(pki.client_key)
    missing = str(tmp_path / "tls" / "ca.crt")
    assert _link_error(tmp_path, ca_file=missing) == f"mqtt.ca_file: cannot read {missing}: No such file or directory"
    assert _link_error(tmp_path, ca_file=ca, cert_file=str(tmp_path / "nope.crt"), key_file=key) == \
        f"mqtt.cert_file: cannot read {tmp_path / 'nope.crt'}: No such file or directory"
    assert _link_error(tmp_path, ca_file=ca, cert_file=cert, key_file=str(tmp_path / "nope.key")) == \
        f"mqtt.key_file: cannot read {tmp_path / 'nope.key'}: No such file or directory"
    # malformed PEM: a truncated certificate, a file that is not PEM at all, binary (DER) data
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n")
    assert _link_error(tmp_path, ca_file=str(bad)).startswith(f"mqtt.ca_file: {bad} holds no usable CA certificate")
    assert _link_error(tmp_path, ca_file=ca, cert_file=str(bad), key_file=key).startswith(
        f"mqtt.cert_file: {bad} holds no valid PEM certificate")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert _link_error(tmp_path, ca_file=str(text)) == f"mqtt.ca_file: {text} is not a PEM file (no -----BEGIN line)"
    der = tmp_path / "ca.der"
    der.write_bytes(serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
                    .private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    assert "is not a PEM file" in _link_error(tmp_path, ca_file=str(der))
    assert _link_error(tmp_path, ca_file=ca, cert_file=cert, key_file=str(bad)) == \
        f"mqtt.key_file: {bad} holds no PEM private key"
    # a key that does not belong to the certificate, an encrypted key (must not prompt for a passphrase)
    assert _link_error(tmp_path, ca_file=ca, cert_file=cert, key_file=str(pki.backend_key)) == \
        f"mqtt.key_file: {pki.backend_key} is not the private key of mqtt.cert_file {cert}"
    enc = tmp_path / "enc.key"
    enc.write_bytes(serialization.load_pem_private_key(pki.client_key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    assert _link_error(tmp_path, ca_file=ca, cert_file=cert, key_file=str(enc)).startswith(
        f"mqtt.key_file: {enc} is encrypted")
    assert _link_error(tmp_path, ca_file=ca, cert_file=cert) == \
        "mqtt.cert_file and mqtt.key_file must be given together"
    pw = tmp_path / "pw-missing"
    assert _link_error(tmp_path, ca_file=ca, username="u", password_file=str(pw)) == \
        f"mqtt.password_file: cannot read {pw}: No such file or directory"


@pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")
def test_run_with_a_missing_ca_file_prints_one_line(tmp_path: Path) -> None:
    img = tmp_path / "shelf.jpg"
    cv2.imwrite(str(img), np.full((240, 320, 3), 128, np.uint8))
    missing = tmp_path / "tls" / "ca.crt"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "cart-07"\nstore = "s042"\n[camera]\nsource = "{img}"\n'
                   f'[mqtt]\nurl = "mqtts://127.0.0.1:1"\nca_file = "{missing}"\n'
                   f'[outbox]\npath = "{tmp_path / "state" / "outbox.db"}"\n[ota]\nenabled = false\n'
                   '[preview]\nenabled = false\n')
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "-c", str(cfg)], cwd=ROOT, text=True,
                       capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        f"shelfscout run: error: mqtt.ca_file: cannot read {missing}: No such file or directory"


def _statuses(sub: ValidatingSubscriber) -> list[dict[str, Any]]:
    return sub.json_on("/status")


def _has(sub: ValidatingSubscriber, state: str, version: int, reason: str | None = None, after: int = 0) -> bool:
    return any(p["state"] == state and (p["model"] or {}).get("version") == version
               and (reason is None or p["reason"] == reason) for p in _statuses(sub)[after:])


def test_refresh_status_rereads_the_model_and_republishes_retained(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge.mqtt, "MODEL_POLL_S", 1e6)  # only refresh_status() may publish the new model here
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    current = {"model": ModelRef("shelfgap", 1)}
    sub = ValidatingSubscriber(broker.url, [t.status]).start()
    link = MqttLink(cfg, t, Outbox(cfg.outbox.path), status=lambda: StatusInfo("online", None, current["model"]))
    try:
        link.start()
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: _has(sub, "online", 1), 10)
        link.set_status("degraded", "camera stalled")
        assert sub.wait_for(lambda: _has(sub, "degraded", 1, "camera stalled"), 10)
        current["model"] = ModelRef("shelfgap", 2)
        assert link.refresh_status()
        assert sub.wait_for(lambda: _has(sub, "degraded", 2, "camera stalled"), 10), _statuses(sub)
        late = ValidatingSubscriber(broker.url, [t.status], client_id="late").start()
        assert late.wait_for(lambda: bool(late.on("/status")), 10)
        assert late.on("/status")[-1].retain and late.json_on("/status")[-1]["model"]["version"] == 2
        late.stop()
        link.stop()
        assert sub.wait_for(lambda: _has(sub, "offline", 2, "stopped"), 10)
        assert not sub.invalid, sub.invalid
    finally:
        link.stop()
        link.outbox.close()
        sub.stop()


def test_a_status_is_published_once_per_change_and_again_after_every_reconnect(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service works its status out every few seconds and on every event: the link publishes it when it says
    something new (a cart used to send two identical retained `online`s at start, the second 5 s later), and on
    every connect, since the broker may hold the last will by then."""
    monkeypatch.setattr(edge.mqtt, "MODEL_POLL_S", 1e6)
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    sub = ValidatingSubscriber(broker.url, [t.status]).start()
    link = MqttLink(cfg, t, Outbox(cfg.outbox.path), status=lambda: StatusInfo("online", None, ModelRef("m", 1)))
    try:
        link.start()
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: _has(sub, "online", 1), 10)
        for _ in range(3):
            assert link.refresh_status() and link.set_status("online")
        assert link.set_status("degraded", "camera stalled")
        assert sub.wait_for(lambda: _has(sub, "degraded", 1), 10)
        assert [p["state"] for p in _statuses(sub)] == ["online", "degraded"]
        assert link.set_status("degraded", "camera stalled") and link.set_status("online")
        assert sub.wait_for(lambda: len(_statuses(sub)) == 3, 10)
        broker.restart()
        assert sub.wait_for(lambda: sub.connected.is_set() and len(_statuses(sub)) == 4, 20), _statuses(sub)
        assert [p["state"] for p in _statuses(sub)] == ["online", "degraded", "online", "online"]
        assert not sub.invalid, sub.invalid
    finally:
        link.stop()
        link.outbox.close()
        sub.stop()


def test_a_status_worked_out_on_one_thread_never_lands_after_a_newer_one(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's sender notices an OTA swap and works out `online` with the new model; before it publishes, the
    service says `paused by command` from another thread. The sender's older status used to land last and stay
    retained (the status de-duplication then never said the pause again): a backend saw a paused cart running."""
    import threading

    monkeypatch.setattr(edge.mqtt, "MODEL_POLL_S", 0.05)
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    model = {"version": 1}
    link = MqttLink(cfg, t, Outbox(cfg.outbox.path),
                    status=lambda: StatusInfo("online", None, ModelRef("m", model["version"])))
    entered, release = threading.Event(), threading.Event()
    encode_status = link._status_bytes

    def preempted(info: StatusInfo) -> bytes:  # the sender is held between working its status out and publishing
        if info.model is not None and info.model.version == 2 and threading.current_thread() is not \
                threading.main_thread() and not release.is_set():
            entered.set()
            release.wait(10)
        return encode_status(info)

    monkeypatch.setattr(link, "_status_bytes", preempted)
    sub = ValidatingSubscriber(broker.url, [t.status]).start()
    try:
        link.start()
        assert link.wait_connected(10) and sub.wait_for(lambda: _has(sub, "online", 1), 10)
        model["version"] = 2  # the swap: the sender notices it within MODEL_POLL_S
        assert entered.wait(10)
        link.set_status("online", "paused by command")
        release.set()
        assert sub.wait_for(lambda: _has(sub, "online", 2, "paused by command"), 10), _statuses(sub)
        assert link.wait_idle(10)
        (held,) = first_messages(broker.port, t.status, retained_only=True)
        assert json.loads(held)["reason"] == "paused by command", held
        assert not sub.invalid, sub.invalid
    finally:
        release.set()
        link.stop()
        link.outbox.close()
        sub.stop()


MODEL_CHILD = r"""
import sys, time
from pathlib import Path
from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import ModelRef, StatusInfo
from edge.topics import Topics
from tests.test_mqtt import make_cfg
tmp, url = Path(sys.argv[1]), sys.argv[2]
cfg = make_cfg(tmp, url)
version_file = tmp / "model-version"
link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path),
                status=lambda: StatusInfo("online", None, ModelRef("shelfgap", int(version_file.read_text()))))
link.start()
print("started", flush=True)
while True:
    time.sleep(1)
"""


def test_model_change_republishes_status_and_the_will_follows_on_reconnect(broker: Mosquitto,
                                                                           tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, broker.url)
    t = Topics.from_config(cfg)
    (tmp_path / "model-version").write_text("1")
    sub = ValidatingSubscriber(broker.url, [t.status]).start()
    proc = subprocess.Popen([sys.executable, "-c", MODEL_CHILD, str(tmp_path), broker.url], cwd=ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert sub.wait_for(lambda: _has(sub, "online", 1), 20), _statuses(sub)
        # The service swaps the model and calls nothing: the link notices and publishes a fresh status.
        (tmp_path / "model-version").write_text("2")
        assert sub.wait_for(lambda: _has(sub, "online", 2), 10), _statuses(sub)
        # The will of the live connection still names model 1 (MQTT fixes it at CONNECT); after a reconnect
        # it names model 2.
        n = len(_statuses(sub))
        broker.restart()
        assert sub.wait_for(lambda: sub.connected.is_set() and _has(sub, "online", 2, after=n), 20), _statuses(sub)
        n = len(_statuses(sub))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda: _has(sub, "offline", 2, "connection lost", after=n), 20), _statuses(sub)
        assert not sub.invalid, sub.invalid
        assert json.loads(sub.on("/status")[-1].payload)["model"] == {"name": "shelfgap", "version": 2}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.stop()


def test_a_status_sent_into_a_hung_connection_does_not_replace_the_fresh_one_after_the_reconnect(
        tmp_path: Path) -> None:
    """The broker hangs (SIGSTOP): a status published then is never acknowledged, so paho sends it again after the
    reconnect, after the fresh status the link publishes on connecting. The retained status must end up the current
    one, not the stale one (a backend would see a cart `degraded` that is fine). Model state likewise."""
    b = Mosquitto(tmp_path / "broker").start()
    link: MqttLink | None = None
    try:
        cfg = make_cfg(tmp_path, b.url)
        t = Topics.from_config(cfg)
        link = MqttLink(cfg, t, Outbox(cfg.outbox.path), status=lambda: StatusInfo("online", None, None))
        link.start()
        assert link.wait_connected(10)
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        link.set_status("degraded", "camera lost")  # into the hung connection: never acknowledged
        link.publish_model_state({"stale": True})
        deadline = time.monotonic() + 30
        while link.connected and time.monotonic() < deadline:  # the keepalive (5 s) finds the broker gone
            time.sleep(0.1)
        assert not link.connected
        link.set_status("online", None)  # the current state: published when the link is back
        link.publish_model_state({"stale": False})
        os.kill(b.proc.pid, signal.SIGCONT)
        b.kill()
        b.start()
        watch = ValidatingSubscriber(b.url, [t.status], client_id="watch").start()
        assert link.wait_connected(15)
        # until paho's resend of the stale pair has come and gone (or 5 s if it came before the watcher)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(p.get("reason") == "camera lost"
                                                       for p in watch.json_on("/status")):
            time.sleep(0.05)
        watch.stop()
        deadline = time.monotonic() + 15  # the sender thread publishes the current pair again once acknowledged

        def retained() -> tuple[Any, Any]:
            status = json.loads(first_messages(b.port, t.status)[0])
            return (status["state"], status["reason"]), json.loads(first_messages(b.port, t.model_state)[0])

        while retained() != (("online", None), {"stale": False}) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # and it stays so: no stale resend comes after
        assert retained() == (("online", None), {"stale": False})
    finally:
        if link is not None:
            link.stop()
            link.outbox.close()
        if b.proc is not None and b.proc.poll() is None:
            os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()


def _service_on(broker: Mosquitto, tmp_path: Path) -> tuple[Any, MqttLink, Topics]:
    """A Service with the parts its commands and retained messages use (the default model in the slot, a pipeline
    that only pauses, the outbox, the topics) and a real MqttLink to `broker`, not yet started."""
    import threading
    import types

    from edge.app import Service, load_model
    from edge.config import Config
    from edge.pipeline import ModelSlot

    cfg = make_cfg(tmp_path, broker.url)
    svc = Service(cfg, install_signals=False)
    svc.parts.slot = ModelSlot(object(), load_model(Config()))
    svc.parts.pipeline = types.SimpleNamespace(paused=threading.Event())  # what on_command reads of the pipeline
    svc.parts.outbox = Outbox(cfg.outbox.path)
    t = Topics.from_config(cfg)
    svc.parts.topics = t
    svc.parts.mqtt = MqttLink(cfg, t, svc.parts.outbox, on_command=svc.on_command, status=svc.status)
    return svc, svc.parts.mqtt, t


def test_the_retained_model_state_is_the_one_worked_out_last(
        broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cmd/reload` (the MQTT command thread) and an OTA report (the updater's thread) each build the retained
    model/state from the service's OTA state and publish it. The reload's payload, built first and published
    last, left the broker saying `idle` after the updater had said `rejected`."""
    import threading

    import edge.app as app

    svc, link, t = _service_on(broker, tmp_path)
    monkeypatch.setattr(svc, "_detector", lambda bundle: object())  # the reload's interpreter is not the point
    built, go_on = threading.Event(), threading.Event()
    payload = app.model_state_payload

    def preempted(*args: Any, **kw: Any) -> dict[str, Any]:  # the reload is held after building its payload
        out = payload(*args, **kw)
        if threading.current_thread().name == "reload":
            built.set()
            go_on.wait(10)
        return out

    monkeypatch.setattr(app, "model_state_payload", preempted)
    sub = ValidatingSubscriber(broker.url, [t.model_state]).start()
    try:
        link.start()
        assert link.wait_connected(10)
        reload = threading.Thread(target=svc.on_command, args=("reload", {}), name="reload")
        reload.start()
        assert built.wait(10)
        report = threading.Thread(target=svc.report_ota, args=({"ota": {
            "state": "rejected", "version": 9, "error": "bad-signature: not ours", "code": "bad-signature"}},))
        report.start()
        time.sleep(0.3)  # the report goes as far as it can while the reload is held
        go_on.set()
        reload.join(10)
        report.join(10)
        # both went out (the reload's and the report's); the broker keeps the last, which must be the report's
        assert sub.wait_for(lambda: len(sub.json_on("/model/state")) == 2, 10), sub.json_on("/model/state")
        assert [m["ota"]["state"] for m in sub.json_on("/model/state")] == ["idle", "rejected"]
        (held,) = first_messages(broker.port, t.model_state, retained_only=True)
        assert svc.ota_state.state == "rejected" and json.loads(held)["ota"]["state"] == "rejected", held
        assert not sub.invalid, sub.invalid
    finally:
        go_on.set()
        link.stop()
        svc.parts.outbox.close()
        sub.stop()


def test_a_snapshot_pairs_a_frame_with_its_own_gaps_and_the_model_that_found_them(
        broker: Mosquitto, tmp_path: Path) -> None:
    """cmd/snapshot (the command thread) read the last frame and its gaps in two steps while the post-processing
    thread wrote them in two: the picture of one frame could be drawn and counted with another's gaps. And it
    named the model in the slot, which after a swap is not the one that ran the frame. Frames alternate three gaps
    and none while snapshots are taken; the GIL is made to switch threads as often as it can."""
    import sys
    import threading

    import edge.app as app
    from edge.pipeline import FrameResult
    from edge.types import Frame, Gap

    svc, link, t = _service_on(broker, tmp_path)
    v1 = svc.parts.slot.info
    observer = app._LastFrameObserver(svc)
    img = np.zeros((120, 160, 3), np.uint8)
    three = [Gap(10, 10, 30, 30, 0.9), Gap(40, 10, 60, 30, 0.8), Gap(70, 10, 90, 30, 0.7)]
    result = FrameResult(1.0, 1.0, 1.0, 1.0, 0, True, v1)  # v1 ran every frame
    stop = threading.Event()

    def post_thread() -> None:
        i = 0
        while not stop.is_set():
            observer.on_frame(Frame(img, i, time.monotonic(), time.time()), three if i % 2 == 0 else [], result)
            i += 1

    interval = sys.getswitchinterval()
    try:
        link.start()
        assert link.wait_connected(10)
        observer.on_frame(Frame(img, 0, time.monotonic(), time.time()), three, result)
        v2 = dataclasses.replace(v1, manifest=dataclasses.replace(v1.manifest, version=v1.manifest.version + 1))
        svc.parts.slot.request_swap(object(), v2)
        svc.parts.slot.current()  # the slot holds v2 now; the frames keep saying v1 ran them
        sys.setswitchinterval(1e-6)
        writer = threading.Thread(target=post_thread)
        writer.start()
        replies = [svc.on_command("snapshot", {}) for _ in range(300)]
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        link.stop()
        svc.parts.outbox.close()
    writer.join(10)
    torn = [(r["frame"], r["gaps"]) for r in replies if r["gaps"] != (3 if r["frame"] % 2 == 0 else 0)]
    assert not torn, torn[:5]
    assert {r["model"]["version"] for r in replies} == {v1.manifest.version}
