"""The gap-heatmap decoder and the training targets: targets drawn from boxes decode back to the same boxes."""

from __future__ import annotations

import numpy as np
import pytest

from convert.dataset import (
    AugmentConfig,
    augment,
    augment_mosaic,
    encode_targets,
    random_conv,
)
from edge.bundle import InputSpec, Manifest, OutputSpec, TensorSpec, Thresholds
from edge.decoders import DECODERS
from edge.decoders.heatmap import decode_gap_heatmap, heatmap_peaks


def manifest(size: int = 320, stride: int = 4, score: float = 0.4) -> Manifest:
    g = size // stride
    return Manifest(
        name="t", version=1, task="shelf-gap-detection", input=InputSpec(size, size),
        output=OutputSpec("gap-heatmap", (TensorSpec("heatmap", (1, g, g, 1), "int8"),
                                          TensorSpec("ltrb", (1, g, g, 4), "int8")), stride=stride),
        thresholds=Thresholds(score=score),
    )


@pytest.mark.parametrize("stride", [4, 8])
def test_targets_decode_back_to_their_boxes(stride: int) -> None:
    gt = np.array([[10, 20, 60, 44], [100, 100, 131, 127], [200, 40, 300, 70], [5, 280, 17, 300]], np.float32)
    g = 320 // stride
    t = encode_targets(gt, g, g, stride)
    assert t.heatmap.shape == (g, g, 1) and t.ltrb.shape == (g, g, 4)
    assert int((t.heatmap >= 0.999).sum()) == len(gt)  # one exact peak per box
    outs = {"heatmap": t.heatmap[None], "ltrb": t.ltrb[None]}
    boxes, scores = DECODERS["gap-heatmap"](outs, manifest(stride=stride), 0.5)
    assert len(boxes) == len(gt)
    assert np.all(scores == 1.0)
    for b in gt:
        best = np.abs(boxes - b).max(axis=1).min()
        assert best < 1e-3  # the centre cell's box sides are exact


def test_decoder_finds_local_maxima_only_and_applies_threshold() -> None:
    heat = np.zeros((1, 10, 10, 1), np.float32)
    heat[0, 2, 2, 0] = 0.9
    heat[0, 2, 3, 0] = 0.8  # neighbour of a higher peak: not a peak
    heat[0, 7, 7, 0] = 0.5
    heat[0, 5, 0, 0] = 0.3  # below the threshold
    ltrb = np.ones((1, 10, 10, 4), np.float32)
    boxes, scores = decode_gap_heatmap({"heatmap": heat, "ltrb": ltrb}, manifest(40, 4), 0.4)
    assert scores.tolist() == pytest.approx([0.9, 0.5])
    # cell (row 2, col 2) centre = (10, 10), sides 1 stride = 4 px
    assert boxes[0].tolist() == pytest.approx([6, 6, 14, 14])
    rows, cols = heatmap_peaks(heat[0, :, :, 0], 0.25)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(2, 2), (5, 0), (7, 7)]


def test_decoder_clips_to_the_input_and_suppresses_overlaps() -> None:
    heat = np.zeros((1, 10, 10, 1), np.float32)
    heat[0, 0, 0, 0] = 0.9
    heat[0, 0, 2, 0] = 0.8  # its box overlaps the first one heavily -> suppressed by NMS
    ltrb = np.full((1, 10, 10, 4), 3.0, np.float32)
    boxes, scores = decode_gap_heatmap({"heatmap": heat, "ltrb": ltrb}, manifest(40, 4), 0.4)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9)
    assert boxes[0].min() >= 0 and boxes[0].max() <= 40


def test_decoder_refuses_wrong_tensors() -> None:
    with pytest.raises(ValueError, match="ltrb"):
        decode_gap_heatmap({"heatmap": np.zeros((1, 4, 4, 1), np.float32)}, manifest(16, 4), 0.4)
    with pytest.raises(ValueError):
        decode_gap_heatmap(
            {"heatmap": np.zeros((1, 4, 4, 1), np.float32), "ltrb": np.zeros((1, 5, 5, 4), np.float32)},
            manifest(16, 4), 0.4,
        )


def test_augment_keeps_boxes_on_the_drawn_gaps() -> None:
    # a grey image with two black gaps; after augmentation every remaining box must still cover dark pixels
    img = np.full((416, 416, 3), 180, np.uint8)
    gt = np.array([[50, 60, 120, 100], [250, 300, 330, 350]], np.float32)
    for x0, y0, x1, y1 in gt.astype(int):
        img[y0:y1, x0:x1] = 0
    cfg = AugmentConfig(hue=0, saturation=0, brightness=0, contrast=0, noise=0, blur=0, jpeg=0)
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(20):
        out, boxes = augment(img, gt, rng, 256, 256, 320, 320, cfg)
        assert out.shape == (256, 256, 3)
        for x0, y0, x1, y1 in boxes:
            inner = out[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
            if inner.size:
                seen += 1
                assert inner.mean() < 40
    assert seen > 5


def test_mosaic_boxes_each_photos_gaps_and_leaves_no_gap_unboxed() -> None:
    # four grey photos, each with two gaps of its own colour: every box of a mosaic must cover one photo's gap
    # colour only, and no gap pixel may stay in view outside the boxes (a gap cut by a tile edge is either kept,
    # if half of it shows, or painted over). Colours are told apart by which channels are full and which empty,
    # since the white balance still moves each channel by up to 10 %.
    patterns = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]
    samples, blanks = [], []
    for k, pattern in enumerate(patterns):
        img = np.full((416, 416, 3), 128, np.uint8)
        blanks.append((img.copy(), np.zeros((0, 4), np.float32)))
        gt = np.array([[40 + 30 * k, 60, 140 + 30 * k, 110], [220, 250 - 20 * k, 330, 320 - 20 * k]], np.float32)
        for x0, y0, x1, y1 in gt.astype(int):
            img[y0:y1, x0:x1] = np.array(pattern) * 255
        samples.append((img, gt))

    def painted(pixels: np.ndarray, pattern: tuple[int, int, int]) -> np.ndarray:
        want = np.array(pattern, bool)
        return np.all(np.where(want, pixels > 200, pixels < 40), axis=-1)

    cfg = AugmentConfig(hue=0, saturation=0, brightness=0, contrast=0, noise=0, blur=0, jpeg=0)
    rng = np.random.default_rng(3)
    found: set[int] = set()
    for _ in range(30):
        state = rng.bit_generator.state
        out, boxes = augment_mosaic(samples, rng, 256, 256, 320, 320, cfg)
        assert out.shape == (256, 256, 3) and boxes.dtype == np.float32
        covered = np.zeros((256, 256), bool)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
            covered[max(int(y0) - 2, 0) : int(y1) + 2, max(int(x0) - 2, 0) : int(x1) + 2] = True
            inner = out[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2].reshape(-1, 3)
            if len(inner):
                which = [k for k, p in enumerate(patterns) if painted(inner, p).all()]
                assert len(which) == 1  # one photo's gap, not across a tile edge
                found.add(which[0])
        # the same draws over the same photos without their gaps: the pixels that differ are the gaps in view
        # (a cut gap painted over gets the same random colour in both), and all of them must be inside boxes
        twin = np.random.default_rng()
        twin.bit_generator.state = state
        blank, _ = augment_mosaic([(b, g) for (b, _), (_, g) in zip(blanks, samples, strict=True)], twin,
                                  256, 256, 320, 320, cfg)
        assert not ((np.abs(out.astype(int) - blank).max(-1) > 0) & ~covered).any()
    assert found == {0, 1, 2, 3}  # every photo shows up in some mosaic
    with pytest.raises(ValueError, match="4 samples"):
        augment_mosaic(samples[:3], rng, 256, 256, 320, 320, cfg)


def test_random_conv_restyles_colours_but_keeps_shapes_and_channel_statistics() -> None:
    # a blue-ish rectangle on a green-grey wall, with a little noise
    rng = np.random.default_rng(0)
    img = np.full((96, 96, 3), (120, 140, 100), np.float64)
    img[30:60, 20:70] = (40, 60, 200)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    moved = []
    for seed in range(10):
        out = random_conv(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        # each channel keeps its mean and spread (the floor to uint8 costs half a level)
        np.testing.assert_allclose(out.reshape(-1, 3).mean(0), img.reshape(-1, 3).mean(0), atol=1.0)
        np.testing.assert_allclose(out.reshape(-1, 3).std(0), img.reshape(-1, 3).std(0), rtol=0.15)
        # the rectangle is still a rectangle: inside and outside still differ strongly
        inside = out[35:55, 25:65].reshape(-1, 3).mean(0)
        outside = out[5:20, 5:90].reshape(-1, 3).mean(0)
        assert np.abs(inside - outside).max() > 60
        moved.append(np.abs(out.astype(int) - img).mean())
    assert sum(m > 5 for m in moved) >= 5  # most draws really change the colours
    again = random_conv(img, np.random.default_rng(3))
    np.testing.assert_array_equal(again, random_conv(img, np.random.default_rng(3)))


@pytest.mark.parametrize(
    ("field", "value"),
    [("randconv", 2.0), ("randconv", -0.1), ("mosaic", 1.5), ("flip", float("nan")), ("jpeg", 1.5), ("noise", -1.0),
     ("hue", float("inf")), ("scale", (1.5, 0.7)), ("aspect", (0.0, 1.0))],
)
def test_augment_config_refuses_values_it_cannot_mean(field: str, value: object) -> None:
    # a share above 1 would silently mean "always", a reversed range would draw from nothing sensible
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})  # type: ignore[arg-type]
    assert AugmentConfig(randconv=1.0, flip=0.0, scale=(1.0, 1.0)).randconv == 1.0  # the edges are allowed


def test_training_batches_are_mosaics_at_the_asked_share_and_plain_crops_keep_their_draws() -> None:
    from pathlib import Path

    from convert.dataset import LabeledImage
    from convert.model import NetConfig
    from convert.train import TrainConfig, make_batch

    # four one-colour photos without gaps: a crop's distinct colours tell how many photos it shows
    data = [LabeledImage(Path(f"{k}.jpg"), np.full((300, 400, 3), 40 + 60 * k, np.uint8), np.zeros((0, 4), np.float32))
            for k in range(4)]
    quiet = dict(hue=0.0, saturation=0.0, brightness=0.0, contrast=0.0, noise=0.0, blur=0.0, jpeg=0.0, flip=0.0,
                 scale=(1.2, 1.5))  # zoomed in: a plain crop never shows its fill border

    def photos_per_crop(mosaic: float, seed: int) -> list[int]:
        cfg = TrainConfig(net=NetConfig(stride=8), crop=128, aug=AugmentConfig(mosaic=mosaic, **quiet))  # type: ignore[arg-type]
        rng = np.random.default_rng(seed)
        x, hm, _, _ = make_batch(data, rng.integers(0, 4, 16), rng, cfg)
        assert x.shape == (16, 128, 128, 3) and hm.shape == (16, 16, 16, 1) and not hm.any()
        # white balance moves a grey level by up to 10 %: count the photos by the levels 40, 100, 160, 220
        levels = x.mean(-1).round()
        return [sum(bool((np.abs(levels[i] - (40 + 60 * k)) < 20).any()) for k in range(4)) for i in range(16)]

    assert photos_per_crop(0.0, 1) == [1] * 16
    mixed = photos_per_crop(1.0, 1)
    # four tiles drawn from four photos show 2.7 distinct ones on average, one photo once in 64
    assert sum(n >= 2 for n in mixed) >= 14 and np.mean(mixed) > 2.2
    half = photos_per_crop(0.5, 2)
    assert 3 <= sum(n == 1 for n in half) <= 13  # about half plain

    # mosaic 0 draws nothing extra: each crop is augment() of its photo on the same random stream
    cfg = TrainConfig(net=NetConfig(stride=8), crop=128, aug=AugmentConfig(**quiet))  # type: ignore[arg-type]
    rng, again = np.random.default_rng(5), np.random.default_rng(5)
    x, _, _, _ = make_batch(data, np.array([0, 3, 1]), rng, cfg)
    for k, i in enumerate([0, 3, 1]):
        img, _ = augment(data[i].image, data[i].boxes, again, 128, 128, 320, 320, cfg.aug)
        np.testing.assert_array_equal(x[k], img)


def test_augmented_boxes_sit_on_their_pixels_and_shrunk_crops_are_the_devices_resize(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A label must mark the drawn gap to a fraction of a pixel at every zoom, flipped or not (boxes were mapped as
    pixel edges and the image as pixel centres: up to 1.2 px apart), and a crop shrunk from the photo must be the
    pixels the device feeds the model (warpAffine has no INTER_AREA and silently used bilinear: up to 44 grey
    levels from the device's resize of the same photo)."""
    import cv2

    from convert import dataset
    from edge.resize import resize_interpolation

    monkeypatch.setattr(dataset, "photometric", lambda img, rng, cfg: img)  # geometry only
    img = np.zeros((416, 416, 3), np.uint8)
    img[190:226, 190:250] = 255
    box = np.array([[190, 190, 250, 226]], np.float32)
    checked = 0
    for zoom in (0.6, 0.8, 1.0, 1.3, 1.5):
        for flip in (0.0, 1.0):
            cfg = AugmentConfig(scale=(zoom, zoom), aspect=(0.8, 1.25), flip=flip)
            for seed in range(10):
                out, b = augment(img, box, np.random.default_rng(seed), 256, 256, 320, 320, cfg)
                if not (len(b) and b[0, 0] > 2 and b[0, 2] < 254 and b[0, 1] > 2 and b[0, 3] < 254):
                    continue  # cut by the crop's edge
                o = out.astype(int)
                grey = np.where((o[..., 0] == o[..., 1]) & (o[..., 1] == o[..., 2]), o[..., 0], 0).astype(float)
                cx = (grey * np.arange(256)[None, :]).sum() / grey.sum() + 0.5  # pixel i's centre is i + 0.5
                cy = (grey * np.arange(256)[:, None]).sum() / grey.sum() + 0.5
                assert abs(cx - (b[0, 0] + b[0, 2]) / 2) < 0.1 and abs(cy - (b[0, 1] + b[0, 3]) / 2) < 0.1
                checked += 1
    assert checked >= 50

    photo = np.random.default_rng(0).integers(0, 255, (416, 416, 3)).astype(np.uint8)
    cfg = AugmentConfig(scale=(1.0, 1.0), aspect=(1.0, 1.0), flip=0.0)
    crop, _ = augment(photo, np.zeros((0, 4), np.float32), np.random.default_rng(0), 320, 320, 320, 320, cfg)
    device = cv2.resize(photo, (320, 320), interpolation=resize_interpolation(416, 416, 320, 320))
    np.testing.assert_array_equal(crop, device)
