"""YOLO label files, both ways: one `class cx cy w h` line per box, normalised to the image (class 0 is a gap).
Reading also takes YOLO segmentation lines (`class x1 y1 x2 y2 ...`, a polygon), as their bounding box."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

_SLACK = 1e-6  # rounding in a tool's output: a box of the whole image may say 1.0000001


class LabelError(ValueError):
    """A labelled folder that cannot be used: a label file that is not YOLO's format (`file:line: what is wrong`),
    an image that cannot be read, labels that hold no gap."""


def yolo_lines(boxes: np.ndarray, width: int, height: int) -> str:
    """The label file for pixel boxes (N, 4) x0, y0, x1, y1 of a width x height image: clipped to the image, boxes
    with nothing inside it left out."""
    lines = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            continue
        lines.append(f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n")
    return "".join(lines)


def read_yolo_labels(path: Path, width: int, height: int, classes: Sequence[int] | None = None) -> np.ndarray:
    """Pixel boxes (N, 4) x0, y0, x1, y1, clipped to the image, from a label file; no file means no boxes.
    `classes`: only the boxes of these class ids."""
    boxes, ids = read_yolo_boxes(path, width, height)
    return boxes if classes is None else boxes[np.isin(ids, list(classes))]


def read_yolo_boxes(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Every box of a label file, as `read_yolo_labels` gives them, and each one's class id (N,)."""
    if not path.exists():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    rows, ids = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5 or (len(parts) > 6 and len(parts) % 2 == 0):
            raise LabelError(f"{path}:{n}: expected 'class cx cy w h' (or a segmentation polygon 'class x1 y1 x2 "
                             f"y2 x3 y3 ...'), got {line!r}")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise LabelError(f"{path}:{n}: expected numbers 'class cx cy w h', got {line!r}") from None
        if len(values) > 6:  # a polygon (YOLO segmentation labels): its bounding box, as Ultralytics takes it
            xs, ys = values[1::2], values[2::2]
            if not all(-_SLACK <= v <= 1.0 + _SLACK for v in values[1:]):
                raise LabelError(f"{path}:{n}: polygon points must be fractions of the image (0..1), got {line!r}")
            values = [values[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs),
                      max(ys) - min(ys)]
        cx, cy, w, h = values[1:5]  # a sixth value is a confidence some tools write: not part of the box
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0 and 0.0 < w <= 1.0 + _SLACK and 0.0 < h <= 1.0 + _SLACK):
            raise LabelError(f"{path}:{n}: centre and size must be fractions of the image (0..1, the YOLO format; "
                             f"pixel values?), got {line!r}")
        ids.append(int(values[0]))
        rows.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    boxes = np.asarray(rows, np.float32).reshape(-1, 4)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes, np.asarray(ids, np.int64)
