"""Release manifests and the trust chain, with TUF's attack tests ported to this design: arbitrary software,
rollback/replay, freeze (expiry), mix-and-match, endless data, key rotation and revocation."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import generate_keypair, load_private_key, load_public_keys
from edge.ota.errors import OtaError
from edge.ota.policy import decide, parse_app_version, rollout_bucket
from edge.ota.release import MAX_MESSAGE_BYTES, Release, keyid, sign_release, verify_release
from edge.ota.state import StateStore, UpdaterMemory
from tests.test_ota_support import BundleServer, Device, tiny_models

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def rel(version: int = 2, **kw: object) -> Release:
    base = Release(name="tiny", version=version, url="https://models.example/tiny.bundle", sha256="ab" * 32,
                   size=1234, not_after="2026-12-29T12:00:00Z")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    generate_keypair(tmp_path / "k.key", tmp_path / "keys" / "k.pub")
    return load_private_key(tmp_path / "k.key"), tmp_path / "keys"


def payload(r: Release, key: Ed25519PrivateKey) -> bytes:
    return json.dumps(sign_release(r, key)).encode()


def test_roundtrip_and_canonical_form(keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    key, keys_dir = keypair
    msg = sign_release(rel(), key)
    assert msg["keyid"] == keyid(key.public_key()) and len(msg["keyid"]) == 16
    # the device re-serialises canonically, so key order and whitespace in transit do not matter
    shuffled = json.dumps({"sig": msg["sig"], "keyid": msg["keyid"],
                           "release": dict(reversed(list(msg["release"].items())))}, indent=3).encode()
    vr = verify_release(shuffled, load_public_keys([keys_dir]))
    assert vr.release == rel() and vr.key_name == "k.pub"


@pytest.mark.parametrize("field,value", [("version", 3), ("url", "https://evil.example/x.bundle"),
                                         ("sha256", "cd" * 32), ("size", 99), ("rollout", 0.5),
                                         ("not_after", "2099-01-01T00:00:00Z")])
def test_any_changed_field_breaks_the_signature(keypair: tuple[Ed25519PrivateKey, Path], field: str,
                                                value: object) -> None:
    key, keys_dir = keypair
    msg = sign_release(rel(), key)
    msg["release"][field] = value
    with pytest.raises(OtaError) as e:
        verify_release(json.dumps(msg).encode(), load_public_keys([keys_dir]))
    assert e.value.code == "bad-signature"


def test_arbitrary_software_unsigned_unknown_key_no_keys(keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    key, keys_dir = keypair
    keys = load_public_keys([keys_dir])
    msg = sign_release(rel(), key)
    unsigned = {"release": msg["release"]}
    cases = [
        (json.dumps(unsigned).encode(), keys, "unsigned-release"),
        (payload(rel(), Ed25519PrivateKey.generate()), keys, "unknown-key"),
        (json.dumps({**msg, "keyid": None, "sig": base64.b64encode(b"\0" * 64).decode()}).encode(), keys,
         "unknown-key"),
        (json.dumps(msg).encode(), {}, "no-keys"),
        (b"\xff not json", keys, "malformed"),
        (json.dumps({**msg, "sig": "***"}).encode(), keys, "bad-signature"),
    ]
    for data, k, code in cases:
        with pytest.raises(OtaError) as e:
            verify_release(data, k)
        assert e.value.code == code, (code, e.value)
        if code in ("unknown-key", "unsigned-release"):  # the operator learns which release was refused
            r = rel()
            assert f"release {r.name!r} v{r.version}" in str(e.value), e.value


def test_an_unverified_release_s_name_and_key_id_are_shown_quoted_and_short(
        keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    """What an unsigned message says of itself goes into the log and model/state: a name of 20,000 characters
    with newlines in it (a forged log line) went in as it was."""
    key, keys_dir = keypair
    forged = "x\nERROR edge.app: the cart is on fire" + "y" * 20_000  # within the 64 KiB message limit
    msg = json.dumps({"release": dataclasses.asdict(rel(2, name=forged)), "keyid": forged, "sig": "AAAA"}).encode()
    with pytest.raises(OtaError) as e:
        verify_release(msg, load_public_keys([keys_dir]))
    text = str(e.value)
    assert "\n" not in text and len(text) < 600 and "'x\\nERROR edge.app" in text, text


@pytest.mark.parametrize("field,value", [("url", "ftp://x/y"), ("sha256", "XYZ"), ("size", 0), ("version", -1),
                                         ("rollout", 1.5), ("not_after", "tomorrow"),
                                         ("not_after", "2026-12-29T12:00:00"), ("min_app_version", "latest"),
                                         ("name", "a/b")])
def test_malformed_fields_are_named(keypair: tuple[Ed25519PrivateKey, Path], field: str, value: object) -> None:
    key, keys_dir = keypair
    msg = sign_release(rel(), key)
    msg["release"][field] = value
    with pytest.raises(OtaError) as e:
        verify_release(json.dumps(msg).encode(), load_public_keys([keys_dir]))
    assert e.value.code == "malformed" and f"release.{field}" in str(e.value)


def test_endless_data_on_the_release_channel(keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    key, keys_dir = keypair
    msg = sign_release(rel(), key)
    msg["padding"] = "x" * MAX_MESSAGE_BYTES
    with pytest.raises(OtaError) as e:
        verify_release(json.dumps(msg).encode(), load_public_keys([keys_dir]))
    assert e.value.code == "too-large"


def _vr(r: Release, key: Ed25519PrivateKey, keys_dir: Path):  # type: ignore[no-untyped-def]
    return verify_release(payload(r, key), load_public_keys([keys_dir]))


def test_rollback_replay_freeze_and_conflict(keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    key, keys_dir = keypair
    old = _vr(rel(2), key, keys_dir)
    state = UpdaterMemory(highest_version=3, highest_sha256="cd" * 32).with_seen(old.digest)
    replay = decide(old, state, "cart-07", "0.1.0", NOW, None)  # seen before: skipped, and not news to report
    assert (replay.apply, replay.code, replay.report) == (False, "replay", False)
    codes = []
    for vr in (_vr(rel(1, sha256="ee" * 32), key, keys_dir), _vr(rel(3), key, keys_dir)):
        with pytest.raises(OtaError) as e:
            decide(vr, state, "cart-07", "0.1.0", NOW, None)
        codes.append(e.value.code)
    assert codes == ["downgrade", "conflict"]
    # freeze: an attacker keeps serving a release past its expiry
    stale = _vr(rel(4, not_after="2026-11-29T11:59:59Z"), key, keys_dir)
    with pytest.raises(OtaError) as e:
        decide(stale, state, "cart-07", "0.1.0", NOW, None)
    assert e.value.code == "expired"
    # the same accepted version again (e.g. after an interrupted install) may resume
    assert decide(_vr(rel(3, sha256="cd" * 32), key, keys_dir), state, "cart-07", "0.1.0", NOW, None).apply
    assert not decide(_vr(rel(3, sha256="cd" * 32), key, keys_dir), state, "cart-07", "0.1.0", NOW,
                      "cd" * 32).apply  # already running


def test_state_is_durable_and_damage_is_detected(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    assert store.load() == UpdaterMemory()
    st = UpdaterMemory(highest_version=7, highest_sha256="ab" * 32).with_seen("d1").with_failed("f1", "smoke-hang: x")
    store.save(st)
    assert StateStore(tmp_path / "state.json").load() == st
    assert st.with_failed("f1", "other").failed_why == {"f1": "smoke-hang: x"}  # the first failure's reason stays
    # a state file written before reasons were kept still loads
    (tmp_path / "state.json").write_text('{"schema": "shelfscout.ota-state/1", "failed": ["f1"]}')
    assert store.load().failed == ("f1",) and store.load().failed_why == {}
    (tmp_path / "state.json").write_text("{garbage")
    with pytest.raises(ValueError):
        store.load()


def test_min_app_version_and_rollout(keypair: tuple[Ed25519PrivateKey, Path]) -> None:
    key, keys_dir = keypair
    assert parse_app_version("0.1.0") == parse_app_version("0.1") < parse_app_version("0.1.1rc1")
    with pytest.raises(OtaError) as e:
        decide(_vr(rel(2, min_app_version="0.2.0"), key, keys_dir), UpdaterMemory(), "cart-07", "0.1.9", NOW, None)
    assert e.value.code == "app-too-old"
    assert decide(_vr(rel(2, min_app_version="0.2.0"), key, keys_dir), UpdaterMemory(), "cart-07", "0.2.0", NOW,
                  None).apply
    # rollout: stable per device, about the right share of a fleet, different ids land differently
    assert rollout_bucket("cart-07", "tiny") == rollout_bucket("cart-07", "tiny")
    ids = [f"cart-{i:04d}" for i in range(4000)]
    share = sum(rollout_bucket(i, "tiny") < 0.3 for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    vr = _vr(rel(2, rollout=0.3), key, keys_dir)
    taken = [i for i in ids[:200] if decide(vr, UpdaterMemory(), i, "0.1.0", NOW, None).apply]
    assert taken == [i for i in ids[:200] if rollout_bucket(i, "tiny") < 0.3]


# ---- on the device: key rotation and revocation, freeze via the clock, endless release polling --------------------
@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> dict[str, bytes]:
    return tiny_models(request.config)


def test_key_rotation_and_revocation_on_the_device(tmp_path: Path, models: dict[str, bytes]) -> None:
    dev = Device(tmp_path, models)
    generate_keypair(tmp_path / "new.key", dev.keys_dir / "release-2027.pub")
    new_key = load_private_key(tmp_path / "new.key")
    up = dev.updater()
    # both keys trusted during the rotation: a release and bundle signed by the new key install
    out = up.apply_release(dev.release(dev.bundle(1, key=new_key), key=new_key))
    assert out.state == "probation", out
    for _ in range(5):
        up.observe_frame(1.0, True)
    # the old key is revoked by deleting its file: its releases are refused at once
    (dev.keys_dir / "release.pub").unlink()
    out = up.apply_release(dev.release(dev.bundle(2)))
    assert out.code == "unknown-key" and dev.current().startswith("v1-")
    # a new-key release pointing at an old-key bundle is refused too
    out = up.apply_release(dev.release(dev.bundle(2, out=dev.pub_dir / "old.bundle"), key=new_key))
    assert out.code == "bundle-unknown-key" and dev.current().startswith("v1-")
    # the running model, signed by the new key, still verifies at start-up
    assert dev.updater().active_bundle_path().name.startswith("v1-")


def test_device_clock_decides_expiry(tmp_path: Path, models: dict[str, bytes]) -> None:
    dev = Device(tmp_path, models)
    later = (datetime.now(timezone.utc) + timedelta(days=31)).timestamp()
    up = dev.updater(clock=lambda: later)
    out = up.apply_release(dev.release(dev.bundle(1), expires_in=timedelta(days=30)))
    assert out.code == "expired" and dev.current() == ""


def test_polling_an_endless_release_url_is_bounded(tmp_path: Path, models: dict[str, bytes]) -> None:
    dev = Device(tmp_path, models)
    with BundleServer() as srv:
        url = srv.add("release.json", b"", "endless")
        dev.with_ota(poll_url=url, poll_interval_s=30.0)
        up = dev.updater()
        up.start()
        try:
            from tests.test_ota_support import wait_for

            assert wait_for(lambda: any(r["ota"].get("code") == "too-large" for r in dev.reports), timeout=10)
        finally:
            up.stop()
