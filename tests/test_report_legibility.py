"""The eval report read on a 390-px phone: chart text, detection scores and bin names (visual audit, L7)."""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np

from convert.calibration import ScoreBin, ScoreBins
from convert.evaluate import EvalResult, ImageMatch, PRPoint
from convert.report import FALSE_ALARM, HIT, Example, annotate, draw_pr_curves, render_html

CURVE = [PRPoint(0.9 - 0.1 * i, 1.0 - 0.05 * i, 0.1 * (i + 1)) for i in range(8)]


def _rows_of(mask: np.ndarray) -> int:
    rows = np.nonzero(mask.any(axis=1))[0]
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


def test_chart_digits_are_tall_enough_to_read_on_a_phone() -> None:
    # A 480-px chart is shown 366 CSS px wide on a 390-px phone: its tick digits were 9 px tall (under 7 CSS px).
    img = draw_pr_curves([("a", CURVE, 0.5)], size=480)
    pad, size = 48, 480
    y1 = size - pad
    digits = img[y1 + 4 : y1 + 24, pad - 20 : pad + 20]  # the x axis' "0.0" under the plot's corner
    ink = digits.astype(int).sum(axis=2) < 600
    assert _rows_of(ink) >= 11
    # the report draws it twice as large, for sharp text on a 2x or 3x screen, and shows it at most 480 CSS px wide
    big = draw_pr_curves([("a", CURVE, 0.5)], size=480, scale=2)
    assert big.shape == (960, 960, 3)
    assert _rows_of(big[2 * y1 + 8 : 2 * y1 + 48, 2 * pad - 40 : 2 * pad + 40].astype(int).sum(axis=2) < 600) >= 22


def _example(tp: bool) -> Example:
    box = np.array([[200, 200, 300, 280]], np.float32)
    gt = box if tp else np.zeros((0, 4), np.float32)  # a hit on the one labelled gap, or a false alarm on none
    match = ImageMatch(np.array([tp]), box, np.array([0.73], np.float32), np.ones(len(gt), bool))
    return Example("x", np.full((420, 560, 3), 128, np.uint8), gt, match)


def test_detection_scores_sit_on_a_tag_of_their_box_colour() -> None:
    # The score was written in the box's colour at font 0.35 (8 px), straight on the shelf: unreadable on a phone.
    for tp, colour in ((True, HIT), (False, FALSE_ALARM)):
        img = annotate(_example(tp), max_side=560).astype(int)
        fill = (np.abs(img - colour).sum(axis=2) < 40)[:199, 201]  # the tag's first column, over the box's top
        assert fill.sum() >= 18, (tp, int(fill.sum()))
        text = img[170:198, 203:250]
        assert (np.abs(text - colour).sum(axis=2) > 200).mean() > 0.1  # letters in the ink, not the fill


def test_the_chart_and_the_table_name_the_open_last_bin_alike() -> None:
    # The table said "40-inf" where the chart said "40+".
    bins = ScoreBins("box height", [ScoreBin(26.0, 40.0, 3, 0.6, 0.5), ScoreBin(40.0, float("inf"), 2, 0.5, 0.0)])
    result = EvalResult(images=1, ground_truth=1, detections=1, tp=1, fp=0, fn=0, precision=1.0, recall=1.0, f1=1.0,
                        ap50=1.0, threshold=0.5, iou=0.5, best_f1=1.0, best_f1_threshold=0.5, pr_curve=CURVE)
    page = render_html(result, [_example(True)], "t", "m", score_bins=[bins])
    assert "<td>40+</td>" in page and "inf" not in page
    pngs = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*max-width:480px', page)
    widths = [cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR).shape[1] for b in pngs]
    assert widths == [960, 960]  # the PR curve and the score chart, at twice the width they are shown at
