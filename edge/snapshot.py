"""Render an alert's JPEG snapshot: the frame, downscaled, with the gap's box drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

BOX_BGR = (0, 0, 255)  # red
TEXT_BGR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def render_snapshot(
    frame_rgb: np.ndarray,
    box_px: tuple[float, float, float, float] | None,
    max_px: int = 640,
    label: str | None = None,
    quality: int = 85,
) -> bytes:
    """JPEG bytes of `frame_rgb` (HxWx3 uint8 RGB) scaled so its long side is at most `max_px`, gap box marked.

    `box_px` is (x0, y0, x1, y1) in pixels of `frame_rgb` (clipped to it); None draws no box. `label` is written
    above the box (or inside it when there is no room above).
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape} {frame_rgb.dtype}")
    if max_px < 16:
        raise ValueError(f"snapshot max_px must be >= 16, got {max_px}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, max_px / max(h, w))
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    if scale < 1.0:
        small = cv2.resize(frame_rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    else:
        bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)  # a new array: the caller's frame is never drawn on
    if box_px is not None:
        x0, y0, x1, y1 = (float(v) * scale for v in box_px)
        if not all(np.isfinite((x0, y0, x1, y1))):
            raise ValueError(f"snapshot box must be finite, got {box_px}")
        thick = max(2, round(max(out_w, out_h) / 160))
        inset = thick // 2  # a box cut by the frame border keeps its whole line width inside the image
        p0 = (
            int(round(min(max(x0, inset), out_w - 1 - inset))),
            int(round(min(max(y0, inset), out_h - 1 - inset))),
        )
        p1 = (
            int(round(min(max(x1, inset), out_w - 1 - inset))),
            int(round(min(max(y1, inset), out_h - 1 - inset))),
        )
        cv2.rectangle(bgr, p0, p1, BOX_BGR, thick, cv2.LINE_AA)
        if label:
            draw_tag(bgr, label, (p0[0], p0[1] - thick // 2), BOX_BGR, max(0.4, max(out_w, out_h) / 1000))
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 only fails on invalid input, which was checked above
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def label_place(top_left: tuple[int, int], tw: int, th: int, top_h: int, width: int) -> tuple[int, int]:
    """Where a box's label goes: its left edge and its tag's bottom row, for a tag tw wide and th + 4 high. Above
    the box's top-left corner, inside the picture's right edge, and never in the top `top_h` rows (a status
    strip): there it moves down into the box."""
    x0, y0 = top_left
    lx = min(max(x0, 0), max(0, width - tw - 5))  # the tag spans columns lx..lx + tw + 4, all inside
    ty = y0 if y0 - th - 4 >= top_h else max(y0, top_h) + th + 4
    return lx, ty


def draw_tag(
    img: np.ndarray,
    text: str,
    top_left: tuple[int, int],
    fill: tuple[int, int, int],
    font_scale: float,
    top_h: int = 0,
    ink: tuple[int, int, int] = TEXT_BGR,
) -> None:
    """Write `text` in `ink` on a filled tag of `fill` at a box's top-left corner, placed by `label_place`, so it
    reads on any background (in place; colours in the image's own order)."""
    weight = _weight(font_scale)
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, weight)
    lx, ty = label_place(top_left, tw, th + base, top_h, img.shape[1])
    cv2.rectangle(img, (lx, ty - th - base - 4), (lx + tw + 4, ty), fill, cv2.FILLED)
    cv2.putText(img, text, (lx + 2, ty - base - 2), FONT, font_scale, ink, weight, cv2.LINE_AA)


def tag_height(font_scale: float) -> int:
    """How many rows a tag of `draw_tag` takes at `font_scale` (the same for any text)."""
    (_, th), base = cv2.getTextSize("0", FONT, font_scale, _weight(font_scale))
    return th + base + 4


def _weight(font_scale: float) -> int:
    return max(1, round(font_scale * 1.5))  # strokes thicken with the letters, so large tags stay crisp
