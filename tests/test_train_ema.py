"""Weight averaging (`TrainConfig.ema`): the saved weights are the moving average, not the last step's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convert.synth import make_shelf_image

pytest.importorskip("tensorflow")


def _weights(path: Path) -> np.ndarray:
    from convert.train import load_float_model

    model, _ = load_float_model(path)
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def test_ema_weights_lag_behind_the_last_step_towards_the_start(tmp_path: Path) -> None:
    """Training is deterministic, so both runs take the same steps; only what is saved differs. An average over
    the trajectory with momentum 0.8 still gives the starting weights 0.8^8 = 17 % of the weight after 8 steps, so it
    sits closer to them than the last step's weights do."""
    from convert.dataset import LabeledImage
    from convert.model import NetConfig
    from convert.train import TrainConfig, train

    net = NetConfig(width=64, height=64, stride=8, channels=(8, 8, 12, 12, 16), fpn=8, head=8)
    rng = np.random.default_rng(0)
    samples = [make_shelf_image(rng, 96, 96) for _ in range(8)]
    data = [LabeledImage(Path(f"{i}.jpg"), s.image, s.boxes) for i, s in enumerate(samples)]
    cfg = TrainConfig(net=net, crop=64, batch=4, steps=8, warmup=1, lr=3e-3, seed=5)
    start = train(data, replace(cfg, steps=1, lr=1e-9), tmp_path / "start", progress=False).weights
    plain = train(data, cfg, tmp_path / "plain", init_weights=start, progress=False).weights
    plain_again = train(data, cfg, tmp_path / "again", init_weights=start, progress=False).weights
    ema = train(data, replace(cfg, ema=0.8), tmp_path / "ema", init_weights=start, progress=False).weights
    w0, wp, we = _weights(start), _weights(plain), _weights(ema)
    np.testing.assert_array_equal(wp, _weights(plain_again))  # deterministic: the comparison is fair
    assert not np.allclose(we, wp)
    assert np.linalg.norm(we - w0) < np.linalg.norm(wp - w0)


@pytest.mark.parametrize("m", [1.0, -0.1, float("nan")])
def test_a_bad_ema_momentum_is_refused_when_the_config_is_made(m: float) -> None:
    from convert.train import TrainConfig

    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=m)
