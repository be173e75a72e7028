"""`shelfscout bundle`: re-signing our int8 model as a gap-heatmap bundle, and clear errors for a wrong decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.bundle import DEFAULT_BUNDLE, MODEL, generate_keypair, load_public_keys, read_bundle
from edge.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")


@pytest.fixture
def tflite(tmp_path: Path) -> Path:
    b = read_bundle(DEFAULT_BUNDLE, None, allow_unsigned=True)
    p = tmp_path / "gaps.tflite"
    p.write_bytes(b.members[MODEL])
    return p


def test_bundle_gap_heatmap_model_signs_and_verifies(tflite: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    generate_keypair(tmp_path / "me.key", tmp_path / "keys" / "me.pub")
    out = tmp_path / "mine.bundle"
    code = main(["bundle", str(tflite), "--out", str(out), "--version", "5", "--name", "mine",
                 "--score", "0.35", "--key", str(tmp_path / "me.key")])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"bundle": str(out), "name": "mine", "version": 5, "decoding": "gap-heatmap", "signed": True,
                    "key": str(tmp_path / "me.key"), "thresholds": {"score": 0.35, "nms_iou": 0.5}}
    b = read_bundle(out, load_public_keys([tmp_path / "keys"]))
    assert b.manifest.output.stride == read_bundle(DEFAULT_BUNDLE, None, allow_unsigned=True).manifest.output.stride
    assert main(["model", "verify", str(out), "--keys", str(tmp_path / "keys")]) == 0
    # signed by a key the device does not trust: verify fails
    assert main(["model", "verify", str(out)]) != 0


def test_bundle_with_the_wrong_decoding_is_one_clear_error(tflite: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bundle", str(tflite), "--out", str(tmp_path / "x.bundle"), "--version", "1",
                 "--decoding", "ssd", "--unsigned"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("shelfscout bundle: error:")
    assert not (tmp_path / "x.bundle").exists()


def test_bundle_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bundle", str(tmp_path / "nope.tflite"), "--out", str(tmp_path / "x.bundle"), "--version", "1"])
    assert code != 0 and "does not exist" in capsys.readouterr().err


def test_a_users_bundles_are_signed_with_their_own_key_not_the_projects(
    tflite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --key, `bundle` (like train and finetune) creates and signs with ~/.config/shelfscout/keys/
    my-models.key, never the project's release key, which only `make model` uses."""
    import convert.bundler as bundler
    from convert.build_default import _key_path

    monkeypatch.setattr(bundler, "USER_KEY_DIR", tmp_path / "home-keys")
    monkeypatch.delenv(bundler.KEY_ENV, raising=False)
    assert _key_path() == tmp_path / "home-keys" / "shelfscout-default-2.key"  # make model: the project's key
    out = tmp_path / "mine.bundle"
    assert main(["bundle", str(tflite), "--out", str(out), "--version", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "home-keys").iterdir()) == ["my-models.key", "my-models.pub"]
    assert read_bundle(out, load_public_keys([tmp_path / "home-keys"])).signed_by == "my-models.pub"
    said = json.loads(capsys.readouterr().out)
    assert said["signed"] is True and said["key"] == str(tmp_path / "home-keys" / "my-models.key")
