"""The training-only auxiliary loss (`TrainConfig.aux`): masks travel with the training views, and the saved model
has no extra output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.dataset import AugmentConfig, LabeledImage, augment, augment_mosaic, mask_shares
from convert.synth import MASK_CLASSES, MASK_GAP, MASK_OTHER, MASK_PRODUCT, render_sample, sample_rng

COLOURS = {MASK_OTHER: (0, 255, 0), MASK_PRODUCT: (255, 0, 0), MASK_GAP: (0, 0, 255)}


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 416x416 picture painted in one colour per class, its class mask and its gap boxes."""
    rng = np.random.default_rng(seed)
    mask = np.full((416, 416), MASK_OTHER, np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, 380, 2)
        mask[y : y + rng.integers(20, 80), x : x + rng.integers(20, 80)] = MASK_PRODUCT
    boxes = []
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(10, 370, 2))
        w, h = (int(v) for v in rng.integers(12, 40, 2))
        mask[y : y + h, x : x + w] = MASK_GAP
        boxes.append((x, y, x + w, y + h))
    image = np.zeros((416, 416, 3), np.uint8)
    for code, colour in COLOURS.items():
        image[mask == code] = colour
    return image, mask, np.array(boxes, np.float32)


def _assert_aligned(view: np.ndarray, mask: np.ndarray) -> int:
    """Inside each product and gap region (one pixel in from its edges and the view's, where the image's
    interpolation blends colours) the view shows that class's colour; wherever it shows a class's colour, the mask
    says that class."""
    inner = 0
    for code, colour in COLOURS.items():
        exact = (view == colour).all(-1)
        assert (mask[exact] == code).all(), f"class {code}'s colour under another class in the mask"
        if code != MASK_OTHER:  # outside the photo the view shows a random fill and the mask says "other"
            core = cv2.erode((mask == code).astype(np.uint8), np.ones((3, 3), np.uint8),
                             borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)  # the view's edge blends too
            assert exact[core].all(), f"class {code} in the mask where the view shows something else"
            inner += int(core.sum())
    return inner


def test_masks_travel_with_the_view_through_zoom_flip_cuts_and_mosaic(monkeypatch: pytest.MonkeyPatch) -> None:
    from convert import dataset

    monkeypatch.setattr(dataset, "photometric", lambda img, rng, cfg: img)  # geometry only
    image, mask, boxes = _scene(0)
    checked = 0
    for zoom in (0.6, 1.0, 1.5):  # 0.6 shrinks the photo first (INTER_AREA), the others warp it
        for flip in (0.0, 1.0):
            cfg = AugmentConfig(scale=(zoom, zoom), flip=flip)
            for seed in range(6):
                rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
                view, vb, vm = augment(image, boxes, rng, 256, 256, 320, 320, cfg, mask)
                plain, pb, none = augment(image, boxes, twin, 256, 256, 320, 320, cfg)
                assert none is None and vm is not None and vm.shape == (256, 256) and vm.dtype == np.uint8
                np.testing.assert_array_equal(view, plain)  # the mask takes no random draw
                np.testing.assert_array_equal(vb, pb)
                checked += _assert_aligned(view, vm) > 0
                for x0, y0, x1, y1 in vb:  # and the labelled gaps are gap in the mask
                    assert (vm[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1] == MASK_GAP).all()
    assert checked >= 30

    scenes = [_scene(k) for k in range(4)]
    rng = np.random.default_rng(1)
    for _ in range(8):
        view, vb, vm = augment_mosaic([(im, b) for im, _, b in scenes], rng, 256, 256, 320, 320,
                                      AugmentConfig(), [m for _, m, _ in scenes])
        assert vm is not None
        assert _assert_aligned(view, vm) > 0
    assert augment_mosaic([(im, b) for im, _, b in scenes], rng, 256, 256, 320, 320, AugmentConfig())[2] is None


def test_a_gap_cut_away_by_the_crop_is_painted_over_in_the_mask_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap mostly outside the view loses its label and its visible rest is painted over: no gap left in the
    mask where no box says so."""
    from convert import dataset

    monkeypatch.setattr(dataset, "photometric", lambda img, rng, cfg: img)
    image, mask, boxes = _scene(2)
    cfg = AugmentConfig(scale=(1.5, 1.5), min_visible=0.9)
    cut = 0
    for seed in range(40):
        view, vb, vm = augment(image, boxes, np.random.default_rng(seed), 128, 128, 320, 320, cfg, mask)
        assert vm is not None
        labelled = np.zeros(vm.shape, bool)
        for x0, y0, x1, y1 in vb:
            labelled[max(int(y0) - 1, 0) : int(np.ceil(y1)) + 1, max(int(x0) - 1, 0) : int(np.ceil(x1)) + 1] = True
        assert not ((vm == MASK_GAP) & ~labelled).any()
        cut += int((((view == COLOURS[MASK_GAP]).all(-1)) | (vm == MASK_GAP)).any() and len(vb) < 3)
    assert cut > 0


def test_mask_shares_are_each_cells_class_shares() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = MASK_GAP
    mask[0:2, 4:6] = MASK_PRODUCT
    mask[0, 6] = MASK_PRODUCT
    shares = mask_shares(mask, 4, 4, MASK_CLASSES)
    assert shares.shape == (4, 4, 3) and shares.dtype == np.float32
    np.testing.assert_allclose(shares.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(shares[:, :2, MASK_GAP], 1.0)
    np.testing.assert_allclose(shares[0, 2], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(shares[0, 3], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(shares[1:, 2:, MASK_OTHER], 1.0)


def _generated(n: int, size: int) -> list[LabeledImage]:
    out = []
    for i in range(n):
        s = render_sample(sample_rng(4, i), size, size, debug=True)
        out.append(LabeledImage(Path(f"{i}.jpg"), s.image, s.boxes, s.class_mask()))
    return out


def test_aux_batches_are_the_same_crops_with_class_shares() -> None:
    from convert.model import NetConfig
    from convert.train import TrainConfig, make_batch

    data = _generated(4, 160)
    cfg = TrainConfig(net=NetConfig(stride=4), crop=128, aug=AugmentConfig(mosaic=0.5))
    idx = np.array([0, 1, 2, 3, 1, 0])
    plain = make_batch(data, idx, np.random.default_rng(3), cfg)
    aux = make_batch(data, idx, np.random.default_rng(3), replace(cfg, aux=1.0))
    assert plain.aux is None and aux.aux is not None and aux.aux.shape == (6, 32, 32, MASK_CLASSES)
    for a, b in ((plain.x, aux.x), (plain.heatmap, aux.heatmap), (plain.ltrb, aux.ltrb), (plain.weight, aux.weight)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(aux.aux.sum(-1), 1.0, atol=1e-5)
    # the heatmap's peaks (the labelled gaps' centres) sit on cells that show mostly gap
    peaks = plain.heatmap[..., 0] >= 0.999
    assert peaks.any() and np.median(aux.aux[peaks][:, MASK_GAP]) > 0.5


pytest.importorskip("tensorflow")


def test_training_with_aux_changes_the_weights_but_saves_no_aux_output(tmp_path: Path) -> None:
    from convert.model import OUTPUT_NAMES, NetConfig
    from convert.train import TrainConfig, load_float_model, train

    net = NetConfig(width=64, height=64, stride=4, channels=(8, 8, 12, 12, 16), fpn=8, head=8)
    data = _generated(6, 96)
    cfg = TrainConfig(net=net, crop=64, batch=4, steps=3, warmup=1, lr=3e-3, seed=5, aug=AugmentConfig(mosaic=0.5))
    start = train(data, replace(cfg, steps=1, lr=1e-9), tmp_path / "start", progress=False).weights
    plain = train(data, cfg, tmp_path / "plain", init_weights=start, progress=False)
    aux = train(data, replace(cfg, aux=1.0), tmp_path / "aux", init_weights=start, progress=False)
    models = [load_float_model(r.weights)[0] for r in (plain, aux)]
    for m in models:
        assert set(m.output) == set(OUTPUT_NAMES)
        assert not [layer.name for layer in m.layers if layer.name == "aux"]
    assert aux.params == plain.params  # the counted (saved) model is the plain one
    wp, wa = (np.concatenate([np.ravel(w) for w in m.get_weights()]) for m in models)
    assert not np.allclose(wp, wa)  # the aux loss reached the shared layers

    with pytest.raises(ValueError, match="no mask"):
        train([replace(d, mask=None) for d in data], replace(cfg, aux=1.0), tmp_path / "x", progress=False)


@pytest.mark.parametrize("w", [-0.5, float("nan"), float("inf")])
def test_a_bad_aux_weight_is_refused(w: float) -> None:
    from convert.train import TrainConfig

    with pytest.raises(ValueError, match="aux"):
        TrainConfig(aux=w)
