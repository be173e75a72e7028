"""The device updater end to end on real signed bundles of real int8 models: happy path, rejection matrix,
probation and rollback, and the start-up check."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import DEFAULT_BUNDLE
from tests.test_ota_support import BundleServer, Device, tiny_models, wait_for


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


@pytest.fixture
def dev(tmp_path: Path, models: dict[str, bytes]) -> Device:
    return Device(tmp_path, models)


def install_v1(dev: Device) -> Any:
    """A device that already runs v1 (installed through the updater itself), out of probation."""
    dev.install(1)
    up = dev.updater()  # a fresh service start; smoke tests in a child interpreter from here on
    assert up.active_bundle_path().name.startswith("v1-")
    dev.reports.clear()
    return up


def test_the_probation_gate_holds_the_new_models_garbage_from_its_first_frame(dev: Device) -> None:
    """The new model runs from the swap on: its implausible frames must be held back from the tracker from then, not
    only once the probation window is made after the swap (its first frames got through)."""
    up = install_v1(dev)
    seen: list[tuple[bool, bool]] = []
    swap = up.swap

    def watching_swap(path: Path) -> None:
        swap(path)
        seen.append((up.admits(False, 2), up.admits(False, 1)))  # v2's first frame, one of v1's still in flight

    up.swap = watching_swap
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"
    assert seen == [(False, True)]


def test_a_rolled_back_models_last_frames_do_not_excuse_the_next_garbage_release(dev: Device) -> None:
    """The next probation compares the new model with the frames the model before it gave. After a rollback, the
    judged model's frames still in the pipeline (up to 7) and those it runs until the swap back lands were taken
    for the running model's: the next garbage release then looked no worse than "the model before", so its
    implausible frames neither counted nor were held from the tracker, and it passed."""
    dev.with_ota(probation_frames=50)
    up = install_v1(dev)
    for _ in range(30):
        up.observe_frame(3.0, True, True, 1)  # v1 running: plausible frames
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"
    while up.in_probation:  # v2 sees gaps everywhere
        up.observe_frame(3.0, True, False, 2)
    assert dev.states()[-1] == "rolled_back"
    for _ in range(7):  # v2's frames still in flight when the verdict came
        up.observe_frame(3.0, True, False, 2)
    for _ in range(30):  # v1 again
        up.observe_frame(3.0, True, True, 1)
    assert up.apply_release(dev.release(dev.bundle(3))).state == "probation"
    admitted = 0
    while up.in_probation:  # v3 is garbage too
        admitted += up.admits(False, 3)
        up.observe_frame(3.0, True, False, 3)
    assert dev.states()[-1] == "rolled_back" and "probation-garbage" in str(dev.reports[-1]["ota"]["error"])
    assert admitted == 0


def test_happy_path_v2_runs_and_every_step_is_reported(dev: Device) -> None:
    up = install_v1(dev)
    v1_dir = dev.current()
    out = up.apply_release(dev.release(dev.bundle(2)))
    assert out.state == "probation" and out.code is None
    assert dev.current().startswith("v2-")
    assert os.readlink(dev.models_dir / "previous") == v1_dir
    assert dev.swaps == [dev.models_dir / dev.current()]
    assert dev.states() == ["downloading", "verifying", "smoke_testing", "switching", "probation"]
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(4.0, True)
    assert dev.states()[-1] == "active"
    last = dev.reports[-1]
    assert last["model"]["version"] == 2 and last["ota"]["version"] == 2 and last["ota"]["error"] is None
    # the retained release comes again on every reconnect: nothing happens
    n = len(dev.reports)
    assert up.apply_release(dev.release(dev.pub_dir / "tiny-v2-ok.bundle")).state == "skipped"
    assert len(dev.reports) == n
    # a restart finds v2, verified
    again = dev.updater()
    assert again.active_bundle_path() == dev.models_dir / dev.current()
    print(f"\nOTA v1->v2 apply (file:// source, incl. smoke-test child): {out.seconds:.2f} s")


def test_publish_to_running_via_background_thread_and_polling(dev: Device) -> None:
    install_v1(dev)
    rel = dev.tmp / "release.json"
    dev.with_ota(poll_url=rel.as_uri(), poll_interval_s=0.1, probation_frames=0)
    up = dev.updater()
    up.active_bundle_path()
    dev.reports.clear()  # the start-up report of the last outcome (v1 active)
    up.start()
    try:
        t0 = time.monotonic()
        rel.write_bytes(dev.release(dev.bundle(2)))
        assert wait_for(lambda: "active" in dev.states(), timeout=30)
        dt = time.monotonic() - t0
        assert dev.current().startswith("v2-")
        print(f"\nrelease file written -> v2 active (poll 0.1 s, file:// bundle): {dt:.2f} s")
        t0 = time.monotonic()
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(3)))
        assert wait_for(lambda: dev.current().startswith("v3-"), timeout=30)
        print(f"on_release -> v3 active: {time.monotonic() - t0:.2f} s")
    finally:
        up.stop()


# ---- rejection matrix: each case its own error, `current` unchanged -------------------------------------------------
def _rejected(dev: Device, up: Any, payload: bytes, code: str) -> None:
    before = dev.current()
    out = up.apply_release(payload)
    assert (out.state in ("rejected", "failed"), out.code) == (True, code), out
    assert dev.current() == before
    assert dev.reports[-1]["ota"]["state"] == out.state
    assert dev.reports[-1]["ota"]["error"].startswith(code + ":")
    assert dev.swaps == []


def test_reject_unsigned_release(dev: Device) -> None:
    import json

    up = install_v1(dev)
    msg = json.loads(dev.release(dev.bundle(2)))
    del msg["sig"]
    _rejected(dev, up, json.dumps(msg).encode(), "unsigned-release")


def test_reject_unsigned_bundle(dev: Device) -> None:
    up = install_v1(dev)
    _rejected(dev, up, dev.release(dev.bundle(2, signed=False)), "unsigned-bundle")


def test_reject_unknown_key(dev: Device) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    up = install_v1(dev)
    stranger = Ed25519PrivateKey.generate()
    _rejected(dev, up, dev.release(dev.bundle(2), key=stranger), "unknown-key")
    # a trusted release pointing at a bundle signed by a stranger
    _rejected(dev, up, dev.release(dev.bundle(2, key=stranger, out=dev.pub_dir / "s.bundle")),
              "bundle-unknown-key")


def test_reject_when_no_keys_configured(dev: Device) -> None:
    up = install_v1(dev)
    (dev.keys_dir / "release.pub").unlink()
    _rejected(dev, up, dev.release(dev.bundle(2)), "no-keys")


def test_reject_hash_mismatch_and_mix_and_match(dev: Device) -> None:
    import dataclasses as dc
    import hashlib
    import json

    up = install_v1(dev)
    b2 = dev.bundle(2)
    _rejected(dev, up, dev.release(b2, sha256=hashlib.sha256(b"other").hexdigest()), "hash-mismatch")
    # mix-and-match: a validly signed v3 release whose url serves the (validly signed) v2 bundle
    b3 = dev.bundle(3)
    msg = json.loads(dev.release(b3))
    v2 = json.loads(dev.release(b2))["release"]
    from edge.ota.release import Release, sign_release

    mixed = dc.replace(Release.from_dict(msg["release"]), sha256=v2["sha256"], size=v2["size"], url=v2["url"])
    _rejected(dev, up, json.dumps(sign_release(mixed, dev.key)).encode(), "mismatch")


def test_the_same_announcement_works_once_the_cart_trusts_its_key(dev: Device) -> None:
    """INSTALL.md's remedy for `unknown-key`: put the key in the cart's keys folder, publish the release again. The
    cart remembered the announcement as rejected and ignored it until a restart."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    up = install_v1(dev)
    newcomer = Ed25519PrivateKey.generate()
    release = dev.release(dev.bundle(2), key=newcomer)
    up._handle(release)
    assert dev.reports[-1]["ota"]["code"] == "unknown-key" and dev.current().startswith("v1-")
    (dev.keys_dir / "newcomer.pub").write_bytes(newcomer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    up._handle(release)
    assert dev.reports[-1]["ota"]["state"] == "probation" and dev.current().startswith("v2-")


def test_the_same_announcement_works_once_the_file_it_names_is_fixed(dev: Device) -> None:
    """A half-uploaded or stale copy at the release's URL fails the hash. Fixing the file and announcing the same
    release again (a republish, the next poll) must install it; the cart ignored it until a restart."""
    up = install_v1(dev)
    b2 = dev.bundle(2)
    release = dev.release(b2)
    good = b2.read_bytes()
    b2.write_bytes(good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0xFF]) + good[len(good) // 2 + 1:])
    up._handle(release)  # the worker's path for a release from MQTT or a poll
    assert dev.reports[-1]["ota"]["code"] == "hash-mismatch" and dev.current().startswith("v1-")
    b2.write_bytes(good)
    up._handle(release)
    assert dev.reports[-1]["ota"]["state"] == "probation" and dev.current().startswith("v2-")


def test_a_newer_release_installed_meanwhile_cancels_the_retry_of_an_older_one(dev: Device) -> None:
    """v2's download failed (transient: retried later); v3 installs first. The retry of v2 must not fire and
    report a false `replay` over v3's healthy state (it did, 30 s later)."""
    up = install_v1(dev)
    up._handle(dev.release(dev.bundle(2), url=(dev.pub_dir / "not-there-yet.bundle").as_uri()))
    assert dev.reports[-1]["ota"]["state"] == "failed" and up._retry is not None
    up._handle(dev.release(dev.bundle(3)))
    assert dev.reports[-1]["ota"]["state"] == "probation" and dev.current().startswith("v3-")
    assert up._retry is None


@pytest.mark.parametrize("mode,code", [("truncated", "truncated"), ("extra", "too-long"),
                                       ("extra-no-length", "too-long"), ("endless", "too-long"),
                                       ("stalled", "stalled")])
def test_reject_bad_downloads(dev: Device, mode: str, code: str) -> None:
    up = install_v1(dev)
    b2 = dev.bundle(2)
    data = b2.read_bytes()
    with BundleServer() as srv:
        if mode == "truncated":
            url = srv.add("b", data[:-100], "truncated")
        elif mode == "extra":
            url = srv.add("b", data + b"\0")
        elif mode == "extra-no-length":
            url = srv.add("b", data + b"\0", "no-length")
        else:
            url = srv.add("b", data, mode)
        t0 = time.monotonic()
        _rejected(dev, up, dev.release(b2, url=url), code)
        assert time.monotonic() - t0 < 20
    staged = list((dev.models_dir / "staging").iterdir())
    if code == "too-long":
        assert staged == []  # nothing of an overlong stream is kept
    for p in staged:
        assert p.stat().st_size <= len(data)


def test_reject_downgrade_replay_and_expired(dev: Device) -> None:
    up = install_v1(dev)
    old_v2 = dev.release(dev.bundle(2))
    assert up.apply_release(old_v2).state == "probation"
    for _ in range(5):
        up.observe_frame(3.0, True)
    assert up.apply_release(dev.release(dev.bundle(3))).state == "probation"
    for _ in range(5):
        up.observe_frame(3.0, True)
    dev.reports.clear()
    dev.swaps.clear()
    # the very same old announcement (a stale retained release beside a newer one): refused, and not reported on
    # model/state, where it would say `rejected` after every restart of a healthy cart
    out = up.apply_release(old_v2)
    assert (out.state, out.code) == ("skipped", "replay") and dev.reports == [] and dev.swaps == []
    _rejected(dev, up, dev.release(dev.bundle(1, out=dev.pub_dir / "v1b.bundle")), "downgrade")
    _rejected(dev, up, dev.release(dev.bundle(4), expires_in=timedelta(seconds=-1)), "expired")
    # same version number, different bundle
    _rejected(dev, up, dev.release(dev.bundle(3, name="tiny", out=dev.pub_dir / "v3b.bundle",
                                              created="other")), "conflict")
    # downgrade protection survives a restart (state.json)
    up2 = dev.updater()
    up2.active_bundle_path()
    dev.reports.clear()
    _rejected(dev, up2, dev.release(dev.bundle(2, out=dev.pub_dir / "v2c.bundle", created="x")), "downgrade")


def test_a_cart_on_its_built_in_model_refuses_an_older_release(dev: Device) -> None:
    """No release was ever accepted, so the state's floor is empty; the model the cart runs sets one anyway (a cart
    on the built-in version 6 took a version-3 release)."""
    up = dev.updater()
    up.active_bundle_path()
    up.running_version = 5  # what the service sets from the model it loaded
    _rejected(dev, up, dev.release(dev.bundle(3)), "downgrade")
    assert "the model this device runs" in dev.reports[-1]["ota"]["error"]
    assert up.apply_release(dev.release(dev.bundle(6))).state in ("probation", "active")
    assert up.running_version == 6


def test_a_full_disk_under_the_models_folder_fails_cleanly_and_the_next_try_works(dev: Device) -> None:
    """A real tmpfs under the models folder, filled up: the update fails as `disk-full` (transient, retried), not
    `internal`, and leaves no download or half-extracted folder behind to keep the disk full (they did)."""
    from tests.test_disk_full import fill, small_disk

    up = install_v1(dev)
    release = dev.release(dev.bundle(2))
    with small_disk(dev.models_dir.parent / "small", "1m") as disk:
        models = disk / "models"
        shutil.copytree(dev.models_dir, models, symlinks=True)
        dev.with_ota(models_dir=str(models))
        dev.models_dir = models
        up = dev.updater()
        up.active_bundle_path()
        dev.reports.clear()
        filler = fill(disk, leave=8 * 1024)
        out = up.apply_release(release)
        assert (out.state, out.code) == ("failed", "disk-full"), out
        assert dev.reports[-1]["ota"]["code"] == "disk-full"
        assert not any((models / "staging").glob("*"))  # (none when the folder was never made)
        assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]
        assert up.active_bundle_path().name.startswith("v1-")  # still running what it had
        filler.unlink()
        assert up.apply_release(release).state == "probation"  # the retry, once there is room


def _evil_tar(path: Path, good: Path, kind: str) -> None:
    import io
    import tarfile

    with tarfile.open(good) as src, tarfile.open(path, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        if kind == "symlink":
            info = tarfile.TarInfo("golden2.npz")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            dst.addfile(info)
        else:
            name = "../escape.txt" if kind == "dotdot" else "/tmp/shelfscout-ota-abs.txt"
            info = tarfile.TarInfo(name)
            info.size = 3
            dst.addfile(info, io.BytesIO(b"bad"))


@pytest.mark.parametrize("kind,code", [("dotdot", "unsafe-path"), ("absolute", "unsafe-path"),
                                       ("symlink", "unsafe-link")])
def test_reject_unsafe_tar(dev: Device, kind: str, code: str) -> None:
    up = install_v1(dev)
    evil = dev.pub_dir / f"evil-{kind}.bundle"
    _evil_tar(evil, dev.bundle(2), kind)
    _rejected(dev, up, dev.release(evil), code)
    assert not (dev.tmp / "escape.txt").exists() and not (dev.models_dir.parent / "escape.txt").exists()
    assert not Path("/tmp/shelfscout-ota-abs.txt").exists()


def test_reject_wrong_io(dev: Device) -> None:
    from edge.bundle import OutputSpec, TensorSpec

    up = install_v1(dev)
    wrong = OutputSpec("gap-heatmap", (TensorSpec("heatmap", (1, 16, 16, 1), "int8"),), stride=2)
    _rejected(dev, up, dev.release(dev.bundle(2, output=wrong)), "wrong-io")


def test_reject_constant_output_model(dev: Device) -> None:
    up = install_v1(dev)
    _rejected(dev, up, dev.release(dev.bundle(2, kind="const")), "constant-output")
    # and it is remembered: the same release is not tried again, and the refusal says why it failed, also after
    # a restart (the operator sees this refusal, not the first one)
    _rejected(dev, up, dev.release(dev.pub_dir / "tiny-v2-const.bundle"), "failed-before")
    assert "(constant-output: " in dev.reports[-1]["ota"]["error"]
    restarted = dev.updater()
    restarted.active_bundle_path()
    _rejected(dev, restarted, dev.release(dev.pub_dir / "tiny-v2-const.bundle"), "failed-before")
    assert "(constant-output: " in dev.reports[-1]["ota"]["error"]


def test_reject_model_that_hangs_the_interpreter(dev: Device) -> None:
    install_v1(dev)
    up = dev.updater(smoke_timeout_s=4.0)
    up.active_bundle_path()
    _rejected(dev, up, dev.release(dev.bundle(2, kind="hang")), "smoke-hang")


def test_reject_model_that_crashes_the_interpreter(dev: Device) -> None:
    # a real model whose WHILE op recurses into its own graph: LiteRT dies of SIGSEGV while preparing it
    up = install_v1(dev)
    _rejected(dev, up, dev.release(dev.bundle(2, kind="crash")), "smoke-crash")
    assert "SIGSEGV" in dev.reports[-1]["ota"]["error"]


def test_not_in_rollout_or_app_too_old(dev: Device) -> None:
    from edge.ota.policy import rollout_bucket

    up = install_v1(dev)
    bucket = rollout_bucket("cart-07", "tiny")
    out = up.apply_release(dev.release(dev.bundle(2), rollout=bucket * 0.99))
    assert out.state == "skipped" and dev.current().startswith("v1-")
    said = dev.reports[-1]["ota"]  # not a silent `idle`: the operator sees why this cart did not take it
    assert (said["state"], said["code"], said["version"]) == ("skipped", "outside-rollout", 2)
    assert "outside the rollout" in said["error"]
    _rejected(dev, up, dev.release(dev.bundle(2), min_app_version="99.0"), "app-too-old")
    assert up.apply_release(dev.release(dev.bundle(2), rollout=min(1.0, bucket + 0.01))).state == "probation"


# ---- probation and rollback ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latency,ok,code", [(80.0, True, "probation-latency"), (4.0, False, "probation-garbage")])
def test_probation_rolls_back(dev: Device, latency: float, ok: bool, code: str) -> None:
    up = install_v1(dev)
    v1 = dev.current()
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"
    v2 = dev.current()
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(latency, ok)
    assert dev.current() == v1 and not (dev.models_dir / v2).exists()
    assert dev.swaps[-1] == dev.models_dir / v1
    last = dev.reports[-1]["ota"]
    assert last["state"] == "rolled_back" and last["error"].startswith(code) and last["version"] == 2
    assert dev.reports[-1]["model"]["version"] == 1
    # and after a restart the operator still reads why (model/state said `idle` before)
    dev.reports.clear()
    restarted = dev.updater()
    restarted.active_bundle_path()
    assert dev.reports and dev.reports[0]["ota"] == last
    assert up.apply_release(dev.release(dev.pub_dir / "tiny-v2-ok.bundle")).code == "failed-before"
    assert f"({code}: " in dev.reports[-1]["ota"]["error"]
    assert up.apply_release(dev.release(dev.bundle(3))).state == "probation"


def test_probation_rollback_runs_on_the_worker_thread_not_between_frames(dev: Device) -> None:
    import threading

    from edge.ota.updater import Updater

    dev.install(1)
    v1 = dev.current()
    threads: list[str] = []

    def swap(p: Path) -> None:
        threads.append(threading.current_thread().name)
        dev.swaps.append(p)

    up = Updater(dev.cfg, report=dev.reports.append, swap=swap)
    up.active_bundle_path()
    up.start()
    try:
        up.on_release("shelfscout/s042/model/release", dev.release(dev.bundle(2)))
        assert wait_for(lambda: up.in_probation, timeout=20)
        t0 = time.monotonic()
        for _ in range(dev.cfg.ota.probation_frames):
            up.observe_frame(3.0, False)  # NaN outputs
        frame_cost = time.monotonic() - t0
        assert wait_for(lambda: dev.current() == v1 and dev.states()[-1] == "rolled_back", timeout=10)
        assert threads == ["ota", "ota"]  # the swap in and the swap back, both off the frame loop
        print(f"\n{dev.cfg.ota.probation_frames} probation frames incl. the rollback decision: "
              f"{frame_cost * 1e3:.2f} ms on the frame thread")
    finally:
        up.stop()


def test_load_failure_on_swap_rolls_back(dev: Device) -> None:
    install_v1(dev)
    v1 = dev.current()
    calls: list[Path] = []

    def swap(p: Path) -> None:
        calls.append(p)
        if p.name.startswith("v2-"):
            raise RuntimeError("interpreter refused the model")

    from edge.ota.updater import Updater

    up = Updater(dev.cfg, report=dev.reports.append, swap=swap)
    up.active_bundle_path()
    out = up.apply_release(dev.release(dev.bundle(2)))
    assert out.state == "rolled_back" and out.code == "load-failed"
    assert dev.current() == v1 and calls[-1] == dev.models_dir / v1


def test_restarts_during_probation_roll_back(dev: Device) -> None:
    up = install_v1(dev)
    v1 = dev.current()
    up.apply_release(dev.release(dev.bundle(2)))
    # the service dies (crash on the new model) and starts again: probation goes on; the second time: rollback
    assert dev.updater().active_bundle_path().name.startswith("v2-")
    assert dev.updater().active_bundle_path().name == v1
    assert dev.reports[-1]["ota"]["state"] == "rolled_back"
    assert dev.reports[-1]["ota"]["error"].startswith("probation-crash")


def _start(dev: Device, boot: str) -> Any:
    """A service start in the boot `boot` (what /proc/sys/kernel/random/boot_id says), through the start-up check."""
    up = dev.updater(boot_id=lambda: boot)
    up.active_bundle_path()
    return up


def test_power_cuts_during_probation_are_not_crashes(dev: Device) -> None:
    """Two power cuts before the new model's probation frames ran keep the model; a crash after them is
    tolerated once, as after the switch; a third power cut rolls back (a model that takes the device down)."""
    install_v1(dev)
    v1 = dev.current()
    _start(dev, "boot-a").apply_release(dev.release(dev.bundle(2)))
    for boot in ("boot-b", "boot-c", "boot-c"):  # power cut, power cut, then the service crashed once
        assert _start(dev, boot).in_probation and dev.current().startswith("v2-")
    assert dev.states()[-1] == "probation"
    _start(dev, "boot-d")  # a third power cut with v2 still unproven
    assert dev.current() == v1
    assert dev.reports[-1]["ota"]["state"] == "rolled_back"
    assert "rebooted 3 times" in dev.reports[-1]["ota"]["error"]


def test_crashes_after_a_power_cut_during_probation_roll_back(dev: Device) -> None:
    install_v1(dev)
    v1 = dev.current()
    _start(dev, "boot-a").apply_release(dev.release(dev.bundle(2)))
    assert _start(dev, "boot-b").in_probation  # a power cut
    assert _start(dev, "boot-b").in_probation  # the service crashed once in this boot
    _start(dev, "boot-b")  # and again: the model crashes it
    assert dev.current() == v1
    assert dev.reports[-1]["ota"]["error"].startswith("probation-crash")


def test_clean_stops_during_probation_are_not_crashes(dev: Device) -> None:
    up = install_v1(dev)
    up.apply_release(dev.release(dev.bundle(2)))
    up.stop()
    for _ in range(3):  # the operator restarts the service three times while v2 is on probation
        again = dev.updater()
        assert again.active_bundle_path().name.startswith("v2-") and again.in_probation
        assert again.current_path == dev.models_dir / dev.current()
        again.stop()
    for _ in range(dev.cfg.ota.probation_frames):
        again.observe_frame(2.0, True)
    assert dev.states()[-1] == "active" and dev.current().startswith("v2-")


# ---- start-up check ------------------------------------------------------------------------------------------------------
def test_rotten_current_falls_back_to_previous(dev: Device) -> None:
    up = install_v1(dev)
    v1 = dev.current()
    up.apply_release(dev.release(dev.bundle(2)))
    for _ in range(5):
        up.observe_frame(3.0, True)
    model = dev.models_dir / dev.current() / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit on the SD card
    model.write_bytes(bytes(data))
    dev.reports.clear()
    path = dev.updater().active_bundle_path()
    assert path == dev.models_dir / v1 and dev.current() == v1
    assert dev.reports[-1]["ota"]["state"] == "rolled_back"
    assert dev.reports[-1]["ota"]["error"].startswith("rotten-current")


@pytest.mark.parametrize("damage", ["typo in a new key", "signer's key replaced by a typo", "every key gone"])
def test_a_bad_key_file_never_unlinks_a_good_model(dev: Device, damage: str) -> None:
    """An operator's bad copy of a key file is the keys' fault, not the model's: a key file that is not a key is
    skipped, and if the model then cannot be verified the cart runs its built-in model for this start, says why,
    and keeps the links, so the OTA model is back at the first start after the key files are fixed."""
    up = install_v1(dev)
    v1 = dev.current()
    pubs = {f: f.read_bytes() for f in dev.keys_dir.glob("*.pub")}
    typo = b"-----BEGIN PUBLIC KEY-----\ntypo\n-----END PUBLIC KEY-----\n"
    if damage == "typo in a new key":
        (dev.keys_dir / "new-signer.pub").write_bytes(typo)
    elif damage == "signer's key replaced by a typo":
        for f in pubs:
            f.write_bytes(typo)
    else:
        for f in pubs:
            f.unlink()
    dev.reports.clear()
    path = dev.updater().active_bundle_path()
    assert dev.current() == v1  # the link is kept either way
    if damage == "typo in a new key":
        assert path == dev.models_dir / v1  # the other keys still verify it
    else:
        assert path == (DEFAULT_BUNDLE if not dev.cfg.model.bundle else Path(dev.cfg.model.bundle))
        said = dev.reports[-1]["ota"]
        assert said["state"] == "failed"
        assert said["error"].startswith("bad-key-file: key file" if "typo" in damage else "no-keys: no trusted keys")
    for f, data in pubs.items():  # fixed
        f.write_bytes(data)
    (dev.keys_dir / "new-signer.pub").unlink(missing_ok=True)
    assert dev.updater().active_bundle_path() == dev.models_dir / v1
    del up


def test_nothing_valid_means_builtin_default(dev: Device) -> None:
    from edge.bundle import BundleError

    up = install_v1(dev)
    (dev.models_dir / dev.current() / "manifest.sig").write_bytes(b"\0" * 64)
    if DEFAULT_BUNDLE.exists():
        assert dev.updater().active_bundle_path() == DEFAULT_BUNDLE
        assert dev.current() == ""
    else:  # the default bundle is built by the model helper; without it there is nothing valid to run
        with pytest.raises(BundleError):
            dev.updater().active_bundle_path()
    del up


def test_unusable_models_dir_runs_the_builtin_model(dev: Device) -> None:
    blocker = dev.tmp / "file"
    blocker.write_text("not a folder")
    dev.with_ota(models_dir=str(blocker / "models"))
    up = dev.updater()
    if DEFAULT_BUNDLE.exists():
        assert up.active_bundle_path() == DEFAULT_BUNDLE
        assert dev.reports[-1]["ota"]["state"] == "failed"
        assert dev.reports[-1]["ota"]["error"].startswith("io-error")


def test_probation_counts_only_the_new_models_frames_and_forgives_what_the_old_one_saw_too(dev: Device) -> None:
    """Frames still in flight from the model before the switch are not the new one's; implausible frames (gaps
    everywhere) roll the new model back, unless the model before it saw the same in its last frames (a stripped
    aisle, not a broken model)."""
    from edge.ota.probation import ProbationWindow

    up = install_v1(dev)
    for _ in range(30):
        up.observe_frame(3.0, True, True, 1)  # v1 running: its plausible frames are the baseline
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(3.0, True, False, 1)  # the old model's frames in flight: ignored
    assert up.in_probation
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(3.0, True, False, 2)
        if not up.in_probation:
            break
    last = dev.reports[-1]["ota"]
    assert last["state"] == "rolled_back" and last["error"].startswith("probation-garbage")
    assert "(the previous model: 0% of its last frames)" in last["error"]

    w = ProbationWindow(20, None, baseline_implausible=0.5)  # the old model saw gaps everywhere too
    for _ in range(20):
        w.add(3.0, True, False)
    assert w.done and w.verdict() is None


def test_reload_is_refused_during_probation_and_loads_the_running_folder_after(dev: Device) -> None:
    """`reload` re-reads the running model: during probation that would judge a model the operator swapped in, and
    between a rollback's decision and its swap it would reload the model just rolled back; it runs under the
    updater's lock and is refused while a model is on probation."""
    up = install_v1(dev)
    v1 = dev.models_dir / dev.current()
    loaded: list[Path | None] = []
    up.reload(loaded.append)
    assert loaded == [v1]
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"
    with pytest.raises(ValueError, match="on probation"):
        up.reload(loaded.append)
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(3.0, True)
    assert not up.in_probation
    up.reload(loaded.append)
    assert loaded == [v1, dev.models_dir / dev.current()] and dev.current().startswith("v2-")


@pytest.mark.parametrize("v2_passes", [True, False])
def test_a_release_during_probation_is_reported_deferred_and_runs_after_the_verdict(dev: Device,
                                                                                    v2_passes: bool) -> None:
    """One model on probation at a time: a release announced meanwhile is not dropped and not silent. model/state
    says `deferred` with its version (the model on probation still running), and the release starts by itself
    once the probation ends, whether the model on it passed or was rolled back."""
    up = install_v1(dev)
    up.start()
    try:
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(2)))
        assert wait_for(lambda: up.in_probation, timeout=30)
        v2 = dev.current()
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(3)))
        assert wait_for(lambda: dev.states()[-1] == "deferred", timeout=30)
        last = dev.reports[-1]
        assert (last["ota"]["version"], last["ota"]["error"], last["model"]["version"]) == (3, None, 2)
        assert dev.current() == v2 and up.in_probation
        for _ in range(dev.cfg.ota.probation_frames):
            up.observe_frame(4.0 if v2_passes else 80.0, True, True, 2)
        # the window opens before the switch is reported: wait for the report, not for the window
        assert wait_for(lambda: dev.current().startswith("v3-") and dev.states()[-1] == "probation", timeout=30)
        states = dev.states()
        verdict = "active" if v2_passes else "rolled_back"
        assert states[states.index("deferred"):] == ["deferred", verdict, "downloading", "verifying",
                                                    "smoke_testing", "switching", "probation"]
        assert dev.reports[-1]["ota"]["version"] == 3
    finally:
        up.stop()


def test_a_release_waits_while_the_clock_is_not_set_and_applies_once_it_is(dev: Device) -> None:
    """A Pi has no real-time clock: until NTP sets it, it reads 1970, and every release past its expiry passed for
    fresh. It waits now (a transient failure, retried), and applies once the clock is set; an expired one is then
    refused as expired. (A clock at the last shutdown's time: tests/test_clock.py.)"""
    import time as _time

    dev.install(1)
    now = {"t": 12.0}  # 1970-01-01T00:00:12Z, a cold boot
    up = dev.updater(clock=lambda: now["t"])
    up.active_bundle_path()
    dev.reports.clear()
    out = up.apply_release(dev.release(dev.bundle(2)))
    assert (out.state, out.code) == ("failed", "clock-not-set") and dev.current().startswith("v1-")
    assert "1970-01-01T00:00:12Z" in dev.reports[-1]["ota"]["error"] and dev.swaps == []
    stale = dev.release(dev.bundle(3), expires_in=timedelta(seconds=-1))
    assert up.apply_release(stale).code == "clock-not-set"  # not taken for fresh
    now["t"] = _time.time()  # NTP has set it
    assert up.apply_release(stale).code == "expired"
    assert up.apply_release(dev.release(dev.bundle(2))).state == "probation"


@pytest.mark.parametrize("hostile", [
    b'{"release": {"sha256": "../../*"}}',  # unsigned: its sha256 was globbed under staging/, and matches deleted
    b'{"release": {"sha256": "/x"}}',  # an absolute pattern: glob raised, and the worker thread died
    b"[" * 100_000,  # nested past Python's recursion limit: RecursionError, the worker died
])
def test_a_hostile_release_message_deletes_nothing_and_the_worker_carries_on(dev: Device, hostile: bytes) -> None:
    """Whoever can publish on a release topic could delete the state folder's files by a glob in an unsigned
    message, or end the OTA worker (no release, retry or poll handled again until a restart, and nothing said).
    Only a verified release's fields name files now, and nothing a message does ends the worker."""
    up = install_v1(dev)
    state = dev.models_dir.parent
    victim = state / "operator-copy.bundle"
    victim.write_text("kept")
    (dev.models_dir / "staging").mkdir(exist_ok=True)
    up.start()
    try:
        up.on_release("shelfscout/fleet/model/release", hostile)
        assert wait_for(lambda: bool(dev.reports) and dev.states()[-1] == "rejected", timeout=10), dev.states()
        assert victim.read_text() == "kept"
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(2)))  # the worker still works
        assert wait_for(lambda: dev.current().startswith("v2-"), timeout=30), dev.states()
    finally:
        up.stop()


def test_during_probation_the_newest_release_waits_and_a_replay_does_not_replace_it(dev: Device) -> None:
    """One release waits while a model is on probation. A retained older one delivered again (a reconnect, a
    second release topic) replaced the newest: that one never ran, and model/state named the replay as waiting."""
    up = install_v1(dev)
    old_v2 = dev.release(dev.bundle(2))  # the fleet's announcement, retained: it comes again on every reconnect
    assert up.apply_release(old_v2).state == "probation"
    for _ in range(dev.cfg.ota.probation_frames):
        up.observe_frame(4.0, True, True, 2)
    assert up.apply_release(dev.release(dev.bundle(3))).state == "probation"  # the store's, newer
    assert up.apply_release(dev.release(dev.bundle(5))).state == "deferred"
    assert up.apply_release(old_v2).state == "skipped"  # a replay: not news, and not what goes next
    assert up.apply_release(dev.release(dev.bundle(4))).state == "skipped"  # older than what waits
    assert [(r["ota"]["state"], r["ota"]["version"]) for r in dev.reports if r["ota"]["state"] == "deferred"] == [
        ("deferred", 5)]
    up.start()
    try:
        for _ in range(dev.cfg.ota.probation_frames):
            up.observe_frame(4.0, True, True, 3)
        assert wait_for(lambda: dev.current().startswith("v5-"), timeout=30), dev.states()
    finally:
        up.stop()


def test_a_smoke_test_killed_from_outside_is_retried_not_held_against_the_model(dev: Device,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The smoke test's child killed with SIGKILL (the kernel's out-of-memory killer on a 512 MB Zero 2 W, the
    service stopping) was a `smoke-crash`: the release was marked failed on this cart for good, though the model
    did nothing wrong. It is a transient failure now, and the same release installs when tried again."""
    from edge.ota.faults import ENV, SMOKE_CHILD_KILLED

    up = install_v1(dev)
    release = dev.release(dev.bundle(2))
    monkeypatch.setenv(ENV, SMOKE_CHILD_KILLED)
    out = up.apply_release(release)
    assert (out.state, out.code) == ("failed", "smoke-killed") and dev.current().startswith("v1-")
    monkeypatch.delenv(ENV)
    assert up.apply_release(release).state == "probation" and dev.current().startswith("v2-")


def test_a_rollback_that_fails_is_tried_again_not_dropped(dev: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model on probation gives garbage; the rollback's first save hits a full disk. The worker logged it and
    went on: the failed model kept running, model/state still said probation, and the next release made it the
    rollback slot. The rollback is said to have failed, tried again, and releases wait until it is done."""
    import errno

    import edge.ota.updater as updater_mod

    monkeypatch.setattr(updater_mod, "ROLLBACK_RETRY_S", 0.2)
    up = install_v1(dev)
    v1 = dev.current()
    up.start()
    try:
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(2)))
        assert wait_for(lambda: up.in_probation, timeout=30)
        save = up.store.save
        fails = {"n": 1}

        def full_once(state: Any) -> None:
            if state.probation is None and fails["n"]:
                fails["n"] -= 1
                raise OSError(errno.ENOSPC, "No space left on device")
            save(state)

        monkeypatch.setattr(up.store, "save", full_once)
        for _ in range(dev.cfg.ota.probation_frames):
            up.observe_frame(3.0, False, True, 2)  # NaN outputs
        up.on_release("shelfscout/fleet/model/release", dev.release(dev.bundle(3)))  # while it is outstanding
        assert wait_for(lambda: dev.current() == v1 and "rolled_back" in dev.states(), timeout=30), dev.states()
        states = dev.states()
        assert "failed" in states and states.index("failed") < states.index("rolled_back")
        assert any("rollback-failed" in (r["ota"]["error"] or "") for r in dev.reports)
        assert wait_for(lambda: dev.current().startswith("v3-"), timeout=30), dev.states()  # then the next one
    finally:
        up.stop()
