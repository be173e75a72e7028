"""Decodes an Ultralytics (YOLOv5u/v8/v11) TFLite export's raw predictions into gap boxes, with NMS.

The manifest names one tensor `predictions`, (1, 4 + nc, N) as Ultralytics exports it or (1, N, 4 + nc), where
each prediction is cx, cy, w, h followed by nc class scores (already sigmoid). Boxes are normalised to the input
(Ultralytics' TFLite exports) or in input pixels (other exports); the decoder tells them apart by magnitude, since
a real detection is never smaller than 2 pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge.bundle import Manifest
from edge.decoders import empty_boxes, gap_class_mask, nms

NORMALISED_LIMIT = 2.0  # box coordinates all below this are normalised, not pixels


def predictions_matrix(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The predictions as (N, 4 + nc), whichever way round the model lays them out."""
    p = np.asarray(pred)
    if p.ndim == 3:
        if p.shape[0] != 1:
            raise ValueError(f"yolo output has batch {p.shape[0]}, expected 1")
        p = p[0]
    if p.ndim != 2:
        raise ValueError(f"yolo output must be (1, 4+nc, N) or (1, N, 4+nc), got shape {np.shape(pred)}")
    width = 4 + num_classes
    if p.shape[0] == width:
        return p.T
    if p.shape[1] == width:
        return p
    raise ValueError(
        f"yolo output shape {np.shape(pred)} has no axis of 4 + {num_classes} classes = {width}; "
        "check the manifest's labels"
    )


def decode_yolo(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1 in model-input pixels) and scores of the gap-class predictions, after NMS."""
    if "predictions" not in outputs:
        raise ValueError(f"yolo decoding needs an output tensor named 'predictions'; got {sorted(outputs)}")
    nc = max(1, len(manifest.labels))
    p = predictions_matrix(outputs["predictions"], nc).astype(np.float32, copy=False)
    cls_scores = p[:, 4:]
    mask = gap_class_mask(manifest.labels, nc, manifest.gap_classes)
    # a box is the class that scores highest on it (as Ultralytics' own NMS decides): a gap only when that is a
    # gap class, not when a gap class comes second to a product
    best = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(len(best)), best]
    keep = mask[best] & (scores >= score_threshold)
    if not keep.any():
        return empty_boxes()
    xywh, scores = p[keep, :4], scores[keep]
    w_in, h_in = float(manifest.input.width), float(manifest.input.height)
    if float(np.abs(xywh).max()) <= NORMALISED_LIMIT:
        xywh = xywh * np.array([w_in, h_in, w_in, h_in], np.float32)
    cx, cy, bw, bh = xywh[:, 0], xywh[:, 1], xywh[:, 2], xywh[:, 3]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, w_in)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, h_in)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid]
    kept = nms(boxes, scores, manifest.thresholds.nms_iou, manifest.thresholds.max_detections)
    return boxes[kept].astype(np.float32).reshape(-1, 4), scores[kept].astype(np.float32)
