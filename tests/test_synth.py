"""The shelf generator: its labels match what it drew, it is deterministic, and YOLO folders round-trip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.shelf_paint import paint_shelves
from convert.shelf_plan import GAP_LOOKS, ShelfPlan, add_gap, add_random_gaps, dress_gaps, plan_shelves
from convert.synth import make_shelf_image, render_sample, sample_rng, write_yolo_dataset
from edge.cli import main as cli_main
from edge.yolo import read_yolo_labels


@pytest.mark.parametrize("seed", range(24))
def test_boxes_cover_exactly_the_drawn_gaps(seed: int) -> None:
    s = render_sample(sample_rng(100, seed), debug=True)
    assert s.gap_mask is not None and s.product_mask is not None
    assert s.image.shape == (416, 416, 3) and s.image.dtype == np.uint8
    assert s.boxes.dtype == np.float32 and s.boxes.shape[1] == 4
    assert len(s.looks) == len(s.boxes) and set(s.looks) <= set(GAP_LOOKS)
    # every labelled pixel belongs to a listed box, and no front-row product was drawn over a gap
    assert int(s.gap_mask.max(initial=0)) <= len(s.boxes)
    assert not np.any(s.product_mask & (s.gap_mask > 0))
    for k, (x0, y0, x1, y1) in enumerate(s.boxes):
        assert 0 <= x0 < x1 <= 416 and 0 <= y0 < y1 <= 416
        ys, xs = np.nonzero(s.gap_mask == k + 1)
        assert len(xs) > 0, f"box {k} has no gap pixels"
        # the drawn region lies inside its box ...
        assert xs.min() >= x0 - 1.5 and xs.max() + 1 <= x1 + 1.5
        assert ys.min() >= y0 - 1.5 and ys.max() + 1 <= y1 + 1.5
        # ... and the box is its tight bounding box (the warped rectangle reaches every side) ...
        assert xs.min() <= x0 + 1.5 and xs.max() + 1 >= x1 - 1.5, (k, xs.min(), xs.max(), x0, x1)
        assert ys.min() <= y0 + 1.5 and ys.max() + 1 >= y1 - 1.5, (k, ys.min(), ys.max(), y0, y1)
        # ... which it mostly fills (a mildly warped rectangle)
        area = (x1 - x0) * (y1 - y0)
        assert len(xs) >= 0.55 * area, f"box {k}: {len(xs)} gap pixels for a {area:.0f} px box"
        # a box never sits on product pixels
        inner = s.product_mask[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)]
        assert inner.mean() < 0.2


def test_gap_pixels_look_different_from_products() -> None:
    """Over many images, dark holes are darker than the products around them (what the model must learn)."""
    dark, prod = [], []
    for i in range(10):
        s = render_sample(sample_rng(7, i), debug=True)
        assert s.gap_mask is not None and s.product_mask is not None
        grey = cv2.cvtColor(s.image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        for k, look in enumerate(s.looks):
            if look == "dark":
                dark.append(float(grey[s.gap_mask == k + 1].mean()))
        prod.append(float(grey[s.product_mask].mean()))
    assert dark, "no dark gaps in 10 images"
    assert np.median(dark) < 0.6 * np.median(prod)


def test_debug_masks_do_not_change_the_image() -> None:
    a = make_shelf_image(sample_rng(5, 1))
    b = render_sample(sample_rng(5, 1), debug=True)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_deterministic_by_seed() -> None:
    a = make_shelf_image(np.random.default_rng(42))
    b = make_shelf_image(np.random.default_rng(42))
    c = make_shelf_image(np.random.default_rng(43))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_other_sizes() -> None:
    s = make_shelf_image(np.random.default_rng(3), width=320, height=240)
    assert s.image.shape == (240, 320, 3)
    if len(s.boxes):
        assert s.boxes[:, [0, 2]].max() <= 320 and s.boxes[:, [1, 3]].max() <= 240
    with pytest.raises(ValueError):
        make_shelf_image(np.random.default_rng(3), width=8, height=8)


def test_box_statistics_resemble_esd() -> None:
    """ESD: 1-27 boxes per image (mean 6.3), median box ~30x27 px at 416x416; the generator aims near that."""
    counts, ws, hs = [], [], []
    for i in range(60):
        s = make_shelf_image(sample_rng(11, i))
        counts.append(len(s.boxes))
        ws += list(s.boxes[:, 2] - s.boxes[:, 0])
        hs += list(s.boxes[:, 3] - s.boxes[:, 1])
    print(f"boxes/image mean {np.mean(counts):.2f}, median w {np.median(ws):.1f} h {np.median(hs):.1f}")
    assert 3.0 <= np.mean(counts) <= 10.0
    assert max(counts) <= 27
    assert 15 <= np.median(ws) <= 60 and 15 <= np.median(hs) <= 50


def test_yolo_dataset_round_trips(tmp_path: Path) -> None:
    out = write_yolo_dataset(tmp_path / "ds", 5, seed=9)
    images = sorted((out / "images").glob("*.jpg"))
    labels = sorted((out / "labels").glob("*.txt"))
    assert [p.stem for p in images] == [f"{i:05d}" for i in range(5)] == [p.stem for p in labels]
    for i, (ip, lp) in enumerate(zip(images, labels, strict=True)):
        img = cv2.imread(str(ip))
        assert img is not None and img.shape == (416, 416, 3)
        want = make_shelf_image(sample_rng(9, i))
        got = read_yolo_labels(lp, 416, 416)
        assert got.shape == want.boxes.shape
        np.testing.assert_allclose(got, want.boxes, atol=0.01)
        for line in lp.read_text().splitlines():
            cls, *vals = line.split()
            assert cls == "0" and all(0.0 <= float(v) <= 1.0 for v in vals)
        # the saved JPEG is the generated image (up to JPEG loss)
        diff = np.abs(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(int) - want.image.astype(int))
        assert diff.mean() < 4.0


def test_workers_give_the_same_dataset(tmp_path: Path) -> None:
    a = write_yolo_dataset(tmp_path / "a", 8, seed=2, width=160, height=160, workers=1)
    b = write_yolo_dataset(tmp_path / "b", 8, seed=2, width=160, height=160, workers=2)
    for i in range(8):
        name = f"{i:05d}"
        assert (a / "labels" / f"{name}.txt").read_text() == (b / "labels" / f"{name}.txt").read_text()
        assert (a / "images" / f"{name}.jpg").read_bytes() == (b / "images" / f"{name}.jpg").read_bytes()


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        ["synth", str(tmp_path / "out"), "--n", "3", "--seed", "4", "--size", "128", "--workers", "1"]
    )
    assert rc == 0
    assert len(list((tmp_path / "out" / "images").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "out" / "labels").glob("*.txt"))) == 3
    assert "wrote 3 images" in capsys.readouterr().out
    assert cli_main(["synth", str(tmp_path / "bad"), "--n", "0"]) == 2
    # a second run into the same folder would leave the first run's extra images under the new run's name
    before = sorted(p.read_bytes() for p in (tmp_path / "out" / "images").glob("*.jpg"))
    assert cli_main(["synth", str(tmp_path / "out"), "--n", "2", "--seed", "5", "--size", "128"]) == 2
    assert "already holds 6 files of an earlier run" in capsys.readouterr().err
    assert sorted(p.read_bytes() for p in (tmp_path / "out" / "images").glob("*.jpg")) == before


def _stacked_run(plan: ShelfPlan) -> tuple[int, int, int, int, int] | None:
    """(bay, row, first, count, layers) of the first run of >= 3 same-SKU stacked facings in a plan."""
    for bi, bay in enumerate(plan.bays):
        for ri, row in enumerate(bay.rows):
            fs = row.facings
            a = 0
            while a < len(fs):
                b = a
                while b + 1 < len(fs) and fs[b + 1].sku == fs[a].sku:
                    b += 1
                layers = plan.skus[fs[a].sku].layers
                inside = a > 0 and fs[a - 1].x >= 0 and b + 1 < len(fs) and fs[b + 1].x < plan.width
                if layers > 1 and b - a + 1 >= 3 and inside and 0 <= row.top and row.bottom <= plan.height:
                    return bi, ri, a, b - a + 1, layers
                a = b + 1
    return None


@pytest.mark.parametrize("seed", range(6))
def test_sold_out_top_layer_is_one_flat_box_over_the_whole_run(seed: int) -> None:
    """ESD labels the strip above a run of stacks whose top layer is gone as ONE box across all its facings."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        plan = plan_shelves(rng, 600, 400, pitch_range=(50.0, 70.0))
        run = _stacked_run(plan)
        if run is not None:
            break
    assert run is not None, "no stacked run of 3 facings in 20 plans"
    bi, ri, first, count, layers = run
    g = add_gap(plan, rng, bi, ri, first, count, keep=layers - 1)
    assert g is not None and g.look in ("dark", "back")  # never a pushed-back row over kept items
    img, gmask, pmask = paint_shelves(plan, debug=True)
    assert gmask is not None and pmask is not None
    row = plan.bays[bi].rows[ri]
    fs = row.facings[first : first + count]
    x0, y0, x1, y1 = g.box
    # one box from the right side of the facing before the run to the left side of the facing after it
    assert x0 == row.facings[first - 1].right(plan.skus)
    assert x1 == row.facings[first + count].x
    sku = plan.skus[fs[0].sku]
    assert y0 == row.top and y1 == row.bottom - (layers - 1) * sku.layer_h
    assert (x1 - x0) / (y1 - y0) > 1.0  # flat: wider than high
    ys, xs = np.nonzero(gmask == 1)
    assert xs.min() == int(x0) and xs.max() + 1 == int(x1) and ys.min() == int(y0) and ys.max() + 1 == int(y1)
    assert not np.any(pmask & (gmask > 0))
    # the kept items are drawn right under the box, on every facing of the run
    for f in fs:
        assert pmask[int(y1) : row.bottom, f.x : f.right(plan.skus)].mean() > 0.9


def test_generator_draws_long_flat_boxes_like_esd() -> None:
    """ESD dev: 13.8 % of boxes are more than 3x wider than high, 5.2 % more than 5x."""
    ar = []
    for i in range(80):
        b = make_shelf_image(sample_rng(21, i)).boxes
        ar += list((b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]))
    flat3, flat5 = np.mean(np.array(ar) > 3.0), np.mean(np.array(ar) > 5.0)
    print(f"{len(ar)} boxes: w/h > 3: {flat3:.3f}, > 5: {flat5:.3f}")
    assert 0.08 <= flat3 <= 0.25 and 0.025 <= flat5 <= 0.12


def test_header_panels_are_drawn_and_never_labelled() -> None:
    rng = np.random.default_rng(3)
    plan = plan_shelves(rng, 600, 400, pitch_range=(40.0, 60.0), top_range=(0.2, 0.3), header_p=1.0)
    assert plan.headers, "header_p=1 gave no header"
    add_random_gaps(plan, rng, 10, (0, 0, 600, 400))
    img, gmask, _ = paint_shelves(plan, debug=True)
    assert gmask is not None
    for hx, hy, hw, hh, colour, _ in plan.headers:
        y0, y1, x0, x1 = max(0, hy), max(0, hy + hh), max(0, hx), min(600, hx + hw)
        assert not np.any(gmask[y0:y1, x0:x1]), "a header panel overlaps a labelled gap"
        assert np.any(np.all(img[y0:y1, x0:x1] == colour, axis=-1)), "header panel not drawn"
        assert np.any(np.all(img[y0:y1, x0:x1] != colour, axis=-1)), "header panel has no print on it"
    # other callers (cart passes) get no headers unless they ask, so their aisles stay as they were
    assert plan_shelves(np.random.default_rng(3), 600, 400).headers == []


def test_min_fill_keeps_products_tall_and_defaults_unchanged() -> None:
    """Training shelves leave no wide unlabelled strip above products; cart passes (the default) keep theirs."""
    plan = plan_shelves(np.random.default_rng(8), 600, 400, pitch_range=(40.0, 60.0), min_fill=0.72)
    for bay in plan.bays:
        for row in bay.rows:
            if row.hanging:
                continue
            inner = row.bottom - row.top
            for f in row.facings:
                h = plan.skus[f.sku].sprite.shape[0]
                assert h >= min(inner - 1, int(0.72 * inner)) - 1, (h, inner)
    a = plan_shelves(np.random.default_rng(8), 600, 400)
    b = plan_shelves(np.random.default_rng(8), 600, 400, min_fill=0.0, header_p=0.0)
    np.testing.assert_array_equal(paint_shelves(a)[0], paint_shelves(b)[0])


def _plain_and_dressed(seed: int) -> tuple[ShelfPlan, ShelfPlan]:
    import copy

    rng = np.random.default_rng(seed)
    plan = plan_shelves(rng, 600, 400, pitch_range=(40.0, 60.0), top_range=(0.2, 0.3))
    add_random_gaps(plan, rng, 8, (0, 0, 600, 400))
    dressed = copy.deepcopy(plan)
    dress_gaps(dressed, np.random.default_rng(seed + 1), 1.0)
    return plan, dressed


@pytest.mark.parametrize("seed", range(6))
def test_dressing_changes_only_the_inside_of_gaps(seed: int) -> None:
    plan, dressed = _plain_and_dressed(seed)
    assert plan.gaps and all(g.dress > 0 for g in dressed.gaps) and all(g.dress == 0 for g in plan.gaps)
    a, amask, _ = paint_shelves(plan, debug=True)
    b, bmask, _ = paint_shelves(dressed, debug=True)
    assert amask is not None and bmask is not None
    np.testing.assert_array_equal(amask, bmask)  # the labels are what they were
    changed = np.any(a != b, axis=-1)
    assert changed.any(), "dressing drew nothing"
    assert not np.any(changed & (amask == 0)), "dressing drew outside a gap"
    # a dressed gap is drawn from its own seed: it looks the same with the other gaps restocked
    c, cmask, _ = paint_shelves(dressed, filled=frozenset(range(1, len(dressed.gaps))), debug=True)
    assert cmask is not None
    np.testing.assert_array_equal(c[cmask == 1], b[bmask == 1])


def test_dressed_gaps_are_lighter_and_more_varied_inside_like_real_ones() -> None:
    """What dressing is for: ESD's gaps are less dark against the products beside them and about twice as varied
    inside as plain generated ones (`python -m convert.realism`, per-gap rows)."""
    from convert.realism import image_stats

    def per_gap(dress: float) -> tuple[float, float]:
        ratio: list[float] = []
        inner: list[float] = []
        for i in range(40):
            s = make_shelf_image(sample_rng(31, i), dress_p=dress)
            st = image_stats(s.image, s.boxes)
            ratio += st.gap_side_ratio
            inner += st.gap_inner_std
        return float(np.median(ratio)), float(np.median(inner))

    (r0, i0), (r1, i1) = per_gap(0.0), per_gap(1.0)
    print(f"median luma/sides {r0:.3f} -> {r1:.3f}, inner std {i0:.1f} -> {i1:.1f}")
    assert r1 > r0 + 0.05 and i1 > 1.3 * i0


def test_dress_share_is_checked_and_off_changes_nothing() -> None:
    with pytest.raises(ValueError, match="dress_p"):
        render_sample(sample_rng(1, 0), dress_p=1.5)
    a = make_shelf_image(sample_rng(5, 3), dress_p=0.0)
    b = make_shelf_image(sample_rng(5, 3), dress_p=0.0)
    np.testing.assert_array_equal(a.image, b.image)
    c = make_shelf_image(sample_rng(5, 3), dress_p=1.0)
    if len(a.boxes):
        assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(6))
def test_distractors_change_the_picture_but_never_a_gap(seed: int) -> None:
    """Posters, price cards and stock boxes (`distract_p`) are clutter that is never labelled: painted, they leave
    every gap's pixels and mask as they were."""
    import dataclasses

    rng = np.random.default_rng(seed)
    plan = plan_shelves(rng, 600, 400, pitch_range=(40.0, 60.0), top_range=(0.2, 0.3), distract_p=1.0)
    add_random_gaps(plan, rng, 8, (0, 0, 600, 400))
    assert plan.distractors and {d.kind for d in plan.distractors} <= {"poster", "card", "box"}
    a, amask, apmask = paint_shelves(plan, debug=True)
    b, bmask, _ = paint_shelves(dataclasses.replace(plan, distractors=[]), debug=True)
    assert amask is not None and bmask is not None and apmask is not None
    np.testing.assert_array_equal(amask, bmask)
    inside = amask > 0
    np.testing.assert_array_equal(a[inside], b[inside])
    changed = np.any(a != b, axis=-1)
    assert not np.any(changed & ~apmask), "a distractor drew where the product mask does not say so"
    boxes = [g.box for g in plan.gaps]
    shown = [d for d in plan.distractors
             if not any(d.x < g[2] and g[0] < d.x + d.w and d.y < g[3] and g[1] < d.y + d.h for g in boxes)]
    assert changed.any() == any(
        min(600, d.x + d.w) - max(0, d.x) >= 3 and min(400, d.y + d.h) - max(0, d.y) >= 3 for d in shown)


def test_a_gap_cut_by_the_frame_edge_is_labelled_as_far_as_it_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap more than half outside the frame was dropped from the labels but stayed in the picture (8 % of images
    had one, some 36x35 px): the net was taught that an empty spot in plain view is not a gap. Now every gap whose
    visible part is at least 4 px a side is labelled, as real photos are."""
    import convert.camera_fx as camera_fx
    import convert.synth as synth

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = camera_fx.clip_quads

    def spy(quads: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, visible = real(quads, w, h)
        seen.append((boxes.copy(), visible.copy()))
        return boxes, visible

    monkeypatch.setattr(synth, "clip_quads", spy)  # where render_sample looks it up
    cut_and_labelled = 0
    for i in range(60):
        seen.clear()
        s = render_sample(sample_rng(20260429, i))
        boxes, visible = seen[0]
        shows = (visible > 0) & (boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4)
        assert len(s.boxes) == int(shows.sum())
        np.testing.assert_allclose(s.boxes, boxes[shows], atol=1e-4)
        cut_and_labelled += int((shows & (visible < 0.5)).sum())
    assert cut_and_labelled > 0  # the case the rule is for does come up
