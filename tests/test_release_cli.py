"""`shelfscout keygen`, `release` and `publish` through the real CLI, publishing to a real mosquitto."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.bundle import load_public_keys, read_bundle
from edge.cli import main
from edge.ota.release import verify_release
from tests.mosquitto import Mosquitto
from tests.test_ota_support import Device, tiny_models


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


def test_keygen_writes_private_0600_and_public(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "k" / "fleet")]) == 0
    priv = tmp_path / "k" / "fleet.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert list(load_public_keys([tmp_path / "k"])) == ["fleet.pub"]
    assert "key id" in capsys.readouterr().out
    assert main(["keygen", str(tmp_path / "k" / "fleet")]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_release_signs_and_resigns(tmp_path: Path, models: dict[str, bytes],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    dev = Device(tmp_path / "dev", models)
    bundle = dev.bundle(2)
    assert main(["keygen", str(tmp_path / "fleet")]) == 0
    out = tmp_path / "release.json"
    # the bundle is signed by another key: refused with one line, unless --resign
    assert main(["release", str(bundle), "--key", str(tmp_path / "fleet.key"), "--url", "https://m.example/",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resign" in err and len(err.splitlines()) == 1
    assert main(["release", str(bundle), "--key", str(tmp_path / "fleet.key"), "--url", "https://m.example/b/",
                 "--expires-in", "12h", "--rollout", "0.25", "--min-app-version", "0.1.0", "--resign",
                 "-o", str(out)]) == 0
    msg = json.loads(out.read_text())
    keys = load_public_keys([tmp_path])  # fleet.pub
    vr = verify_release(out.read_bytes(), keys)
    r = vr.release
    assert (r.name, r.version, r.rollout, r.min_app_version) == ("tiny", 2, 0.25, "0.1.0")
    assert r.url == f"https://m.example/b/{bundle.name}" and r.size == bundle.stat().st_size
    assert msg["keyid"] == vr.keyid
    assert read_bundle(bundle, keys).signed_by == "fleet.pub"  # re-signed in place
    assert main(["release", str(bundle), "--key", str(tmp_path / "fleet.key"), "--url", "ftp://x/",
                 "-o", str(out)]) == 2
    assert main(["release", str(bundle), "--key", str(tmp_path / "fleet.key"), "--url", "https://x/",
                 "--expires-in", "soon", "-o", str(out)]) == 2


def _retained(url_port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    got: list[bytes] = []
    ev = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
        ev.set()

    c.on_message = on_message
    c.on_connect = lambda client, u, f, rc, p=None: client.subscribe(topic, qos=1)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    ev.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else None


def test_publish_retained_to_fleet_and_store(tmp_path: Path, models: dict[str, bytes], broker: Mosquitto) -> None:
    dev = Device(tmp_path / "dev", models)
    rel = tmp_path / "release.json"
    rel.write_bytes(dev.release(dev.bundle(2)))
    assert main(["publish", str(rel), "--broker", broker.url, "--fleet"]) == 0
    assert main(["publish", str(rel), "--broker", broker.url, "--store", "s042"]) == 0
    for topic in ("shelfscout/fleet/model/release", "shelfscout/s042/model/release"):
        data = _retained(broker.port, topic)
        assert data is not None
        assert verify_release(data, load_public_keys([dev.keys_dir])).release.version == 2
    assert main(["publish", str(rel), "--broker", broker.url, "--fleet", "--clear"]) == 0
    assert _retained(broker.port, "shelfscout/fleet/model/release", timeout=1.0) is None


def test_publish_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.json"
    bad.write_text('{"release": {}}')
    assert main(["publish", str(bad), "--broker", "mqtt://127.0.0.1:1", "--fleet"]) == 2
    assert "not a signed release" in capsys.readouterr().err
    bad.write_text('{"release": {}, "sig": "x"}')
    assert main(["publish", str(bad), "--broker", "mqtt://127.0.0.1:1", "--fleet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the broker" in err and len(err.splitlines()) == 1
