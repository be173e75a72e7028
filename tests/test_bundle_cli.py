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
                    "key": str(tmp_path / "me.key"), "thresholds": {"score": 0.35, "nms_iou": 0.5},
                    "gap_labels": ["empty"]}
    b = read_bundle(out, load_public_keys([tmp_path / "keys"]))
    assert b.manifest.output.stride == read_bundle(DEFAULT_BUNDLE, None, allow_unsigned=True).manifest.output.stride
    assert main(["model", "verify", str(out), "--keys", str(tmp_path / "keys")]) == 0
    # signed by a key the device does not trust: verify fails, and says where a user's own key lives
    capsys.readouterr()
    assert main(["model", "verify", str(out)]) != 0
    assert "pass --keys ~/.config/shelfscout/keys" in capsys.readouterr().err
    # a damaged bundle: release says what is wrong, without suggesting a re-signing that could not help
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    assert main(["release", str(out), "--key", str(tmp_path / "me.key"), "--url", "https://x/", "-o",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--resign" not in err and len(err.strip().splitlines()) == 1


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


def test_a_bundle_s_default_version_is_its_build_time_so_a_cart_takes_it(
    tflite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cart refuses a version it has seen or a lower one: a default of 1 made every second model a user built a
    `conflict` and every one a `downgrade` on a fleet running the project's version 6."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796601600")  # 2026-12-07 00:00 UTC
    generate_keypair(tmp_path / "me.key", tmp_path / "keys" / "me.pub")
    assert main(["bundle", str(tflite), "--out", str(tmp_path / "a.bundle"), "--key", str(tmp_path / "me.key")]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["version"] == 202612070000
    # re-signing a model's .tflite: its own threshold (0.55 for the shipped one) is not in it, and we say so
    assert "score threshold 0.4, the default" in said.err and "--score" in said.err
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796601660")  # a minute later
    assert main(["bundle", str(tflite), "--out", str(tmp_path / "b.bundle"), "--key", str(tmp_path / "me.key")]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 202612070001


@pytest.mark.parametrize("case", ["key typo", "metrics missing", "metrics not json", "heatmap of an ssd"])
def test_bundle_mistakes_are_one_line_errors_and_write_nothing(
    tflite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    out = tmp_path / "x.bundle"
    args = ["bundle", str(tflite), "--out", str(out), "--version", "1"]
    if case == "key typo":  # a mistyped key is not a wish for a new one
        args += ["--key", str(tmp_path / "fleet-typo.key")]
    elif case == "metrics missing":
        args += ["--unsigned", "--metrics", str(tmp_path / "nope.json")]
    elif case == "metrics not json":
        (tmp_path / "bad.json").write_text("{not json")
        args += ["--unsigned", "--metrics", str(tmp_path / "bad.json")]
    else:
        from tests.test_detector_models import build_tiny_ssd_tflite

        args = ["bundle", str(build_tiny_ssd_tflite(tmp_path / "ssd.tflite")), "--out", str(out), "--version", "1",
                "--unsigned"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("shelfscout bundle: error:"), err
    assert {"key typo": "no such key", "metrics missing": "cannot read", "metrics not json": "not JSON",
            "heatmap of an ssd": "--decoding ssd or yolo"}[case] in err
    assert not out.exists() and not (tmp_path / "fleet-typo.key").exists()
