"""`shelfscout keygen`, `release` and `publish` through the real CLI, publishing to a real mosquitto."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge.bundle import load_public_keys, read_bundle
from edge.cli import main
from edge.ota.release import verify_release
from tests.mosquitto import Mosquitto, first_messages
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


def test_a_fleet_key_releases_the_project_signed_default_bundle_unchanged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's release key announces a bundle signed by another key the carts trust (the project's own,
    `models/keys`): `--keys` names those keys, the bundle is not rewritten, and the output says which key it needs.
    A public key passed as --key is refused with one line."""
    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE

    assert main(["keygen", str(tmp_path / "fleet")]) == 0
    capsys.readouterr()
    before = DEFAULT_BUNDLE.read_bytes()
    out = tmp_path / "rel.json"
    base = ["release", str(DEFAULT_BUNDLE), "--key", str(tmp_path / "fleet.key"), "--url", "https://m.example/",
            "-o", str(out)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "--keys" in err and "models/keys" in err and len(err.splitlines()) == 1
    assert main([*base, "--keys", str(BUILTIN_KEYS)]) == 0
    signer = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS])).signed_by
    assert f"the bundle is signed by {signer}" in capsys.readouterr().err
    assert DEFAULT_BUNDLE.read_bytes() == before
    r = verify_release(out.read_bytes(), load_public_keys([tmp_path])).release
    assert r.size == len(before) and r.url == f"https://m.example/{DEFAULT_BUNDLE.name}"
    assert main([*base, "--keys", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    pub_as_key = ["release", str(DEFAULT_BUNDLE), "--key", str(tmp_path / "fleet.pub"), "--url", "https://x/",
                  "-o", str(out)]
    assert main(pub_as_key) == 2
    err = capsys.readouterr().err.strip()
    assert "is a public key" in err and len(err.splitlines()) == 1


def test_publish_refuses_a_release_that_has_expired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every cart would refuse it, and as the retained message it would hide the release they run."""
    import time

    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE

    assert main(["keygen", str(tmp_path / "fleet")]) == 0
    out = tmp_path / "rel.json"
    assert main(["release", str(DEFAULT_BUNDLE), "--key", str(tmp_path / "fleet.key"), "--keys", str(BUILTIN_KEYS),
                 "--url", "https://m.example/", "--expires-in", "1s", "-o", str(out)]) == 0
    time.sleep(1.5)
    capsys.readouterr()
    assert main(["publish", str(out), "--broker", "mqtt://127.0.0.1:9", "--fleet"]) == 2  # refused before connecting
    err = capsys.readouterr().err.strip()
    assert "expired at" in err and "--expires-in" in err and len(err.splitlines()) == 1


def _retained(url_port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    got = first_messages(url_port, topic, timeout, retained_only=True)
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
    bad.write_text('{"release": {}, "sig": "x"}')  # every cart would refuse it: so does publish
    assert main(["publish", str(bad), "--broker", "mqtt://127.0.0.1:1", "--fleet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a release a cart can read" in err and len(err.splitlines()) == 1
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.ota.release import Release, format_rfc3339, sign_release

    release = Release("m", 2, "https://m.example/m.bundle", "0" * 64, 10,
                      format_rfc3339(datetime.now(timezone.utc) + timedelta(days=1)), 1.0)
    bad.write_text(json.dumps(sign_release(release, Ed25519PrivateKey.generate())))
    assert main(["publish", str(bad), "--broker", "mqtt://127.0.0.1:1", "--fleet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the broker" in err and len(err.splitlines()) == 1


def _retained_tls(port: int, topic: str, ctx: object, timeout: float = 5.0) -> bytes | None:
    got = first_messages(port, topic, timeout, tls_context=ctx, retained_only=True)
    return got[0] if got else None


def test_publish_with_a_client_certificate_to_a_broker_that_requires_one(
        tmp_path: Path, models: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    """Like the production broker (deploy/mosquitto): certificates required, CN is the user, ACL per CN."""
    from edge.broker import tls_context
    from tests.pki import client_cert, make_pki
    from tests.test_mqtt import RUN_AS_ROOT

    pki = make_pki(tmp_path / "pki")
    pub_crt, pub_key = client_cert(pki, "release-publisher", tmp_path / "pki")
    acl = tmp_path / "acl"
    acl.write_text("user release-publisher\ntopic readwrite shelfscout/fleet/model/release\n"
                   "topic readwrite shelfscout/+/model/release\n")
    b = Mosquitto(tmp_path / "broker", extra=RUN_AS_ROOT)
    b.listener_block = (f"listener {b.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server}\n"
                        f"keyfile {pki.server_key}\nrequire_certificate true\nuse_identity_as_username true\n"
                        f"allow_anonymous false\nacl_file {acl}\n")
    b.start()
    dev = Device(tmp_path / "dev", models)
    rel = tmp_path / "release.json"
    rel.write_bytes(dev.release(dev.bundle(2)))
    url = f"mqtts://127.0.0.1:{b.port}"
    base = ["publish", str(rel), "--broker", url, "--fleet", "--ca", str(pki.ca)]
    try:
        capsys.readouterr()
        assert main([*base, "--cert-file", str(pub_crt), "--key-file", str(pub_key)]) == 0, capsys.readouterr().err
        data = _retained_tls(b.port, "shelfscout/fleet/model/release",
                             tls_context(str(pki.ca), str(pub_crt), str(pub_key)))
        assert data is not None
        assert verify_release(data, load_public_keys([dev.keys_dir])).release.version == 2

        def one_line_error(argv: list[str]) -> str:
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            return err

        # no client certificate: the broker closes the connection; the error says so and suggests the options
        assert "--cert-file/--key-file" in one_line_error(base)
        # a valid certificate whose CN the ACL does not allow: the broker's MQTT 5 PUBACK refusal is reported
        err = one_line_error(["publish", str(rel), "--broker", url, "--store", "s042", "--ca-file", str(pki.ca),
                              "--cert-file", str(pki.backend), "--key-file", str(pki.backend_key)])
        assert "refused the release" in err and "Not authorized" in err, err
        # a broker certificate from another CA
        err = one_line_error(["publish", str(rel), "--broker", url, "--fleet", "--ca", str(pki.other_ca),
                              "--cert-file", str(pub_crt), "--key-file", str(pub_key)])
        assert "certificate verify failed" in err.lower(), err
        # missing files: one line naming the option and the path
        missing = tmp_path / "nope" / "ca.crt"
        assert one_line_error(["publish", str(rel), "--broker", url, "--fleet", "--ca", str(missing)]) == \
            f"shelfscout publish: error: --ca: cannot read {missing}: No such file or directory"
        assert one_line_error([*base, "--cert-file", str(tmp_path / "x.crt"), "--key-file", str(pub_key)]) == \
            f"shelfscout publish: error: --cert-file: cannot read {tmp_path / 'x.crt'}: No such file or directory"
        assert "--cert-file and --key-file must be given together" in one_line_error([*base, "--cert-file",
                                                                                        str(pub_crt)])
        assert "--password-file: cannot read" in one_line_error([*base, "--password-file", str(tmp_path / "pw")])
        # the retained release is still the good one
        data = _retained_tls(b.port, "shelfscout/fleet/model/release",
                             tls_context(str(pki.ca), str(pub_crt), str(pub_key)))
        assert data is not None and verify_release(data, load_public_keys([dev.keys_dir])).release.version == 2
    finally:
        b.stop()


def test_what_release_writes_and_publish_sends_validates_against_the_release_schema(
        tmp_path: Path, models: dict[str, bytes], broker: Mosquitto) -> None:
    import jsonschema

    from tests.schema_check import validate

    dev = Device(tmp_path / "dev", models)
    bundle = dev.bundle(3)
    assert main(["keygen", str(tmp_path / "fleet")]) == 0
    out = tmp_path / "release.json"
    for extra in ([], ["--min-app-version", "0.1.0", "--rollout", "0.5"]):
        assert main(["release", str(bundle), "--key", str(tmp_path / "fleet.key"), "--url", "file:///srv/m/",
                     "--resign", "-o", str(out), *extra]) == 0
        msg = validate("release", out.read_bytes())
        assert msg["release"]["version"] == 3
    assert main(["publish", str(out), "--broker", broker.url, "--store", "s042"]) == 0
    data = _retained(broker.port, "shelfscout/s042/model/release")
    assert data is not None and validate("release", data) == json.loads(out.read_text())
    # the schema catches what the device would refuse to parse
    good = json.loads(out.read_text())
    for broken in ({k: v for k, v in good.items() if k != "sig"},
                   {**good, "release": {**good["release"], "sha256": "ABC"}},
                   {**good, "release": {**good["release"], "url": "ftp://x/b.bundle"}},
                   {**good, "release": {**good["release"], "rollout": 1.5}},
                   {**good, "release": {**good["release"], "extra": 1}},
                   {**good, "keyid": "xyz"}):
        with pytest.raises(jsonschema.ValidationError):
            validate("release", broken)


@pytest.mark.slow
def test_the_release_gate_refuses_a_worse_model_and_passes_an_equal_one(
    tmp_path: Path, models: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """`release --gate DATA` measures the bundle against the fleet's current one on labelled frames (here generated
    shelves): a model trained for two steps is far worse than the shipped one, so no release is written; the
    shipped model against itself differs by nothing and is released."""
    import shutil

    from convert.synth import write_yolo_dataset
    from edge.bundle import DEFAULT_BUNDLE

    data = write_yolo_dataset(tmp_path / "frames", 6, seed=31)
    assert main(["keygen", str(tmp_path / "fleet")]) == 0
    key = ["--key", str(tmp_path / "fleet.key"), "--url", "https://m.example/b/", "--resign"]
    weak = tmp_path / "weak.bundle"
    assert main(["train", str(weak), "--synth", "6", "--synth-val", "2", "--steps", "2", "--batch", "2",
                 "--size", "64", "--crop", "64", "--stride", "8", "--key", str(tmp_path / "fleet.key"),
                 "--work", str(tmp_path / "w"), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "release.json"
    assert main(["release", str(weak), *key, "--gate", str(data), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "REFUSED" in err and "shelfgap-default" in err and len(err.splitlines()) == 1
    assert not out.exists()

    same = tmp_path / "same.bundle"
    shutil.copy2(DEFAULT_BUNDLE, same)
    assert main(["release", str(same), *key, "--gate", str(data), "--gate-against", str(DEFAULT_BUNDLE),
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "release gate passed" in err and "difference +0.000" in err
    assert verify_release(out.read_bytes(), load_public_keys([tmp_path])).release.version == 6

    tiny = Device(tmp_path / "dev", models).bundle(2)  # not a gap-heatmap model: it cannot be measured
    assert main(["release", str(tiny), *key, "--gate", str(data), "-o", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--gate" in err and len(err.splitlines()) == 1 and not (tmp_path / "x.json").exists()
    (tmp_path / "nolabels" / "images").mkdir(parents=True)
    assert main(["release", str(same), *key, "--gate", str(tmp_path / "nolabels"), "-o", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--gate" in err and "labels" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x.json").exists()
