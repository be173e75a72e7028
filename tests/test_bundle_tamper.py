"""A tampered copy of the shipped bundle (flipped byte, edited manifest, truncated file) is refused everywhere."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import pytest

from edge.bundle import (
    BUILTIN_KEYS,
    DEFAULT_BUNDLE,
    MANIFEST,
    MODEL,
    SIGNATURE,
    BundleError,
    load_public_keys,
    read_bundle,
    write_tar,
)
from edge.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def verify_exit(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["model", "verify", str(path)])
    return code, capsys.readouterr().err


def test_shipped_bundle_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    b = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    assert b.signed_by == "shelfscout-default-2.pub"
    assert DEFAULT_BUNDLE.stat().st_size <= 1024 * 1024
    code, _ = verify_exit(DEFAULT_BUNDLE, capsys)
    assert code == 0


def test_flipped_byte_in_the_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = bytearray(DEFAULT_BUNDLE.read_bytes())
    # flip one byte in the middle of model.tflite's data inside the tar
    m = members(DEFAULT_BUNDLE)
    start = bytes(raw).find(m[MODEL][:64])
    assert start > 0
    raw[start + len(m[MODEL]) // 2] ^= 0x01
    bad = tmp_path / "flipped.bundle"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256 of model.tflite"):
        read_bundle(bad, load_public_keys([BUILTIN_KEYS]))
    code, err = verify_exit(bad, capsys)
    assert code != 0 and "model.tflite" in err


def test_edited_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = members(DEFAULT_BUNDLE)
    manifest = json.loads(m[MANIFEST])
    manifest["thresholds"]["score"] = 0.01  # a plausible, harmful edit
    m[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    bad = tmp_path / "edited.bundle"
    write_tar(bad, m)
    with pytest.raises(BundleError, match="signature"):
        read_bundle(bad, load_public_keys([BUILTIN_KEYS]))
    code, err = verify_exit(bad, capsys)
    assert code != 0 and "signature" in err


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_is_refused(tmp_path: Path, keep: float, capsys: pytest.CaptureFixture[str]) -> None:
    data = DEFAULT_BUNDLE.read_bytes()
    bad = tmp_path / "truncated.bundle"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BundleError):
        read_bundle(bad, load_public_keys([BUILTIN_KEYS]))
    code, _ = verify_exit(bad, capsys)
    assert code != 0


def test_unknown_signer_is_refused(tmp_path: Path) -> None:
    from edge.bundle import generate_keypair

    generate_keypair(tmp_path / "other.key", tmp_path / "keys" / "other.pub")
    with pytest.raises(BundleError, match="signature does not verify"):
        read_bundle(DEFAULT_BUNDLE, load_public_keys([tmp_path / "keys"]))
    # and an extra member smuggled into the tar is refused even though the signature is intact
    m = members(DEFAULT_BUNDLE)
    m["extra.sh"] = b"#!/bin/sh\n"
    bad = tmp_path / "extra.bundle"
    write_tar(bad, m)
    with pytest.raises(BundleError, match="does not list"):
        read_bundle(bad, load_public_keys([BUILTIN_KEYS]))



def test_an_operators_key_named_like_the_projects_does_not_shadow_it_or_get_shadowed(tmp_path: Path) -> None:
    """A cart's keys folder holding the operator's own `shelfscout-default-2.pub` (a different key under the
    project's key's name): the service trusts both, so the operator's re-signed model and the shipped one both run,
    and `signed_by` names which file verified each."""
    from edge.app import trusted_keys
    from edge.bundle import Manifest, generate_keypair, load_private_key, write_bundle
    from edge.config import Config

    keys_dir = tmp_path / "etc-keys"
    generate_keypair(tmp_path / "operator.key", keys_dir / "shelfscout-default-2.pub")
    shipped = members(DEFAULT_BUNDLE)
    files = {k: v for k, v in shipped.items() if k not in (MANIFEST, SIGNATURE)}
    manifest = Manifest.from_dict(json.loads(shipped[MANIFEST]))
    mine = tmp_path / "mine.bundle"
    write_bundle(mine, manifest, files, load_private_key(tmp_path / "operator.key"))

    cfg = Config()
    cfg = dataclasses.replace(cfg, ota=dataclasses.replace(cfg.ota, keys_dir=str(keys_dir)))
    keys = trusted_keys(cfg)
    assert len(keys) == 3  # the operator's, and both of the project's
    assert read_bundle(mine, keys).signed_by == "shelfscout-default-2.pub"  # the keys folder's file, read first
    assert read_bundle(DEFAULT_BUNDLE, keys).signed_by == str(BUILTIN_KEYS / "shelfscout-default-2.pub")
    # the same key twice under one name counts once
    assert len(load_public_keys([BUILTIN_KEYS, BUILTIN_KEYS])) == 2
