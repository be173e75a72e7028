"""Two-view consistency (`TrainConfig.consistency`): one crop through two photometric draws, their heatmaps pulled
together by a Jensen-Shannon term; off, the batches and random streams are those of before."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from convert.dataset import AugmentConfig, LabeledImage, augment, encode_targets, photometric
from convert.model import NetConfig
from convert.synth import make_shelf_image
from convert.train import TrainConfig, make_batch

NET = NetConfig(width=128, height=96, stride=8)


def _shelves(n: int = 4) -> list[LabeledImage]:
    rng = np.random.default_rng(0)
    return [LabeledImage(Path(f"{i}.jpg"), s.image, s.boxes)
            for i, s in enumerate(make_shelf_image(rng, 160, 120) for _ in range(n))]


def _digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:16]


@pytest.mark.parametrize(("mosaic", "targets", "next_draws"), [
    (0.0, "6a093945c437bcfd", [1491150816, 127173117]),
    (0.5, "91d4230acab69596", [2010521123, 79698927]),
])
def test_without_consistency_a_seeded_batch_and_its_random_stream_are_those_of_before(
        mosaic: float, targets: str, next_draws: list[int]) -> None:
    """The figures were taken from make_batch before the option existed (the recipe's restyling, with and without
    mosaic): the same targets, and the generator left at the same point, so every later draw is the same too."""
    cfg = TrainConfig(net=NET, crop=64, aug=AugmentConfig(randconv=0.5, mosaic=mosaic))
    rng = np.random.default_rng(3)
    x, hm, lt, wt = make_batch(_shelves(), rng.integers(0, 4, 6), rng, cfg)
    assert x.shape == (6, 64, 64, 3) and hm.shape == (6, 8, 8, 1)
    assert _digest(hm, lt, wt) == targets
    assert rng.integers(0, 2**31, 2).tolist() == next_draws


def test_the_two_views_share_their_crop_and_targets_and_differ_in_pixels() -> None:
    data = _shelves()
    idx = np.array([0, 3, 1, 2])
    cfg = TrainConfig(net=NET, crop=64, aug=AugmentConfig(randconv=0.5), consistency=1.0)
    rng, again = np.random.default_rng(5), np.random.default_rng(5)
    x, hm, lt, wt = make_batch(data, idx, rng, cfg)
    n = len(idx)
    assert x.shape == (2 * n, 64, 64, 3) and hm.shape == (2 * n, 8, 8, 1)
    assert hm[:n].any()
    for a in (hm, lt, wt):
        np.testing.assert_array_equal(a[:n], a[n:])
    for k, i in enumerate(idx):
        # one geometric view, then two photometric draws of it, in that order on the one stream
        crop, boxes = augment(data[i].image, data[i].boxes, again, 64, 64, NET.width, NET.height, cfg.aug, False)
        np.testing.assert_array_equal(x[k], photometric(crop, again, cfg.aug))
        np.testing.assert_array_equal(x[n + k], photometric(crop, again, cfg.aug))
        np.testing.assert_array_equal(hm[k], encode_targets(boxes, 8, 8, NET.stride).heatmap)
        assert np.abs(x[k] - x[n + k]).mean() > 1.0


def test_a_mosaic_is_seen_through_two_draws_too() -> None:
    cfg = TrainConfig(net=NET, crop=64, aug=AugmentConfig(mosaic=1.0), consistency=1.0)
    rng = np.random.default_rng(2)
    x, hm, _, _ = make_batch(_shelves(), np.array([0, 1, 2]), rng, cfg)
    np.testing.assert_array_equal(hm[:3], hm[3:])
    assert all(np.abs(x[k] - x[3 + k]).mean() > 1.0 for k in range(3))


def _jsd(p: list[float], q: list[float]) -> float:
    tf = pytest.importorskip("tensorflow")
    from convert.train import consistency_loss

    return float(consistency_loss(tf, tf.constant(p, tf.float32), tf.constant(q, tf.float32)))


def test_the_consistency_term_is_the_jensen_shannon_divergence_per_cell() -> None:
    def kl(a: float, b: float) -> float:  # between Bernoulli distributions
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    # a cell at 0.5 against 0.9, their mean 0.7; a cell the same in both views adds 0 to the mean over 2 cells
    by_hand = 0.5 * (0.5 * kl(0.5, 0.7) + 0.5 * kl(0.9, 0.7))
    assert by_hand == pytest.approx(0.0509, abs=1e-4)
    assert _jsd([0.5, 0.2], [0.9, 0.2]) == pytest.approx(by_hand, rel=1e-4)
    assert _jsd([0.9, 0.2], [0.5, 0.2]) == pytest.approx(by_hand, rel=1e-4)  # symmetric
    assert _jsd([0.3, 0.01, 0.999], [0.3, 0.01, 0.999]) == pytest.approx(0.0, abs=1e-7)
    assert _jsd([0.0], [1.0]) == pytest.approx(math.log(2), abs=1e-4)  # bounded: certain and opposite


def test_training_with_consistency_changes_the_weights_and_saves_the_plain_model(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from dataclasses import replace

    from convert.train import load_float_model, train

    net = NetConfig(width=64, height=64, stride=8, channels=(8, 8, 12, 12, 16), fpn=8, head=8)
    rng = np.random.default_rng(0)
    data = [LabeledImage(Path(f"{i}.jpg"), s.image, s.boxes)
            for i, s in enumerate(make_shelf_image(rng, 96, 96) for _ in range(8))]
    cfg = TrainConfig(net=net, crop=64, batch=4, steps=4, warmup=1, lr=3e-3, seed=5, aug=AugmentConfig(randconv=0.5))
    plain = train(data, cfg, tmp_path / "plain", progress=False)
    both = train(data, replace(cfg, consistency=1.0), tmp_path / "both", progress=False)
    assert math.isfinite(both.final_loss)
    (mp, _), (mb, _) = load_float_model(plain.weights), load_float_model(both.weights)
    assert [w.shape for w in mp.get_weights()] == [w.shape for w in mb.get_weights()]
    assert any(not np.allclose(a, b) for a, b in zip(mp.get_weights(), mb.get_weights(), strict=True))


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf")])
def test_a_bad_consistency_weight_is_refused_when_the_config_is_made(weight: float) -> None:
    with pytest.raises(ValueError, match="consistency"):
        TrainConfig(consistency=weight)
