"""Positives of the heatmap loss (`TrainConfig.positive_heat`): the centre cell alone by default, or every cell whose
target heat reaches the threshold; checked against the focal loss worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main

pytest.importorskip("tensorflow")

# One row of five cells around a box centre (target heat 1.0), every prediction 0.5.
_HEAT = np.array([0.2, 0.6, 1.0, 0.6, 0.2], np.float32).reshape(1, 1, 5, 1)


def _focal(positive_heat: float) -> float:
    import tensorflow as tf

    from convert.train import _losses

    pred = np.full_like(_HEAT, 0.5)
    ltrb = np.ones((1, 1, 5, 4), np.float32)
    weight = np.zeros((1, 1, 5, 1), np.float32)
    focal, _ = _losses(tf, tf.constant(_HEAT), tf.constant(ltrb), tf.constant(weight), tf.constant(pred),
                       tf.constant(ltrb), positive_heat)
    return float(focal)


def test_by_default_only_the_centre_cell_is_a_positive() -> None:
    # centre: -log(0.5) * (1 - 0.5)^2; the others: -log(0.5) * 0.5^2 * (1 - heat)^4; one box
    by_hand = math.log(2) * 0.25 * (1.0 + 2 * 0.8**4 + 2 * 0.4**4)
    assert _focal(1.0) == pytest.approx(by_hand, rel=1e-5)


def test_cells_at_or_above_the_positive_heat_are_positives_and_the_loss_is_still_per_box() -> None:
    # the centre and both 0.6 cells are positives; the 0.2 cells stay negatives; divided by one box, not three cells
    by_hand = math.log(2) * 0.25 * (3.0 + 2 * 0.8**4)
    assert _focal(0.5) == pytest.approx(by_hand, rel=1e-5)
    assert _focal(0.6) == pytest.approx(by_hand, rel=1e-5)
    assert _focal(0.61) == pytest.approx(_focal(1.0), rel=1e-6)


@pytest.mark.parametrize("h", [0.0, 1.5, float("nan")])
def test_a_positive_heat_outside_0_to_1_is_refused_when_the_config_is_made(h: float) -> None:
    from convert.train import TrainConfig

    with pytest.raises(ValueError, match="positive_heat"):
        TrainConfig(positive_heat=h)


def test_train_refuses_a_bad_positive_heat_before_it_generates_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", str(tmp_path / "x.bundle"), "--synth", "4", "--positive-heat", "0", "--unsigned", "--quiet",
                 "--work", str(tmp_path / "w")])
    assert code != 0 and "positive_heat" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "x.bundle").exists()
