"""bench/esd_pan.py builds passes whose per-frame truth is the photos' boxes moved with the window (generated
photos stand in for ESD here: tests never need the licensed data)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from convert.dataset import LabeledImage
from convert.synth import make_shelf_image


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "esd_pan.py"
    spec = importlib.util.spec_from_file_location("esd_pan", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pan_truth_follows_the_window() -> None:
    esd_pan = _load()
    rng = np.random.default_rng(5)
    photos = []
    for i in range(3):
        s = make_shelf_image(rng, 416, 416)
        photos.append(LabeledImage(Path(f"p{i}.jpg"), s.image, s.boxes))
    cp, frames = esd_pan.make_pass(photos, speed=12.5, seed=0)
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
    assert cp.truth[10].x_offset == 125.0
    moved = np.abs(frames[0][:, 125:225].astype(float) - frames[10][:, 0:100].astype(float)).mean()
    unmoved = np.abs(frames[0][:, 0:100].astype(float) - frames[10][:, 0:100].astype(float)).mean()
    assert moved < 4.0 < unmoved
