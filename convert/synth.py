"""Procedural store-shelf images with exactly labelled empty spots, made by domain randomisation (numpy + OpenCV)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from convert.camera_fx import _camera_effects, _clip_quads, _transform_boxes
from convert.rand import Rand, as_rand
from convert.sprites import (
    _SIZES,
    _SPRITES,
    RGB,
    _contrast,
    _hsv,
    _photo_patch,
    _product_colour,
    _scale,
    _text_marks,
)
from edge.yolo import yolo_lines

# Gap looks: what the empty spot shows.
LOOK_BACK = "back"  # back panel (plain or pegboard) and shelf deck showing
LOOK_DARK = "dark"  # a dark, shadowed hole
LOOK_PUSHED = "pushed"  # the row is pushed back: products visible but deep and dark
LOOK_PEG = "peg"  # a missing hanging pack: pegboard and an empty hook
GAP_LOOKS = (LOOK_BACK, LOOK_DARK, LOOK_PUSHED, LOOK_PEG)


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
_STACK_P = 0.55  # share of box/bag SKUs stacked 2-3 items high
_PARTIAL_P = 0.7  # share of gaps in stacked facings that leave the bottom items in place
_HEADER_P = 0.3  # share of bays with a printed header panel above the top row (signs are not gaps)
_MIN_FILL = 0.0  # 0.72 labelled ESD's strips better but cost ESD AP50 and cart-pass false alarms (models/NOTES.md)
_RUN_P = 0.5  # share of gaps started in a stacked facing that span the SKU's run of facings (ESD's long flat boxes)
_RUN_PARTIAL_P = 0.85  # share of those that leave the bottom items in place (a sold-out top layer)
_DISTRACT_P = 0.0  # share of scenes with store clutter that is not a gap (`_plan_distractors`): posters, price cards, boxes
_DRESS_P = 0.0  # share of gaps dressed (`dress_gaps`); 0.8 cost 4 ESD AP50 points in two seeds (models/NOTES.md)
_ROW_MIXES: tuple[tuple[str, ...], ...] = (
    ("box",),
    ("box", "box", "bottle"),
    ("bottle",),
    ("bottle", "jar"),
    ("can",),
    ("can", "jar", "box"),
    ("bag", "box"),
    ("bag",),
    ("box", "bottle", "can", "jar", "bag"),
)


# ---------------------------------------------------------------------------------------------------------------
# scene plan


@dataclass
class Sku:
    sprite: np.ndarray
    mask: np.ndarray
    solid: bool = False  # mask is all True
    layers: int = 1  # items stacked on top of each other in one facing
    layer_h: int = 0  # height of one stacked item (px)


@dataclass
class Facing:
    x: int
    y: int
    sku: int

    def right(self, skus: list[Sku]) -> int:
        return self.x + skus[self.sku].sprite.shape[1]


@dataclass
class Row:
    """One shelf row of one bay: inner region [x0, x1) x [top, bottom), products stand on `bottom`."""

    x0: int
    x1: int
    top: int
    bottom: int
    edge_h: int
    edge_colour: RGB
    hanging: bool
    facings: list[Facing] = field(default_factory=list)
    tags: list[tuple[int, int, RGB]] = field(default_factory=list)  # price tags (x, width, colour)
    shade: float = 0.4
    shade_depth: float = 0.3


@dataclass
class Bay:
    x0: int
    x1: int
    back: RGB
    pegboard: bool
    peg_pitch: int
    rows: list[Row] = field(default_factory=list)
    fence: int = 0  # height (px) of a wire fence along the shelf fronts, 0 = none
    fence_colour: RGB = (190, 190, 195)


@dataclass
class PlannedGap:
    """An empty spot: facings [first, first+count) of one row left out; `box` in canvas pixels."""

    bay: int
    row: int
    first: int
    count: int
    look: str
    box: tuple[float, float, float, float]
    dark: float  # darkening factor for dark / pushed looks
    deck: float  # fraction of the gap height showing the shelf deck (back look)
    pushed_scale: float
    keep: int = 0  # stacked facings: bottom items left in place (0 = the whole facing is gone)
    dress: int = 0  # seed of what else shows inside (`_paint_dress`); 0 = a plain gap


@dataclass
class ShelfPlan:
    """Everything random about a shelf scene, decided up front so it can be painted with any gaps filled."""

    width: int
    height: int
    pitch: float
    wall: RGB
    floor: RGB
    floor_y: int
    top_y: int
    sign: tuple[int, int, int, int, RGB] | None
    skus: list[Sku]
    bays: list[Bay]
    upright: RGB
    upright_w: int
    gaps: list[PlannedGap] = field(default_factory=list)
    lights: list[tuple[int, int, int, int]] = field(default_factory=list)  # ceiling light panels (x, y, w, h)
    talkers: list[tuple[int, int, int, int, RGB]] = field(
        default_factory=list
    )  # promo cards (x, y, w, h, colour)
    headers: list[tuple[int, int, int, int, RGB, int]] = field(
        default_factory=list
    )  # printed header panels above a bay's top row (x, y, w, h, colour, print seed)
    distractors: list[Distractor] = field(default_factory=list)  # clutter that is never a gap, painted last


@dataclass(frozen=True)
class Distractor:
    """Store clutter that looks a little like a gap and never is one: a poster with a dark photo, a price card,
    or a plain box on top of the shelving. Painted over the shelves, but never over an open gap."""

    kind: str  # "poster", "card" or "box"
    x: int
    y: int
    w: int
    h: int
    seed: int


def _back_colour(rng: Rand) -> RGB:
    u = rng.random()
    if u < 0.45:
        return _hsv(rng.random(), rng.uniform(0, 0.08), rng.uniform(0.7, 0.95))
    if u < 0.65:
        return _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.3), rng.uniform(0.45, 0.8))
    if u < 0.88:
        return _hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.1, 0.3))
    return _hsv(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.8))


def _edge_colour(rng: Rand) -> RGB:
    u = rng.random()
    if u < 0.5:
        return _hsv(rng.random(), rng.uniform(0, 0.06), rng.uniform(0.75, 0.98))
    if u < 0.7:
        return _hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.15, 0.45))
    return _hsv(
        (0.0, 0.6, 0.33, 0.08)[rng.integers(4)] + rng.uniform(-0.02, 0.02),
        rng.uniform(0.6, 0.9),
        rng.uniform(0.5, 0.9),
    )


def _fill_row(
    rng: Rand,
    row: Row,
    skus: list[Sku],
    pitch: float,
    kinds: tuple[str, ...],
    stack_p: float | None = None,
    min_fill: float = 0.0,
) -> None:
    inner = row.bottom - row.top
    if stack_p is None:
        stack_p = _STACK_P
    x = row.x0 + int(rng.integers(0, max(1, int(pitch * 0.08)) + 1))
    gap_in = max(0.0, pitch * rng.uniform(0.0, 0.05))
    gap_run = max(0.0, pitch * rng.uniform(0.0, 0.08))
    while True:
        kind = "pack" if row.hanging else kinds[rng.integers(len(kinds))]
        w0, w1, h0, h1 = _SIZES[kind]
        w = max(3, int(pitch * rng.uniform(w0, w1)))
        h = max(3, min(inner - 1, int(inner * rng.uniform(max(h0, min_fill), max(h1, min_fill)))))
        n = rng.geometric(0.2) if not row.hanging else rng.integers(1, 6)
        n = max(1, min(n, 12))
        if x + w > row.x1:
            left = row.x1 - x
            if left >= max(4, int(pitch * 0.25)):  # a narrow filler product ends the row
                w = left - int(rng.integers(0, 2))
                if w < 3:
                    break
                n = 1
            else:
                break
        sku = len(skus)
        if kind in ("box", "bag") and not row.hanging and rng.random() < stack_p and inner >= 12:
            layers = 2 if rng.random() < 0.65 else 3
            lh = max(4, int(inner * rng.uniform(0.8, 0.97) / layers))
            item, im = _SPRITES[kind](rng, w, lh)
            item[-1] = (item[-1] * 0.55).astype(np.uint8)  # the seam between stacked packs
            spr, m = np.concatenate([item] * layers, 0), np.concatenate([im] * layers, 0)
            skus.append(Sku(spr, m, bool(m.all()), layers, lh))
            h = layers * lh
        else:
            spr, m = _SPRITES[kind](rng, w, h)
            skus.append(Sku(spr, m, bool(m.all())))
        tag_col = (255, 230, 40) if rng.random() < 0.35 else (248, 248, 244)
        row.tags.append((x, max(3, int(pitch * rng.uniform(0.25, 0.45))), tag_col))
        for _ in range(n):
            if x + w > row.x1:
                break
            y = row.top + int(pitch * rng.uniform(0.03, 0.1)) if row.hanging else row.bottom - h
            row.facings.append(Facing(x, y, sku))
            x += w + int(round(gap_in * rng.uniform(0.5, 1.5)))
        x += int(round(gap_run * rng.random()))
        if x >= row.x1 - 3:
            break


def plan_shelves(
    rng_in: np.random.Generator | Rand,
    width: int,
    height: int,
    pitch_range: tuple[float, float] = (26.0, 60.0),
    bay_width_range: tuple[float, float] = (0.35, 1.3),
    top_range: tuple[float, float] = (-0.15, 0.18),
    bottom_range: tuple[float, float] = (0.82, 1.15),
    pegboard_p: float = 0.08,
    fence_p: float = 0.12,
    talker_p: float = 0.3,
    header_p: float = 0.0,
    min_fill: float = 0.0,
    distract_p: float = 0.0,
) -> ShelfPlan:
    """Lay out bays, shelf rows and products on a width x height canvas (no gaps yet).

    `min_fill` is the least share of a row's inner height a product fills (0: each kind's own range)."""
    if width < 16 or height < 16:
        raise ValueError(f"canvas too small: {width}x{height}")
    rng = as_rand(rng_in)
    pitch = float(np.exp(rng.uniform(np.log(pitch_range[0]), np.log(pitch_range[1]))))
    wall = _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.6, 0.95))
    floor = _hsv(rng.uniform(0, 0.15), rng.uniform(0, 0.2), rng.uniform(0.45, 0.85))
    top_y = int(height * rng.uniform(*top_range))
    floor_y = int(height * rng.uniform(*bottom_range))
    sign = None
    if top_y > pitch * 0.6 and rng.random() < 0.5:
        sw = int(width * rng.uniform(0.1, 0.4))
        sx = int(rng.integers(0, max(1, width - sw)))
        sh = int(max(4, top_y * rng.uniform(0.3, 0.7)))
        sign = (sx, max(0, top_y - sh - int(pitch * 0.2)), sw, sh, _product_colour(rng))
    lights: list[tuple[int, int, int, int]] = []
    if top_y > pitch * 0.8 and rng.random() < 0.6:
        for _ in range(rng.integers(1, 5)):
            lw = int(width * rng.uniform(0.05, 0.2))
            lh = max(2, int(top_y * rng.uniform(0.08, 0.25)))
            lights.append((rng.integers(0, width), rng.integers(0, max(1, top_y // 2)), lw, lh))
    upright = _edge_colour(rng)
    upright_w = max(2, int(pitch * rng.uniform(0.06, 0.16)))
    skus: list[Sku] = []
    bays: list[Bay] = []
    x = -int(rng.integers(0, int(width * 0.3) + 1))
    shared_rows = rng.random() < 0.7
    row_seed = int(rng.integers(1 << 30))
    while x < width:
        bw = int(width * rng.uniform(*bay_width_range))
        peg = rng.random() < pegboard_p
        bay = Bay(x + upright_w, x + bw, _back_colour(rng), peg, max(3, int(pitch * rng.uniform(0.12, 0.22))))
        if not peg and rng.random() < fence_p:
            bay.fence = max(2, int(pitch * rng.uniform(0.1, 0.25)))
            bay.fence_colour = _hsv(0.6, 0.03, rng.uniform(0.55, 0.9))
        rrng = Rand(np.random.default_rng(row_seed)) if shared_rows else rng
        y = top_y + int(rrng.integers(0, max(1, int(pitch * 0.3))))
        edge_col = _edge_colour(rng)
        while y < floor_y - pitch * 0.6:
            p = pitch * rrng.uniform(0.88, 1.15) * (1.25 if peg else 1.0)
            edge_h = max(2, int(p * rrng.uniform(0.12, 0.24)))
            top = y
            bottom = int(y + p - edge_h)
            if bottom > floor_y:
                break
            row = Row(bay.x0, bay.x1, top, bottom, 0 if peg else edge_h, edge_col, peg)
            row.shade = float(rng.uniform(0.15, 0.6))
            row.shade_depth = float(rng.uniform(0.15, 0.5))
            kinds = _ROW_MIXES[int(rng.integers(len(_ROW_MIXES)))]
            _fill_row(rng, row, skus, pitch, kinds, min_fill=min_fill)
            bay.rows.append(row)
            y = bottom + (int(p * 0.12) if peg else edge_h)
        bays.append(bay)
        x += bw
    talkers: list[tuple[int, int, int, int, RGB]] = []
    if rng.random() < talker_p:
        rows = [r for b in bays for r in b.rows if r.edge_h > 0]
        for _ in range(rng.integers(1, 4) if rows else 0):
            r = rows[rng.integers(len(rows))]
            tw, th = max(4, int(pitch * rng.uniform(0.4, 0.9))), max(4, int(pitch * rng.uniform(0.3, 0.7)))
            tx = rng.integers(r.x0, max(r.x0 + 1, r.x1 - tw))
            ty = r.bottom if rng.random() < 0.6 else r.bottom - th  # hanging below the rail or standing on it
            colour = ((255, 220, 0), (230, 30, 30), (255, 140, 0), (250, 250, 250), (30, 90, 200))[
                rng.integers(5)
            ]
            talkers.append((tx, ty, tw, th, colour))
    headers: list[tuple[int, int, int, int, RGB, int]] = []
    if header_p > 0.0:  # store signs and header panels: printed, often dark, never gaps
        for bay in bays:
            if not bay.rows or rng.random() >= header_p:
                continue
            hh = int(pitch * rng.uniform(0.3, 0.9))
            hy = bay.rows[0].top - hh - int(pitch * rng.uniform(0.0, 0.1))
            if hy + hh <= 0:
                continue
            hc = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.3)) if rng.random() < 0.4 else (
                _product_colour(rng)
            )
            headers.append((bay.x0 - upright_w, hy, bay.x1 - bay.x0 + upright_w, hh, hc, rng.integers(1 << 30)))
    distractors = _plan_distractors(rng, bays, width, height, pitch, top_y) if (
        distract_p > 0.0 and rng.random() < distract_p) else []  # no draw when off: cart passes stay as they were
    return ShelfPlan(
        width,
        height,
        pitch,
        wall,
        floor,
        floor_y,
        top_y,
        sign,
        skus,
        bays,
        upright,
        upright_w,
        lights=lights,
        talkers=talkers,
        headers=headers,
        distractors=distractors,
    )


def _plan_distractors(
    rng: Rand, bays: list[Bay], width: int, height: int, pitch: float, top_y: int
) -> list[Distractor]:
    """One to four pieces of clutter of the kinds the shipped model took for gaps on ESD (models/NOTES.md):
    posters and promotional panels, big price cards, and plain boxes standing on the top shelf."""
    out = []
    for _ in range(int(rng.integers(1, 5))):
        u = rng.random()
        kind = "poster" if u < 0.45 else "card" if u < 0.75 else "box"
        seed = int(rng.integers(1 << 30))
        if kind == "poster":
            w, h = int(pitch * rng.uniform(1.5, 6.0)), int(pitch * rng.uniform(1.0, 3.5))
            x = int(rng.integers(-w // 3, width))
            # above the shelving when there is wall to hang it on, else in front of it (an end-cap display)
            y = int(top_y - h * rng.uniform(0.3, 1.1)) if top_y > pitch and rng.random() < 0.6 else int(
                rng.integers(0, max(1, height - h)))
        elif kind == "card":
            w, h = int(pitch * rng.uniform(0.8, 2.0)), int(pitch * rng.uniform(0.5, 1.1))
            x, y = int(rng.integers(-w // 3, width)), int(rng.integers(0, max(1, height - h)))
        else:
            tops = [(b, b.rows[0].top) for b in bays if b.rows and b.rows[0].top > pitch * 0.5]
            if not tops:
                continue
            bay, top = tops[int(rng.integers(len(tops)))]
            w, h = int(pitch * rng.uniform(0.8, 2.5)), int(pitch * rng.uniform(0.5, 1.4))
            x, y = int(rng.integers(bay.x0, max(bay.x0 + 1, bay.x1 - w // 2))), top - h
        out.append(Distractor(kind, x, y, max(w, 4), max(h, 4), seed))
    return out


def _paint_distractor(img: np.ndarray, d: Distractor) -> None:
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(0, d.x), max(0, d.y), min(W, d.x + d.w), min(H, d.y + d.h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    rng = Rand(np.random.default_rng(d.seed))
    pw, ph = d.w, d.h
    panel = np.empty((ph, pw, 3), np.uint8)
    if d.kind == "box":  # plain cardboard or white stock boxes: a flat face, a darker side, tape and a little print
        base = _hsv(rng.uniform(0.07, 0.11), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.8)) if rng.random() < 0.7 \
            else _hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.75, 0.95))
        panel[:] = base
        side = int(pw * rng.uniform(0.0, 0.3))
        if side:
            panel[:, pw - side:] = _scale(base, rng.uniform(0.55, 0.8))
        if rng.random() < 0.5:
            ty = int(ph * rng.uniform(0.1, 0.3))
            panel[ty : ty + max(1, ph // 12)] = _scale(base, 1.15)
        _text_marks(panel, rng, pw // 5, ph // 2, pw // 2, ph // 2 + max(3, ph // 6), _scale(base, 0.4))
    elif d.kind == "card":  # a big price card: a pale card, large dark figures, a coloured band
        base = (250, 250, 245) if rng.random() < 0.6 else _hsv(rng.uniform(0.1, 0.17), 0.85, 0.98)
        panel[:] = base
        ink = (20, 20, 20) if rng.random() < 0.8 else (200, 20, 30)
        fx0, fy0 = int(pw * rng.uniform(0.1, 0.3)), int(ph * rng.uniform(0.3, 0.45))
        fx1, fy1 = int(pw * rng.uniform(0.7, 0.9)), int(ph * rng.uniform(0.75, 0.9))
        n = int(rng.integers(3, 5))
        for k in range(n):  # digits as thick strokes
            a = fx0 + (fx1 - fx0) * k // n
            b = fx0 + (fx1 - fx0) * (k + 1) // n - max(1, pw // 30)
            cv2.rectangle(panel, (a, fy0), (b, fy1), ink, max(1, ph // 10))
        _text_marks(panel, rng, pw // 10, ph // 10, pw - pw // 10, max(ph // 10 + 3, fy0 - 2), (90, 90, 90))
        if rng.random() < 0.5:
            panel[ph - max(2, ph // 6):] = _product_colour(rng)
    else:  # a poster: a photo on a dark or coloured ground, big words, sometimes a face
        dark = rng.random() < 0.6
        base = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.05, 0.3)) if dark else _product_colour(rng)
        panel[:] = base
        _photo_patch(panel, rng, int(pw * rng.uniform(0.0, 0.5)), 0, pw, ph)
        if dark:  # the photo fades into the dark ground: a dark area with no edge to a product
            fx = int(pw * rng.uniform(0.3, 0.7))
            ramp = np.clip((np.arange(pw, dtype=np.float32) - fx) / max(1.0, pw * 0.15), 0, 1)
            if rng.random() < 0.5:
                ramp = ramp[::-1]
            panel[:] = (panel * ramp[None, :, None] + np.array(base, np.float32) * (1 - ramp[None, :, None])).astype(
                np.uint8)
        for _ in range(int(rng.integers(0, 3))):  # faces: a skin-toned oval and darker hair
            cx, cy = int(rng.integers(0, pw)), int(rng.integers(ph // 4, ph))
            r = max(2, int(ph * rng.uniform(0.15, 0.3)))
            cv2.ellipse(panel, (cx, cy - r // 2), (int(r * 1.05), int(r * 1.3)), 0, 0, 360,
                        _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)), -1)
            cv2.ellipse(panel, (cx, cy), (int(r * 0.8), r), 0, 0, 360,
                        _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.5), rng.uniform(0.6, 0.95)), -1)
        ink = _contrast(base, rng)
        for _ in range(int(rng.integers(1, 4))):
            ty = int(rng.integers(0, max(1, ph - 4)))
            _text_marks(panel, rng, int(pw * 0.05), ty, int(pw * rng.uniform(0.4, 0.95)), ty + max(3, ph // 6), ink)
    img[y0:y1, x0:x1] = panel[y0 - d.y : y1 - d.y, x0 - d.x : x1 - d.x]


def add_gap(
    plan: ShelfPlan,
    rng_in: np.random.Generator | Rand,
    bay: int,
    row: int,
    first: int,
    count: int,
    look: str | None = None,
    keep: int | None = None,
) -> PlannedGap | None:
    """Leave facings [first, first+count) of a row empty; returns None when they overlap or touch another gap.

    For stacked facings (one SKU, several items high), `keep` bottom items may stay (None: random, 0: none)."""
    rng = as_rand(rng_in)
    r = plan.bays[bay].rows[row]
    if count < 1 or first < 0 or first + count > len(r.facings):
        return None
    for g in plan.gaps:
        if g.bay == bay and g.row == row and first - 1 <= g.first + g.count and g.first - 1 <= first + count:
            return None
    if look is None:
        if r.hanging:
            look = LOOK_PEG if rng.random() < 0.8 else LOOK_DARK
        else:
            u = rng.random()
            if keep:  # a sold-out top layer: the strip above the stack shows shadow or the back panel
                look = LOOK_DARK if u < 0.57 else LOOK_BACK
            else:
                look = LOOK_DARK if u < 0.5 else LOOK_BACK if u < 0.88 else LOOK_PUSHED
    if look not in GAP_LOOKS:
        raise ValueError(f"unknown gap look {look!r}")
    x0 = r.facings[first - 1].right(plan.skus) if first > 0 else r.x0
    x1 = r.facings[first + count].x if first + count < len(r.facings) else r.x1
    fs = r.facings[first : first + count]
    sku0 = plan.skus[fs[0].sku]
    stacked = sku0.layers > 1 and all(f.sku == fs[0].sku for f in fs)
    if keep is None:
        keep = (
            rng.integers(1, sku0.layers)
            if stacked and look != LOOK_PUSHED and rng.random() < _PARTIAL_P
            else 0
        )
    if keep and (not stacked or not 0 < keep < sku0.layers):
        raise ValueError(f"cannot keep {keep} items of facings {first}..{first + count - 1}")
    if r.hanging:
        y0 = float(min(f.y for f in fs)) - max(1.0, plan.pitch * 0.05)
        y1 = float(max(f.y + plan.skus[f.sku].sprite.shape[0] for f in fs))
    else:
        y0, y1 = float(r.top), float(r.bottom - keep * sku0.layer_h)
    g = PlannedGap(
        bay,
        row,
        first,
        count,
        look,
        (float(x0), max(float(r.top), y0), float(x1), min(float(r.bottom), y1)),
        float(
            rng.uniform(0.1, 0.4)
            if look == LOOK_DARK
            else rng.uniform(0.5, 0.95)
            if look == LOOK_BACK
            else rng.uniform(0.3, 0.6)
        ),
        float(rng.uniform(0.1, 0.4)),
        float(rng.uniform(0.72, 0.9)),
        keep,
    )
    plan.gaps.append(g)
    return g


def _sample_gap_count(rng: Rand) -> int:
    if rng.random() < 0.05:
        return 0
    return int(min(27, 1 + rng.gen.negative_binomial(1.6, 0.215)))


def _count_choice(rng: Rand) -> int:
    u = rng.random()
    if u < 0.45:
        return 1
    if u < 0.7:
        return 2
    if u < 0.82:
        return 3
    if u < 0.95:
        return int(rng.integers(4, 7))
    return int(rng.integers(7, 13))


def add_random_gaps(
    plan: ShelfPlan, rng_in: np.random.Generator | Rand, n: int, region: tuple[int, int, int, int]
) -> None:
    """Add up to n gaps in rows whose inner area lies mostly inside region (x0, y0, x1, y1)."""
    rng = as_rand(rng_in)
    cands: list[tuple[int, int]] = []
    weights: list[float] = []
    rx0, ry0, rx1, ry1 = region
    for bi, bay in enumerate(plan.bays):
        for ri, row in enumerate(bay.rows):
            if row.top < ry0 - 0.3 * (row.bottom - row.top) or row.bottom > ry1 + 0.3 * (
                row.bottom - row.top
            ):
                continue
            inside = sum(1 for f in row.facings if rx0 <= f.x and f.right(plan.skus) <= rx1)
            if inside >= 2:
                cands.append((bi, ri))
                weights.append(float(inside))
    if not cands or n <= 0:
        return
    cum = np.cumsum(weights) / sum(weights)
    tries = 0
    added = 0
    while added < n and tries < n * 8:
        tries += 1
        bi, ri = cands[min(len(cands) - 1, int(np.searchsorted(cum, rng.random(), side="right")))]
        facings = plan.bays[bi].rows[ri].facings
        count = min(_count_choice(rng), max(1, len(facings) - 1))
        idx = [i for i, f in enumerate(facings) if rx0 <= f.x and f.right(plan.skus) <= rx1]
        first = idx[rng.integers(len(idx))]
        keep: int | None = None
        sku = plan.skus[facings[first].sku]
        if sku.layers > 1 and rng.random() < _RUN_P:
            first, count, keep = _stack_run(rng, facings, first, sku.layers)
        if add_gap(plan, rng, bi, ri, first, min(count, len(facings) - first), keep=keep) is not None:
            added += 1


def dress_gaps(plan: ShelfPlan, rng_in: np.random.Generator | Rand, p: float) -> None:
    """Dress the inside of a share p of the plan's gaps the way real empty spots look (`_paint_dress`).

    Measured on ESD `dev/` against plain generated gaps (`python -m convert.realism`, per-gap rows): real gaps are
    less dark against their neighbours and more varied inside (uneven light, the back panel's holes and seams,
    things left at the back, the sides of the neighbours), so a dressed dark hole is also lighter. Dressing 80 %
    brings those figures close, yet nets trained on it lost about 4 ESD AP50 points in two seeds (models/NOTES.md),
    so the generator leaves it off."""
    rng = as_rand(rng_in)
    for g in plan.gaps:
        if rng.random() < p:
            g.dress = rng.integers(1, 2**31 - 1)
            if g.look in (LOOK_DARK, LOOK_PUSHED) and rng.random() < 0.7:
                g.dark = rng.uniform(0.35, 0.85)


def _paint_dress(img: np.ndarray, g: PlannedGap, x0: int, y0: int, x1: int, y1: int) -> None:
    """What else shows inside a dressed gap: uneven light, back-panel structure, left-overs and neighbours' sides.

    Painted before the neighbours are pasted, so their outlines stay on top; everything is drawn from the gap's
    own seed, so a plan paints the same with any other gaps filled."""
    rng = Rand(np.random.default_rng(g.dress))
    w, h = x1 - x0, y1 - y0
    if w < 3 or h < 3:
        return
    reg = img[y0:y1, x0:x1].astype(np.float32)
    if rng.random() < 0.4:  # back-panel structure: pegboard holes, panel seams or a rail
        u = rng.random()
        tone = rng.uniform(0.45, 0.75)
        if u < 0.45:
            pp = rng.integers(3, 7)
            reg[rng.integers(0, pp) :: pp, rng.integers(0, pp) :: pp] *= tone
        elif u < 0.75:
            for _ in range(rng.integers(1, 3)):
                sx = rng.integers(0, w)
                reg[:, sx : sx + 1] *= tone
        else:
            ry = rng.integers(h // 5, max(h // 5 + 1, 4 * h // 5))
            reg[ry : ry + max(1, h // 12)] = reg[ry : ry + max(1, h // 12)] * 0.3 + rng.uniform(90, 200) * 0.7
    if rng.random() < 0.3:  # left at the back: one or two dim items standing on the deck
        for _ in range(rng.integers(1, 3)):
            iw = max(2, int(w * rng.uniform(0.12, 0.35)))
            ih = max(2, int(h * rng.uniform(0.3, 0.75)))
            ix = rng.integers(0, max(1, w - iw))
            col = np.array(_product_colour(rng), np.float32) * rng.uniform(0.25, 0.6)
            reg[h - ih :, ix : ix + iw] = col
            reg[h - ih : h - ih + 1, ix : ix + iw] *= 1.4  # the lit top edge
    if rng.random() < 0.4:  # the side of a neighbour, seen at an angle
        sw = max(1, int(w * rng.uniform(0.05, 0.16)))
        col = np.array(_product_colour(rng), np.float32) * rng.uniform(0.35, 0.7)
        if rng.random() < 0.5:
            reg[:, :sw] = col
        else:
            reg[:, w - sw :] = col
    if rng.random() < 0.5:  # light falling off from the front or from one side
        b = rng.uniform(0.1, 0.4)
        if rng.random() < 0.6:
            ramp = np.linspace(1 - b, 1 + b, h, dtype=np.float32)[:, None, None]
        else:
            ramp = np.linspace(1 - b, 1 + b, w, dtype=np.float32)[None, :, None]
        reg *= ramp[::-1] if rng.random() < 0.5 else ramp
    if rng.random() < 0.7:  # uneven light and dirt
        a = rng.uniform(0.15, 0.45)
        field_ = rng.gen.uniform(1 - a, 1 + a, (rng.integers(2, 6), rng.integers(2, 6))).astype(np.float32)
        reg *= cv2.resize(field_, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None]
    img[y0:y1, x0:x1] = np.clip(reg, 0, 255).astype(np.uint8)


def _stack_run(rng: Rand, facings: list[Facing], first: int, layers: int) -> tuple[int, int, int | None]:
    """A gap over (most of) the run of same-SKU stacked facings around `first`, usually with its top items gone.

    ESD labels the strip left above a stack whose top layer is sold out as one long, flat box across all the
    facings it spans (not one box per facing); this draws that case. Returns (first, count, keep)."""
    a = b = first
    while a > 0 and facings[a - 1].sku == facings[first].sku:
        a -= 1
    while b + 1 < len(facings) and facings[b + 1].sku == facings[first].sku:
        b += 1
    n = b - a + 1
    if n > 2 and rng.random() < 0.6:  # part of the run, at least two facings
        count = rng.integers(2, n + 1)
        a += rng.integers(0, n - count + 1)
        n = count
    n = min(n, max(1, len(facings) - 1))
    keep = rng.integers(1, layers) if rng.random() < _RUN_PARTIAL_P else None
    return a, n, keep


# ---------------------------------------------------------------------------------------------------------------
# painting


def _paste(
    img: np.ndarray,
    spr: np.ndarray,
    m: np.ndarray,
    x: int,
    y: int,
    pmask: np.ndarray | None,
    solid: bool = False,
) -> None:
    h, w = m.shape
    H, W = img.shape[:2]
    ax0, ay0, ax1, ay1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if ax1 <= ax0 or ay1 <= ay0:
        return
    src = spr[ay0 - y : ay1 - y, ax0 - x : ax1 - x]
    sub_m = m[ay0 - y : ay1 - y, ax0 - x : ax1 - x]
    if solid:
        img[ay0:ay1, ax0:ax1] = src
    else:
        np.copyto(img[ay0:ay1, ax0:ax1], src, where=sub_m[:, :, None])
    if pmask is not None:
        pmask[ay0:ay1, ax0:ax1] |= sub_m


def _clip_rect(x0: float, y0: float, x1: float, y1: float, W: int, H: int) -> tuple[int, int, int, int]:
    return max(0, int(round(x0))), max(0, int(round(y0))), min(W, int(round(x1))), min(H, int(round(y1)))


def _mul(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, prof: np.ndarray | float) -> None:
    if x1 <= x0 or y1 <= y0:
        return
    reg = img[y0:y1, x0:x1].astype(np.float32)
    if isinstance(prof, np.ndarray):
        reg *= prof[:, None, None]
    else:
        reg *= prof
    img[y0:y1, x0:x1] = np.clip(reg, 0, 255).astype(np.uint8)


def paint_shelves(
    plan: ShelfPlan, filled: frozenset[int] = frozenset(), debug: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Render the plan to an RGB canvas; gaps whose index is in `filled` are drawn restocked.

    Returns (image, gap_mask, product_mask); the masks are None unless debug (gap_mask holds k+1 for gap k)."""
    W, H = plan.width, plan.height
    img = np.empty((H, W, 3), np.uint8)
    img[:] = plan.wall
    gmask = np.zeros((H, W), np.int16) if debug else None
    pmask = np.zeros((H, W), bool) if debug else None
    if plan.floor_y < H:
        fy = max(0, plan.floor_y)
        img[fy:] = plan.floor
        _mul(img, 0, fy, W, H, np.linspace(0.85, 1.05, H - fy, dtype=np.float32))
    for lx, ly, lw, lh in plan.lights:
        cv2.rectangle(img, (lx, ly), (lx + lw, ly + lh), (255, 255, 250), -1)
    if plan.sign is not None:
        sx, sy, sw, sh, sc = plan.sign
        cv2.rectangle(img, (sx, sy), (sx + sw, sy + sh), sc, -1)
    for hx, hy, hw, hh, hc, hseed in plan.headers:
        _paint_header(img, hx, hy, hw, hh, hc, Rand(np.random.default_rng(hseed)))
    open_gaps = [(k, g) for k, g in enumerate(plan.gaps) if k not in filled]
    removed: dict[tuple[int, int], dict[int, int]] = {}  # (bay, row) -> {facing: items kept}
    for _, g in open_gaps:
        d = removed.setdefault((g.bay, g.row), {})
        for fi in range(g.first, g.first + g.count):
            d[fi] = g.keep
    for bi, bay in enumerate(plan.bays):
        bx0, bx1 = max(0, bay.x0), min(W, bay.x1)
        if bx1 <= bx0:
            continue
        if not bay.rows:
            continue
        ytop = max(0, bay.rows[0].top)
        ybot = min(H, bay.rows[-1].bottom + bay.rows[-1].edge_h)
        if ybot > ytop:
            img[ytop:ybot, bx0:bx1] = bay.back
            if bay.pegboard:
                dot = _scale(bay.back, 0.45)
                pp = bay.peg_pitch
                img[ytop + pp // 2 : ybot : pp, bx0 + pp // 2 : bx1 : pp] = dot
        # kick plate below the bottom row
        kb = bay.rows[-1].bottom + bay.rows[-1].edge_h
        if kb < plan.floor_y:
            img[max(0, kb) : min(H, plan.floor_y), bx0:bx1] = _scale(bay.rows[-1].edge_colour, 0.8)
        prof = np.ones(H, np.float32)
        for ri, row in enumerate(bay.rows):
            gone = removed.get((bi, ri), {})
            for k, g in open_gaps:
                if g.bay == bi and g.row == ri:
                    _paint_gap(img, plan, row, g, gmask, k)
            for fi, f in enumerate(row.facings):
                s = plan.skus[f.sku]
                kept = gone.get(fi, -1)
                if kept == 0:
                    continue
                if kept > 0:  # only the bottom items of a stack are left
                    cut = (s.layers - kept) * s.layer_h
                    _paste(img, s.sprite[cut:], s.mask[cut:], f.x, f.y + cut, pmask, s.solid)
                else:
                    _paste(img, s.sprite, s.mask, f.x, f.y, pmask, s.solid)
            # shadow under the shelf above, over back and products alike
            inner = row.bottom - row.top
            y0c, y1c = max(0, row.top), min(H, row.bottom)
            if y1c > y0c:
                ys = np.arange(y0c - row.top, y1c - row.top, dtype=np.float32)
                prof[y0c:y1c] = 1.0 - row.shade * np.exp(-ys / max(1.0, row.shade_depth * inner))
        if ybot > ytop:
            _mul(img, bx0, ytop, bx1, ybot, prof[ytop:ybot])
        if bay.fence:
            step = max(4, int(plan.pitch * 0.3))
            for row in bay.rows:
                fy = row.bottom - bay.fence
                cv2.line(img, (bx0, fy), (bx1 - 1, fy), bay.fence_colour, 1)
                img[max(0, fy) : max(0, row.bottom), bx0:bx1:step] = bay.fence_colour
        for row in bay.rows:
            if row.edge_h > 0:
                _paint_edge(img, row, bx0, bx1)
            elif row.hanging:
                for f in row.facings:  # peg hooks with their label tips
                    s = plan.skus[f.sku]
                    cx = f.x + s.sprite.shape[1] // 2
                    hy = f.y + max(1, s.sprite.shape[0] // 12)
                    cv2.line(img, (cx, f.y - 2), (cx, hy), (150, 150, 155), 1)
        # uprights at bay edges
        uw = plan.upright_w
        ux0 = bay.x0 - uw
        cv2.rectangle(img, (ux0, ytop), (bay.x0 - 1, ybot), plan.upright, -1)
        cv2.line(img, (bay.x0 - 1, ytop), (bay.x0 - 1, ybot), _scale(plan.upright, 0.6), 1)
    # promotional shelf talkers, never over an open gap (they would hide what the label says is there)
    boxes = [g.box for _, g in open_gaps]

    def over_gap(x: int, y: int, w: int, h: int) -> bool:
        return any(x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h for b in boxes)

    def occlude(x: int, y: int, w: int, h: int) -> None:
        if pmask is not None:  # they occlude like products do
            pmask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True

    for tx, ty, tw, th, tc in plan.talkers:
        if over_gap(tx, ty, tw, th):
            continue
        cv2.rectangle(img, (tx, ty), (tx + tw - 1, ty + th - 1), tc, -1)
        cv2.rectangle(img, (tx, ty), (tx + tw - 1, ty + th - 1), _scale(tc, 0.6), 1)
        if th > 8:
            cv2.line(
                img, (tx + 2, ty + th // 2), (tx + tw - 3, ty + th // 2), _scale(tc, 0.3), max(1, th // 8)
            )
        occlude(tx, ty, tw, th)
    for c in plan.distractors:  # never over an open gap, like the talkers
        if over_gap(c.x, c.y, c.w, c.h):
            continue
        _paint_distractor(img, c)
        occlude(c.x, c.y, c.w, c.h)
    return img, gmask, pmask


def _paint_header(img: np.ndarray, x: int, y: int, w: int, h: int, colour: RGB, rng: Rand) -> None:
    """A printed header panel: a plain board with a few words, a logo and sometimes a picture."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 - x0 < 4 or y1 - y0 < 3:
        return
    panel = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    panel[:] = colour
    ph, pw = panel.shape[:2]
    ink = _contrast(colour, rng)
    for _ in range(rng.integers(1, 4)):  # words in big print
        tx = rng.integers(0, max(1, pw - 8))
        tw = min(pw - tx, int(pw * rng.uniform(0.1, 0.4)))
        ty = int(ph * rng.uniform(0.2, 0.5))
        _text_marks(panel, rng, tx, ty, tx + tw, min(ph, ty + max(3, int(ph * rng.uniform(0.2, 0.5)))), ink)
    if rng.random() < 0.5 and ph > 6:
        cx, r = rng.integers(0, pw), max(2, int(ph * rng.uniform(0.2, 0.4)))
        cv2.circle(panel, (cx, ph // 2), r, _product_colour(rng), -1)
    if rng.random() < 0.3:
        px = rng.integers(0, max(1, pw - 4))
        _photo_patch(panel, rng, px, 1, px + int(pw * rng.uniform(0.1, 0.3)), ph - 1)
    cv2.line(panel, (0, ph - 1), (pw - 1, ph - 1), _scale(colour, 0.5), 1)
    img[y0:y1, x0:x1] = panel


def _paint_edge(img: np.ndarray, row: Row, bx0: int, bx1: int) -> None:
    H = img.shape[0]
    e0, e1 = row.bottom, row.bottom + row.edge_h
    if e1 <= 0 or e0 >= H:
        return
    cv2.rectangle(img, (bx0, e0), (bx1 - 1, e1 - 1), row.edge_colour, -1)
    cv2.line(img, (bx0, e0), (bx1 - 1, e0), _scale(row.edge_colour, 1.2), 1)
    cv2.line(img, (bx0, e1 - 1), (bx1 - 1, e1 - 1), _scale(row.edge_colour, 0.55), 1)
    th = max(2, int(row.edge_h * 0.8))
    for tx, tw, tc in row.tags:
        if tx >= bx1:
            continue
        ty = e0 + (row.edge_h - th) // 2
        cv2.rectangle(img, (tx, ty), (tx + tw, ty + th - 1), tc, -1)
        if th >= 4:
            cv2.line(img, (tx + 1, ty + th // 2), (tx + tw - 2, ty + th // 2), (40, 40, 40), 1)


def _paint_gap(
    img: np.ndarray, plan: ShelfPlan, row: Row, g: PlannedGap, gmask: np.ndarray | None, k: int
) -> None:
    H, W = img.shape[:2]
    x0, y0, x1, y1 = _clip_rect(*g.box, W, H)
    if x1 <= x0 or y1 <= y0:
        return
    h = y1 - y0
    if g.look in (LOOK_DARK, LOOK_PUSHED):
        prof = np.linspace(0.55, 1.0, h, dtype=np.float32) * g.dark
        _mul(img, x0, y0, x1, y1, prof)
    elif g.look == LOOK_BACK:
        dh = int(round((g.box[3] - g.box[1]) * g.deck)) if g.keep == 0 else 0
        if dh > 0:  # the shelf deck seen in front of the back panel
            d0 = max(0, int(round(g.box[3])) - dh)
            deck = _scale(row.edge_colour, 0.75) if sum(row.edge_colour) > 300 else (150, 150, 150)
            cv2.rectangle(img, (x0, d0), (x1 - 1, y1 - 1), deck, -1)
            cv2.line(img, (x0, d0), (x1 - 1, d0), _scale(deck, 0.7), 1)
        _mul(img, x0, y0, x1, y1, g.dark)  # deep inside the shelf, less light
        sw = max(1, (x1 - x0) // 10)  # side shadows cast by the neighbours
        _mul(img, x0, y0, min(x1, x0 + sw), y1, 0.6)
        _mul(img, max(x0, x1 - sw), y0, x1, y1, 0.75)
    elif g.look == LOOK_PEG:
        pass  # pegboard already shows; the empty hooks are drawn with the row
    if g.look == LOOK_PUSHED:
        for f in row.facings[g.first : g.first + g.count]:
            s = plan.skus[f.sku]
            h0, w0 = s.mask.shape
            nw, nh = max(2, int(w0 * g.pushed_scale)), max(2, int(h0 * g.pushed_scale))
            spr = cv2.resize(s.sprite, (nw, nh), interpolation=cv2.INTER_AREA)
            spr = (spr.astype(np.float32) * g.dark * 0.9).astype(np.uint8)
            m = cv2.resize(s.mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
            px = f.x + (w0 - nw) // 2
            py = row.bottom - nh - int((row.bottom - row.top) * 0.08)
            _paste(img, spr, m, px, py, None)
    if g.dress:
        _paint_dress(img, g, x0, y0, x1, y1)
    if gmask is not None:
        gmask[y0:y1, x0:x1] = k + 1


# ---------------------------------------------------------------------------------------------------------------
# samples


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
    clipped, visible = _clip_quads(_transform_boxes(raw, M), width, height)
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
    img = _camera_effects(rng, img)
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
