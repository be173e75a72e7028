"""The build's generated training folders are reused only when the same generator made them with the same seed."""

from __future__ import annotations

import json
from pathlib import Path

from convert.build_default import SYNTH_STAMP, generator_sources, generator_stamp, synth_folder
from convert.synth import make_shelf_image, sample_rng
from edge.yolo import read_yolo_labels


def test_generated_folder_is_reused_only_for_the_same_generator_and_seed(tmp_path: Path) -> None:
    d = synth_folder(tmp_path / "s", 3, seed=5, workers=1, progress=False)
    stamp = json.loads((d / SYNTH_STAMP).read_text())
    assert stamp == generator_stamp(3, 5) and len(stamp["synth_sha256"]) == 64
    first = (d / "images" / "00000.jpg").stat().st_mtime_ns
    assert synth_folder(d, 3, seed=5, workers=1, progress=False) == d
    assert (d / "images" / "00000.jpg").stat().st_mtime_ns == first  # reused, not rewritten
    # a folder made by another generator version (or without a stamp) is made again
    (d / SYNTH_STAMP).write_text(json.dumps({**stamp, "synth_sha256": "0" * 64}))
    synth_folder(d, 3, seed=5, workers=1, progress=False)
    assert json.loads((d / SYNTH_STAMP).read_text()) == stamp
    # another seed regenerates too, and the labels are those of the new seed
    synth_folder(d, 3, seed=6, workers=1, progress=False)
    want = make_shelf_image(sample_rng(6, 1)).boxes
    got = read_yolo_labels(d / "labels" / "00001.txt", 416, 416)
    assert got.shape == want.shape and (abs(got - want) < 0.01).all()


def test_the_stamp_covers_every_module_the_generator_draws_with() -> None:
    """The generator is split over several modules (and writes labels with edge.yolo): the stamp must follow its
    imports, so a change to any of them regenerates the cached folders, including a module added later."""
    found = generator_sources()
    assert found == sorted(found) and {"convert.camera_fx", "convert.rand", "convert.shelf_paint", "convert.shelf_plan",
                                       "convert.sprites", "convert.synth", "edge.yolo"} <= set(found)
    assert not {"convert.train", "convert.model", "edge.app"} & set(found), found  # not the training or the device
