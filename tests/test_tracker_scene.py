"""A drawn aisle panorama and cart passes over it, shared by the tracking tests (and a few checks of the scene itself).

The panorama is real rendered pixels (products with labels, shelf boards, shadowed empty spots, ArUco markers on
white plates at the aisle ends); frames are sub-pixel crops of it with sensor noise, so the shift estimator and
the marker detector run on genuine images. Detections are the true gap boxes plus detector-like noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.alerts import Box, iou
from edge.types import Frame, Gap

FRAME_W, FRAME_H = 640, 480
T0_WALL = 1_780_000_000.0


@dataclass
class Aisle:
    image: np.ndarray  # H x L x 3 RGB
    gaps: list[Box]  # shelf pixels
    markers: list[tuple[int, float]]  # (id, x centre)
    levels: list[tuple[int, int]] = field(default_factory=list)  # (y_top, y_bottom) of each shelf level


def _products(rng: np.random.Generator, img: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> None:
    """Fill [x0, x1) x [y0, y1) with products standing on the board at y1."""
    x = x0
    while x < x1 - 8:
        w = int(rng.integers(28, 80))
        h = int(rng.integers(int(0.55 * (y1 - y0)), y1 - y0 - 4))
        xe = min(x + w, x1)
        colour = rng.integers(30, 230, 3)
        cv2.rectangle(img, (x, y1 - h), (xe - 2, y1 - 1), colour.tolist(), cv2.FILLED)
        label = (255 - colour).tolist()
        ly = y1 - h + int(rng.integers(8, max(9, h // 2)))
        cv2.rectangle(img, (x + 4, ly), (xe - 6, ly + int(rng.integers(8, 20))), label, cv2.FILLED)
        for k in range(int(rng.integers(1, 4))):
            yy = y1 - h + 6 + 9 * k
            cv2.line(img, (x + 3, yy), (xe - 5, yy), (colour // 2).tolist(), 2)
        x = xe + int(rng.integers(0, 4))


def make_aisle(
    seed: int = 0,
    length: int = 3600,
    height: int = FRAME_H,
    gaps: Sequence[tuple[int, int, int]] = (
        (700, 110, 1),
        (1400, 150, 2),
        (1520, 90, 0),
        (2300, 130, 1),
        (2900, 120, 3),
    ),
    marker_ids: Sequence[int] = (3, 4),
) -> Aisle:
    """An aisle with gaps given as (x0, width, level); markers near both ends (none if `marker_ids` is empty)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, length, 3), np.uint8)
    img[:] = (205, 200, 190)
    levels = [(8, 112), (124, 228), (240, 344), (356, 460)]
    board = 10
    gap_boxes: list[Box] = []
    for top, bottom in levels:
        _products(rng, img, 0, length, top, bottom)
        cv2.rectangle(img, (0, bottom), (length - 1, bottom + board), (90, 80, 70), cv2.FILLED)
        for x in range(0, length, 37):  # price rails
            cv2.rectangle(img, (x, bottom + 2), (x + 20, bottom + 8), (240, 240, 235), cv2.FILLED)
    for x0, w, level in gaps:
        if x0 + w > length:
            continue
        top, bottom = levels[level]
        shade = np.linspace(40, 85, bottom - top, dtype=np.float32)[:, None, None]
        img[top:bottom, x0 : x0 + w] = np.broadcast_to(shade, (bottom - top, w, 3)).astype(np.uint8)
        gap_boxes.append((float(x0), float(top), float(x0 + w), float(bottom)))
    markers: list[tuple[int, float]] = []
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    positions = [240.0, length - 240.0]
    for mid, cx in zip(marker_ids, positions, strict=False):
        size, plate = 120, 170
        px0, py0 = int(cx - plate / 2), int(height / 2 - plate / 2)
        img[py0 : py0 + plate, px0 : px0 + plate] = 255
        m = cv2.aruco.generateImageMarker(dictionary, mid, size)
        mx0, my0 = int(cx - size / 2), int(height / 2 - size / 2)
        img[my0 : my0 + size, mx0 : mx0 + size] = m[:, :, None]
        markers.append((mid, cx))
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return Aisle(img, gap_boxes, markers, levels)


def restock(aisle: Aisle, gap_index: int, seed: int = 99) -> Aisle:
    """The same aisle with one gap filled with products."""
    img = aisle.image.copy()
    x0, y0, x1, y1 = (int(v) for v in aisle.gaps[gap_index])
    img[y0:y1, x0:x1] = (205, 200, 190)
    _products(np.random.default_rng(seed), img, x0, x1, y0, y1)
    gaps = [g for i, g in enumerate(aisle.gaps) if i != gap_index]
    return Aisle(img, gaps, aisle.markers, aisle.levels)


def offsets(start: float, end: float, speed: float = 12.0, seed: int = 0, wobble: float = 1.5) -> list[float]:
    """Frame x offsets of a cart going from `start` to `end` at about `speed` px/frame (either direction)."""
    rng = np.random.default_rng(seed)
    step = speed if end >= start else -speed
    out, x = [], start
    while (x <= end) if step > 0 else (x >= end):
        out.append(x)
        x += step + rng.uniform(-wobble, wobble)
    return out


class Camera:
    """Renders frames of an aisle at given offsets (sub-pixel), with sensor noise and a small vertical bob."""

    def __init__(self, aisle: Aisle, seed: int = 0, noise: int = 4, bob: float = 1.0) -> None:
        self.aisle = aisle
        rng = np.random.default_rng(seed)
        self._noise = rng.integers(-noise, noise + 1, size=(4, FRAME_H, FRAME_W, 3), dtype=np.int16)
        self._rng = rng
        self.bob = bob
        self.index = 0

    def frame(self, x: float, y: float | None = None) -> tuple[Frame, float, float]:
        """The next frame at offset (x, y); y defaults to a random bob. Returns (frame, x, y)."""
        if y is None:
            y = float(self._rng.uniform(-self.bob, self.bob))
        m = np.array([[1, 0, -x], [0, 1, -y]], np.float32)
        img = cv2.warpAffine(
            self.aisle.image, m, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        img = np.clip(img.astype(np.int16) + self._noise[self.index % 4], 0, 255).astype(np.uint8)
        i = self.index
        self.index += 1
        return Frame(image=img, index=i, t_mono=i / 15.0, t_wall=T0_WALL + i / 15.0), x, y

    def other_scene(self) -> Frame:
        """A frame of something else (the cart turning round): smooth noise unrelated to the aisle."""
        img = cv2.GaussianBlur(self._rng.integers(0, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8), (0, 0), 6)
        i = self.index
        self.index += 1
        return Frame(image=img, index=i, t_mono=i / 15.0, t_wall=T0_WALL + i / 15.0)


def true_boxes(aisle: Aisle, x: float, y: float, min_visible: float = 0.3) -> list[tuple[int, Box]]:
    """(gap index, frame box clipped to the frame) for each gap at least `min_visible` visible at offset (x, y)."""
    out = []
    for i, (gx0, gy0, gx1, gy1) in enumerate(aisle.gaps):
        fx0, fx1 = gx0 - x, gx1 - x
        vis = (min(fx1, FRAME_W) - max(fx0, 0.0)) / (fx1 - fx0)
        if vis >= min_visible:
            out.append((i, (max(fx0, 0.0), gy0 - y, min(fx1, float(FRAME_W)), gy1 - y)))
    return out


@dataclass
class NoisyDetector:
    """True boxes with jitter, a miss rate, optional blackouts (gap index -> frames with no detection) and FPs."""

    seed: int = 0
    jitter: float = 3.0
    miss: float = 0.25
    blackout: dict[int, range] = field(default_factory=dict)
    false_positives: dict[int, Box] = field(default_factory=dict)  # frame index -> box

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def detect(self, aisle: Aisle, frame: Frame, x: float, y: float) -> list[Gap]:
        gaps = []
        for gi, (x0, y0, x1, y1) in true_boxes(aisle, x, y):
            if self._rng.random() < self.miss or frame.index in self.blackout.get(gi, ()):
                continue
            j = self._rng.uniform(-self.jitter, self.jitter, 4)
            gaps.append(Gap(x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3], float(self._rng.uniform(0.45, 0.95))))
        fp = self.false_positives.get(frame.index)
        if fp is not None:
            gaps.append(Gap(*fp, score=0.6))
        return gaps


def drive(
    camera: Camera, xs: Sequence[float], detector: NoisyDetector | None = None
) -> Iterator[tuple[Frame, float, float, list[Gap]]]:
    """Frames along `xs` with their detections."""
    det = detector or NoisyDetector()
    for x in xs:
        frame, fx, fy = camera.frame(x)
        yield frame, fx, fy, det.detect(camera.aisle, frame, fx, fy)


def matching_gap(aisle: Aisle, bbox_norm: Box, x: float, y: float) -> int | None:
    """The true gap whose frame box at offset (x, y) best overlaps a normalised event box (IoU > 0.5)."""
    box = (bbox_norm[0] * FRAME_W, bbox_norm[1] * FRAME_H, bbox_norm[2] * FRAME_W, bbox_norm[3] * FRAME_H)
    best = max(((iou(box, b), i) for i, b in true_boxes(aisle, x, y, 0.0)), default=(0.0, None))
    return best[1] if best[0] > 0.5 else None


# ---- checks of the scene itself --------------------------------------------------------------------------------
def test_frames_are_crops_of_the_panorama() -> None:
    aisle = make_aisle(length=1600)
    cam = Camera(aisle, noise=0)
    frame, _, _ = cam.frame(100.0, 0.0)
    diff = np.abs(frame.image.astype(int) - aisle.image[:FRAME_H, 100 : 100 + FRAME_W].astype(int))
    assert diff.max() <= 1


def test_true_boxes_follow_the_offset() -> None:
    aisle = make_aisle(length=3600)
    inside = true_boxes(aisle, 600.0, 0.0)
    assert [i for i, _ in inside] == [0]
    assert inside[0][1] == (100.0, aisle.gaps[0][1], 210.0, aisle.gaps[0][3])
