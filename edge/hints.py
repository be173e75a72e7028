"""Turns one camera frame (and the cart's speed) into plain-language mounting hints for the installer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Analysis runs on a small grey copy: cheap enough for a few times a second on a Pi, and size-independent.
ANALYSIS_WIDTH = 320


@dataclass(frozen=True)
class Hint:
    """One mounting problem: a stable machine code and a sentence for the person holding the camera."""

    code: str  # too_dark | too_bright | blurred | motion_blur | tilted | sideways | no_shelf
    message: str


@dataclass(frozen=True)
class Exposure:
    """What the camera reports about its exposure, when it does (picamera2 metadata ExposureTime, frame duration)."""

    exposure_s: float
    frame_interval_s: float


@dataclass(frozen=True)
class FrameMeasures:
    """The numbers behind the hints, exposed for the preview's status JSON and for tuning."""

    mean_luma: float
    dark_fraction: float  # share of pixels at or below 10
    bright_fraction: float  # share of pixels at or above 245
    sharpness: float | None  # steepness of strong edges: ~0.5 crisp, ~0.25 at 3 px blur; None: too few edges
    sharpness_x: float | None  # the same along rows only (the cart's horizontal motion blur shows here)
    sharpness_y: float | None
    tilt_deg: float | None  # length-weighted median angle of near-horizontal lines, positive = right side higher
    horizontal_lines: int  # long near-horizontal line segments (shelf edges)
    horizontal_length: float  # their summed length, analysis pixels
    vertical_length: float  # summed length of long near-vertical segments (shelf edges of a camera on its side)
    edge_density: float  # share of edge pixels


@dataclass(frozen=True)
class HintThresholds:
    """Where each hint starts; luminance in 0..255 on the grey analysis image, sharpness as in FrameMeasures."""

    dark_mean: float = 45.0
    dark_fraction: float = 0.5
    bright_mean: float = 210.0
    bright_fraction: float = 0.2
    sharpness: float = 0.3  # edge steepness below this: blurred (about 2 px of blur at 320 px width)
    motion_blur_px: float = 4.0  # predicted smear (frame pixels) at which details of labels vanish
    tilt_deg: float = 5.0
    min_shelf_lines: int = 2
    # long lines this many times longer up and down than across, in all: shelf edges of a camera on its side (an
    # upright shelf measured 0-0.04, tall products included; a turned one 1.7 and up)
    sideways_ratio: float = 1.5
    min_edge_density: float = 0.01


def _grey_small(frame_rgb: np.ndarray) -> np.ndarray:
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"mounting_hints: expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape} {frame_rgb.dtype}")
    h, w = frame_rgb.shape[:2]
    if h < 16 or w < 16:
        raise ValueError(f"mounting_hints: frame {w}x{h} is too small")
    scale = min(1.0, ANALYSIS_WIDTH / w)  # never upscale: that would look like blur
    small = cv2.resize(frame_rgb, (round(w * scale), max(16, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def _sharpness(grey: np.ndarray, axis: int) -> float | None:
    """How steep the strong edges are along `axis` (1: along rows, 0: along columns): 0.5 for a crisp step edge,
    falling as 1/blur width. None when the frame has too few strong edges to tell.

    At each strong edge (a local maximum of the gradient with enough contrast around it) it divides the gradient by
    the local contrast, so the result does not depend on lighting, contrast or how much texture the scene has; the
    median over all edges is robust to noise and to a few soft objects.
    """
    f = grey.astype(np.float32)
    if axis == 1:
        kernel, window = np.array([[-0.5, 0.0, 0.5]], np.float32), np.ones((1, 11), np.uint8)
    else:
        kernel, window = np.array([[-0.5], [0.0], [0.5]], np.float32), np.ones((11, 1), np.uint8)
    grad = np.abs(cv2.filter2D(f, -1, kernel, borderType=cv2.BORDER_REPLICATE))
    contrast = cv2.dilate(f, window) - cv2.erode(f, window)
    edges = (grad >= cv2.dilate(grad, window)) & (contrast > 40.0)
    if int(np.count_nonzero(edges)) < 50:
        return None
    return float(np.median(grad[edges] / contrast[edges]))


def _lines(grey: np.ndarray) -> tuple[float | None, int, float, float, float]:
    """Tilt (length-weighted median angle of near-horizontal segments), their count and summed length, the summed
    length of near-vertical segments, and the edge density."""
    edges = cv2.Canny(cv2.GaussianBlur(grey, (3, 3), 0), 50, 150)
    density = float(np.count_nonzero(edges)) / edges.size
    w = grey.shape[1]
    segs = cv2.HoughLinesP(edges, 1, np.pi / 360, threshold=40, minLineLength=w // 4, maxLineGap=6)
    if segs is None:
        return None, 0, 0.0, 0.0, density
    angles: list[float] = []
    weights: list[float] = []
    vertical = 0.0
    for x0, y0, x1, y1 in np.asarray(segs).reshape(-1, 4):
        dx, dy = float(x1 - x0), float(y1 - y0)
        if dx < 0:
            dx, dy = -dx, -dy
        ang = math.degrees(math.atan2(-dy, dx))  # image y grows downwards; positive = right side higher
        if abs(ang) <= 30.0:
            angles.append(ang)
            weights.append(math.hypot(dx, dy))
        elif abs(ang) >= 75.0:
            vertical += math.hypot(dx, dy)
    if not angles:
        return None, 0, 0.0, vertical, density
    order = np.argsort(angles)
    a = np.asarray(angles)[order]
    cw = np.cumsum(np.asarray(weights)[order])
    median = float(a[int(np.searchsorted(cw, cw[-1] / 2.0))])
    return median, len(angles), float(cw[-1]), vertical, density


def measure(frame_rgb: np.ndarray) -> FrameMeasures:
    """Compute the frame statistics that the hints are based on."""
    grey = _grey_small(frame_rgb)
    tilt, n_lines, horizontal, vertical, density = _lines(grey)
    sx, sy = _sharpness(grey, 1), _sharpness(grey, 0)
    return FrameMeasures(
        mean_luma=float(grey.mean()),
        dark_fraction=float(np.count_nonzero(grey <= 10)) / grey.size,
        bright_fraction=float(np.count_nonzero(grey >= 245)) / grey.size,
        sharpness=min(sx, sy) if sx is not None and sy is not None else None,
        sharpness_x=sx,
        sharpness_y=sy,
        tilt_deg=tilt,
        horizontal_lines=n_lines,
        horizontal_length=horizontal,
        vertical_length=vertical,
        edge_density=density,
    )


def mounting_hints(
    frame_rgb: np.ndarray,
    shift_px_per_frame: float | None = None,
    exposure: Exposure | None = None,
    thresholds: HintThresholds | None = None,
) -> list[Hint]:
    """Plain-language hints about how the camera is mounted and lit; an empty list means the frame looks good.

    `shift_px_per_frame` is the cart's sideways speed in frame pixels per frame (from the motion estimator), and
    `exposure` the camera's exposure time, when known: together they predict motion smear before it shows.
    """
    t = thresholds or HintThresholds()
    m = measure(frame_rgb)
    hints: list[Hint] = []
    if m.mean_luma < t.dark_mean or m.dark_fraction > t.dark_fraction:
        hints.append(Hint("too_dark", "Too dark: the shelf is hard to see. Add light, or aim away from shadows."))
        return hints  # nothing else can be judged in the dark
    if m.mean_luma > t.bright_mean or m.bright_fraction > t.bright_fraction:
        hints.append(Hint("too_bright", "Too bright: parts of the picture are washed out. Aim away from lamps, "
                                        "windows and shiny surfaces."))
        return hints

    shelf_visible = m.horizontal_lines >= t.min_shelf_lines and m.edge_density >= t.min_edge_density
    blurred = m.sharpness is not None and m.sharpness < t.sharpness
    if m.vertical_length > t.sideways_ratio * m.horizontal_length and m.edge_density >= t.min_edge_density:
        # the long lines run up and down: shelf edges, seen by a camera on its side (the model and the motion
        # estimate both need them across the picture)
        hints.append(Hint("sideways", "Shelf edges run up and down the picture: the camera is on its side. Turn it "
                                      "a quarter turn, or set camera.rotate = 90 or 270 in the config."))
        return hints
    if not shelf_visible and m.edge_density < t.min_edge_density * 2 and not blurred:
        hints.append(Hint("no_shelf", "No shelf in view: the camera sees no shelf edges. Point it at the shelves, "
                                      "level, from the side of the cart."))
        return hints

    speed = abs(shift_px_per_frame) if shift_px_per_frame is not None else 0.0
    smear_px: float | None = None
    if exposure is not None and exposure.frame_interval_s > 0 and shift_px_per_frame is not None:
        smear_px = speed * exposure.exposure_s / exposure.frame_interval_s
    if smear_px is not None and smear_px >= t.motion_blur_px:
        exposure_ms = exposure.exposure_s * 1000 if exposure is not None else 0.0
        hints.append(Hint("motion_blur",
                          f"Blurred at this speed: each picture smears about {smear_px:.0f} px "
                          f"({exposure_ms:.0f} ms exposure). Add light so the exposure gets shorter, or push the "
                          "cart more slowly."))
    elif blurred:
        sx, sy = m.sharpness_x, m.sharpness_y
        # Sideways motion smears along rows only; while the cart moves, a milder imbalance is enough to blame it.
        ratio = sx / sy if sx is not None and sy is not None and sy > 0 else 1.0
        motion_like = ratio < 0.7
        if speed >= 2.0 and ratio < 0.85:
            hints.append(Hint("motion_blur",
                              f"Blurred at this speed ({speed:.0f} px per frame): add light so the exposure gets "
                              "shorter, or push the cart more slowly."))
        elif motion_like:
            hints.append(Hint("motion_blur", "Smeared sideways: the exposure is too long for the cart's speed. Add "
                                             "light, or push the cart more slowly."))
        else:
            hints.append(Hint("blurred", "Blurred: clean the lens and check the focus."))

    if m.tilt_deg is not None and abs(m.tilt_deg) > t.tilt_deg:
        side = "right" if m.tilt_deg > 0 else "left"
        hints.append(Hint("tilted", f"Shelf edges slope {abs(m.tilt_deg):.0f}° ({side} side higher): level the "
                                    "camera."))
    elif not shelf_visible and not blurred:  # blur hides shelf edges too: fix the blur first
        hints.append(Hint("no_shelf", "No shelf in view: the camera sees no shelf edges. Point it at the shelves, "
                                      "level, from the side of the cart."))
    return hints
