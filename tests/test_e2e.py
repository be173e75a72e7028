"""End to end: a rendered cart-pass video through `shelfscout run` (the shipped int8 model) to a real mosquitto.

Every test here runs the real service as a subprocess, on a real .mp4 with known gap positions, and checks what a
subscriber receives: one `opened` per true gap the model finds, none on filled shelf, valid payloads and JPEGs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from convert.cartpass import CartPass, make_aisle, render_cart_pass
from convert.passcheck import score_pass
from edge.bundle import DEFAULT_BUNDLE
from tests.mosquitto import Mosquitto, free_port
from tests.schema_check import ValidatingSubscriber

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")

STORE, DEVICE = "s042", "cart-07"
ALERT_LINE = re.compile(r"alert (opened|cleared) (\S+) frame=")


@pytest.fixture(scope="module")
def cart_pass(tmp_path_factory: pytest.TempPathFactory) -> CartPass:
    d = tmp_path_factory.mktemp("pass")
    aisle = make_aisle(np.random.default_rng(11), length_px=1500, n_gaps=4)
    return render_cart_pass(aisle, d / "aisle.mp4", fps=15.0, speed_px_per_frame=10.0, seed=3)


def write_config(tmp: Path, source: Path, url: str, realtime: bool = False, state: Path | None = None,
                 ota: str = "enabled = false", **extra: str) -> Path:
    """tmp/config.toml for the test cart: its outbox (and alert state) in `state` (default tmp/state); `extra`
    lines are appended to their sections."""
    state = state if state is not None else tmp / "state"
    sections = {
        "device": f'id = "{DEVICE}"\nstore = "{STORE}"',
        "camera": f'source = "{source}"\nrealtime = {str(realtime).lower()}',
        "mqtt": f'url = "{url}"\nstats_interval_s = 1.0\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0',
        "outbox": f'path = "{state / "outbox.db"}"',
        "ota": ota,
        "preview": "enabled = false",
    }
    for k, v in extra.items():
        sections[k] = sections.get(k, "") + "\n" + v
    p = tmp / "config.toml"
    p.write_text("\n".join(f"[{k}]\n{v}\n" for k, v in sections.items()))
    return p


def start_service(config: Path, log: Path, wrap: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`shelfscout run -c CONFIG`, its log appended to `log`; `wrap` runs it under another command (faketime)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([*wrap, sys.executable, "-m", "edge.cli", "-v", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env)


def run_to_end(config: Path, log: Path, timeout_s: float = 120, **kw: Any) -> None:
    """`shelfscout run` over the finite pass until it exits, which must be with 0 (killed if it overruns)."""
    proc = start_service(config, log, **kw)
    try:
        assert proc.wait(timeout_s) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def all_delivered(sub: ValidatingSubscriber, log: Path) -> None:
    """Give the backend the time to receive what the run committed, then stop listening."""
    sub.wait_for(lambda: len(alerts_of(sub)) >= len(committed_alerts(log)), 10)
    sub.stop()


def committed_alerts(log: Path) -> set[tuple[str, str]]:
    """(event, alert id) of every alert the service logged after committing it to its outbox."""
    return {(m.group(1), m.group(2)) for m in ALERT_LINE.finditer(log.read_text(errors="replace"))}


def alerts_of(sub: ValidatingSubscriber) -> list[dict[str, Any]]:
    return sub.json_on("/alerts")


def check_payloads_and_snapshots(sub: ValidatingSubscriber) -> None:
    assert sub.invalid == [], f"payloads failing their schema: {sub.invalid[:3]}"
    snaps: dict[str, dict[str, bytes]] = {}  # alert id -> sha256 -> JPEG (opened and cleared share the topic)
    for m in sub.containing("/snapshots/"):
        snaps.setdefault(m.topic.rsplit("/", 1)[1], {})[hashlib.sha256(m.payload).hexdigest()] = m.payload
    for a in alerts_of(sub):
        if a["event"] != "opened":
            continue
        assert a["store"] == STORE and a["device"] == DEVICE
        assert a["snapshot"] is not None, a
        jpeg = snaps.get(a["id"], {}).get(a["snapshot"]["sha256"])
        assert jpeg is not None, f"no snapshot with the announced sha256 for alert {a['id']}"
        assert len(jpeg) == a["snapshot"]["bytes"]
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 0, "snapshot is not a JPEG"


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[ValidatingSubscriber]:
    sub = ValidatingSubscriber(broker.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="e2e-backend").start()
    yield sub
    sub.stop()


@pytest.fixture(scope="module")
def pass_run(tmp_path_factory: pytest.TempPathFactory, cart_pass: CartPass) -> dict[str, Any]:
    """One `shelfscout run` over the cart pass, watched by a validating subscriber (shared by the checks below)."""
    tmp = tmp_path_factory.mktemp("run")
    with Mosquitto(tmp / "broker") as broker:
        sub = ValidatingSubscriber(broker.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="e2e-backend").start()
        log = tmp / "service.log"
        proc = start_service(write_config(tmp, cart_pass.path, broker.url), log)
        try:
            code = proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
        sub.wait_for(lambda: len(alerts_of(sub)) >= len(committed_alerts(log)), 10)
        sub.stop()
    score = score_pass(cart_pass, alerts_of(sub))
    print(f"\ncart pass: {score.summary()} (recall {score.recall:.2f})")
    return {"code": code, "log": log, "sub": sub, "score": score}


def test_cart_pass_gives_one_alert_per_gap(pass_run: dict[str, Any], cart_pass: CartPass) -> None:
    log: Path = pass_run["log"]
    sub: ValidatingSubscriber = pass_run["sub"]
    assert pass_run["code"] == 0, log.read_text()[-3000:]
    score = pass_run["score"]
    assert len(score.found) >= len(cart_pass.gaps) // 2, (
        f"the model found only {score.found} of {len(cart_pass.gaps)} gaps: {log.read_text()[-2000:]}")
    assert score.duplicates == {}, f"one physical gap gave several alerts: {score.duplicates}"
    check_payloads_and_snapshots(sub)
    # each event once per id; the retained status ends offline after a clean exit
    ids = [(a["id"], a["event"]) for a in alerts_of(sub)]
    assert len(ids) == len(set(ids))
    statuses = sub.json_on("/status")
    assert statuses and statuses[-1]["state"] == "offline"
    assert sub.json_on("/stats"), "no stats published"
    # a video file has no full-resolution stream: its snapshots are its frames, which is no cause for a warning
    assert "is the inference image" not in log.read_text()


def test_cart_pass_gives_no_alert_on_filled_shelf(pass_run: dict[str, Any]) -> None:
    assert pass_run["score"].false_alarms == [], f"alerts on filled shelf: {pass_run['score'].false_alarms}"


def test_a_camera_mounted_on_its_side_alerts_like_an_upright_one(tmp_path: Path, cart_pass: CartPass,
                                                                  pass_run: dict[str, Any]) -> None:
    """The same pass recorded by a camera turned a quarter turn (portrait frames, the shelf running up the picture),
    run with `camera.rotate = 90`: the same gaps alerted as by the upright camera, none on filled shelf, and
    snapshots that stand upright (landscape, as the frames the model saw)."""
    from convert.cartpass import iter_video_rgb

    turned = tmp_path / "turned.mp4"
    writer = cv2.VideoWriter(str(turned), cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (480, 640))
    for rgb in iter_video_rgb(cart_pass.path):
        writer.write(cv2.rotate(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), cv2.ROTATE_90_COUNTERCLOCKWISE))
    writer.release()
    with Mosquitto(tmp_path / "broker") as broker:
        sub = ValidatingSubscriber(broker.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="e2e-backend").start()
        log = tmp_path / "service.log"
        run_to_end(write_config(tmp_path, turned, broker.url, camera="width = 480\nheight = 640\nrotate = 90"), log)
        all_delivered(sub, log)
    score = score_pass(cart_pass, alerts_of(sub))
    upright = pass_run["score"]
    assert score.found == upright.found and score.duplicates == {} and score.false_alarms == [], (
        f"turned: {score.summary()}; upright: {upright.summary()}")
    check_payloads_and_snapshots(sub)
    for m in sub.containing("/snapshots/"):
        img = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[1] > img.shape[0], "a snapshot of the turned camera is not upright"


def test_broker_down_at_start_then_all_alerts_arrive(tmp_path: Path, cart_pass: CartPass) -> None:
    port = free_port()
    log = tmp_path / "service.log"
    proc = start_service(write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{port}"), log)
    try:
        # the service runs, commits alerts to its outbox while the broker is away, and retries it; the broker
        # starts only once the first alert is stored (a fixed sleep let a slow start run the pass against it)
        deadline = time.monotonic() + 120
        while "alert opened" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        assert "alert opened" in log.read_text(), log.read_text()[-2000:]
        with Mosquitto(tmp_path / "broker", port=port) as b:
            sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="late-backend").start()
            assert proc.wait(120) == 0, log.read_text()[-3000:]
            committed = committed_alerts(log)
            assert committed, "the service committed no alert"
            got = {(a["event"], a["id"]) for a in alerts_of(sub)}
            assert sub.wait_for(lambda: committed <= {(a["event"], a["id"]) for a in alerts_of(sub)}, 15), (
                f"lost: {committed - got}")
            check_payloads_and_snapshots(sub)
            sub.stop()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="Debian's `faketime` package is not installed "
                                                           "(make test installs it)")
def test_a_cart_whose_clock_is_not_set_still_alerts_and_says_its_times_are_wrong(tmp_path: Path,
                                                                              cart_pass: CartPass) -> None:
    """A Pi has no real-time clock: it boots at 1970 until NTP sets the time, and may be on the shelf by then.
    The whole service under libfaketime (the wall clock only; monotonic time runs as it is): every alert still
    goes out, valid, and `status` says the times in them are wrong, so nobody trusts a 1970 `first_seen`."""
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        run_to_end(write_config(tmp_path, cart_pass.path, b.url), log, 180,
                   wrap=("faketime", "-m", "-f", "@1970-01-01 00:00:00"),
                   env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        committed = committed_alerts(log)
        assert committed, log.read_text()[-3000:]
        assert sub.wait_for(lambda: committed <= {(a["event"], a["id"]) for a in alerts_of(sub)}, 15)
        sub.stop()
    check_payloads_and_snapshots(sub)
    assert all(a["ts"].startswith("1970-01-01T") for a in alerts_of(sub))  # what the device's clock said
    degraded = [s for s in sub.json_on("/status") if s["state"] == "degraded"]
    assert degraded and "the clock is not set (it reads 1970-01-01T" in degraded[-1]["reason"], (
        sub.json_on("/status"))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 3), (signal.SIGHUP, 5)])
def test_a_stop_while_draining_says_what_stays_queued_and_exits_3(
    tmp_path: Path, cart_pass: CartPass, sig: signal.Signals, code: int
) -> None:
    """The pass is over but the broker is away: a stop (systemd's SIGTERM, or a SIGHUP: a reload or a closed
    terminal) ends the service cleanly, says how many messages wait for the next start, and exits 3 as a drain
    timeout does (5 for SIGHUP, the reload's code, which the unit restarts); the messages are still in the outbox."""
    from edge.outbox import Outbox

    log = tmp_path / "service.log"
    proc = start_service(write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{free_port()}"), log)
    try:
        deadline = time.monotonic() + 120
        while "source ended; draining" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(30) == code, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    m = re.search(r"stopped while draining: (\d+) messages stay queued", text)
    assert m and "Traceback" not in text, text[-2000:]
    with Outbox(tmp_path / "state" / "outbox.db") as outbox:
        assert outbox.depth() == int(m.group(1)) > 0


def test_commands_on_the_running_service_take_a_reason_and_refuse_other_arguments(
    tmp_path: Path, cart_pass: CartPass
) -> None:
    """`reload {"bundle": ...}` was answered ok while ignoring the path: a backend would believe the cart took a
    model it never looked at. Arguments the service does not understand are refused; a `reason` is logged."""
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        cfg = write_config(tmp_path, cart_pass.path, b.url, realtime=True, camera="loop = true")
        proc = start_service(cfg, log)
        try:
            assert sub.wait_for(lambda: any(s["state"] == "online" for s in sub.json_on("/status")), 60), (
                log.read_text()[-2000:])
            base = f"shelfscout/{STORE}/{DEVICE}/cmd"
            # `online` is published on connect, before the cart's subscription is in place: a command sent in
            # between is not delivered, so probe until one is answered. The probe is a command the cart does not
            # know, answered on its own reply topic, so a late answer to an earlier probe is never taken for one of
            # the cases below
            deadline = time.monotonic() + 30
            while not sub.containing("/cmd/probe/reply") and time.monotonic() < deadline:
                sub.client.publish(f"{base}/probe", b"", qos=1).wait_for_publish(5)
                sub.wait_for(lambda: bool(sub.containing("/cmd/probe/reply")), 1)
            assert sub.containing("/cmd/probe/reply"), log.read_text()[-2000:]

            def answers() -> list[Any]:
                return [m for m in sub.containing("/reply") if "/cmd/probe/" not in m.topic]

            for name, payload in [("reload", {"bundle": "/elsewhere/other.bundle"}), ("pause", {"reason": "aisle 7 "
                                  "closed"}), ("resume", {"speed": 2}), ("reload", {}), ("snapshot", {})]:
                sub.client.publish(f"{base}/{name}", json.dumps(payload).encode(), qos=1).wait_for_publish(5)
            assert sub.wait_for(lambda: len(answers()) == 5, 20), log.read_text()[-2000:]
            replies = [(m.topic.rsplit("/", 2)[1], json.loads(m.payload)) for m in answers()]
            snap = replies[4][1]["result"]  # the picture the backend asked for, on the topic the reply names
            assert sub.wait_for(lambda: bool(sub.containing(snap["topic"])), 10), snap
        finally:
            proc.terminate()
            proc.wait(30)
        sub.stop()
    assert [(n, r["ok"]) for n, r in replies] == [("reload", False), ("pause", True), ("resume", False),
                                                  ("reload", True), ("snapshot", True)]
    jpeg = bytes(sub.containing(snap["topic"])[0].payload)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and len(jpeg) == snap["bytes"] and snap["frame"] >= 0
    assert snap["captured"].endswith("Z") and snap["age_s"] >= 0  # the paused cart's last frame: how old it is
    assert snap["topic"].startswith(f"shelfscout/{STORE}/{DEVICE}/snapshots/manual-")
    assert "bundle" in replies[0][1]["error"] and "OTA" in replies[0][1]["error"]
    assert "speed" in replies[2][1]["error"]
    assert "command pause: aisle 7 closed" in log.read_text()


@pytest.mark.parametrize("damage", ["missing", "tampered"])
def test_a_configured_model_that_cannot_run_falls_back_to_the_built_in_one(
    tmp_path: Path, cart_pass: CartPass, damage: str
) -> None:
    """A cart whose model file was deleted or damaged still finds gaps with the signed built-in model and says
    why in its retained status, instead of exiting and being restarted until systemd gives up."""
    bundle = tmp_path / "store.bundle"
    if damage == "tampered":
        data = bytearray(DEFAULT_BUNDLE.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bundle.write_bytes(bytes(data))
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        run_to_end(write_config(tmp_path, cart_pass.path, b.url, model=f'bundle = "{bundle}"'), log)
        all_delivered(sub, log)
    degraded = [st for st in sub.json_on("/status") if st["state"] == "degraded"]
    assert degraded and "running the built-in default model" in degraded[0]["reason"]
    assert str(bundle) in degraded[0]["reason"]
    assert alerts_of(sub), "no alert: the built-in model did not run"
    assert {a["model"]["name"] for a in alerts_of(sub)} == {"shelfgap-default"}


@pytest.mark.parametrize("model", ["configured", "built-in"])
def test_a_key_file_that_is_not_a_key_is_named_and_skipped_not_a_stopped_cart(
    tmp_path: Path, cart_pass: CartPass, model: str
) -> None:
    """An installer copies the wrong file into the keys folder (INSTALL: "copy my-models.pub there"). Every model
    was refused with it, the built-in one too, so the service exited and systemd gave up after five restarts. The
    file is skipped now, named in the retained status, and the cart runs its model."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "fleet.pub").write_text("custom\n")
    bundle = tmp_path / "store.bundle"
    bundle.write_bytes(DEFAULT_BUNDLE.read_bytes())  # signed with the built-in key
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        extra = {"model": f'bundle = "{bundle}"'} if model == "configured" else {}
        cfg = write_config(tmp_path, cart_pass.path, b.url, ota=f'enabled = false\nkeys_dir = "{keys}"', **extra)
        run_to_end(cfg, log)
        all_delivered(sub, log)
    degraded = [st for st in sub.json_on("/status") if st["state"] == "degraded"]
    assert degraded and f"key file {keys / 'fleet.pub'} is not a PEM public key" in degraded[0]["reason"]
    assert "running the built-in default model" not in degraded[0]["reason"]  # its own model runs
    assert alerts_of(sub) and {a["model"]["name"] for a in alerts_of(sub)} == {"shelfgap-default"}


def test_a_cart_running_an_unsigned_model_says_so_in_its_retained_status(tmp_path: Path, cart_pass: CartPass) -> None:
    """`model.dev_allow_unsigned = true` let a cart run a bundle without a signature while its status said `online`
    with no reason: only its own journal knew (the contract audit's defect 4). A fleet sees it now."""
    from edge.bundle import read_bundle, write_bundle

    shipped = read_bundle(DEFAULT_BUNDLE, None, allow_unsigned=True)
    bundle = tmp_path / "unsigned.bundle"
    write_bundle(bundle, shipped.manifest, {k: v for k, v in shipped.members.items()
                                            if k not in ("manifest.json", "manifest.sig")}, None)
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        cfg = write_config(tmp_path, cart_pass.path, b.url, model=f'bundle = "{bundle}"\ndev_allow_unsigned = true')
        check = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--syntax-only", str(cfg)],
                               capture_output=True, text=True)
        assert check.returncode == 0 and "warning: model.dev_allow_unsigned = true" in check.stderr
        run_to_end(cfg, log)
        all_delivered(sub, log)
    online = [st for st in sub.json_on("/status") if st["state"] == "online"]
    assert online and all("running an UNSIGNED model (DEVELOPMENT MODE" in (st["reason"] or "") for st in online)
    assert alerts_of(sub), "no alert: the unsigned model did not run"


def test_a_cart_that_would_refuse_every_model_release_says_so(tmp_path: Path, cart_pass: CartPass) -> None:
    """OTA on and no release key in the keys folder (a typo in ota.keys_dir, the key never copied): every release
    is refused, while `config check` said ok and the status online with no reason (the contract audit's defect 5).
    Both say it now; the cart runs and alerts as before."""
    keys = tmp_path / "keys"
    keys.mkdir()
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log = tmp_path / "service.log"
        cfg = write_config(tmp_path, cart_pass.path, b.url,
                           ota=f'enabled = true\nkeys_dir = "{keys}"\nmodels_dir = "{tmp_path / "models"}"')
        check = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(cfg)],
                               capture_output=True, text=True)
        said = f"warning: ota.keys_dir: no release key (*.pub) in {keys}: every model release is refused"
        assert check.returncode == 0 and said in check.stderr, check.stderr
        run_to_end(cfg, log)
        all_delivered(sub, log)
    online = [st for st in sub.json_on("/status") if st["state"] == "online"]
    assert online and all(f"OTA: no release key (*.pub) in {keys}" in (st["reason"] or "") for st in online)
    assert alerts_of(sub)


def test_a_cart_that_stops_on_an_error_says_why_in_its_retained_status(tmp_path: Path) -> None:
    """The last retained `status` of a cart whose run failed said `offline`, "stopped", like a clean stop: the
    operator of a cart that systemd restarts in a loop saw nothing of why (the contract audit's defect 6)."""
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/status"], client_id="backend").start()
        missing = tmp_path / "gone.mp4"
        proc = start_service(write_config(tmp_path, missing, b.url), tmp_path / "service.log")
        assert proc.wait(120) == 2
        assert sub.wait_for(lambda: any(st["state"] == "offline" for st in sub.json_on("/status")), 10)
    last = sub.json_on("/status")[-1]
    assert last["state"] == "offline"
    assert last["reason"] == f"stopped by an error: video {missing}: no such file or folder"


@pytest.mark.parametrize("damage", ["garbage", "cut short"])
def test_alerts_queued_in_an_outbox_that_got_corrupt_are_still_delivered(
    tmp_path: Path, cart_pass: CartPass, damage: str
) -> None:
    """A pass with the broker away leaves its alerts queued; the outbox file is then damaged. The next start
    quarantines it, salvages what SQLite can still read, and announces every open alert again (same ids) when the
    cart next sees it: once the cart passes by again, the backend has every alert of the first pass."""
    from edge.outbox import Outbox

    cfg = write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{free_port()}")  # no broker
    log = tmp_path / "first.log"
    proc = start_service(cfg, log)
    try:
        deadline = time.monotonic() + 120
        while "source ended; draining" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(30) == 3, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    queued = committed_alerts(log)
    assert queued, "the first pass committed no alert"
    db = tmp_path / "state" / "outbox.db"
    with Outbox(db) as ob:
        assert ob.depth() >= len(queued)
    data = db.read_bytes()
    db.write_bytes(os.urandom(len(data)) if damage == "garbage" else data[:len(data) * 2 // 3])
    with Mosquitto(tmp_path / "broker") as b:
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        log2 = tmp_path / "second.log"
        run_to_end(write_config(tmp_path, cart_pass.path, b.url), log2)
        assert sub.wait_for(lambda: queued <= {(a["event"], a["id"]) for a in alerts_of(sub)}, 15), (
            f"lost: {queued - {(a['event'], a['id']) for a in alerts_of(sub)}}\n{log2.read_text()[-3000:]}")
        check_payloads_and_snapshots(sub)
        sub.stop()
    text = log2.read_text()
    assert "is corrupt" in text and "announced again" in text
    if damage == "cut short":
        assert "salvaged" in text


def test_broker_restarts_and_service_kills_lose_nothing(tmp_path: Path, cart_pass: CartPass) -> None:
    """Kill and restart the broker 5 times and SIGKILL + restart the service twice during a real-time run."""
    port = free_port()
    bdir = tmp_path / "broker"
    bdir.mkdir()
    # persistence keeps the backend's queued session across broker restarts (this later line overrides the
    # generated config's `persistence false`)
    b = Mosquitto(bdir, port=port, extra=f"persistence true\npersistence_location {bdir}/\nautosave_interval 1\n")
    b.start()
    log = tmp_path / "service.log"
    cfg = write_config(tmp_path, cart_pass.path, b.url, realtime=True)
    sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="durable-backend",
                               persistent=True).start()
    proc = start_service(cfg, log)
    rng = np.random.default_rng(5)
    try:
        kills = 0
        for i in range(5):
            time.sleep(float(rng.uniform(0.8, 1.6)))
            b.stop()  # SIGTERM: mosquitto saves the backend's queued messages
            time.sleep(float(rng.uniform(0.2, 1.0)))
            b.start()
            if i in (1, 3) and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
                proc = start_service(cfg, log)
        assert kills == 2
        assert proc.wait(240) == 0, log.read_text()[-3000:]
        committed = committed_alerts(log)
        assert committed, "the service committed no alert"

        def received() -> set[tuple[str, str]]:
            return {(a["event"], a["id"]) for a in alerts_of(sub)}

        assert sub.wait_for(lambda: committed <= received(), 30), f"lost: {committed - received()}"
        # duplicates are allowed (at least once), but every copy of an event carries the same id and payload id
        by_event: dict[str, set[str]] = {}
        for a in alerts_of(sub):
            by_event.setdefault(a["event_id"], set()).add(json.dumps([a["id"], a["event"], a["first_seen"]]))
        assert all(len(v) == 1 for v in by_event.values()), "a resent alert changed its identity"
        assert sub.invalid == []
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.stop()
        b.stop()


def test_the_preview_says_why_there_is_no_picture(tmp_path: Path) -> None:
    """The installer opens the preview to aim a camera that is not there (a wrong device): the page said only
    "Waiting for the camera…" while MQTT and systemd named the device. /status.json, which the page shows, carries
    the service's status and reason now, from `shelfscout run` itself (no broker needed for that)."""
    import urllib.request

    port = free_port()
    cfg = write_config(tmp_path, Path("/dev/video97"), f"mqtt://127.0.0.1:{free_port()}", realtime=True)
    cfg.write_text(cfg.read_text().replace("[preview]\nenabled = false", f'[preview]\nbind = "127.0.0.1:{port}"'))
    log = tmp_path / "service.log"
    proc = start_service(cfg, log)
    got: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=2) as r:
                    got = json.loads(r.read())
            except OSError:
                got = {}
            if (got.get("service") or {}).get("state") == "degraded":
                break
            time.sleep(0.3)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)
    assert got.get("has_frame") is False and got["service"]["state"] == "degraded", got
    assert "/dev/video97" in got["service"]["reason"]


def test_a_preview_port_already_taken_is_said_in_the_status_and_the_alerts_flow(tmp_path: Path,
                                                                                 cart_pass: CartPass) -> None:
    """Another program holds the preview's port: the cart runs on (alerts matter more), and its retained status
    says why there is no preview (it was only in the journal, once), while staying `online`."""
    import socket

    with socket.socket() as taken, Mosquitto(tmp_path / "broker") as b:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sub = ValidatingSubscriber(b.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        cfg = write_config(tmp_path, cart_pass.path, b.url)
        cfg.write_text(cfg.read_text().replace("[preview]\nenabled = false", f'[preview]\nbind = "127.0.0.1:{port}"'))
        log = tmp_path / "service.log"
        run_to_end(cfg, log)
        all_delivered(sub, log)
    assert alerts_of(sub), "no alert"
    said = [st for st in sub.json_on("/status") if st["state"] == "online" and st["reason"]]
    assert said and f"live preview not started (preview: cannot listen on 127.0.0.1:{port}: Address already in use)" \
        == said[-1]["reason"], sub.json_on("/status")
    assert not [st for st in sub.json_on("/status") if st["state"] == "degraded"]


_SLOW_LOAD = """
import sys, time
import edge.app as app
load = app.load_model
def slow(*args, **kw):  # a Zero 2 W loads and checks the model for seconds: a stop may come in the middle
    bundle = load(*args, **kw)
    print("LOADING", flush=True)
    time.sleep(3.0)
    return bundle
app.load_model = slow
from edge.cli import main
sys.exit(main(["-v", "run", "-c", sys.argv[1]]))
"""


def _slow_start(cfg: Path, log: Path, ignore_hup: bool = False) -> subprocess.Popen[str]:

    def child() -> None:
        if ignore_hup:  # as `nohup` starts a program
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LOAD, str(cfg)], stdout=subprocess.PIPE,
                            stderr=open(log, "ab"), text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=child)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "LOADING", log.read_text()[-3000:]
    return proc


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 0), ("SIGINT", 0), ("SIGHUP", 5)])
def test_a_stop_during_start_up_ends_the_run_cleanly(tmp_path: Path, cart_pass: CartPass, sig: str,
                                                     code: int) -> None:
    """`systemctl stop` while the model loads killed the service with the default handler (exit 143): with a new
    model on probation that counted as a crash, and the second such stop rolled a good model back and refused it
    for good. The handlers come before start-up now. SIGHUP (`systemctl reload`) stopped the cart for good too (a
    clean exit, which Restart=on-failure leaves down); it exits with 5 now, which the unit restarts."""

    cfg = write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{free_port()}", realtime=True)
    log = tmp_path / "service.log"
    proc = _slow_start(cfg, log)
    try:
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(60) == code, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"{sig}: stopping" in log.read_text()


def test_a_sighup_ignored_by_nohup_stays_ignored(tmp_path: Path, cart_pass: CartPass) -> None:
    """`nohup shelfscout run ... &` still stopped when the terminal closed: the service put its own SIGHUP handler
    over the ignore it inherited."""

    cfg = write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{free_port()}", realtime=True,
                       camera="loop = true")
    log = tmp_path / "service.log"
    proc = _slow_start(cfg, log, ignore_hup=True)
    try:
        proc.send_signal(signal.SIGHUP)  # while starting
        time.sleep(5.0)  # past the slow start: running frames
        proc.send_signal(signal.SIGHUP)  # while running
        time.sleep(2.0)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
