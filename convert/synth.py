"""Procedural store-shelf images with exactly labelled empty spots, made by domain randomisation (numpy + OpenCV).

Here a sample is planned (`convert.shelf_plan`, products from `convert.sprites`), painted (`convert.shelf_paint`),
warped and put through a camera (`convert.camera_fx`); YOLO folders of samples are written here too."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from convert.camera_fx import camera_effects, clip_quads, transform_boxes
from convert.rand import Rand, as_rand
from convert.shelf_paint import paint_shelves
from convert.shelf_plan import add_random_gaps, dress_gaps, plan_shelves
from edge.yolo import yolo_lines


@dataclass
class Sample:
    """One generated image and its empty-spot boxes (x0, y0, x1, y1 pixels, float32, shape (N, 4)).

    With `debug=True` rendering also fills `gap_mask` (int16, k+1 where gap k was drawn, 0 elsewhere),
    `product_mask` (bool, pixels covered by front-row products) and `looks` (one GAP_LOOKS entry per box).
    """

    image: np.ndarray
    boxes: np.ndarray
    gap_mask: np.ndarray | None = None
    product_mask: np.ndarray | None = None
    looks: list[str] = field(default_factory=list)


# row pitch (shelf to shelf, px at 416x416): ESD-like framing, and cart-camera close-ups
_PITCH = (22.0, 54.0)
_CLOSE_PITCH = (48.0, 96.0)
_HEADER_P = 0.3  # share of bays with a printed header panel above the top row (signs are not gaps)
_MIN_FILL = 0.0  # 0.72 labelled ESD's strips better but cost ESD AP50 and cart-pass false alarms (models/NOTES.md)
_DISTRACT_P = 0.0  # share of scenes with store clutter that is not a gap (`_plan_distractors`): posters, price cards, boxes
_DRESS_P = 0.0  # share of gaps dressed (`dress_gaps`); 0.8 cost 4 ESD AP50 points in two seeds (models/NOTES.md)


# ---------------------------------------------------------------------------------------------------------------
# samples


def _sample_gap_count(rng: Rand) -> int:
    if rng.random() < 0.05:
        return 0
    return int(min(27, 1 + rng.gen.negative_binomial(1.6, 0.215)))


def render_sample(
    rng_in: np.random.Generator | Rand,
    width: int = 416,
    height: int = 416,
    debug: bool = False,
    dress_p: float | None = None,
) -> Sample:
    """make_shelf_image with optional debug masks (see Sample); `dress_p` overrides the share of dressed gaps."""
    rng = as_rand(rng_in)
    dress = _DRESS_P if dress_p is None else dress_p
    if not 0.0 <= dress <= 1.0:
        raise ValueError(f"dress_p is a share between 0 and 1, got {dress}")
    if width < 32 or height < 32:
        raise ValueError(f"image too small: {width}x{height}")
    s = min(width, height) / 416.0
    m = int(round(0.08 * max(width, height)))
    cw, ch = width + 2 * m, height + 2 * m
    # mostly ESD-like framing (many rows, small gaps); some close-ups like a cart camera a metre from the shelf
    close = rng.random() < 0.1
    lo, hi = _CLOSE_PITCH if close else _PITCH
    plan = plan_shelves(rng, cw, ch, pitch_range=(lo * s, hi * s), header_p=_HEADER_P, min_fill=_MIN_FILL,
                        distract_p=_DISTRACT_P)
    add_random_gaps(plan, rng, _sample_gap_count(rng), (m, m, m + width, m + height))
    if dress > 0.0:  # no draw when off: the rest of the stream stays as it was
        dress_gaps(plan, rng, dress)
    canvas, gmask, pmask = paint_shelves(plan, debug=debug)
    # mild homography: jitter the source quad inside the margin, squash it onto the output
    j = m * rng.uniform(0.2, 0.9)
    src = np.array([[m, m], [m + width, m], [m + width, m + height], [m, m + height]], np.float32)
    src += rng.gen.uniform(-j, j, (4, 2)).astype(np.float32)
    if rng.random() < 0.3:  # a shot taken at an angle along the aisle: one side further away
        side = int(rng.integers(2))
        d = m * rng.uniform(0.3, 0.9)
        idx = (0, 3) if side == 0 else (1, 2)
        src[idx[0], 1] -= d
        src[idx[1], 1] += d
    src = np.clip(src, 0, [cw - 1, ch - 1]).astype(np.float32)
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    M = cv2.getPerspectiveTransform(src, dst)
    img = cv2.warpPerspective(
        canvas, M, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    raw = np.array([g.box for g in plan.gaps], np.float32).reshape(-1, 4)
    raw[:, [0, 2]] = np.clip(raw[:, [0, 2]], 0, cw)  # what was drawn: gaps are clipped to the canvas
    raw[:, [1, 3]] = np.clip(raw[:, [1, 3]], 0, ch)
    clipped, visible = clip_quads(transform_boxes(raw, M), width, height)
    min_side = 4.0 * s
    # a gap cut by the frame's edge is labelled as much of it as shows (as real photos are labelled), however
    # little of the whole that is: left unlabelled, an empty spot in plain view would teach "not a gap"
    keep = (
        (visible > 0)
        & (clipped[:, 2] - clipped[:, 0] >= min_side)
        & (clipped[:, 3] - clipped[:, 1] >= min_side)
    )
    gm_out = pm_out = None
    if debug and gmask is not None and pmask is not None:
        # one label image (gap k -> k+1, product -> -1), warped once so both masks sample the same pixels
        lab = np.where(pmask, np.int16(-1), gmask).astype(np.int16)
        wl = cv2.warpPerspective(lab, M, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
        lut = np.zeros(len(plan.gaps) + 1, np.int16)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int16)
        gm_out = lut[np.maximum(wl, 0)]
        pm_out = wl < 0
    img = camera_effects(rng, img)
    looks = [g.look for g, k in zip(plan.gaps, keep, strict=True) if k]
    return Sample(img, clipped[keep].astype(np.float32).reshape(-1, 4), gm_out, pm_out, looks)


def make_shelf_image(
    rng: np.random.Generator, width: int = 416, height: int = 416, dress_p: float | None = None
) -> Sample:
    """One procedural shelf photo (RGB uint8) with the boxes of its empty spots."""
    return render_sample(rng, width, height, debug=False, dress_p=dress_p)


# ---------------------------------------------------------------------------------------------------------------
# YOLO folders


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` of a dataset made with `seed` (independent of worker count)."""
    return np.random.default_rng([int(seed), int(index)])


def _write_one(args: tuple[Path, int, int, int, int]) -> int:
    out_dir, seed, i, width, height = args
    s = make_shelf_image(sample_rng(seed, i), width, height)
    name = f"{i:05d}"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise OSError(f"could not encode image {i}")
    (out_dir / "images" / f"{name}.jpg").write_bytes(buf.tobytes())
    (out_dir / "labels" / f"{name}.txt").write_text(yolo_lines(s.boxes, width, height))
    return len(s.boxes)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend


def write_yolo_dataset(
    out_dir: Path,
    n: int,
    seed: int,
    width: int = 416,
    height: int = 416,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write n images to out_dir/images/NNNNN.jpg and YOLO labels to out_dir/labels/NNNNN.txt ("0 cx cy w h").

    Image i depends only on (seed, i), so the result is the same for any number of workers. `progress` is
    called with the number of images finished since the last call."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, seed, i, width, height) for i in range(n)]
    results: Iterator[int]
    if workers <= 1 or n < 8:
        results = map(_write_one, jobs)
        for _ in results:
            if progress is not None:
                progress(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # safe even when the caller has TensorFlow threads running
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                if progress is not None:
                    progress(1)
    return out_dir
