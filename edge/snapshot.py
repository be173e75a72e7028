"""Render an alert's JPEG snapshot: the frame, downscaled, with the gap's box drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

BOX_BGR = (0, 0, 255)  # red
TEXT_BGR = (255, 255, 255)


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
            font_scale = max(0.4, max(out_w, out_h) / 1000)
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            tx = min(max(p0[0], 0), max(0, out_w - tw - 4))
            ty = p0[1] - thick if p0[1] - th - base - thick >= 0 else p0[1] + th + base + thick
            cv2.rectangle(bgr, (tx, ty - th - base), (tx + tw + 4, ty + base // 2), BOX_BGR, cv2.FILLED)
            cv2.putText(
                bgr,
                label,
                (tx + 2, ty - base // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                TEXT_BGR,
                1,
                cv2.LINE_AA,
            )
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 only fails on invalid input, which was checked above
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
