"""convert.photopan: still photos become a cart pass whose per-frame truth is the photos' boxes moved with the
window (generated photos stand in for real ones here: tests never need the licensed ESD data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.cartpass import iter_video_rgb
from convert.dataset import LabeledImage
from convert.photopan import load_photos, pan_pass, write_pan
from convert.synth import make_shelf_image
from edge.yolo import yolo_lines


def _photos(n: int, seed: int = 5) -> list[LabeledImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = make_shelf_image(rng, 416, 416)
        out.append(LabeledImage(Path(f"p{i}.jpg"), s.image, s.boxes))
    return out


def test_pan_truth_follows_the_window() -> None:
    photos = _photos(3)
    cp, frames = pan_pass(photos, speed_px_per_frame=12.5)
    assert cp.frame_size == (640, 480) and len(frames) == len(cp.truth) == cp.frames
    assert len(cp.gaps) == sum(len(p.boxes) for p in photos)
    # photos are scaled to the frame height (416 -> 480) and placed side by side
    s = 480 / 416
    b = photos[1].boxes[0]
    assert np.allclose(cp.gaps[len(photos[0].boxes)].box, (416 * s + b[0] * s, b[1] * s, 416 * s + b[2] * s, b[3] * s))
    seen = set()
    for t in cp.truth:
        assert t.x_offset == t.index * 12.5
        for g in t.gaps:
            seen.add(g.gap_id)
            gx0, gy0, gx1, gy1 = cp.gaps[g.gap_id].box
            if g.visible_fraction == 1.0:  # wholly in view: the box is the panorama box moved by the offset
                assert np.allclose(g.box, (gx0 - t.x_offset, gy0, gx1 - t.x_offset, gy1))
    assert seen == {g.gap_id for g in cp.gaps}, "every labelled gap comes into view"
    # frame 10 shows the panorama 125 px further on: its left columns are frame 0's columns 125.. (plus noise)
    moved = np.abs(frames[0][:, 125:225].astype(float) - frames[10][:, 0:100].astype(float)).mean()
    unmoved = np.abs(frames[0][:, 0:100].astype(float) - frames[10][:, 0:100].astype(float)).mean()
    assert moved < 4.0 < unmoved


def test_photos_from_a_yolo_folder_or_a_plain_one(tmp_path: Path) -> None:
    photos = _photos(4, seed=9)
    yolo, plain = tmp_path / "yolo", tmp_path / "plain"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    plain.mkdir()
    for i, p in enumerate(photos):
        bgr = cv2.cvtColor(p.image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(yolo / "images" / f"s{i}.png"), bgr)
        (yolo / "labels" / f"s{i}.txt").write_text(yolo_lines(p.boxes, 416, 416))
        cv2.imwrite(str(plain / f"s{i}.png"), bgr)
    got = load_photos(yolo, 3, seed=1)
    assert len(got) == 3 and len({g.path.name for g in got}) == 3
    for g in got:
        i = int(g.path.stem[1:])
        np.testing.assert_array_equal(g.image, photos[i].image)  # png: lossless
        np.testing.assert_allclose(g.boxes, photos[i].boxes, atol=0.51)  # YOLO text keeps 6 decimals
    unlabelled = load_photos(plain, 10)
    assert len(unlabelled) == 4 and all(len(g.boxes) == 0 for g in unlabelled)
    with pytest.raises(ValueError, match="no photos"):
        load_photos(tmp_path / "empty-or-missing", 2)


def test_written_pan_is_a_video_of_the_same_frames(tmp_path: Path) -> None:
    cp = write_pan(_photos(2, seed=3), tmp_path / "pan.mp4", fps=15.0, speed_px_per_frame=20.0)
    n = sum(1 for _ in iter_video_rgb(cp.path))
    assert n == cp.frames > 5 and cp.truth_path.is_file()
