"""OTA through the whole service: a signed v2 release published on MQTT is downloaded, verified, smoke-tested,
switched and hot-swapped while `shelfscout run` keeps sending alerts, which then carry the new version."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from convert.cartpass import CartPass, aisle_length_for, make_aisle, render_cart_pass
from convert.release import make_release, message_bytes, publish_release
from edge.bundle import (
    BUILTIN_KEYS,
    DEFAULT_BUNDLE,
    MANIFEST,
    SIGNATURE,
    generate_keypair,
    load_private_key,
    load_public_keys,
    read_bundle,
    write_bundle,
)
from tests.mosquitto import Mosquitto
from tests.schema_check import ValidatingSubscriber
from tests.test_e2e import start_service

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")

STORE, DEVICE = "s042", "cart-09"


@pytest.fixture(scope="module")
def long_pass(tmp_path_factory: pytest.TempPathFactory) -> CartPass:
    d = tmp_path_factory.mktemp("longpass")
    length = aisle_length_for(16.0, 15.0, 10.0)
    aisle = make_aisle(np.random.default_rng(21), length_px=length, n_gaps=8)
    return render_cart_pass(aisle, d / "long.mp4", fps=15.0, speed_px_per_frame=10.0, seed=4)


def make_v2(tmp: Path, score: float | None = None) -> tuple[Path, Path, int]:
    """The default model re-released as version N+1, signed by a fleet key the device trusts (with another score
    threshold when `score` is given)."""
    key = tmp / "fleet.key"
    keys = tmp / "keys"
    generate_keypair(key, keys / "fleet.pub")
    b = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    v2 = b.manifest.version + 1
    files = {k: v for k, v in b.members.items() if k not in (MANIFEST, SIGNATURE)}
    out = tmp / "shelfgap-v2.bundle"
    manifest = dataclasses.replace(b.manifest, version=v2)
    if score is not None:
        manifest = dataclasses.replace(manifest, thresholds=dataclasses.replace(manifest.thresholds, score=score))
    write_bundle(out, manifest, files, load_private_key(key))
    return out, key, v2


def write_config(tmp_path: Path, source: Path, url: str, probation_frames: int | None = 20) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[device]
id = "{DEVICE}"
store = "{STORE}"
[camera]
source = "{source}"
realtime = true
[mqtt]
url = "{url}"
stats_interval_s = 1.0
[outbox]
path = "{tmp_path / 'state' / 'outbox.db'}"
[ota]
keys_dir = "{tmp_path / 'keys'}"
models_dir = "{tmp_path / 'models'}"
{"" if probation_frames is None else f"probation_frames = {probation_frames}"}
[preview]
enabled = false
""")
    return cfg


@dataclasses.dataclass
class Cart:
    """`shelfscout run` on the long pass with OTA on, a backend watching it, and v2's release ready to publish."""

    sub: ValidatingSubscriber
    proc: subprocess.Popen[bytes]
    log: Path
    release: bytes
    v1: int  # the model the cart started with
    v2: int

    def publish(self, url: str) -> None:
        publish_release(self.release, url, f"shelfscout/{STORE}/model/release")


@contextlib.contextmanager
def cart_running(tmp_path: Path, long_pass: CartPass, broker: Mosquitto, score: float | None = None,
                 probation_frames: int | None = 20) -> Iterator[Cart]:
    """The cart runs from its first `model/state` on; it is stopped and the backend disconnected on the way out."""
    bundle, key, v2 = make_v2(tmp_path, score)
    release = make_release(bundle, key, f"file://{bundle}", timedelta(days=1))
    cfg = write_config(tmp_path, long_pass.path, broker.url, probation_frames)
    sub = ValidatingSubscriber(broker.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="ota-backend").start()
    log = tmp_path / "service.log"
    proc = start_service(cfg, log)
    try:
        assert sub.wait_for(lambda: bool(sub.json_on("/model/state")), 30), log.read_text()[-2000:]
        v1 = sub.json_on("/model/state")[-1]["model"]["version"]
        yield Cart(sub, proc, log, message_bytes(release.message), v1, v2)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.stop()


def test_published_release_hot_swaps_while_alerts_flow(tmp_path: Path, long_pass: CartPass,
                                                       broker: Mosquitto) -> None:
    with cart_running(tmp_path, long_pass, broker) as cart:
        sub, v2 = cart.sub, cart.v2
        assert cart.v1 == v2 - 1
        t_publish = time.monotonic()
        cart.publish(broker.url)

        def running_v2() -> bool:
            return any(s["model"] and s["model"]["version"] == v2 for s in sub.json_on("/model/state"))

        assert sub.wait_for(running_v2, 60), cart.log.read_text()[-3000:]
        swap_s = time.monotonic() - t_publish
        assert cart.proc.wait(120) == 0, cart.log.read_text()[-3000:]
        states = [s["ota"]["state"] for s in sub.json_on("/model/state")]
        alerts = sub.json_on("/alerts")
        versions = [a["model"]["version"] for a in alerts if a["event"] == "opened"]
        print(f"\nOTA publish -> v{v2} running: {swap_s:.2f} s; OTA states {states}; alert versions {versions}")
        assert v2 in versions, "no alert carried the new model version"
        first_v2 = versions.index(v2)
        assert all(v == v2 for v in versions[first_v2:]), "an alert after the swap carried the old version"
        assert sub.invalid == []
        assert (tmp_path / "models" / "current").is_symlink()
        for step in ("downloading", "verifying", "smoke_testing", "switching", "probation", "active"):
            assert step in states, f"OTA step {step} was not reported on model/state: {states}"


def test_a_release_that_sees_gaps_everywhere_is_rolled_back_in_probation(tmp_path: Path, long_pass: CartPass,
                                                                         broker: Mosquitto) -> None:
    """The same weights released with a score threshold of 0.01 (an ML engineer's slip): it passes every check
    before the switch (signature, hashes, golden vectors: the raw outputs are the old model's), and on the cart it
    finds a hundred "gaps" in every frame. Probation judged only latency and NaN outputs, which int8 models never
    have, so it stayed; now its implausible frames roll it back to the model before, which keeps alerting. With the
    default probation (50 frames, so 13 garbage frames for a verdict, while 5 sightings confirm an alert) its garbage
    frames never reach the tracker, so it sends no alert at all."""
    with cart_running(tmp_path, long_pass, broker, score=0.01, probation_frames=None) as cart:
        sub, v1, v2 = cart.sub, cart.v1, cart.v2
        cart.publish(broker.url)

        def rolled_back() -> bool:
            return any(s["ota"]["state"] == "rolled_back" for s in sub.json_on("/model/state"))

        assert sub.wait_for(rolled_back, 60), cart.log.read_text()[-3000:]
        assert cart.proc.wait(120) == 0, cart.log.read_text()[-3000:]
    states = sub.json_on("/model/state")
    (back,) = [s for s in states if s["ota"]["state"] == "rolled_back"]
    assert back["ota"]["error"].startswith("probation-garbage: ") and "gaps over 60% of the picture" in back["ota"]["error"]
    assert back["ota"]["version"] == v2 and back["model"]["version"] == v1
    assert states[-1]["model"]["version"] == v1 and not (tmp_path / "models" / "current").exists()
    versions = [a["model"]["version"] for a in sub.json_on("/alerts") if a["event"] == "opened"]
    assert versions and versions[-1] == v1  # the pass goes on alerting with the old model
    print(f"\nalerts opened by the garbage model before its rollback: {versions.count(v2)}; by v{v1}: "
          f"{versions.count(v1)}; {back['ota']['error']}")
    assert v2 not in versions
    assert sub.invalid == []
