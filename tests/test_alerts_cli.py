"""`shelfscout alerts`: a real subscriber process against mosquitto, fed by a real MqttLink and outbox."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.mqtt import MqttLink
from edge.outbox import Outbox
from edge.payloads import ModelRef, StatusInfo, alert_messages
from edge.topics import Topics
from tests.mosquitto import Mosquitto
from tests.pipes import killed_after
from tests.schema_check import validate
from tests.test_mqtt import make_cfg, make_event

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelRef("shelfgap", 2)
# The console script, without needing the package installed (`python -m edge.cli` would load edge.cli twice).
SHELFSCOUT = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def _alerts_cmd(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*SHELFSCOUT, "alerts", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    with killed_after(proc, 30):
        while time.monotonic() < deadline:  # wait until it has subscribed
            line = proc.stderr.readline()
            if not line:
                break
            if "watching" in line:
                return proc
    proc.kill()
    raise AssertionError(f"shelfscout alerts did not subscribe: {proc.communicate()}")


@pytest.fixture
def device(broker: Mosquitto, tmp_path: Path) -> Iterator[MqttLink]:
    cfg = make_cfg(tmp_path, broker.url)
    link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path),
                    status=lambda: StatusInfo("online", None, MODEL))
    link.start()
    assert link.wait_connected(10)
    yield link
    link.stop()
    link.outbox.close()


def _put(link: MqttLink, events: list[tuple[int, str]]) -> None:
    for i, kind in events:
        ev = make_event(i, kind)
        if kind == "cleared":
            ev.snapshot_jpeg = cv2.imencode(".jpg", np.full((40, 60, 3), 200, np.uint8))[1].tobytes()
        link.outbox.put(alert_messages(ev, link.topics, MODEL))


def test_json_lines_dedupe_resends_and_save_snapshots(broker: Mosquitto, device: MqttLink, tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    proc = _alerts_cmd("--broker", broker.url, "--store", "s042", "--json", "--save-snapshots", str(snaps),
                       "--count", "4", "--timeout", "30")
    _put(device, [(1, "opened"), (2, "opened"), (1, "cleared")])
    assert device.wait_idle(10)
    # A resend after a reconnect: the same bytes again (the viewer must show it once).
    for m in alert_messages(make_event(2, "opened"), device.topics, MODEL):
        device.publish_direct(m.topic, m.payload, qos=1)
    _put(device, [(3, "opened")])
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    alerts = [x for x in lines if x["kind"] == "alert"]
    assert [a["payload"]["event_id"] for a in alerts] == ["a00001:opened", "a00002:opened", "a00001:cleared",
                                                          "a00003:opened"]
    for a in alerts:
        validate("alert", a["payload"])
    status = [x for x in lines if x["kind"] == "status"]
    assert status and status[0]["retained"] and validate("status", status[0]["payload"])["state"] == "online"
    files = sorted(p.name for p in snaps.iterdir())
    assert files == ["a00001.cleared.jpg", "a00001.jpg", "a00002.jpg", "a00003.jpg"]
    by_id = {(a["payload"]["id"], a["payload"]["event"]): a["payload"]["snapshot"] for a in alerts}
    for (aid, event), snap in by_id.items():
        data = (snaps / (f"{aid}.cleared.jpg" if event == "cleared" else f"{aid}.jpg")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == snap["sha256"]
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert len([x for x in lines if x["kind"] == "snapshot"]) == 4


def test_compact_lines_and_timeout(broker: Mosquitto, device: MqttLink) -> None:
    proc = _alerts_cmd("--broker", broker.url, "--device", "cart-07", "--count", "5", "--timeout", "4")
    _put(device, [(7, "opened"), (8, "opened")])
    device.publish_stats({"schema": "shelfscout.stats/1", "store": "s042", "device": "cart-07",
                          "ts": "2026-01-01T00:00:00.000Z", "fps": 14.9, "dropped_frames": 3,
                          "inference_ms": {"p50": 12.0, "p95": 15.5}, "outbox_depth": 0, "outbox_dropped": 0,
                          "model": {"name": "shelfgap", "version": 2}, "cpu_temp_c": None, "uptime_s": 12.0})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "2 of 5 alert events" in err  # --count not reached within --timeout
    lines = out.splitlines()
    assert any(" s042/cart-07 STATUS  online " in line and "(retained)" in line for line in lines), out
    assert sum(" ALERT OPENED  a0000" in line for line in lines) == 2, out
    assert any(" STATS   fps 14.9 dropped 3 infer p50 12.0 p95 15.5 ms" in line for line in lines), out


def test_bad_broker_url_is_one_line_error() -> None:
    r = subprocess.run([*SHELFSCOUT, "alerts", "--broker", "http://x"], cwd=ROOT, text=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "mqtt://" in r.stderr


def test_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    from tests.pki import make_pki
    from tests.test_mqtt import RUN_AS_ROOT

    pki = make_pki(tmp_path / "pki")
    b = Mosquitto(tmp_path / "broker", extra=RUN_AS_ROOT)
    b.listener_block = (f"listener {b.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server}\n"
                        f"keyfile {pki.server_key}\nrequire_certificate true\nallow_anonymous true\n")
    b.start()
    try:
        url = f"mqtts://127.0.0.1:{b.port}"
        proc = _alerts_cmd("--broker", url, "--ca-file", str(pki.ca), "--cert-file", str(pki.backend),
                           "--key-file", str(pki.backend_key), "--json", "--count", "1", "--timeout", "30")
        cfg = make_cfg(tmp_path, url, ca_file=str(pki.ca), cert_file=str(pki.client),
                       key_file=str(pki.client_key))
        link = MqttLink(cfg, Topics.from_config(cfg), Outbox(cfg.outbox.path))
        link.start()
        try:
            _put(link, [(5, "opened")])
            out, err = proc.communicate(timeout=40)
        finally:
            link.stop()
            link.outbox.close()
        assert proc.returncode == 0, err
        alerts = [json.loads(line) for line in out.splitlines() if '"kind": "alert"' in line]
        assert [validate("alert", a["payload"])["event_id"] for a in alerts] == ["a00005:opened"]
    finally:
        b.stop()


def test_a_duplicate_s_cleared_is_shown_as_one() -> None:
    """A `cleared` with `duplicate_of` closes an alert opened twice for one gap: the viewer must not make it look
    like a restock."""
    import io

    from edge.commands.alerts import AlertViewer, ViewerOptions
    from edge.payloads import ModelRef, alert_payload, encode
    from edge.topics import Topics
    from edge.types import AlertEvent, Location

    t = Topics("shelfscout", "s042", "cart-07")
    ev = AlertEvent("cart-07-2-9", "cleared", 1.78e9, 1.78e9, 1.78e9, (0.1, 0.2, 0.3, 0.4), 0.8, 5, 40,
                    Location("aruco-3", 1.2, "aruco"), duplicate_of="cart-07-1-4")
    out = io.StringIO()
    AlertViewer(ViewerOptions(), out=out).handle(t.alerts, encode(alert_payload(ev, t, ModelRef("m", 1))))
    assert "CLEARED cart-07-2-9" in out.getvalue() and "(duplicate of cart-07-1-4, which stays open)" in out.getvalue()
