"""Paints a shelf plan into an RGB canvas, any of its gaps restocked, with optional gap and product masks."""

from __future__ import annotations

import cv2
import numpy as np

from convert.rand import Rand
from convert.shelf_plan import (
    LOOK_BACK,
    LOOK_DARK,
    LOOK_PEG,
    LOOK_PUSHED,
    Distractor,
    PlannedGap,
    Row,
    ShelfPlan,
)
from convert.sprites import RGB, contrast, hsv, photo_patch, product_colour, scale_colour, text_marks


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
                dot = scale_colour(bay.back, 0.45)
                pp = bay.peg_pitch
                img[ytop + pp // 2 : ybot : pp, bx0 + pp // 2 : bx1 : pp] = dot
        # kick plate below the bottom row
        kb = bay.rows[-1].bottom + bay.rows[-1].edge_h
        if kb < plan.floor_y:
            img[max(0, kb) : min(H, plan.floor_y), bx0:bx1] = scale_colour(bay.rows[-1].edge_colour, 0.8)
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
        cv2.line(img, (bay.x0 - 1, ytop), (bay.x0 - 1, ybot), scale_colour(plan.upright, 0.6), 1)
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
        cv2.rectangle(img, (tx, ty), (tx + tw - 1, ty + th - 1), scale_colour(tc, 0.6), 1)
        if th > 8:
            cv2.line(
                img, (tx + 2, ty + th // 2), (tx + tw - 3, ty + th // 2), scale_colour(tc, 0.3), max(1, th // 8)
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
    ink = contrast(colour, rng)
    for _ in range(rng.integers(1, 4)):  # words in big print
        tx = rng.integers(0, max(1, pw - 8))
        tw = min(pw - tx, int(pw * rng.uniform(0.1, 0.4)))
        ty = int(ph * rng.uniform(0.2, 0.5))
        text_marks(panel, rng, tx, ty, tx + tw, min(ph, ty + max(3, int(ph * rng.uniform(0.2, 0.5)))), ink)
    if rng.random() < 0.5 and ph > 6:
        cx, r = rng.integers(0, pw), max(2, int(ph * rng.uniform(0.2, 0.4)))
        cv2.circle(panel, (cx, ph // 2), r, product_colour(rng), -1)
    if rng.random() < 0.3:
        px = rng.integers(0, max(1, pw - 4))
        photo_patch(panel, rng, px, 1, px + int(pw * rng.uniform(0.1, 0.3)), ph - 1)
    cv2.line(panel, (0, ph - 1), (pw - 1, ph - 1), scale_colour(colour, 0.5), 1)
    img[y0:y1, x0:x1] = panel


def _paint_edge(img: np.ndarray, row: Row, bx0: int, bx1: int) -> None:
    H = img.shape[0]
    e0, e1 = row.bottom, row.bottom + row.edge_h
    if e1 <= 0 or e0 >= H:
        return
    cv2.rectangle(img, (bx0, e0), (bx1 - 1, e1 - 1), row.edge_colour, -1)
    cv2.line(img, (bx0, e0), (bx1 - 1, e0), scale_colour(row.edge_colour, 1.2), 1)
    cv2.line(img, (bx0, e1 - 1), (bx1 - 1, e1 - 1), scale_colour(row.edge_colour, 0.55), 1)
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
            deck = scale_colour(row.edge_colour, 0.75) if sum(row.edge_colour) > 300 else (150, 150, 150)
            cv2.rectangle(img, (x0, d0), (x1 - 1, y1 - 1), deck, -1)
            cv2.line(img, (x0, d0), (x1 - 1, d0), scale_colour(deck, 0.7), 1)
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
            col = np.array(product_colour(rng), np.float32) * rng.uniform(0.25, 0.6)
            reg[h - ih :, ix : ix + iw] = col
            reg[h - ih : h - ih + 1, ix : ix + iw] *= 1.4  # the lit top edge
    if rng.random() < 0.4:  # the side of a neighbour, seen at an angle
        sw = max(1, int(w * rng.uniform(0.05, 0.16)))
        col = np.array(product_colour(rng), np.float32) * rng.uniform(0.35, 0.7)
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


def _paint_distractor(img: np.ndarray, d: Distractor) -> None:
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(0, d.x), max(0, d.y), min(W, d.x + d.w), min(H, d.y + d.h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    rng = Rand(np.random.default_rng(d.seed))
    pw, ph = d.w, d.h
    panel = np.empty((ph, pw, 3), np.uint8)
    if d.kind == "box":  # plain cardboard or white stock boxes: a flat face, a darker side, tape and a little print
        base = hsv(rng.uniform(0.07, 0.11), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.8)) if rng.random() < 0.7 \
            else hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.75, 0.95))
        panel[:] = base
        side = int(pw * rng.uniform(0.0, 0.3))
        if side:
            panel[:, pw - side:] = scale_colour(base, rng.uniform(0.55, 0.8))
        if rng.random() < 0.5:
            ty = int(ph * rng.uniform(0.1, 0.3))
            panel[ty : ty + max(1, ph // 12)] = scale_colour(base, 1.15)
        text_marks(panel, rng, pw // 5, ph // 2, pw // 2, ph // 2 + max(3, ph // 6), scale_colour(base, 0.4))
    elif d.kind == "card":  # a big price card: a pale card, large dark figures, a coloured band
        base = (250, 250, 245) if rng.random() < 0.6 else hsv(rng.uniform(0.1, 0.17), 0.85, 0.98)
        panel[:] = base
        ink = (20, 20, 20) if rng.random() < 0.8 else (200, 20, 30)
        fx0, fy0 = int(pw * rng.uniform(0.1, 0.3)), int(ph * rng.uniform(0.3, 0.45))
        fx1, fy1 = int(pw * rng.uniform(0.7, 0.9)), int(ph * rng.uniform(0.75, 0.9))
        n = int(rng.integers(3, 5))
        for k in range(n):  # digits as thick strokes
            a = fx0 + (fx1 - fx0) * k // n
            b = fx0 + (fx1 - fx0) * (k + 1) // n - max(1, pw // 30)
            cv2.rectangle(panel, (a, fy0), (b, fy1), ink, max(1, ph // 10))
        text_marks(panel, rng, pw // 10, ph // 10, pw - pw // 10, max(ph // 10 + 3, fy0 - 2), (90, 90, 90))
        if rng.random() < 0.5:
            panel[ph - max(2, ph // 6):] = product_colour(rng)
    else:  # a poster: a photo on a dark or coloured ground, big words, sometimes a face
        dark = rng.random() < 0.6
        base = hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.05, 0.3)) if dark else product_colour(rng)
        panel[:] = base
        photo_patch(panel, rng, int(pw * rng.uniform(0.0, 0.5)), 0, pw, ph)
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
                        hsv(rng.uniform(0.02, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)), -1)
            cv2.ellipse(panel, (cx, cy), (int(r * 0.8), r), 0, 0, 360,
                        hsv(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.5), rng.uniform(0.6, 0.95)), -1)
        ink = contrast(base, rng)
        for _ in range(int(rng.integers(1, 4))):
            ty = int(rng.integers(0, max(1, ph - 4)))
            text_marks(panel, rng, int(pw * 0.05), ty, int(pw * rng.uniform(0.4, 0.95)), ty + max(3, ph // 6), ink)
    img[y0:y1, x0:x1] = panel[y0 - d.y : y1 - d.y, x0 - d.x : x1 - d.x]
