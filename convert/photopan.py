"""A cart pass made from still shelf photos: photos side by side, a camera window sliding across them, with truth.

Real photos of a store (your own, or ESD for evaluation) become a pass the device service and the tracker can run
on: each photo is scaled to the frame height and placed next to the last, and frame k looks at panorama x =
k * speed with sub-pixel motion and a little sensor noise, as a camera on a moving cart would. A photo's YOLO boxes,
when it has them, become the pass's ground truth (`convert.cartpass.CartPass`, scored by `convert.passcheck`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from convert.cartpass import AisleGap, CartPass, FrameTruth, frame_gaps
from convert.dataset import IMAGE_SUFFIXES, LabeledImage, read_image_rgb
from edge.yolo import read_yolo_labels

FRAME_SIZE = (640, 480)
SENSOR_NOISE = 2.0  # grey levels, standard deviation


def load_photos(folder: Path | str, count: int, seed: int = 0) -> list[LabeledImage]:
    """`count` photos picked at random (by `seed`) from a YOLO folder (`images/` + `labels/`) or a plain folder of
    images; photos without a label file have no boxes. Raises ValueError when the folder has no image."""
    root = Path(folder)
    img_dir = root / "images" if (root / "images").is_dir() else root
    paths = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if img_dir.is_dir() else []
    if not paths:
        raise ValueError(f"{root}: no photos (.jpg, .png, ...) in it or in its images/ folder")
    if count < 1:
        raise ValueError(f"need at least one photo, got count={count}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    out = []
    for i in sorted(int(k) for k in picks):
        img = read_image_rgb(paths[i])
        boxes = read_yolo_labels(root / "labels" / (paths[i].stem + ".txt"), img.shape[1], img.shape[0])
        out.append(LabeledImage(paths[i], img, boxes))  # no label file: no boxes
    return out


def pan_pass(
    photos: Sequence[LabeledImage],
    speed_px_per_frame: float = 12.0,
    frame_size: tuple[int, int] = FRAME_SIZE,
    seed: int = 0,
    fps: float = 15.0,
    path: Path | None = None,
) -> tuple[CartPass, list[np.ndarray]]:
    """The frames (RGB) and truth of a window sliding across `photos` placed in a row.

    The CartPass's `path`/`truth_path` point at `path` (and its .json) but nothing is written: see `write_pan`."""
    if speed_px_per_frame <= 0:
        raise ValueError(f"speed must be positive, got {speed_px_per_frame}")
    fw, fh = frame_size
    tiles: list[np.ndarray] = []
    gaps: list[AisleGap] = []
    x = 0
    for ph in photos:
        h, w = ph.image.shape[:2]
        s = fh / h
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        tiles.append(cv2.resize(ph.image, (max(1, round(w * s)), fh), interpolation=interp))
        for b in np.asarray(ph.boxes, np.float64).reshape(-1, 4):
            gaps.append(AisleGap(len(gaps), (x + b[0] * s, b[1] * s, x + b[2] * s, b[3] * s), "photo"))
        x += tiles[-1].shape[1]
    pano = np.ascontiguousarray(np.hstack(tiles))
    if pano.shape[1] < fw:
        raise ValueError(f"the photos are {pano.shape[1]} px wide at {fh} px high, narrower than one frame ({fw})")
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    truth: list[FrameTruth] = []
    n = int((pano.shape[1] - fw) // speed_px_per_frame) + 1
    for k in range(n):
        x0 = k * speed_px_per_frame
        m = np.array([[1.0, 0.0, -x0], [0.0, 1.0, 0.0]], np.float32)
        f = cv2.warpAffine(pano, m, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        noisy = f.astype(np.float32) + rng.normal(0.0, SENSOR_NOISE, f.shape).astype(np.float32)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
        truth.append(FrameTruth(k, x0, 0.0, frame_gaps(gaps, x0, 0.0, 1.0, frame_size), []))
    p = path or Path("photo-pan.mp4")
    cp = CartPass(p, p.with_suffix(".json"), n, fps, frame_size, speed_px_per_frame, 1.0, gaps, [], truth)
    return cp, frames


def write_pan(photos: Sequence[LabeledImage], out_path: Path, fps: float = 15.0, speed_px_per_frame: float = 12.0,
              seed: int = 0) -> CartPass:
    """`pan_pass` written as an .mp4 (mp4v) at `out_path`, with the photos' names and boxes in its .json."""
    cp, frames = pan_pass(photos, speed_px_per_frame, FRAME_SIZE, seed, fps, out_path)
    vw = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), FRAME_SIZE)
    if not vw.isOpened():
        raise OSError(f"cannot open a video writer for {out_path}")
    try:
        for f in frames:
            vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        vw.release()
    cp.truth_path.write_text(json.dumps({
        "video": out_path.name,
        "photos": [str(p.path) for p in photos],
        "fps": fps,
        "speed_px_per_frame": speed_px_per_frame,
        "gaps": [{"id": g.gap_id, "box": [round(v, 2) for v in g.box]} for g in cp.gaps],
    }))
    return cp
