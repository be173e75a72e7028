"""The shelf plan: every random choice about a scene (bays, rows, products, clutter, gaps) made before painting."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convert.rand import Rand, as_rand
from convert.sprites import RGB, SIZES, SPRITES, hsv, product_colour

# Gap looks: what the empty spot shows.
LOOK_BACK = "back"  # back panel (plain or pegboard) and shelf deck showing
LOOK_DARK = "dark"  # a dark, shadowed hole
LOOK_PUSHED = "pushed"  # the row is pushed back: products visible but deep and dark
LOOK_PEG = "peg"  # a missing hanging pack: pegboard and an empty hook
GAP_LOOKS = (LOOK_BACK, LOOK_DARK, LOOK_PUSHED, LOOK_PEG)

_STACK_P = 0.55  # share of box/bag SKUs stacked 2-3 items high
_PARTIAL_P = 0.7  # share of gaps in stacked facings that leave the bottom items in place
_RUN_P = 0.5  # share of gaps started in a stacked facing that span the SKU's run of facings (ESD's long flat boxes)
_RUN_PARTIAL_P = 0.85  # share of those that leave the bottom items in place (a sold-out top layer)
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
        return hsv(rng.random(), rng.uniform(0, 0.08), rng.uniform(0.7, 0.95))
    if u < 0.65:
        return hsv(rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.3), rng.uniform(0.45, 0.8))
    if u < 0.88:
        return hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.1, 0.3))
    return hsv(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.8))


def _edge_colour(rng: Rand) -> RGB:
    u = rng.random()
    if u < 0.5:
        return hsv(rng.random(), rng.uniform(0, 0.06), rng.uniform(0.75, 0.98))
    if u < 0.7:
        return hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.15, 0.45))
    return hsv(
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
        w0, w1, h0, h1 = SIZES[kind]
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
            item, im = SPRITES[kind](rng, w, lh)
            item[-1] = (item[-1] * 0.55).astype(np.uint8)  # the seam between stacked packs
            spr, m = np.concatenate([item] * layers, 0), np.concatenate([im] * layers, 0)
            skus.append(Sku(spr, m, bool(m.all()), layers, lh))
            h = layers * lh
        else:
            spr, m = SPRITES[kind](rng, w, h)
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
    wall = hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.6, 0.95))
    floor = hsv(rng.uniform(0, 0.15), rng.uniform(0, 0.2), rng.uniform(0.45, 0.85))
    top_y = int(height * rng.uniform(*top_range))
    floor_y = int(height * rng.uniform(*bottom_range))
    sign = None
    if top_y > pitch * 0.6 and rng.random() < 0.5:
        sw = int(width * rng.uniform(0.1, 0.4))
        sx = int(rng.integers(0, max(1, width - sw)))
        sh = int(max(4, top_y * rng.uniform(0.3, 0.7)))
        sign = (sx, max(0, top_y - sh - int(pitch * 0.2)), sw, sh, product_colour(rng))
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
            bay.fence_colour = hsv(0.6, 0.03, rng.uniform(0.55, 0.9))
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
            hc = hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.3)) if rng.random() < 0.4 else (
                product_colour(rng)
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
