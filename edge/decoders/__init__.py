"""The output decoders by manifest `output.decoding` name: dequantized outputs -> boxes in model-input pixels.

A decoder is `decode(outputs, manifest, score_threshold) -> (boxes (N, 4) float32 x0, y0, x1, y1 in model-input
pixels, scores (N,) float32)`, sorted by descending score. `outputs` maps the manifest's tensor names to the
dequantized float32 outputs, batch dimension kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edge.bundle import Manifest

Decoder = Callable[[Mapping[str, np.ndarray], Manifest, float], tuple[np.ndarray, np.ndarray]]


def _gap_heatmap(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    # the model helper's module, imported when first used so DECODERS works before it exists
    from edge.decoders.heatmap import decode_gap_heatmap

    return decode_gap_heatmap(outputs, manifest, score_threshold)  # type: ignore[arg-type]


def _ssd(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    from edge.decoders.ssd import decode_ssd

    return decode_ssd(outputs, manifest, score_threshold)


def _yolo(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    from edge.decoders.yolo import decode_yolo

    return decode_yolo(outputs, manifest, score_threshold)


DECODERS: dict[str, Decoder] = {"gap-heatmap": _gap_heatmap, "ssd": _ssd, "yolo": _yolo}

# class names that mean an empty spot, compared whole (lower case, spaces and dashes as "_"): "not_empty" is not one
GAP_NAMES = frozenset({"empty", "gap", "gaps", "empty_space", "empty_shelf", "empty_slot", "void", "missing", "oos",
                       "out_of_stock", "no_product"})


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def normal_label(label: str) -> str:
    return re.sub(r"[\s-]+", "_", label.strip().lower())


def gap_labels(labels: Sequence[str]) -> tuple[int, ...]:
    """The indices of the labels whose whole name means an empty spot (GAP_NAMES)."""
    return tuple(i for i, label in enumerate(labels) if normal_label(label) in GAP_NAMES)


def gap_class_mask(labels: tuple[str, ...], num_classes: int, gap_classes: tuple[int, ...] | None = None
                   ) -> np.ndarray:
    """Which class indices count as a gap: the manifest's `gap_classes` when it names them (bundles since they
    do), else the labels whose name means an empty spot, else every class (a one-class model)."""
    mask = np.zeros(num_classes, bool)
    chosen = gap_classes if gap_classes is not None else gap_labels(labels[:num_classes])
    for i in chosen:
        if i < num_classes:
            mask[i] = True
    if gap_classes is None and not mask.any():
        mask[:] = True
    return mask


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_detections: int) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices by descending score."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
        h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)
