"""`shelfscout train` end to end on a few generated shelves: a signed, loadable bundle and one JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main


@pytest.mark.slow
def test_train_writes_a_signed_bundle_that_the_device_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.bundle import generate_keypair, load_public_keys, read_bundle
    from edge.detector import Detector

    generate_keypair(tmp_path / "k.key", tmp_path / "keys" / "k.pub")
    out = tmp_path / "small.bundle"
    code = main(["train", str(out), "--synth", "12", "--synth-val", "4", "--steps", "4", "--batch", "2",
                 "--size", "64", "--crop", "64", "--stride", "8", "--key", str(tmp_path / "k.key"),
                 "--work", str(tmp_path / "work"), "--quiet", "--version", "3"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the report and nothing else
    assert report["bundle"] == str(out) and report["train_images"] == 12
    sets = report["metrics"]["sets"]["synthetic-val"]
    assert set(sets) == {"float", "int8"} and 0.0 <= sets["int8"]["ap50"] <= 1.0
    assert (tmp_path / "work" / "parity.md").exists()
    b = read_bundle(out, load_public_keys([tmp_path / "keys"]))
    assert (b.manifest.version, b.manifest.input.width, b.manifest.output.stride) == (3, 64, 8)
    assert Detector(b, threads=1).check_golden().ok
