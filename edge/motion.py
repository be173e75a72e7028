"""Camera motion along the aisle: frame-to-frame shift by phase correlation, its odometry, and ArUco markers.

Sign convention used everywhere in `edge/`: `Shift(dx, dy)` is how far the *image content* moved between the
previous and the current frame, in full-frame pixels (content moving left gives a negative dx). A point at
frame pixel `x` is at shelf pixel `x + Odometry.x`, so when the content moves by dx the cart has moved by -dx
and `Odometry.x` decreases by dx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Shift:
    """Content motion from the previous to the current frame, in full-frame pixels.

    `reliable` is False when phase correlation had too weak a peak (or an implausible jump); `dx`/`dy` are then the
    constant-velocity guess, not a measurement. `response` is the phase-correlation peak (0 for the first frame).
    """

    dx: float
    dy: float
    response: float
    reliable: bool


@dataclass(frozen=True)
class Marker:
    """One detected ArUco marker (DICT_4X4_50): its id, centre and mean side length in frame pixels."""

    id: int
    cx: float
    cy: float
    side: float = 0.0


class ShiftEstimator:
    """Estimates the global shift between consecutive RGB frames on small grey copies (no per-frame allocation).

    Each frame is turned grey and resized (INTER_AREA) into a preallocated `width`-wide buffer, windowed with a Hanning
    window and phase-correlated against the previous frame. A peak below `min_response`, or a jump larger than
    `max_jump` of the frame width, is unreliable: the last reliable velocity (per source frame) is returned instead.
    """

    def __init__(self, width: int = 160, min_response: float = 0.2, max_jump: float = 0.35) -> None:
        if width < 32:
            raise ValueError(f"motion width must be >= 32 pixels, got {width}")
        if not 0.0 <= min_response < 1.0:
            raise ValueError(f"min_response must be in [0, 1), got {min_response}")
        self.width = width
        self.min_response = min_response
        self.max_jump = max_jump
        self._shape: tuple[int, int] | None = None  # (h, w) of the full frames the buffers were made for
        self._scale = 1.0
        self._full_grey = np.empty((0, 0), np.uint8)
        self._grey = np.empty((0, 0), np.uint8)
        self._cur = np.empty((0, 0), np.float32)
        self._window = np.empty((0, 0), np.float32)
        self._prev_spectrum = np.empty((0, 0, 2), np.float32)  # of the previous windowed frame (phase_correlate)
        self._cur_spectrum = np.empty((0, 0, 2), np.float32)
        self._work = CorrelationBuffers.like(self._cur_spectrum)
        self._has_prev = False
        self._vx = 0.0  # last reliable velocity, content pixels per source frame
        self._vy = 0.0
        self._known = False  # the velocity was measured at least once
        self._sudden = 0  # frames in a row whose shift jumped away from that velocity (see update)
        self._set_aside = (0.0, 0.0)  # what those frames measured beyond the guess they were given

    def reset(self) -> None:
        """Forget the previous frame and the velocity (e.g. after the source was reopened)."""
        self._has_prev = False
        self._vx = self._vy = 0.0
        self._known = False
        self._sudden = 0
        self._set_aside = (0.0, 0.0)

    @property
    def velocity(self) -> tuple[float, float]:
        """The last reliable content velocity (dx, dy) in full-frame pixels per source frame."""
        return (self._vx, self._vy)

    def _allocate(self, h: int, w: int) -> None:
        sw = min(self.width, w)
        sh = max(8, int(round(h * sw / w)))
        self._shape = (h, w)
        self._scale = w / sw
        self._full_grey = np.empty((h, w), np.uint8)
        self._grey = np.empty((sh, sw), np.uint8)
        self._cur = np.empty((sh, sw), np.float32)
        self._window = cv2.createHanningWindow((sw, sh), cv2.CV_32F)
        self._prev_spectrum = np.empty((sh, sw, 2), np.float32)
        self._cur_spectrum = np.empty((sh, sw, 2), np.float32)
        self._work = CorrelationBuffers.like(self._cur_spectrum)
        self._has_prev = False

    def update(self, frame_rgb: np.ndarray, frames_elapsed: int = 1) -> Shift:
        """Shift of `frame_rgb` against the previous frame; `frames_elapsed` > 1 when the capture dropped frames."""
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape} {frame_rgb.dtype}")
        h, w = frame_rgb.shape[:2]
        if self._shape != (h, w):
            self._allocate(h, w)
        sh, sw = self._grey.shape
        # grey first, then shrink: half the cost of shrinking three channels (0.21 vs 0.41 ms at 640x480)
        cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY, dst=self._full_grey)
        cv2.resize(self._full_grey, (sw, sh), dst=self._grey, interpolation=cv2.INTER_AREA)
        np.copyto(self._cur, self._grey, casting="unsafe")
        np.multiply(self._cur, self._window, out=self._cur)
        cv2.dft(self._cur, dst=self._cur_spectrum, flags=cv2.DFT_COMPLEX_OUTPUT)
        steps = max(1, int(frames_elapsed))
        if not self._has_prev:
            self._has_prev = True
            self._prev_spectrum, self._cur_spectrum = self._cur_spectrum, self._prev_spectrum
            return Shift(self._vx * steps, self._vy * steps, 0.0, False)
        sx, sy, response = phase_correlate(self._prev_spectrum, self._cur_spectrum, self._work)
        self._prev_spectrum, self._cur_spectrum = self._cur_spectrum, self._prev_spectrum
        dx, dy = sx * self._scale, sy * self._scale
        plausible = abs(dx) <= self.max_jump * w and abs(dy) <= self.max_jump * h
        # A cart does not change its speed by a twentieth of the frame from one frame to the next: such a jump is
        # something large crossing the view (a shopper walking past close to the lens) whose motion outweighs the
        # shelf's. Unreliable (the cart keeps its speed) for at most MAX_SUDDEN frames in a row. A jump that lasts
        # longer is the cart's own (it stopped dead against something): believed, with what the frames set aside
        # moved beyond their guess added back, so the odometry ends where it would have been.
        ex, ey = dx - self._vx * steps, dy - self._vy * steps
        if not (self._known and math.hypot(ex, ey) > MAX_SPEED_CHANGE * w * steps):
            self._sudden = 0
            self._set_aside = (0.0, 0.0)
        else:
            self._sudden += 1
            if self._sudden <= MAX_SUDDEN:
                plausible = False
                self._set_aside = (self._set_aside[0] + ex, self._set_aside[1] + ey)
        if response >= self.min_response and plausible and np.isfinite(dx) and np.isfinite(dy):
            self._vx, self._vy = dx / steps, dy / steps
            self._known = True
            (cx, cy), self._set_aside = self._set_aside, (0.0, 0.0)  # nothing unless a jump was set aside
            return Shift(float(dx + cx), float(dy + cy), float(response), True)
        return Shift(self._vx * steps, self._vy * steps, float(response), False)


@dataclass
class CorrelationBuffers:
    """Scratch arrays `phase_correlate` writes into, for one spectrum shape (h, w, 2): a caller that correlates
    every frame keeps one set instead of allocating them per frame."""

    cross: np.ndarray  # (h, w, 2) float32: the normalised cross-power spectrum
    magnitude: np.ndarray  # (h, w) float32
    surface: np.ndarray  # (h, w) float32: the correlation surface

    @staticmethod
    def like(spectrum: np.ndarray) -> CorrelationBuffers:
        h, w = spectrum.shape[:2]
        return CorrelationBuffers(np.empty((h, w, 2), np.float32), np.empty((h, w), np.float32),
                                  np.empty((h, w), np.float32))


def phase_correlate(prev: np.ndarray, cur: np.ndarray, work: CorrelationBuffers) -> tuple[float, float, float]:
    """How far the content moved from one frame to the next, given their spectra (cv2.dft of the windowed grey
    frames, DFT_COMPLEX_OUTPUT; each frame's is taken once): (dx, dy, response). `work`: scratch arrays of their
    shape, written into.

    The correlation surface and the response (the sum of the 5x5 window around its peak) are cv2.phaseCorrelate's,
    but not its sub-pixel peak: it takes the centroid of that whole window, and something else moving in view
    makes a second peak at its own shift, which drags the centroid when it lies within two pixels. A shopper walking
    10 px a frame in front of a standing cart is 2.5 px at 160 wide: the odometry crept 50 px in 30 frames, so the
    views seemed to move, and a gap the shopper hid was counted as seen filled and cleared. Here each axis of the
    window is cut where the surface rises again towards another peak; with a single peak it is OpenCV's centroid.
    """
    cross = cv2.mulSpectrums(cur, prev, 0, work.cross, conjB=True)
    magnitude = cv2.magnitude(cross[..., 0], cross[..., 1], work.magnitude)
    magnitude += np.finfo(np.float32).eps
    np.divide(cross, magnitude[..., None], out=cross)
    surface = cv2.idft(cross, work.surface, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    h, w = surface.shape
    _, _, _, (px, py) = cv2.minMaxLoc(surface)
    xs, ys = np.arange(px - 2, px + 3), np.arange(py - 2, py + 3)
    peak = surface[np.ix_(ys % h, xs % w)]  # the shift wraps round the surface's edges
    dx = _lobe_centroid(peak.sum(axis=0), xs)
    dy = _lobe_centroid(peak.sum(axis=1), ys)
    return (dx + w / 2) % w - w / 2, (dy + h / 2) % h - h / 2, float(peak.sum())


def _lobe_centroid(weights: np.ndarray, at: np.ndarray) -> float:
    """The centroid of `weights` (at positions `at`, the peak in the middle) over the run that falls away from it
    on both sides: the peak's own lobe, without the near side of a neighbouring peak."""
    mid = len(weights) // 2
    lo, hi = mid, mid
    while lo > 0 and weights[lo - 1] <= weights[lo]:
        lo -= 1
    while hi < len(weights) - 1 and weights[hi + 1] <= weights[hi]:
        hi += 1
    lobe = weights[lo : hi + 1]
    total = float(lobe.sum())
    return float(lobe @ at[lo : hi + 1]) / total if total > 0 else float(at[mid])


# The largest change of the content's speed from one frame to the next still taken as the cart's (fraction of the
# frame width): 32 px at 640, about 0.7 m/s within 1/15 s at 1.5 mm a pixel; a cart changes less even stopping hard.
MAX_SPEED_CHANGE = 0.05
MAX_SUDDEN = 5  # frames in a row such a jump is set aside before it is believed


class Odometry:
    """The cart's position along the aisle: the shelf-pixel coordinate of the frame's origin.

    x integrates -dx exactly; y integrates only measured -dy, with a leak towards 0 (a cart does not climb, so
    vertical shifts are bumps that return). `path` is the total distance travelled in pixels (sum of |dx|), which
    never resets.
    """

    def __init__(self, y_leak: float = 0.9) -> None:
        self.x = 0.0
        self.y = 0.0
        self.path = 0.0
        self.y_leak = y_leak

    def advance(self, shift: Shift) -> None:
        self.x -= shift.dx
        self.y = self.y_leak * self.y - (shift.dy if shift.reliable else 0.0)
        self.path += abs(shift.dx)

    def set_x(self, x: float) -> float:
        """Jump to `x` (a marker reset); returns the applied delta."""
        delta = x - self.x
        self.x = x
        return delta


def _marker_looks_printed(frame_rgb: np.ndarray, quad: np.ndarray) -> bool:
    """A printed marker is black and white: its cells span a wide grey range and carry almost no colour.

    Shelf texture sometimes decodes as a valid 4x4 code (a row of product boxes with dark outlines reads as marker
    17 on rendered aisles); those false codes are coloured and low in contrast. The quad is warped to 24x24 pixels
    (inner area only), so the check costs a few microseconds and runs only on decoded candidates.
    """
    centre = quad.mean(axis=0)
    inner = ((quad - centre) * 0.8 + centre).astype(np.float32)  # stay off the quad's own edge
    dst = np.array([[0, 0], [23, 0], [23, 23], [0, 23]], np.float32)
    m = cv2.getPerspectiveTransform(inner, dst)
    patch = cv2.warpPerspective(frame_rgb, m, (24, 24), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    px = patch.reshape(-1, 3).astype(np.int16)
    chroma = float((px.max(axis=1) - px.min(axis=1)).mean())
    grey = px.mean(axis=1)
    lo, hi = np.percentile(grey, (10, 90))
    contrast = float(hi - lo)
    return contrast >= MIN_MARKER_CONTRAST and chroma <= MAX_MARKER_CHROMA * contrast


# Photometric gate for decoded markers (see _marker_looks_printed). Printed markers on rendered passes: contrast
# 200-250, chroma 1-2; false codes from shelf texture: contrast 35-80, chroma 40-125.
MIN_MARKER_CONTRAST = 80.0
MAX_MARKER_CHROMA = 0.3


class MarkerDetector:
    """ArUco DICT_4X4_50 detection on a grey copy scaled by `scale` (half size finds the same markers in a third of
    the time), run only on every `every`-th call of `maybe_detect` to keep the per-frame cost low.

    A decoded code counts only when it looks like a printed marker: its side is at least `min_side` of the frame
    height, it does not touch the frame's border (a cut marker's centre is wrong), its id occurs once in the frame,
    and its cells are black and white (`_marker_looks_printed`). Whether it is seen consistently over several
    frames is the tracker's check (it knows the odometry).
    """

    def __init__(self, every: int = 5, scale: float = 0.5, min_side: float = 0.05) -> None:
        if every < 1:
            raise ValueError(f"marker detection interval must be >= 1, got {every}")
        if not 0.1 <= scale <= 1.0:
            raise ValueError(f"marker detection scale must be in [0.1, 1], got {scale}")
        self.every = every
        self.scale = scale
        self.min_side = min_side
        self._calls = 0
        dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
        self._detector = cv2.aruco.ArucoDetector(dictionary, marker_parameters(min_side))
        self._grey = np.empty((0, 0), np.uint8)
        self._small = np.empty((0, 0), np.uint8)

    def detect(self, frame_rgb: np.ndarray) -> list[Marker]:
        """Markers in `frame_rgb` (every call), centres in `frame_rgb` pixels."""
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB frame, got {frame_rgb.shape}")
        h, w = frame_rgb.shape[:2]
        if self._grey.shape != (h, w):
            self._grey = np.empty((h, w), np.uint8)
            sw, sh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
            self._small = np.empty((sh, sw), np.uint8)
        cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY, dst=self._grey)
        grey = self._grey
        if self._small.shape != grey.shape:
            cv2.resize(
                grey,
                (self._small.shape[1], self._small.shape[0]),
                dst=self._small,
                interpolation=cv2.INTER_AREA,
            )
            grey = self._small
        fx, fy = w / grey.shape[1], h / grey.shape[0]
        corners, ids, _rejected = self._detector.detectMarkers(grey)
        if ids is None:
            return []
        flat = ids.reshape(-1)
        out = []
        border = 2.0
        for c, i in zip(corners, flat, strict=True):
            if int((flat == i).sum()) > 1:
                continue  # a marker is unique: the same code twice in one frame is texture
            # pixel centres: (u + 0.5) * f - 0.5 maps a small-image coordinate back to the full frame
            quad = (np.asarray(c, np.float64).reshape(4, 2) + 0.5) * (fx, fy) - 0.5
            side = float(np.linalg.norm(quad - np.roll(quad, 1, axis=0), axis=1).mean())
            if side < self.min_side * h:
                continue
            if quad[:, 0].min() < border or quad[:, 1].min() < border:
                continue
            if quad[:, 0].max() > w - 1 - border or quad[:, 1].max() > h - 1 - border:
                continue
            if not _marker_looks_printed(frame_rgb, quad):
                continue
            centre = quad.mean(axis=0)
            out.append(Marker(int(i), float(centre[0]), float(centre[1]), side))
        return sorted(out, key=lambda m: m.id)

    def maybe_detect(self, frame_rgb: np.ndarray) -> list[Marker] | None:
        """Markers on every `every`-th call (the first call included), None on the calls in between."""
        due = self._calls % self.every == 0
        self._calls += 1
        return self.detect(frame_rgb) if due else None


def marker_parameters(min_side: float) -> cv2.aruco.DetectorParameters:
    """ArUco settings for large printed markers: two adaptive-threshold windows instead of three, and no candidate
    smaller than `min_side` of the frame height (which `detect` would drop anyway).

    On 198 rendered cart-pass frames this finds the same markers as the defaults in a third of the time (1.7 vs
    5.2 ms per half-size frame): the default 3-px window and the tiny candidates are what cost, and a marker that is
    at least 5% of the frame height never needs them.
    """
    p = cv2.aruco.DetectorParameters()
    p.adaptiveThreshWinSizeMin = 13
    p.adaptiveThreshWinSizeMax = 23
    p.adaptiveThreshWinSizeStep = 10
    # perimeter relative to the larger image side; a 4:3 frame's height is 3/4 of its width
    p.minMarkerPerimeterRate = max(0.01, 4.0 * min_side * 0.75 * 0.8)
    return p


def detect_markers(frame_rgb: np.ndarray) -> list[Marker]:
    """One-off ArUco (DICT_4X4_50) detection; a pipeline keeps a `MarkerDetector` instead of calling this per frame."""
    return MarkerDetector(every=1).detect(frame_rgb)
