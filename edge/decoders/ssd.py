"""Decodes TFLite_Detection_PostProcess outputs (an SSD model's boxes, classes, scores, count) into gap boxes.

The manifest names the four tensors `boxes` (1, N, 4: ymin, xmin, ymax, xmax normalised to the input),
`classes` (1, N, 0-based indices into the labels), `scores` (1, N) and `count` (1,).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge.bundle import Manifest
from edge.decoders import empty_boxes, gap_class_mask

SSD_TENSORS = ("boxes", "classes", "scores", "count")


def decode_ssd(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1 in model-input pixels) and scores of the gap-class detections above the threshold."""
    missing = [n for n in SSD_TENSORS if n not in outputs]
    if missing:
        raise ValueError(f"ssd decoding needs output tensors {SSD_TENSORS}; missing {missing}")
    boxes = np.asarray(outputs["boxes"], np.float32).reshape(-1, 4)
    classes = np.asarray(outputs["classes"]).reshape(-1)
    scores = np.asarray(outputs["scores"], np.float32).reshape(-1)
    count = int(np.asarray(outputs["count"]).reshape(-1)[0]) if np.asarray(outputs["count"]).size else 0
    n = max(0, min(count, len(boxes), len(scores), len(classes)))
    if n == 0:
        return empty_boxes()
    boxes, classes, scores = boxes[:n], np.rint(classes[:n]).astype(np.int64), scores[:n]
    num_classes = max(len(manifest.labels), int(classes.max()) + 1)
    is_gap = gap_class_mask(manifest.labels, num_classes, manifest.gap_classes)
    keep = (scores >= score_threshold) & (classes >= 0) & is_gap[np.clip(classes, 0, num_classes - 1)]
    boxes, scores = boxes[keep], scores[keep]
    w, h = float(manifest.input.width), float(manifest.input.height)
    ymin, xmin, ymax, xmax = (np.clip(boxes[:, i], 0.0, 1.0) for i in range(4))
    out = np.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=1).astype(np.float32)
    valid = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    out, scores = out[valid], scores[valid]
    order = np.argsort(-scores, kind="stable")[: manifest.thresholds.max_detections]
    return out[order].reshape(-1, 4), scores[order].astype(np.float32)
