"""`convert.evaluate` on hand-made cases whose AP, precision, recall and F1 are worked out by hand in comments."""

from __future__ import annotations

import numpy as np
import pytest

from convert.evaluate import (
    ImageDetections,
    average_precision,
    best_fbeta,
    evaluate,
    iou_matrix,
    match_images,
)


def dets(*rows: tuple[float, float, float, float, float]) -> ImageDetections:
    a = np.array(rows, np.float32).reshape(-1, 5)
    return ImageDetections(a[:, :4], a[:, 4])


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


A = (0.0, 0.0, 10.0, 10.0)
B = (20.0, 20.0, 30.0, 30.0)


def test_iou_by_hand() -> None:
    # [21,20,31,30] vs B: overlap 9x10 = 90, union 100 + 100 - 90 = 110
    assert iou_matrix(boxes((21, 20, 31, 30)), boxes(B))[0, 0] == pytest.approx(90 / 110)
    assert iou_matrix(boxes(A), boxes(B))[0, 0] == 0.0


def test_one_image_hit_false_alarm_hit() -> None:
    # sorted by score: TP (A), FP (far away), TP (B, IoU 0.82)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1 on (0, 1/2], 2/3 on (1/2, 1]
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    d = [dets((*A, 0.9), (50, 50, 60, 60, 0.8), (21, 20, 31, 30, 0.7))]
    g = [boxes(A, B)]
    r = evaluate(d, g, threshold=0.75)
    assert r.ap50 == pytest.approx(5 / 6)
    # at 0.75: detections 0.9 (TP) and 0.8 (FP): P = 1/2, R = 1/2, F1 = 1/2
    assert (r.tp, r.fp, r.fn, r.detections) == (1, 1, 1, 2)
    assert r.precision == pytest.approx(0.5) and r.recall == pytest.approx(0.5) and r.f1 == pytest.approx(0.5)
    # at 0.5: all three: P = 2/3, R = 1, F1 = 2 * (2/3) / (5/3) = 0.8, which is also the best F1 (at score 0.7)
    r2 = evaluate(d, g, threshold=0.5)
    assert (r2.tp, r2.fp, r2.fn) == (2, 1, 0)
    assert r2.f1 == pytest.approx(0.8)
    assert r2.best_f1 == pytest.approx(0.8) and r2.best_f1_threshold == pytest.approx(0.7)


def test_best_fbeta_weighs_precision_by_hand() -> None:
    # scores 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 FP on 2 gaps, three cut-offs worth comparing:
    #   at 0.9: P 1,   R 1/2 -> F1 2/3, F0.5 = 1.25 * 0.5 / (0.25 + 0.5) = 5/6
    #   at 0.7: P 2/3, R 1   -> F1 0.8, F0.5 = 1.25 * (2/3) / (1/6 + 1) = 5/7
    #   at 0.5: P 2/5, R 1   -> F1 4/7, F0.5 = 1.25 * 0.4 / (0.1 + 1) = 5/11
    d = [dets((*A, 0.9), (50, 50, 60, 60, 0.8), (21, 20, 31, 30, 0.7), (70, 70, 80, 80, 0.6), (90, 0, 99, 9, 0.5))]
    r = evaluate(d, [boxes(A, B)], threshold=0.5)
    assert best_fbeta(r, 1.0) == pytest.approx((0.8, 0.7))
    assert (r.best_f1, r.best_f1_threshold) == pytest.approx((0.8, 0.7))
    assert best_fbeta(r, 0.5) == pytest.approx((5 / 6, 0.9))
    # recall-weighted F2 also picks 0.7: 5 * (2/3) / (8/3 + 1) = 10/11, against 5 * 0.5 / (4 + 0.5) = 5/9 at 0.9
    assert best_fbeta(r, 2.0) == pytest.approx((10 / 11, 0.7))
    with pytest.raises(ValueError, match="beta"):
        best_fbeta(r, 0.0)
    with pytest.raises(ValueError, match="beta"):
        best_fbeta(r, float("nan"))


def test_duplicate_detection_is_a_false_alarm() -> None:
    # two boxes on the one gap: the second is FP. AP = 1 (recall 1 reached at precision 1); at 0.5 P = 1/2, R = 1
    d = [dets((*A, 0.9), (0, 0, 10, 9, 0.8))]
    r = evaluate(d, [boxes(A)], threshold=0.5)
    assert r.ap50 == pytest.approx(1.0)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_iou_threshold_is_inclusive_at_one_half() -> None:
    # [0,0,10,20] vs A: 100 / 200 = 0.5 -> TP; [0,0,10,21]: 100 / 210 < 0.5 -> FP
    assert evaluate([dets((0, 0, 10, 20, 0.9))], [boxes(A)], 0.5).tp == 1
    r = evaluate([dets((0, 0, 10, 21, 0.9))], [boxes(A)], 0.5)
    assert (r.tp, r.fp, r.fn, r.ap50) == (0, 1, 1, 0.0)


def test_ranking_across_images() -> None:
    # image 1: one gap A, a detection on it at 0.6. image 2: one gap B, a false alarm at 0.9 and a hit at 0.3.
    # sorted: FP (0.9), TP (0.6), TP (0.3): precision 0, 1/2, 2/3; recall 0, 1/2, 1
    # envelope: 2/3 everywhere -> AP = 2/3. At 0.5: TP 1, FP 1, FN 1 -> P = R = F1 = 1/2
    d = [dets((*A, 0.6)), dets((60, 60, 70, 70, 0.9), (*B, 0.3))]
    r = evaluate(d, [boxes(A), boxes(B)], threshold=0.5)
    assert r.ap50 == pytest.approx(2 / 3)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.f1 == pytest.approx(0.5)
    assert r.images == 2 and r.ground_truth == 2


def test_greedy_match_takes_the_best_unmatched_gap() -> None:
    # the 0.9 detection overlaps G2 more than G1 and takes G2; the 0.8 one then falls back to G1: both hits
    g1, g2 = (0.0, 0.0, 10.0, 10.0), (2.0, 0.0, 12.0, 10.0)
    d = [dets((2, 0, 12, 10, 0.9), (1, 0, 11, 10, 0.8))]
    r = evaluate(d, [boxes(g1, g2)], threshold=0.5)
    assert (r.tp, r.fp, r.fn, r.ap50) == (2, 0, 0, pytest.approx(1.0))


def test_empty_cases() -> None:
    none = ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    r = evaluate([none], [boxes(A)], 0.5)
    assert (r.ap50, r.f1, r.fn, r.detections) == (0.0, 0.0, 1, 0)
    r2 = evaluate([dets((*A, 0.9))], [np.zeros((0, 4), np.float32)], 0.5)
    assert (r2.tp, r2.fp, r2.precision, r2.recall) == (0, 1, 0.0, 0.0)


def test_average_precision_all_point_interpolation() -> None:
    # recall steps 0.25 each; precision 1, 0.5, 0.75(->envelope), 0.5: 0.25*1 + 0.25*0.75 + 0.25*0.75 + 0.25*0.5
    rec = np.array([0.25, 0.25, 0.5, 0.75, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75, 0.5])
    assert average_precision(rec, prec) == pytest.approx(0.25 + 0.25 * 0.75 + 0.25 * 0.75 + 0.25 * 0.5)


def test_match_images_marks_hits_misses_and_false_alarms() -> None:
    d = [dets((*A, 0.9), (50, 50, 60, 60, 0.8), (21, 20, 31, 30, 0.2))]
    (m,) = match_images(d, [boxes(A, B)], threshold=0.5)
    assert m.det_tp.tolist() == [True, False]  # the 0.2 detection is below the threshold
    assert m.gt_hit.tolist() == [True, False]


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        evaluate([dets((*A, 0.9))], [boxes(A), boxes(B)], 0.5)


def test_pr_curves_are_drawn_in_their_colours_with_their_operating_points() -> None:
    """Two labelled curves: each one's pixels are in its own colour along its path, and each operating point
    (the last curve point at or above its threshold) is circled."""
    from convert.evaluate import PRPoint
    from convert.report import SERIES_COLOURS, draw_pr_curves

    high = [PRPoint(0.9 - 0.1 * i, 1.0, 0.1 * (i + 1)) for i in range(8)]  # precision 1.0, recall 0.1 .. 0.8
    low = [PRPoint(0.9 - 0.1 * i, 0.3, 0.1 * (i + 1)) for i in range(8)]  # precision 0.3
    img = draw_pr_curves([("a", high, 0.5), ("b", low, 0.5)], size=480)
    assert img.shape == (480, 480, 3) and img.dtype == np.uint8
    pad, size = 48, 480
    x0, y0, x1, y1 = pad, pad // 2, size - pad // 2, size - pad

    def px(r: float, p: float) -> tuple[int, int]:  # (row, col) of a curve point, as the drawing maps it
        return int(round(y1 - p * (y1 - y0))), int(round(x0 + r * (x1 - x0)))

    for curve, colour in ((high, SERIES_COLOURS[0]), (low, SERIES_COLOURS[1])):
        row, col = px(0.35, curve[0].precision)  # between two points, on the line
        assert tuple(int(v) for v in img[row, col]) == colour
    # the operating point at 0.5 is the point with score 0.5 (recall 0.5): a ring around it, in the curve's colour
    row, col = px(0.5, 0.3)
    colour = np.array(SERIES_COLOURS[1], np.uint8)
    above, below = img[row - 6, col], img[row + 6, col]  # on the ring (radius 6), off the horizontal curve
    assert (above == colour).all() and (below == colour).all()
    assert (img[row - 6, col + 40] == 255).all()  # and not just a thicker line: further along, white


def test_the_alert_tradeoff_is_drawn_per_model_with_its_own_threshold_circled_and_the_ceiling_dashed() -> None:
    """Two models' (false alerts per pass, share alerted) points: each model's line is in its colour between its
    points, its own threshold's point is ringed, and the most any model can score is a dashed grey line."""
    from convert.report import SERIES_COLOURS, AlertPoint, draw_alert_tradeoff

    a = [AlertPoint(0.3, 0.5, 8.0), AlertPoint(0.5, 0.4, 4.0), AlertPoint(0.7, 0.2, 1.0)]
    b = [AlertPoint(0.3, 0.3, 8.0), AlertPoint(0.5, 0.3, 4.0), AlertPoint(0.7, 0.1, 1.0)]
    img = draw_alert_tradeoff([("a", a, 0.5), ("b", b, 0.7)], size=480, ceiling=0.7)
    assert img.shape == (480, 480, 3) and img.dtype == np.uint8
    pad, size, x_max = 48, 480, 10.0  # 8 false alerts per pass, with 10 % room, rounded up to a multiple of 5
    x0, y0, x1, y1 = pad, pad // 2, size - pad // 2, size - pad

    def px(fa: float, r: float) -> tuple[int, int]:  # (row, col) as the drawing maps a point
        return int(round(y1 - r * (y1 - y0))), int(round(x0 + fa / x_max * (x1 - x0)))

    row, col = px(6.0, 0.3)  # between b's two points at 0.3: on b's line
    assert tuple(int(v) for v in img[row, col]) == SERIES_COLOURS[1]
    row, col = px(4.0, 0.4)  # a's own threshold 0.5: a ring of radius 7 around its point
    assert tuple(int(v) for v in img[row - 7, col]) == SERIES_COLOURS[0]
    row = px(0, 0.7)[0]  # the ceiling: dashes 7 px long every 12 px, grey over the light grid line
    dashes = (img[row, x0 : x0 + 120] == 90).all(axis=1)
    assert dashes.sum() == 70 and (img[row, x0 : x0 + 120][~dashes] == 230).all()


def test_the_images_where_two_models_differ_are_picked_by_their_difference_in_errors() -> None:
    """Errors = misses + false alarms. This model: 1, 3, 2, 0 errors; the other: 3, 1, 2, 1. Gains (fewer errors
    here) are images 0 (+2) then 3 (+1); the one loss is image 1 (-2); image 2 (as many) is in neither list."""
    from convert.evaluate import ImageMatch
    from convert.report import Example, errors, pick_differences

    def match(missed: int, false_alarms: int) -> ImageMatch:
        tp = np.array([True] + [False] * false_alarms)
        return ImageMatch(tp, np.zeros((len(tp), 4), np.float32), np.ones(len(tp), np.float32),
                          np.array([True] + [False] * missed))

    mine = [match(1, 0), match(2, 1), match(0, 2), match(0, 0)]
    theirs = [match(2, 1), match(0, 1), match(1, 1), match(1, 0)]
    assert [errors(m) for m in mine] == [1, 3, 2, 0] and [errors(m) for m in theirs] == [3, 1, 2, 1]
    img = np.zeros((8, 8, 3), np.uint8)
    examples = [Example(f"im{k}", img, np.zeros((1, 4), np.float32), m) for k, m in enumerate(mine)]
    gains, losses = pick_differences(examples, theirs, 4)
    assert [(e.name, o is theirs[int(e.name[2])]) for e, o in gains] == [("im0", True), ("im3", True)]
    assert [e.name for e, _ in losses] == ["im1"]
    assert [e.name for e, _ in pick_differences(examples, theirs, 1)[0]] == ["im0"]
    with pytest.raises(ValueError, match="matches"):
        pick_differences(examples, theirs[:2], 4)


def test_score_bins_by_hand() -> None:
    """Detections binned by box height at the model input and by place in the frame, worked out by hand."""
    from convert.calibration import score_bins

    gts = [np.array([[10, 5, 30, 10]], np.float32), np.array([[0, 100, 50, 110]], np.float32)]
    dets = [
        ImageDetections(np.array([[10, 5, 30, 10], [50, 40, 60, 50], [0, 0, 5, 5]], np.float32),
                        np.array([0.9, 0.5, 0.2], np.float32)),  # hit; false alarm; under min_score
        ImageDetections(np.array([[0, 100, 50, 110], [0, 100, 50, 110], [0, 190, 10, 200]], np.float32),
                        np.array([0.4, 0.35, 0.6], np.float32)),  # hit; its duplicate; false alarm at the bottom
    ]
    by_height, by_place = score_bins(dets, gts, [100, 200], 320)
    # heights at 320: 16, 32 | 16, 16, 16
    got = {(b.low, b.high): (b.detections, b.mean_score, b.share_gaps) for b in by_height.bins if b.detections}
    assert got == {(12.0, 18.0): (4, pytest.approx((0.9 + 0.4 + 0.35 + 0.6) / 4), 0.5), (26.0, 40.0): (1, 0.5, 0.0)}
    # centres: 0.075, 0.45 | 0.525, 0.525, 0.975
    got = {(b.low, b.high): (b.detections, b.mean_score, b.share_gaps) for b in by_place.bins if b.detections}
    assert got == {
        (0.0, 0.1): (1, pytest.approx(0.9), 1.0),
        (0.35, 0.5): (1, 0.5, 0.0),
        (0.5, 0.65): (2, pytest.approx(0.375), 0.5),
        (0.9, 1.0): (1, pytest.approx(0.6), 0.0),
    }
    assert sum(b.detections for b in by_height.bins) == sum(b.detections for b in by_place.bins) == 5
    # over-confident: fewer than half as many are gaps as the mean score says (an empty bin never is)
    assert [b.overconfident for b in by_place.bins if b.detections] == [False, True, False, True]
    assert not any(b.overconfident for b in by_place.bins if not b.detections)
    with pytest.raises(ValueError, match="heights"):
        score_bins(dets, gts, [100], 320)
    # a letterboxing bundle: a 400x100 frame fills a 320x320 input 320x80 (0.8 input px per frame px), a 100x200
    # one 160x320 (1.6): heights 4, 8 | 16, 16, 16 (squashed, the first frame's boxes were counted at 3.2 px/px)
    by_height, _ = score_bins(dets, gts, [100, 200], 320, letterbox_in=([400, 100], 320))
    got = {(b.low, b.high): b.detections for b in by_height.bins if b.detections}
    assert got == {(0.0, 12.0): 2, (12.0, 18.0): 3}


def test_score_chart_draws_each_bin_to_scale() -> None:
    """The chart's filled bar reaches the share that are gaps, red where that is under half the mean score."""
    from convert.calibration import ScoreBin, ScoreBins
    from convert.report import FALSE_ALARM, SERIES_COLOURS, draw_score_bins

    bins = ScoreBins("test", [ScoreBin(0, 1, 10, 0.8, 0.5), ScoreBin(1, 2, 10, 0.8, 0.2), ScoreBin(2, 3, 0, 0, 0)])
    img = draw_score_bins(bins, width=336, height=240)  # plot area x 36..328 (three slots of 97 px), y 12..200
    col = img[:, 36 + 48]  # the middle of the first slot
    filled = np.nonzero(np.all(col == SERIES_COLOURS[0], axis=-1))[0]
    assert abs(filled.min() - (200 - 0.5 * 188)) <= 1 and filled.max() >= 197  # down to the axis (under the outline)
    col = img[:, 36 + 97 + 48]
    assert np.all(col[200 - int(0.2 * 188) + 2 : 198] == FALSE_ALARM)  # 0.2 < 0.4: over-confident, red
    col = img[:, 36 + 2 * 97 + 48]
    assert not np.any(np.all(col == SERIES_COLOURS[0], axis=-1)) and not np.any(np.all(col == FALSE_ALARM, axis=-1))
