"""The README's alert trade-off chart (bench/esd_pan.py --plot): a log axis, the cited points labelled, no label over
another (visual audit, L4: on a 0-30 linear axis the region of one false alert a pass was a sliver, its threshold
labels overprinted, and the points the text cites were not marked)."""

from __future__ import annotations

import numpy as np
import pytest

from convert.report import SERIES_COLOURS, AlertPoint, Axis, cited_points, draw_alert_tradeoff, label_spot

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7)
# (recall, false alerts per pass) per threshold: rates from 0.06 to 30 a pass, as the held-out ESD passes give
SHIPPED = [AlertPoint(t, r, f) for t, r, f in zip(THRESHOLDS, (0.45, 0.38, 0.30, 0.25, 0.22, 0.21, 0.17),
                                                  (30, 15, 5.5, 2.1, 1.2, 0.94, 0.6), strict=True)]
TUNED = [AlertPoint(t, r, f) for t, r, f in zip(THRESHOLDS, (0.60, 0.53, 0.46, 0.36, 0.26, 0.21, 0.16),
                                                (28, 12, 3.5, 0.81, 0.3, 0.2, 0.06), strict=True)]


def test_a_log_axis_puts_one_false_alert_a_pass_in_the_middle_of_the_rates() -> None:
    axis = Axis.log(0.06, 30)
    assert [t for t, _ in axis.ticks] == [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]
    assert axis.to_unit(0.05) == pytest.approx(0) and axis.to_unit(50) == pytest.approx(1)
    assert axis.to_unit(1.0) == pytest.approx(1 / 3 + np.log10(2) / 3)  # 0.05 -> 1 -> 50: 20x, then 50x
    assert axis.to_unit(0.0) == 0  # no false alert at all: at the axis' start


def test_each_model_labels_its_own_threshold_and_its_best_point_within_the_budget() -> None:
    # the README's sentence: at about one false alert per pass, fine-tuned 0.50 (0.81 a pass), shipped 0.65 (0.94)
    assert cited_points(SHIPPED, 0.5, 1.0) == [SHIPPED[3], SHIPPED[5]]
    assert cited_points(TUNED, 0.5, 1.0) == [TUNED[3]]  # its own is its best within the budget: labelled once
    assert cited_points(TUNED, 0.5, None) == [TUNED[3]]
    assert cited_points(SHIPPED, 0.5, 0.01) == [SHIPPED[3]]  # none within


def test_labels_of_crowded_points_do_not_overprint() -> None:
    # The README's chart had "0.60" and "0.70" drawn over each other where the two curves ran close.
    taken: list[tuple[int, int, int, int]] = []
    for at in ((200, 300), (204, 296), (210, 305), (198, 310), (560, 5)):
        _, box = label_spot(at, (80, 22), taken, (570, 570), 7)
        assert 0 <= box[0] and 0 <= box[1] and box[2] <= 570 and box[3] <= 570
        assert not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken)
        taken.append(box)


def test_the_chart_is_drawn_on_the_log_axis_with_the_budget_dashed() -> None:
    img = draw_alert_tradeoff([("shipped", SHIPPED, 0.5), ("fine-tuned", TUNED, 0.5)], size=480, ceiling=0.7,
                              log_x=True, budget=1.0)
    assert img.shape == (480, 480, 3)
    pad, size = 48, 480
    x0, y0, x1, y1 = pad, pad // 2, size - pad // 2, size - pad
    axis = Axis.log(0.06, 30)

    def col(rate: float) -> int:
        return int(round(x0 + axis.to_unit(rate) * (x1 - x0)))

    # the shipped model's line between its points at 15 and 5.5 a pass (recall 0.38 -> 0.30)
    u = (np.log10(9) - np.log10(5.5)) / (np.log10(15) - np.log10(5.5))
    row = int(round(y1 - (0.30 + u * 0.08) * (y1 - y0)))
    near = img[row - 2 : row + 3, col(9)].astype(int)
    assert (np.abs(near - SERIES_COLOURS[0]).sum(axis=1) < 60).any()
    # the budget: a dashed grey vertical line at one false alert a pass
    dashes = (img[y0 + 1 : y1, col(1.0)] == 90).all(axis=1)
    assert 0.3 < dashes.mean() < 0.7
