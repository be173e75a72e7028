"""Procedural product sprites (box, bottle, can, bag, jar, hanging pack) and the colours and print they use."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from convert.rand import Rand

RGB = tuple[int, int, int]


def hsv(h: float, s: float, v: float) -> RGB:
    h = (h % 1.0) * 6.0
    s = 0.0 if s < 0.0 else 1.0 if s > 1.0 else s
    v = 255.0 * (0.0 if v < 0.0 else 1.0 if v > 1.0 else v)
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    r, g, b = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return (int(r), int(g), int(b))


def product_colour(rng: Rand) -> RGB:
    u = rng.random()
    if u < 0.33:  # white / cream packaging (pharmacy, dairy)
        return hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.8, 1.0))
    if u < 0.41:  # dark packaging
        return hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.08, 0.3))
    # printed colours, weighted towards the reds/oranges/blues of real packaging
    h = rng.random() if rng.random() < 0.5 else (0.0, 0.03, 0.08, 0.12, 0.58, 0.62, 0.33)[rng.integers(7)]
    return hsv(h + rng.uniform(-0.03, 0.03), rng.uniform(0.25, 0.9), rng.uniform(0.5, 1.0))


def contrast(c: RGB, rng: Rand) -> RGB:
    lum = 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]
    if rng.random() < 0.25:
        return product_colour(rng)
    v = int(rng.integers(0, 60)) if lum > 128 else int(rng.integers(200, 256))
    return (v, v, v)


def scale_colour(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def text_marks(spr: np.ndarray, rng: Rand, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
    """Short horizontal strokes that read as printed text at this resolution."""
    if x1 - x0 < 5 or y1 - y0 < 3:
        return
    step = rng.integers(2, 4)
    y = y0 + rng.integers(0, step)
    span = max(1, (x1 - x0) // 3)
    for _ in range(5):  # a few lines are enough to read as print; more only cost time
        if y >= y1:
            break
        if rng.random() < 0.75:
            a = x0 + rng.integers(0, span)
            b = x1 - rng.integers(0, span)
            if b > a:
                cv2.line(spr, (a, y), (b, y), colour, 1)
        y += step


def _cyl_shade(spr: np.ndarray, rng: Rand) -> np.ndarray:
    w = spr.shape[1]
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    k = rng.uniform(0.25, 0.55)
    prof = (1.0 - k) + k * np.sin(np.pi * xs)
    hl = rng.uniform(0.2, 0.45)  # specular highlight column
    prof += 0.35 * np.exp(-(((xs - hl) / 0.06) ** 2))
    return np.clip(spr.astype(np.float32) * prof[None, :, None], 0, 255).astype(np.uint8)


def photo_patch(spr: np.ndarray, rng: Rand, x0: int, y0: int, x1: int, y1: int) -> None:
    """A blotchy, photo-like picture (food, faces, product shots) printed on the pack."""
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(spr.shape[1], x1), min(spr.shape[0], y1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    cell = 2 + rng.integers(3)
    small = rng.gen.integers(
        0, 256, (max(2, (y1 - y0) // cell), max(2, (x1 - x0) // cell), 3), dtype=np.uint8
    )
    tint = np.array(product_colour(rng), np.uint16)
    small = ((small.astype(np.uint16) + 2 * tint) // 3).astype(np.uint8)
    spr[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)


def _texture(spr: np.ndarray, rng: Rand) -> np.ndarray:
    """Blend a smooth random colour field over the pack (gradients, large artwork)."""
    h, w = spr.shape[:2]
    small = rng.gen.integers(0, 256, (2 + rng.integers(3), 2 + rng.integers(3), 3), dtype=np.uint8)
    field_ = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    a = rng.uniform(0.1, 0.4)
    return cv2.addWeighted(spr, 1.0 - a, field_, a, 0.0)


def _sprite_box(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    base = product_colour(rng)
    spr = np.empty((h, w, 3), np.uint8)
    spr[:] = base
    ink = contrast(base, rng)
    if rng.random() < 0.7:  # label band / panel
        a = int(h * rng.uniform(0.05, 0.5))
        b = min(h, a + max(2, int(h * rng.uniform(0.2, 0.5))))
        band = contrast(base, rng) if rng.random() < 0.5 else product_colour(rng)
        cv2.rectangle(spr, (0, a), (w - 1, b - 1), band, -1)
        text_marks(spr, rng, 1, a + 1, w - 1, b - 1, contrast(band, rng))
    if rng.random() < 0.4 and w > 8:  # a second printed panel
        a = int(w * rng.uniform(0.0, 0.5))
        cv2.rectangle(
            spr,
            (a, int(h * 0.1)),
            (a + max(2, int(w * rng.uniform(0.2, 0.5))), int(h * 0.45)),
            product_colour(rng),
            -1,
        )
    text_marks(spr, rng, 1, 1, w - 1, max(2, int(h * 0.2)), ink)
    if rng.random() < 0.5 and w > 6 and h > 6:  # logo blob
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = max(2, int(min(w, h) * rng.uniform(0.15, 0.4)))
        cv2.circle(spr, (cx, cy), r, product_colour(rng), -1)
    if rng.random() < 0.35:
        px0, py0 = int(w * rng.uniform(0.0, 0.4)), int(h * rng.uniform(0.2, 0.5))
        photo_patch(
            spr, rng, px0, py0, px0 + int(w * rng.uniform(0.3, 0.7)), py0 + int(h * rng.uniform(0.2, 0.45))
        )
    if rng.random() < 0.5:
        spr = _texture(spr, rng)
    text_marks(spr, rng, 1, int(h * 0.6), w - 1, h - 1, ink)
    spr[:, :1] = (spr[:, :1] * 0.7).astype(np.uint8)
    spr[:, -1:] = (spr[:, -1:] * 0.8).astype(np.uint8)
    spr[:1] = np.minimum(255, spr[:1].astype(np.int16) + 25).astype(np.uint8)
    return spr, np.ones((h, w), bool)


def _sprite_bottle(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    base = product_colour(rng)
    spr = np.empty((h, w, 3), np.uint8)
    spr[:] = base
    m = np.zeros((h, w), np.uint8)
    neck_w = max(1, int(w * rng.uniform(0.3, 0.55)))
    neck_h = max(1, int(h * rng.uniform(0.12, 0.3)))
    sh = max(1, int(h * rng.uniform(0.05, 0.2)))
    nx0 = (w - neck_w) // 2
    cv2.rectangle(m, (0, neck_h + sh), (w - 1, h - 1), 1, -1)
    cv2.ellipse(m, (w // 2, neck_h + sh), (max(1, w // 2), sh), 0, 180, 360, 1, -1)
    cv2.rectangle(m, (nx0, 0), (nx0 + neck_w - 1, neck_h + sh), 1, -1)
    cap_h = max(1, int(h * rng.uniform(0.05, 0.12)))
    cap = product_colour(rng) if rng.random() < 0.6 else base
    cv2.rectangle(spr, (0, 0), (w - 1, cap_h - 1), cap, -1)
    a = int(h * rng.uniform(0.35, 0.55))
    b = min(h, a + max(2, int(h * rng.uniform(0.2, 0.45))))
    lab = product_colour(rng)
    cv2.rectangle(spr, (0, a), (w - 1, b - 1), lab, -1)
    text_marks(spr, rng, 1, a + 1, w - 1, b - 1, contrast(lab, rng))
    return _cyl_shade(spr, rng), m.astype(bool)


def _sprite_can(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    base = product_colour(rng)
    spr = np.empty((h, w, 3), np.uint8)
    spr[:] = base
    rim = max(1, h // 12)
    spr[:rim] = (170, 170, 175)
    spr[h - rim :] = (140, 140, 145)
    if rng.random() < 0.7:
        a = int(h * rng.uniform(0.15, 0.5))
        b = min(h - rim, a + max(2, int(h * rng.uniform(0.15, 0.4))))
        lab = product_colour(rng)
        cv2.rectangle(spr, (0, a), (w - 1, b - 1), lab, -1)
        text_marks(spr, rng, 1, a, w - 1, b, contrast(lab, rng))
    return _cyl_shade(spr, rng), np.ones((h, w), bool)


def _sprite_bag(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    base = product_colour(rng)
    spr = np.empty((h, w, 3), np.uint8)
    spr[:] = base
    m = np.zeros((h, w), np.uint8)
    inset = int(w * rng.uniform(0.0, 0.12))
    n = max(3, w // 3)
    top = [
        (int(inset + (w - 1 - 2 * inset) * i / (n - 1)), int(rng.integers(0, max(1, h // 10) + 1)))
        for i in range(n)
    ]
    pts = np.array([*top, (w - 1, h - 1), (0, h - 1)], np.int32)
    cv2.fillPoly(m, [pts], 1)
    win = contrast(base, rng)
    cx, cy = w // 2, int(h * rng.uniform(0.4, 0.7))
    cv2.ellipse(spr, (cx, cy), (max(1, int(w * 0.3)), max(1, int(h * 0.15))), 0, 0, 360, win, -1)
    if rng.random() < 0.5:
        photo_patch(spr, rng, int(w * 0.2), int(h * 0.35), int(w * 0.8), int(h * 0.8))
    if rng.random() < 0.5:
        spr = _texture(spr, rng)
    text_marks(spr, rng, 2, int(h * 0.15), w - 2, int(h * 0.35), contrast(base, rng))
    ys = np.linspace(1.1, 0.8, h, dtype=np.float32)
    spr = np.clip(spr * ys[:, None, None], 0, 255).astype(np.uint8)
    return spr, m.astype(bool)


def _sprite_jar(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    spr, _ = _sprite_can(rng, w, h)
    lid_h = max(1, int(h * rng.uniform(0.1, 0.2)))
    m = np.ones((h, w), bool)
    ins = max(0, int(w * 0.08))
    m[:lid_h, :ins] = False
    m[:lid_h, w - ins :] = False
    spr[:lid_h] = product_colour(rng)
    return _cyl_shade(spr, rng), m


def _sprite_pack(rng: Rand, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A hanging blister pack / header card with a hole for the peg hook."""
    card = product_colour(rng)
    spr = np.empty((h, w, 3), np.uint8)
    spr[:] = card
    hdr = max(2, int(h * rng.uniform(0.12, 0.25)))
    spr[:hdr] = scale_colour(card, 1.15)
    inner = product_colour(rng)
    ix0, ix1 = int(w * rng.uniform(0.05, 0.3)), int(w * rng.uniform(0.7, 0.95))
    iy1 = int(h * rng.uniform(0.6, 0.95))
    if rng.random() < 0.5:  # an elongated product (toothbrush, razor) in a clear blister
        cx = (ix0 + ix1) // 2
        cv2.rectangle(spr, (ix0, hdr + 1), (max(ix0, ix1 - 1), iy1), scale_colour(card, 0.9), -1)
        cv2.rectangle(spr, (cx - max(1, w // 8), hdr + 2), (cx + max(1, w // 8), iy1 - 1), inner, -1)
    else:
        cv2.rectangle(spr, (ix0, hdr + 1), (max(ix0, ix1 - 1), iy1), inner, -1)
    text_marks(spr, rng, 1, 1, w - 1, hdr, contrast(scale_colour(card, 1.15), rng))
    text_marks(spr, rng, 1, iy1 + 1, w - 1, h - 1, contrast(card, rng))
    m = np.ones((h, w), bool)
    hw = max(1, w // 10)
    m[max(0, hdr // 2 - 1) : hdr // 2 + 1, w // 2 - hw : w // 2 + hw] = False
    return spr, m


SPRITES: dict[str, Callable[[Rand, int, int], tuple[np.ndarray, np.ndarray]]] = {
    "box": _sprite_box,
    "bottle": _sprite_bottle,
    "can": _sprite_can,
    "bag": _sprite_bag,
    "jar": _sprite_jar,
    "pack": _sprite_pack,
}
# width (in row pitches) and height (in inner-row heights) ranges per kind
SIZES: dict[str, tuple[float, float, float, float]] = {
    "box": (0.3, 1.0, 0.5, 0.95),
    "bottle": (0.2, 0.45, 0.7, 0.97),
    "can": (0.3, 0.55, 0.45, 0.9),
    "bag": (0.5, 1.2, 0.6, 0.95),
    "jar": (0.35, 0.6, 0.5, 0.9),
    "pack": (0.35, 0.8, 0.6, 0.9),
}

