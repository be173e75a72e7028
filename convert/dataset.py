"""Training data for the gap-heatmap model: YOLO folders in, augmented images and heatmap/box targets out.

Everything here is numpy and OpenCV, so evaluation and the device tests can read YOLO folders without TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.yolo import LabelError, read_yolo_boxes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class LabeledImage:
    """One image of a YOLO folder: its RGB pixels and the gap boxes (N, 4) x0, y0, x1, y1 in its pixels."""

    path: Path
    image: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class Targets:
    """Training targets on the output grid: Gaussian centre heatmap, box sides (stride units), box-loss weights."""

    heatmap: np.ndarray  # (h, w, 1) float32 in [0, 1], exactly 1 at each box's centre cell
    ltrb: np.ndarray  # (h, w, 4) float32
    weight: np.ndarray  # (h, w, 1) float32, > 0 where ltrb is supervised


def list_yolo_images(folder: Path | str) -> list[tuple[Path, Path]]:
    """(image, label) path pairs of a folder with `images/` and `labels/`; an image without a label file has no gaps."""
    root = Path(folder)
    img_dir, lbl_dir = root / "images", root / "labels"
    if not root.is_dir():
        raise ValueError(f"{root} does not exist (or is not a folder): give a YOLO folder with images/ and labels/"
                         + (" (ESD is not part of the repository: it lies in shared/data/esd beside the checkout)"
                            if "esd" in str(root).lower() else ""))
    if not img_dir.is_dir():
        raise ValueError(f"{root} has no images/ folder (expected a YOLO folder with images/ and labels/)")
    if not lbl_dir.is_dir():
        raise ValueError(f"{root} has no labels/ folder (expected a YOLO folder with images/ and labels/)")
    pairs = [
        (p, lbl_dir / (p.stem + ".txt"))
        for p in sorted(img_dir.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    if not pairs:
        raise ValueError(f"{img_dir} holds no images")
    return pairs


def read_image_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise LabelError(f"cannot read image {path} (not an image, or damaged): fix or remove it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def gap_classes_of(folder: Path | str) -> tuple[int, ...]:
    """The class ids that are gaps in a YOLO folder: from its `classes.txt` (the names a labelling tool exports),
    those named like an empty spot (`empty`, `gap`, ...), or its only class; without one, class 0."""
    from edge.decoders import gap_labels

    names_file = Path(folder) / "classes.txt"
    if not names_file.exists():
        return (0,)
    names = [n.strip() for n in names_file.read_text(encoding="utf-8", errors="replace").splitlines() if n.strip()]
    found = gap_labels(names)
    if found:
        return found
    if len(names) == 1:
        log.warning("%s names one class, %r, and it is not named like an empty spot (empty, gap, out_of_stock, ...): "
                    "its boxes are taken as gaps", names_file, names[0])
    if len(names) <= 1:
        return (0,)
    raise LabelError(f"{names_file}: which of the classes {', '.join(names)} is an empty spot? None is named like "
                     "one (empty, gap, out_of_stock, ...); rename it there")


def load_yolo_folder(folder: Path | str, limit: int | None = None) -> list[LabeledImage]:
    """All images of a YOLO folder with their gap boxes (`gap_classes_of`; boxes of other classes are left out and
    counted in a warning), in file-name order."""
    classes = gap_classes_of(folder)
    out = []
    other = gaps = 0
    pairs = list_yolo_images(folder)[:limit]
    unlabelled = [img for img, lbl in pairs if not lbl.exists()]
    stray = sorted(p.name for p in (Path(folder) / "labels").glob("*.txt")) if len(unlabelled) == len(pairs) else []
    if stray:  # label files, but none for any image: another folder's labels, or names that do not match
        raise LabelError(f"{folder}: labels/ holds {len(stray)} label file(s) (such as {stray[0]}) but none for any "
                         f"image (for {unlabelled[0].name}, labels/{unlabelled[0].stem}.txt): is that the right "
                         "folder, or do the names differ?")
    if unlabelled:
        log.warning("%s: %d of %d images have no label file in labels/ (such as %s): taken as images with no gap; "
                    "give them an empty .txt to say so", folder, len(unlabelled), len(pairs), unlabelled[0].name)
    for img_path, lbl_path in pairs:
        img = read_image_rgb(img_path)
        boxes, ids = read_yolo_boxes(lbl_path, img.shape[1], img.shape[0])
        gap = np.isin(ids, classes)
        other += int((~gap).sum())
        gaps += int(gap.sum())
        out.append(LabeledImage(img_path, img, boxes[gap]))
    if other and not gaps and not (Path(folder) / "classes.txt").exists():
        raise LabelError(f"{folder}: none of its {other} labelled boxes is of the gap class(es) {list(classes)}: "
                         "name the classes in classes.txt (the one called empty, gap, out_of_stock, ... is the gap; "
                         "without it, class 0 is)")
    if other:
        log.warning("%s: left out %d labelled box(es) of classes other than the gap class(es) %s (classes.txt names "
                    "the classes; without it, class 0 is the gap)", folder, other, list(classes))
    return out


def resize_with_boxes(image: np.ndarray, boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Squash an image to width x height (as the device does) and scale its boxes to match."""
    h, w = image.shape[:2]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if w > width else cv2.INTER_LINEAR)
    scale = np.array([width / w, height / h, width / w, height / h], np.float32)
    return out, (boxes * scale).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Random geometric and photometric changes applied to each training sample."""

    scale: tuple[float, float] = (0.7, 1.5)  # zoom relative to squashing the whole image to the model input
    aspect: tuple[float, float] = (0.8, 1.25)
    flip: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 8.0  # degrees (OpenCV hue units are 2 degrees)
    blur: float = 0.2  # probability of a Gaussian or motion blur
    noise: float = 6.0  # max std of additive noise
    jpeg: float = 0.3  # probability of a JPEG round trip
    randconv: float = 0.0  # probability of a random-convolution restyle (`random_conv`)
    mosaic: float = 0.0  # probability that a crop is four views of four images, one per quadrant (`augment_mosaic`)
    min_visible: float = 0.5  # a box cut by the crop keeps its label only if this share of it is visible

    def __post_init__(self) -> None:
        for name in ("flip", "blur", "jpeg", "randconv", "mosaic", "min_visible"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} is a probability between 0 and 1, got {v}")
        for name in ("brightness", "contrast", "saturation", "hue", "noise"):
            v = getattr(self, name)
            if not 0.0 <= v < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        for name in ("scale", "aspect"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi < float("inf"):
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    out_w: int,
    out_h: int,
    base_w: int,
    base_h: int,
    cfg: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """A random out_w x out_h view of the image as if squashed to base_w x base_h (the model input), then zoomed."""
    h, w = image.shape[:2]
    zoom = rng.uniform(*cfg.scale)
    aspect = np.exp(rng.uniform(np.log(cfg.aspect[0]), np.log(cfg.aspect[1])))
    sx = base_w / w * zoom * np.sqrt(aspect)
    sy = base_h / h * zoom / np.sqrt(aspect)
    span_x, span_y = w * sx - out_w, h * sy - out_h
    tx = -rng.uniform(min(0.0, span_x), max(0.0, span_x))
    ty = -rng.uniform(min(0.0, span_y), max(0.0, span_y))
    flip = rng.random() < cfg.flip
    fill = tuple(float(v) for v in rng.integers(0, 256, 3))
    src = image
    if sx < 1 or sy < 1:
        # shrinking: resize first with INTER_AREA, exactly as the device resizes a frame (`edge.resize`;
        # warpAffine has no INTER_AREA and would silently use bilinear), then place it at whole pixels
        nw, nh = max(1, int(round(w * sx))), max(1, int(round(h * sy)))
        src = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / w, nh / h
        tx, ty = float(round(tx)), float(round(ty))
    # `m` maps a box edge u (pixel i spans [i, i + 1)) to a ± s u + t; warpAffine maps pixel centres, so its
    # translation is t + (a - 1) / 2 for the image to land where the boxes say
    if flip:
        m = np.array([[-sx, 0, out_w - tx], [0, sy, ty]], np.float64)
    else:
        m = np.array([[sx, 0, tx], [0, sy, ty]], np.float64)
    if src is image:
        warp = m.copy()
        interp = cv2.INTER_LINEAR
    else:  # already at scale: only the flip and the whole-pixel shift are left
        warp = np.array([[m[0, 0] / sx, 0, m[0, 2]], [0, 1, m[1, 2]]], np.float64)
        interp = cv2.INTER_NEAREST
    warp[:, 2] += 0.5 * (np.diag(warp[:, :2]) - 1)
    out = cv2.warpAffine(src, warp, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)

    if len(boxes):
        b = boxes.astype(np.float64)
        xs = b[:, [0, 2]] * m[0, 0] + m[0, 2]
        ys = b[:, [1, 3]] * m[1, 1] + m[1, 2]
        nb = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
        area = (nb[:, 2] - nb[:, 0]) * (nb[:, 3] - nb[:, 1])
        cb = nb.copy()
        cb[:, 0::2] = np.clip(cb[:, 0::2], 0, out_w)
        cb[:, 1::2] = np.clip(cb[:, 1::2], 0, out_h)
        carea = np.maximum(cb[:, 2] - cb[:, 0], 0) * np.maximum(cb[:, 3] - cb[:, 1], 0)
        keep = (carea >= cfg.min_visible * np.maximum(area, 1e-6)) & (cb[:, 2] - cb[:, 0] >= 2) & (cb[:, 3] - cb[:, 1] >= 2)
        # Boxes mostly cut away are dropped; their visible rest is painted over, outward to whole pixels and one
        # more (interpolation blends the edge into it), so no sliver of an unlabelled gap stays in view.
        for box in nb[~keep & (carea > 0)]:
            x0, y0 = (max(int(np.floor(v)) - 1, 0) for v in box[:2])
            x1, y1 = (int(np.ceil(v)) + 1 for v in box[2:])
            out[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
        boxes = cb[keep].astype(np.float32)
    out = photometric(out, rng, cfg)
    return out, boxes


def augment_mosaic(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    out_w: int,
    out_h: int,
    base_w: int,
    base_h: int,
    cfg: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """An out_w x out_h crop cut into four tiles at a random point, each tile an `augment` view of one of the four
    (image, boxes) samples at the usual zoom: four photos' gaps and surroundings in one crop, at the sizes a plain
    crop would show them (YOLO's mosaic, without its shrinking)."""
    if len(samples) != 4:
        raise ValueError(f"a mosaic takes 4 samples, got {len(samples)}")
    cx = int(round(rng.uniform(0.25, 0.75) * out_w))
    cy = int(round(rng.uniform(0.25, 0.75) * out_h))
    out = np.empty((out_h, out_w, 3), np.uint8)
    parts = []
    tiles = ((0, 0, cx, cy), (cx, 0, out_w, cy), (0, cy, cx, out_h), (cx, cy, out_w, out_h))
    for (image, boxes), (x0, y0, x1, y1) in zip(samples, tiles, strict=True):
        tile, tb = augment(image, boxes, rng, x1 - x0, y1 - y0, base_w, base_h, cfg)
        out[y0:y1, x0:x1] = tile
        parts.append(tb + np.array([x0, y0, x0, y0], np.float32))
    return out, np.concatenate(parts).reshape(-1, 4).astype(np.float32)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Colour, blur, noise and JPEG changes (labels unchanged)."""
    img = image
    if cfg.hue or cfg.saturation:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue) / 2.0) % 180.0
        hsv[..., 1] *= rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    f = img.astype(np.float32)
    gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    mean = f.mean()
    f = (f - mean) * gain + mean * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    f *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    if cfg.noise:
        f += rng.normal(0, rng.uniform(0, cfg.noise), f.shape).astype(np.float32)
    img = np.clip(f, 0, 255).astype(np.uint8)
    if cfg.randconv and rng.random() < cfg.randconv:  # no draw when off: the other arms' streams stay as they were
        img = random_conv(img, rng)
    if rng.random() < cfg.blur:
        if rng.random() < 0.5:
            k = int(rng.integers(1, 3)) * 2 + 1
            img = cv2.GaussianBlur(img, (k, k), 0)
        else:
            k = int(rng.integers(3, 8))
            kern = np.zeros((k, k), np.float32)
            kern[k // 2, :] = 1.0 / k
            img = cv2.filter2D(img, -1, kern)
    if rng.random() < cfg.jpeg:
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
        dec = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED) if ok else None
        if dec is not None:
            img = dec
    return img


def random_conv(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Restyle an RGB image through a random 3-in, 3-out convolution (1x1, 3x3 or 5x5; RandConv, Xu et al. 2021),
    blended with the original by a random share: local colour and brightness relations change (a gap need not be
    darker than its neighbours), shapes and edges stay. Each output channel keeps the input's mean and spread."""
    k = int(rng.choice([1, 3, 5]))
    w = rng.normal(0.0, 1.0 / np.sqrt(3 * k * k), (3, 3, k, k)).astype(np.float32)  # (out, in, ky, kx)
    f = image.astype(np.float32)
    mean = f.reshape(-1, 3).mean(0)
    std = f.reshape(-1, 3).std(0) + 1e-3
    z = (f - mean) / std
    planes = [z[..., c] for c in range(3)]
    out = np.empty_like(z)
    for o in range(3):
        acc = np.zeros(z.shape[:2], np.float32)
        for i in range(3):
            acc += cv2.filter2D(planes[i], -1, w[o, i], borderType=cv2.BORDER_REFLECT)
        out[..., o] = (acc - acc.mean()) / (acc.std() + 1e-6)
    a = float(rng.uniform(0.0, 1.0))
    mixed = a * z + (1.0 - a) * out
    mixed = (mixed - mixed.reshape(-1, 3).mean(0)) / (mixed.reshape(-1, 3).std(0) + 1e-6)
    return np.clip(mixed * std + mean, 0, 255).astype(np.uint8)


def encode_targets(boxes: np.ndarray, out_w: int, out_h: int, stride: int, min_sigma: float = 0.6) -> Targets:
    """CenterNet-style targets: an elliptical Gaussian per box (1 at its centre cell) and box sides near the centre.

    Box sides are supervised at the cells whose Gaussian value is at least 0.3 and which lie inside the box, and at
    the centre cell always, weighted by the Gaussian. Smaller boxes are painted last, so they own shared cells.
    """
    heat = np.zeros((out_h, out_w), np.float32)
    ltrb = np.zeros((out_h, out_w, 4), np.float32)
    weight = np.zeros((out_h, out_w), np.float32)
    if len(boxes):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
        pcx, pcy = (xs + 0.5) * stride, (ys + 0.5) * stride  # cell centres in input pixels
        for x0, y0, x1, y1 in boxes[np.argsort(-areas)]:
            cx, cy = 0.5 * (x0 + x1) / stride, 0.5 * (y0 + y1) / stride
            ci = min(max(int(cx), 0), out_w - 1)
            cj = min(max(int(cy), 0), out_h - 1)
            sx = max((x1 - x0) / stride / 6.0, min_sigma)
            sy = max((y1 - y0) / stride / 6.0, min_sigma)
            r = 3
            a0, a1 = max(int(ci - r * sx), 0), min(int(ci + r * sx) + 1, out_w)
            b0, b1 = max(int(cj - r * sy), 0), min(int(cj + r * sy) + 1, out_h)
            g = np.exp(
                -((xs[b0:b1, a0:a1] - ci) ** 2) / (2 * sx * sx) - ((ys[b0:b1, a0:a1] - cj) ** 2) / (2 * sy * sy)
            )
            heat[b0:b1, a0:a1] = np.maximum(heat[b0:b1, a0:a1], g)
            heat[cj, ci] = 1.0
            d = np.stack(
                [
                    pcx[b0:b1, a0:a1] - x0,
                    pcy[b0:b1, a0:a1] - y0,
                    x1 - pcx[b0:b1, a0:a1],
                    y1 - pcy[b0:b1, a0:a1],
                ],
                axis=-1,
            ) / stride
            sel = (g >= 0.3) & (d.min(-1) > 0)
            sel[cj - b0, ci - a0] = True
            dd = np.maximum(d, 0.05)
            ltrb[b0:b1, a0:a1][sel] = dd[sel]
            weight[b0:b1, a0:a1][sel] = g[sel]
    return Targets(heat[..., None], ltrb, weight[..., None])
