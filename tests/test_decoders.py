"""The ssd and yolo decoders on hand-made output arrays, laid out as TFLite_Detection_PostProcess and Ultralytics
exports write them (test_detector.py also runs both on real int8 models, the SSD one ending in the real op)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.bundle import InputSpec, Manifest, OutputSpec, TensorSpec, Thresholds
from edge.decoders import DECODERS, gap_class_mask, nms
from edge.decoders.ssd import decode_ssd
from edge.decoders.yolo import decode_yolo


def _manifest(decoding: str, labels: tuple[str, ...], tensors: tuple[TensorSpec, ...], w: int = 320, h: int = 240,
              nms_iou: float = 0.5, max_det: int = 100) -> Manifest:
    return Manifest(name="t", version=1, task="shelf-gap-detection", input=InputSpec(width=w, height=h),
                    output=OutputSpec(decoding, tensors), labels=labels,
                    thresholds=Thresholds(score=0.5, nms_iou=nms_iou, max_detections=max_det))


def test_registry_has_all_three_decodings() -> None:
    assert set(DECODERS) == {"gap-heatmap", "ssd", "yolo"}
    assert all(callable(f) for f in DECODERS.values())


# ---- ssd -------------------------------------------------------------------------------------------------------
SSD_T = (TensorSpec("boxes", (1, 4, 4), "float32"), TensorSpec("classes", (1, 4), "float32"),
         TensorSpec("scores", (1, 4), "float32"), TensorSpec("count", (1,), "float32"))


def _ssd_outputs() -> dict[str, np.ndarray]:
    boxes = np.array([[[0.10, 0.20, 0.50, 0.40],    # ymin, xmin, ymax, xmax
                       [0.00, 0.50, 0.25, 1.00],
                       [0.30, 0.30, 0.60, 0.60],
                       [0.70, 0.70, 0.80, 0.80]]], np.float32)
    classes = np.array([[0, 1, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.8, 0.3, 0.95]], np.float32)
    count = np.array([3.0], np.float32)  # the 4th row is padding beyond `count`
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}


def test_ssd_boxes_go_to_input_pixels_in_xyxy_and_respect_count_and_threshold() -> None:
    m = _manifest("ssd", ("empty", "empty"), SSD_T)
    boxes, scores = decode_ssd(_ssd_outputs(), m, 0.5)
    # row 3 is below the threshold, row 4 is beyond count; both classes are gaps, so rows 1 and 2 count
    np.testing.assert_allclose(scores, [0.9, 0.8])
    np.testing.assert_allclose(boxes, [[0.20 * 320, 0.10 * 240, 0.40 * 320, 0.50 * 240],
                                       [0.50 * 320, 0.00 * 240, 1.00 * 320, 0.25 * 240]], rtol=1e-6)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)


def test_ssd_keeps_only_the_gap_class_when_labels_name_one() -> None:
    m = _manifest("ssd", ("product", "empty"), SSD_T)
    boxes, scores = decode_ssd(_ssd_outputs(), m, 0.5)
    np.testing.assert_allclose(scores, [0.8])  # only class 1 ("empty")
    np.testing.assert_allclose(boxes[0], [160, 0, 320, 60])
    # a class index the labels do not name is not a gap when the labels name one
    _, scores = decode_ssd(_ssd_outputs(), _manifest("ssd", ("empty",), SSD_T), 0.5)
    np.testing.assert_allclose(scores, [0.9])


def test_ssd_zero_count_and_missing_tensor() -> None:
    m = _manifest("ssd", ("empty",), SSD_T)
    out = _ssd_outputs()
    out["count"] = np.array([0.0], np.float32)
    boxes, scores = decode_ssd(out, m, 0.1)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    del out["classes"]
    with pytest.raises(ValueError, match="classes"):
        decode_ssd(out, m, 0.1)


# ---- yolo ------------------------------------------------------------------------------------------------------
def _yolo_preds(normalised: bool, nc: int = 1) -> np.ndarray:
    """(1, 4 + nc, N) channel-first as Ultralytics exports, for a 320x240 input."""
    rows = [  # cx, cy, w, h in pixels, then class scores
        [100, 60, 40, 20] + [0.9] + [0.0] * (nc - 1),
        [102, 61, 40, 20] + [0.7] + [0.0] * (nc - 1),   # overlaps the first (IoU ~0.86): suppressed
        [250, 200, 60, 30] + [0.6] + [0.0] * (nc - 1),
        [30, 30, 10, 10] + [0.2] + [0.0] * (nc - 1),    # below threshold
    ]
    p = np.array(rows, np.float32)
    if normalised:
        p[:, [0, 2]] /= 320
        p[:, [1, 3]] /= 240
    return p.T[None]


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("channels_first", [True, False])
def test_yolo_layouts_and_units_decode_the_same(normalised: bool, channels_first: bool) -> None:
    pred = _yolo_preds(normalised)
    if not channels_first:
        pred = np.transpose(pred, (0, 2, 1))
    m = _manifest("yolo", ("empty",), (TensorSpec("predictions", pred.shape, "float32"),))
    boxes, scores = decode_yolo({"predictions": pred}, m, 0.5)
    np.testing.assert_allclose(scores, [0.9, 0.6])
    np.testing.assert_allclose(boxes, [[80, 50, 120, 70], [220, 185, 280, 215]], atol=1e-3)


def test_yolo_multiclass_uses_the_gap_class_only() -> None:
    pred = _yolo_preds(True, nc=2)
    pred[0, 5, 3] = 0.99  # the 4th prediction is a confident "product"
    m = _manifest("yolo", ("empty", "product"), (TensorSpec("predictions", pred.shape, "float32"),))
    _, scores = decode_yolo({"predictions": pred}, m, 0.5)
    np.testing.assert_allclose(scores, [0.9, 0.6])


def test_yolo_a_box_is_a_gap_only_when_a_gap_class_scores_highest_on_it() -> None:
    # Ultralytics' own NMS calls a box by its best class: product 0.92 and empty 0.45 is a product, not a gap
    # at 0.45 (every product with a faint gap score came out as a gap alert)
    pred = _yolo_preds(True, nc=2)
    pred[0, 5, 2] = 0.92  # the 3rd prediction (empty 0.6) is surer of being a product
    pred[0, 4, 3], pred[0, 5, 3] = 0.55, 0.30  # the 4th: empty 0.55 wins over product 0.30
    m = _manifest("yolo", ("empty", "product"), (TensorSpec("predictions", pred.shape, "float32"),))
    _, scores = decode_yolo({"predictions": pred}, m, 0.5)
    np.testing.assert_allclose(sorted(scores), [0.55, 0.9])


def test_yolo_clips_to_the_input_and_caps_detections() -> None:
    pred = np.array([[[310], [230], [40], [40], [0.9]]], np.float32)  # (1, 5, 1), spills over the corner
    m = _manifest("yolo", ("empty",), (TensorSpec("predictions", pred.shape, "float32"),))
    boxes, _ = decode_yolo({"predictions": pred}, m, 0.5)
    np.testing.assert_allclose(boxes, [[290, 210, 320, 240]])
    many = np.zeros((1, 5, 50), np.float32)
    many[0, 0] = np.arange(50) * 6 + 5  # 50 disjoint 4x4 boxes along x
    many[0, 1], many[0, 2:4], many[0, 4] = 100, 4, 0.9
    m = _manifest("yolo", ("empty",), (TensorSpec("predictions", many.shape, "float32"),), max_det=7)
    boxes, _ = decode_yolo({"predictions": many}, m, 0.5)
    assert len(boxes) == 7


def test_yolo_wrong_class_count_is_a_clear_error() -> None:
    pred = _yolo_preds(True, nc=1)
    m = _manifest("yolo", ("empty", "a", "b"), (TensorSpec("predictions", pred.shape, "float32"),))
    with pytest.raises(ValueError, match=r"4 \+ 3 classes = 7"):
        decode_yolo({"predictions": pred}, m, 0.5)


def test_nms_and_gap_class_mask() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9, 10).tolist() == [1, 2, 0]
    assert nms(boxes[:0], scores[:0], 0.5, 10).size == 0
    assert gap_class_mask(("product", "Empty shelf"), 2).tolist() == [False, True]
    assert gap_class_mask(("a", "b"), 2).tolist() == [True, True]


def test_a_gap_label_is_matched_whole_and_the_manifest_s_gap_classes_come_first() -> None:
    """"not_empty" and "product" are no gap: matched by substring, every product became an alert."""
    assert gap_class_mask(("empty", "not_empty"), 2).tolist() == [True, False]
    assert gap_class_mask(("product", "no_product"), 2).tolist() == [False, True]
    assert gap_class_mask(("Out-of-stock", "SKU"), 2).tolist() == [True, False]
    assert gap_class_mask(("shelf", "hole"), 2, gap_classes=(1,)).tolist() == [False, True]
    assert gap_class_mask(("empty", "product"), 2, gap_classes=(1,)).tolist() == [False, True]  # as the maker said
    pred = np.zeros((1, 6, 2), np.float32)
    pred[0, :4, 0] = pred[0, :4, 1] = (100, 100, 20, 20)
    pred[0, 4:, 0] = (0.1, 0.9)  # box 0: class 1
    pred[0, 4:, 1] = (0.9, 0.1)  # box 1: class 0
    m = _manifest("yolo", ("shelf", "hole"), (TensorSpec("predictions", pred.shape, "float32"),))
    from dataclasses import replace

    boxes, scores = decode_yolo({"predictions": pred}, replace(m, gap_classes=(1,)), 0.5)
    assert scores.tolist() == pytest.approx([0.9]) and len(boxes) == 1


def test_the_wrapper_names_the_gap_classes_or_refuses_to_guess() -> None:
    from convert.wrap import choose_gap_classes

    assert choose_gap_classes(["product", "empty shelf"]) == (1,)
    assert choose_gap_classes(["hole"]) == (0,)  # the only class
    assert choose_gap_classes(["shelf", "hole", "Hole 2"], ["hole", "hole 2"]) == (1, 2)
    with pytest.raises(ValueError, match="which of the labels product, no product here is an empty spot"):
        choose_gap_classes(["product", "no product here"])
    with pytest.raises(ValueError, match="--gap-class gone: no such label"):
        choose_gap_classes(["product", "empty"], ["gone"])


def test_a_manifest_keeps_its_gap_classes_and_refuses_bad_ones() -> None:
    from dataclasses import replace

    from edge.bundle import BundleError

    m = replace(_manifest("yolo", ("shelf", "hole"), ()), gap_classes=(1,))
    d = json.loads(m.to_json_bytes())
    assert Manifest.from_dict(d).gap_classes == (1,)
    assert Manifest.from_dict({**d, "gap_classes": None}).gap_classes is None
    for bad in ([], [-1], ["1"], [True], 1):
        with pytest.raises(BundleError, match="gap_classes"):
            Manifest.from_dict({**d, "gap_classes": bad})
