"""What the camera does to a rendered shelf: light, colour, blur, noise and JPEG, and its warp of the gap boxes."""

from __future__ import annotations

import cv2
import numpy as np

from convert.rand import Rand


def camera_effects(rng: Rand, img: np.ndarray) -> np.ndarray:
    """Lighting, white balance, vignetting, blur, noise and JPEG re-compression on an RGB uint8 image."""
    H, W = img.shape[:2]
    # white balance and gamma as one per-channel lookup table
    gamma = rng.uniform(0.8, 1.25)
    wb = rng.gen.uniform(0.85, 1.15, 3)
    ramp = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([np.clip(255.0 * np.power(np.clip(ramp * g, 0, 1), gamma), 0, 255) for g in wb], -1)
    out = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    # smooth uneven lighting and vignetting, computed small and upsampled
    sh, sw = max(2, H // 8), max(2, W // 8)
    light = cv2.resize(
        rng.gen.uniform(0.7, 1.3, (3, 3)).astype(np.float32), (sw, sh), interpolation=cv2.INTER_CUBIC
    )
    yy, xx = np.ogrid[-1.0 : 1.0 : sh * 1j, -1.0 : 1.0 : sw * 1j]
    vig = 1.0 - rng.uniform(0.0, 0.45) * ((xx**2 + yy**2) / 2.0)
    gain = cv2.resize(
        (light * vig * rng.uniform(0.75, 1.25)).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR
    )
    out = cv2.multiply(out, cv2.merge([gain, gain, gain]), dtype=cv2.CV_8U)  # saturating
    u = rng.random()
    if u < 0.25:
        k = int(rng.integers(3, 8))
        ker = np.zeros((k, k), np.float32)
        ang = rng.uniform(-0.3, 0.3)
        c = (k - 1) / 2
        cv2.line(
            ker,
            (int(c - c * np.cos(ang)), int(c - c * np.sin(ang))),
            (int(c + c * np.cos(ang)), int(c + c * np.sin(ang))),
            1.0,
            1,
        )
        ker /= max(ker.sum(), 1e-6)
        out = cv2.filter2D(out, -1, ker)
    elif u < 0.55:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.1))
    sigma = rng.uniform(0.0, 9.0)
    if sigma > 0.5:
        noise = (rng.gen.standard_normal((H, W), dtype=np.float32) * np.float32(sigma)).astype(np.int16)
        out = cv2.add(out, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)  # luma noise, saturating
    q = int(rng.integers(35, 96))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
    if ok:
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def transform_boxes(boxes: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Map pixel-edge boxes (pixel i spans [i, i+1)) through a warp matrix that uses OpenCV's pixel-centre
    convention (pixel i is centred at i); returns the warped quads (N, 4, 2)."""
    if len(boxes) == 0:
        return np.zeros((0, 4, 2), np.float32)
    x0, y0, x1, y1 = boxes.T
    pts = np.stack(
        [np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1
    )
    out = cv2.perspectiveTransform(pts.reshape(-1, 1, 2).astype(np.float64) - 0.5, M).reshape(-1, 4, 2) + 0.5
    return out.astype(np.float32)


def clip_quads(quads: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes of each quad's part inside the image, and the share of the quad's area that is inside."""
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    boxes = np.zeros((len(quads), 4), np.float32)
    frac = np.zeros(len(quads), np.float32)
    for i, q in enumerate(quads):
        full = abs(cv2.contourArea(q))
        if full <= 0:
            continue
        inside, poly = cv2.intersectConvexConvex(q, frame)
        if inside <= 0 or poly is None:
            continue
        poly = poly.reshape(-1, 2)
        boxes[i] = (*np.maximum(poly.min(0), 0.0), *np.minimum(poly.max(0), (width, height)))  # no -1e-15
        frac[i] = inside / full
    return boxes, frac

