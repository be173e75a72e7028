"""Cart-pass videos: the ground truth matches the decoded video, restocking fills gaps, markers decode."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.cartpass import (
    Aisle,
    CartPass,
    iter_cart_pass,
    iter_video_rgb,
    load_cart_pass,
    make_aisle,
    render_cart_pass,
    restock,
)
from edge.cli import main as cli_main

SPEED = 12.0


def _decode(path: Path) -> list[np.ndarray]:
    return list(iter_video_rgb(path))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Aisle, CartPass, list[np.ndarray]]:
    aisle = make_aisle(np.random.default_rng(3), length_px=1800, n_gaps=3)
    out = tmp_path_factory.mktemp("pass") / "pass.mp4"
    cp = render_cart_pass(aisle, out, fps=15.0, speed_px_per_frame=SPEED, seed=5)
    return aisle, cp, _decode(out)


def test_aisle_layout() -> None:
    aisle = make_aisle(np.random.default_rng(0))
    assert aisle.image.shape == (480, 4000, 3) and aisle.image.dtype == np.uint8
    assert len(aisle.gaps) == 6
    assert [m[0] for m in aisle.markers] == [1, 2]
    assert aisle.markers[0][1] < 300 and aisle.markers[1][1] > 3700
    assert aisle.gap_mask is not None
    for g in aisle.gaps:
        x0, y0, x1, y1 = g.box
        assert 40 <= x1 - x0 <= 150, g
        assert 40 <= y1 - y0 <= 150, g
        ys, xs = np.nonzero(aisle.gap_mask == g.gap_id)
        assert xs.min() >= x0 - 1 and xs.max() < x1 + 1 and ys.min() >= y0 - 1 and ys.max() < y1 + 1
        # plenty of filled shelf between gaps and none under the markers
        for mid, (mx0, _, mx1, _) in aisle.marker_boxes:
            assert x1 < mx0 or x0 > mx1, (mid, g)
    assert np.count_nonzero(aisle.gap_mask) < 0.1 * aisle.gap_mask.size
    with pytest.raises(ValueError):
        make_aisle(np.random.default_rng(0), length_px=500)


def test_truth_matches_video(rendered: tuple[Aisle, CartPass, list[np.ndarray]]) -> None:
    aisle, cp, frames = rendered
    view_w = 640
    assert cp.frames == len(frames) == len(cp.truth) == int((aisle.length_px - view_w) // SPEED) + 1
    assert all(f.shape == (480, 640, 3) for f in frames)
    for k, t in enumerate(cp.truth):
        assert t.index == k
        assert t.x_offset == pytest.approx(k * SPEED, abs=1e-3)
        assert abs(t.y_offset) <= 2.0
    # the decoded frame is the aisle seen at the truth offset: best match at 0 shift, worse at +-6 px
    for k in (0, len(frames) // 2, len(frames) - 1):
        t = cp.truth[k]
        x, y = t.x_offset, t.y_offset

        def err(dx: float, t: object = t, x: float = x, y: float = y, k: int = k) -> float:
            M = np.array([[1.0, 0.0, -(x + dx)], [0.0, 1.0, -y]])
            view = cv2.warpAffine(
                aisle.image, M, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            return float(
                np.abs(view[20:-20, 20:-20].astype(int) - frames[k][20:-20, 20:-20].astype(int)).mean()
            )

        e0 = err(0.0)
        assert e0 < 8.0, (k, e0)
        assert err(6.0) > e0 + 3 and err(-6.0) > e0 + 3


def test_gap_boxes_land_on_gap_pixels(rendered: tuple[Aisle, CartPass, list[np.ndarray]]) -> None:
    """Compare each decoded frame with the same pass over the restocked aisle: they differ inside truth boxes only."""
    aisle, cp, frames = rendered
    full = restock(aisle, [g.gap_id for g in aisle.gaps], np.random.default_rng(0))
    full_frames = list(iter_cart_pass(full, speed_px_per_frame=SPEED, seed=5))
    assert len(full_frames) == len(frames)
    checked = 0
    for t, fr, ff in zip(cp.truth, frames, full_frames, strict=True):
        # a 5x5 blur averages out the codec's ringing; a gap against its products stays a big difference
        diff = np.abs(cv2.blur(fr, (5, 5)).astype(int) - cv2.blur(ff, (5, 5)).astype(int)).max(axis=2) > 30
        inside = np.zeros(diff.shape, bool)
        listed = {g.gap_id for g in t.gaps}
        boxes = [g.box for g in t.gaps] + [
            (g.box[0] - t.x_offset, g.box[1] - t.y_offset, g.box[2] - t.x_offset, g.box[3] - t.y_offset)
            for g in aisle.gaps
            if g.gap_id not in listed  # barely in view: not listed, but its pixels differ too
        ]
        for x0, y0, x1, y1 in boxes:
            inside[max(0, int(y0) - 4) : max(0, int(y1) + 5), max(0, int(x0) - 4) : max(0, int(x1) + 5)] = (
                True
            )
        # outside the truth boxes the two passes agree (apart from mp4v ringing on sharp print)
        assert diff[~inside].mean() < 0.004, t.index
        for g in t.gaps:
            if g.visible_fraction < 1.0:
                continue
            x0, y0, x1, y1 = g.box
            xi0, yi0, xi1, yi1 = int(np.ceil(x0)), int(np.ceil(y0)), int(x1), int(y1)
            assert diff[yi0:yi1, xi0:xi1].mean() > 0.3, (t.index, g)
            # the differing columns / rows around the box span the box
            ox, oy = max(0, xi0 - 10), max(0, yi0 - 10)
            cols = np.nonzero(diff[yi0:yi1, ox : xi1 + 10].mean(axis=0) > 0.25)[0] + ox
            rows = np.nonzero(diff[oy : yi1 + 10, xi0:xi1].mean(axis=1) > 0.25)[0] + oy
            # (restocked products may leave their usual spacing to the neighbours, so not every column differs)
            assert cols.min() >= x0 - 4 and cols.max() + 1 <= x1 + 4, (t.index, g, cols)
            assert len(cols) >= 0.7 * (x1 - x0), (t.index, g, cols)
            assert rows.min() >= y0 - 4 and rows.max() + 1 <= y1 + 4, (t.index, g, rows)
            assert len(rows) >= 0.5 * (y1 - y0), (t.index, g, rows)
            checked += 1
    assert checked >= 20


def test_markers_decode(rendered: tuple[Aisle, CartPass, list[np.ndarray]]) -> None:
    _, cp, frames = rendered
    det = cv2.aruco.ArucoDetector(
        cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50), cv2.aruco.DetectorParameters()
    )
    seen: set[int] = set()
    for k in (0, 1, len(frames) - 2, len(frames) - 1):
        corners, ids, _ = det.detectMarkers(cv2.cvtColor(frames[k], cv2.COLOR_RGB2GRAY))
        want = {m.marker_id: m for m in cp.truth[k].markers}
        assert want, k
        assert ids is not None, k
        got = {int(i): c.reshape(4, 2).mean(0) for i, c in zip(ids.ravel(), corners, strict=True)}
        assert set(got) == set(want), k
        for mid, c in got.items():
            assert abs(c[0] - want[mid].cx) < 3 and abs(c[1] - want[mid].cy) < 3
        seen |= set(got)
    assert seen == {1, 2}


def test_restock_changes_only_that_gap() -> None:
    aisle = make_aisle(np.random.default_rng(8), length_px=2000, n_gaps=3)
    g = aisle.gaps[1]
    full = restock(aisle, [g.gap_id], np.random.default_rng(1))
    assert [x.gap_id for x in full.gaps] == [x.gap_id for x in aisle.gaps if x.gap_id != g.gap_id]
    assert full.gap_mask is not None and not np.any(full.gap_mask == g.gap_id)
    x0, y0, x1, y1 = (int(round(v)) for v in g.box)
    changed = np.any(aisle.image != full.image, axis=2)
    assert changed[y0:y1, x0:x1].mean() > 0.3
    changed[y0:y1, x0:x1] = False
    assert not changed.any()
    again = restock(full, [], np.random.default_rng(2))
    np.testing.assert_array_equal(again.image, full.image)
    with pytest.raises(ValueError):
        restock(aisle, [99], np.random.default_rng(0))


def test_truth_json_round_trip(rendered: tuple[Aisle, CartPass, list[np.ndarray]]) -> None:
    _, cp, _ = rendered
    d = json.loads(cp.truth_path.read_text())
    assert d["frames"] == cp.frames and len(d["truth"]) == cp.frames
    back = load_cart_pass(cp.truth_path)
    assert back.path == cp.path and back.frames == cp.frames and back.scale == cp.scale
    assert [(g.gap_id, tuple(g.box)) for g in back.gaps] == [(g.gap_id, tuple(g.box)) for g in cp.gaps]
    assert back.truth[5].gaps == cp.truth[5].gaps and back.truth[5].x_offset == cp.truth[5].x_offset


def test_frames_are_deterministic() -> None:
    aisle = make_aisle(np.random.default_rng(4), length_px=1000, n_gaps=1)
    a = list(iter_cart_pass(aisle, seed=1))
    b = list(iter_cart_pass(aisle, seed=1))
    assert len(a) == len(b) > 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_render_pass_cli(tmp_path: Path) -> None:
    out = tmp_path / "p.mp4"
    rc = cli_main(["render-pass", str(out), "--seconds", "2", "--seed", "1", "--restocked-copy"])
    assert rc == 0
    for p in (out, out.with_suffix(".json"), tmp_path / "p-restocked.mp4", tmp_path / "p-restocked.json"):
        assert p.exists() and p.stat().st_size > 0, p
    cp = load_cart_pass(out.with_suffix(".json"))
    assert len(_decode(out)) == cp.frames == 31
    full = json.loads((tmp_path / "p-restocked.json").read_text())
    assert full["gaps"] == [] and all(t["gaps"] == [] for t in full["truth"])
    assert cli_main(["render-pass", str(tmp_path / "x.avi")]) == 2
