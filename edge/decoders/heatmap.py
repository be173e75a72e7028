"""Decodes the built-in model's `gap-heatmap` outputs (a centre heatmap and per-cell box sides) into gap boxes.

The manifest names two tensors: `heatmap` (1, h, w, 1), the probability that a cell is the centre of an empty
spot, and `ltrb` (1, h, w, 4), the distances from that cell's centre to the box's left, top, right and bottom
sides in units of `manifest.output.stride` input pixels. A detection is a local maximum of the heatmap in its
3x3 neighbourhood at or above the score threshold; overlapping detections are then suppressed (greedy NMS).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from edge.bundle import Manifest
from edge.decoders import empty_boxes, nms

HEATMAP = "heatmap"
LTRB = "ltrb"
_MAX_CANDIDATES = 1000


def heatmap_peaks(heat: np.ndarray, score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the cells that are 3x3 local maxima with a score >= the threshold."""
    heat = np.ascontiguousarray(heat, dtype=np.float32)
    pooled = cv2.dilate(heat, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    rows, cols = np.nonzero((heat >= pooled) & (heat >= score_threshold))
    return rows, cols


def boxes_from_cells(
    rows: np.ndarray, cols: np.ndarray, ltrb: np.ndarray, stride: float
) -> np.ndarray:
    """Boxes (x0, y0, x1, y1, input pixels) for the given cells of an (h, w, 4) side-distance map."""
    d = ltrb[rows, cols].astype(np.float32) * stride
    cx = (cols.astype(np.float32) + 0.5) * stride
    cy = (rows.astype(np.float32) + 0.5) * stride
    return np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1)


def decode_gap_heatmap(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4, model-input pixels, clipped to the input) and scores, by descending score."""
    missing = [n for n in (HEATMAP, LTRB) if n not in outputs]
    if missing:
        raise ValueError(f"gap-heatmap decoding needs output tensors {HEATMAP!r} and {LTRB!r}; missing {missing}")
    heat = np.asarray(outputs[HEATMAP], np.float32)
    ltrb = np.asarray(outputs[LTRB], np.float32)
    if heat.ndim != 4 or ltrb.ndim != 4 or heat.shape[-1] != 1 or ltrb.shape[-1] != 4:
        raise ValueError(f"gap-heatmap wants heatmap (1,h,w,1) and ltrb (1,h,w,4); got {heat.shape}, {ltrb.shape}")
    if heat.shape[1:3] != ltrb.shape[1:3]:
        raise ValueError(f"heatmap grid {heat.shape[1:3]} and ltrb grid {ltrb.shape[1:3]} differ")
    w_in, h_in = float(manifest.input.width), float(manifest.input.height)
    stride = float(manifest.output.stride or w_in / heat.shape[2])
    hm = heat[0, :, :, 0]
    rows, cols = heatmap_peaks(hm, score_threshold)
    if rows.size == 0:
        return empty_boxes()
    scores = hm[rows, cols]
    if scores.size > _MAX_CANDIDATES:
        top = np.argsort(-scores, kind="stable")[:_MAX_CANDIDATES]
        rows, cols, scores = rows[top], cols[top], scores[top]
    boxes = boxes_from_cells(rows, cols, ltrb[0], stride)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, w_in)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, h_in)
    valid = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, manifest.thresholds.nms_iou, manifest.thresholds.max_detections)
    return boxes[keep].astype(np.float32).reshape(-1, 4), scores[keep].astype(np.float32)
