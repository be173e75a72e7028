"""Bootstrap AP50 intervals: a reweighted set is exactly the set with images repeated; hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from convert.bootstrap import Matched, _draws, ap50_interval, compare_ap50
from convert.evaluate import ImageDetections, evaluate, iou_matrix


def _random_set(rng: np.random.Generator, images: int) -> tuple[list[ImageDetections], list[np.ndarray]]:
    """Images with 0-4 ground-truth boxes and detections near some of them (hits) or anywhere (false alarms)."""
    dets, gts = [], []
    for _ in range(images):
        g = []
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 300, 2)
            g.append([x, y, x + rng.uniform(10, 40), y + rng.uniform(10, 40)])
        gt = np.array(g, np.float32).reshape(-1, 4)
        boxes = [b + rng.normal(0, 3, 4) for b in gt if rng.random() < 0.7]
        boxes += [np.array([x, y, x + 20, y + 20]) for x, y in rng.uniform(0, 300, (int(rng.integers(0, 3)), 2))]
        b = np.array(boxes, np.float32).reshape(-1, 4)
        dets.append(ImageDetections(b, rng.uniform(0, 1, len(b)).astype(np.float32)))  # no tied scores
        gts.append(gt)
    return dets, gts


def test_a_reweighted_set_has_the_ap_of_the_set_with_its_images_repeated() -> None:
    rng = np.random.default_rng(3)
    dets, gts = _random_set(rng, 30)
    m = Matched.of(dets, gts)
    assert m.ap50(np.ones(30)) == pytest.approx(evaluate(dets, gts, 0.5).ap50, abs=1e-12)
    for w in _draws(30, 5, seed=1):
        rep = [i for i in range(30) for _ in range(int(w[i]))]
        want = evaluate([dets[i] for i in rep], [gts[i] for i in rep], 0.5).ap50
        assert m.ap50(w) == pytest.approx(want, abs=1e-12)


def test_the_interval_of_a_hand_worked_two_image_set() -> None:
    """Image 0: one gap, found (score 0.9). Image 1: one gap, missed, one false alarm (0.8). AP = 0.5 as given;
    a resample of two images is {0, 0} (AP 1) a quarter of the time, {1, 1} (AP 0) a quarter, {0, 1} (0.5) half."""
    gts = [np.array([[0, 0, 10, 10]], np.float32), np.array([[0, 0, 10, 10]], np.float32)]
    dets = [ImageDetections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32)),
            ImageDetections(np.array([[50, 50, 60, 60]], np.float32), np.array([0.8], np.float32))]
    m = Matched.of(dets, gts)
    assert m.ap50(np.array([2.0, 0.0])) == 1.0 and m.ap50(np.array([0.0, 2.0])) == 0.0
    iv = ap50_interval(m, resamples=2000, seed=0)
    assert (iv.value, iv.low, iv.high, iv.level, iv.resamples) == (0.5, 0.0, 1.0, 0.95, 2000)
    samples = np.array([m.ap50(w) for w in _draws(2, 2000, seed=0)])
    assert set(np.unique(samples)) == {0.0, 0.5, 1.0}
    assert np.mean(samples == 1.0) == pytest.approx(0.25, abs=0.03)


def test_the_interval_holds_the_value_and_narrows_with_more_images() -> None:
    rng = np.random.default_rng(5)
    dets, gts = _random_set(rng, 200)
    small = ap50_interval(Matched.of(dets[:25], gts[:25]), resamples=400)
    large = ap50_interval(Matched.of(dets, gts), resamples=400)
    for iv in (small, large):
        assert iv.low <= iv.value <= iv.high
    assert large.high - large.low < small.high - small.low


def test_a_detector_against_itself_differs_by_nothing_and_a_weaker_copy_loses_in_every_resample() -> None:
    rng = np.random.default_rng(7)
    dets, gts = _random_set(rng, 60)
    a = Matched.of(dets, gts)
    same = compare_ap50(a, a, resamples=300)
    assert (same.diff.value, same.diff.low, same.diff.high, same.share_a_higher) == (0.0, 0.0, 0.0, 0.0)
    # the weaker copy loses its highest-scoring hit in every image that has one, and a false alarm is added to
    # every image at the top score: no resample can favour it
    weaker = []
    for d, g in zip(dets, gts, strict=True):
        keep = np.ones(len(d.scores), bool)
        boxes = np.vstack([d.boxes, [[900, 900, 910, 910]]]).astype(np.float32)
        scores = np.append(d.scores, 1.0).astype(np.float32)
        hits = np.nonzero((iou_matrix(d.boxes, g) >= 0.5).any(axis=1))[0] if len(g) else np.zeros(0, int)
        if len(hits):
            keep[hits[int(np.argmax(d.scores[hits]))]] = False
        weaker.append(ImageDetections(boxes[np.append(keep, True)], scores[np.append(keep, True)]))
    b = Matched.of(weaker, gts)
    c = compare_ap50(a, b, resamples=300)
    assert c.diff.value > 0 and c.diff.low > 0 and c.share_a_higher == 1.0
    flipped = compare_ap50(b, a, resamples=300)
    assert flipped.diff.value == pytest.approx(-c.diff.value) and flipped.share_a_higher == 0.0


def test_bad_inputs_are_refused() -> None:
    rng = np.random.default_rng(9)
    dets, gts = _random_set(rng, 10)
    with pytest.raises(ValueError, match="same images"):
        compare_ap50(Matched.of(dets, gts), Matched.of(dets[:9], gts[:9]))
    with pytest.raises(ValueError, match="resamples"):
        ap50_interval(Matched.of(dets, gts), resamples=0)
    with pytest.raises(ValueError, match="level"):
        ap50_interval(Matched.of(dets, gts), level=1.0)
    with pytest.raises(ValueError, match="no images"):
        ap50_interval(Matched.of([], []))
