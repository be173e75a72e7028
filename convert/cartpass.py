"""Generated aisle panoramas with known gaps and the cart-pass videos a camera sliding along them would record."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from convert.rand import Rand
from convert.shelf_paint import paint_shelves
from convert.shelf_plan import LOOK_BACK, LOOK_DARK, LOOK_PUSHED, ShelfPlan, add_gap, plan_shelves

ARUCO_DICT = cv2.aruco.DICT_4X4_50
MIN_VISIBLE = 0.3  # a gap is listed in a frame's truth when at least this fraction of its width is in view


@dataclass
class AisleGap:
    """One empty spot; `box` is (x0, y0, x1, y1) in aisle (panorama) pixels."""

    gap_id: int
    box: tuple[float, float, float, float]
    look: str = ""


@dataclass
class Aisle:
    """A shelf panorama (H x L x 3 RGB uint8), its open gaps and its ArUco markers as (id, centre x px).

    `gap_mask` (int16, gap_id where that gap is drawn) supports tests; `plan`/`seed` let restock() re-render."""

    image: np.ndarray
    gaps: list[AisleGap]
    markers: list[tuple[int, float]]
    marker_boxes: list[tuple[int, tuple[float, float, float, float]]] = field(default_factory=list)
    gap_mask: np.ndarray | None = None
    seed: int = 0
    plan: ShelfPlan | None = None
    all_gaps: list[AisleGap] = field(default_factory=list)  # including restocked ones
    filled: frozenset[int] = frozenset()
    marker_ids: tuple[int, int] = (1, 2)
    with_markers: bool = True

    @property
    def length_px(self) -> int:
        return int(self.image.shape[1])

    @property
    def height_px(self) -> int:
        return int(self.image.shape[0])


@dataclass
class FrameGap:
    gap_id: int
    box: tuple[float, float, float, float]  # frame pixels, clipped to the frame
    visible_fraction: float  # share of the gap's width inside the frame


@dataclass
class FrameMarker:
    marker_id: int
    cx: float
    cy: float


@dataclass
class FrameTruth:
    index: int
    x_offset: float  # aisle x (px) of the frame's left edge
    y_offset: float  # aisle y (px) of the frame's top edge (vertical jitter)
    gaps: list[FrameGap]
    markers: list[FrameMarker]


@dataclass
class CartPass:
    """A rendered pass: the video, its ground-truth JSON and the truth itself."""

    path: Path
    truth_path: Path
    frames: int
    fps: float
    frame_size: tuple[int, int]
    speed_px_per_frame: float
    scale: float  # frame pixels per aisle pixel
    gaps: list[AisleGap]
    markers: list[tuple[int, float]]
    truth: list[FrameTruth]


# ---------------------------------------------------------------------------------------------------------------
# aisle


def _marker_image(marker_id: int, side: int) -> np.ndarray:
    d = cv2.aruco.getPredefinedDictionary(ARUCO_DICT)
    return cv2.aruco.generateImageMarker(d, int(marker_id), int(side))


def _aisle_lighting(seed: int, length: int, height: int) -> np.ndarray:
    g = np.random.default_rng([seed, 7])
    n = max(2, length // 500 + 2)
    knots = g.uniform(0.82, 1.12, (2, n)).astype(np.float32)
    field_ = cv2.resize(knots, (length, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(field_, 0.6, 1.3)


def _place_gaps(plan: ShelfPlan, rng: Rand, n_gaps: int, lo: float, hi: float) -> None:
    if n_gaps <= 0:
        return
    slot = (hi - lo) / n_gaps
    for k in range(n_gaps):
        for _attempt in range(30):
            x = lo + slot * (k + rng.uniform(0.15, 0.85))
            bays = [i for i, b in enumerate(plan.bays) if b.x0 + 30 < x < b.x1 - 30 and b.rows]
            if not bays:
                continue
            bi = bays[0]
            rows = plan.bays[bi].rows
            ri = rng.integers(len(rows))
            facings = rows[ri].facings
            if len(facings) < 3:
                continue
            first = min(range(len(facings)), key=lambda i: abs(facings[i].x - x))
            count = 2 if rng.random() < 0.35 else 1
            count = min(count, len(facings) - first)
            u = rng.random()
            look = LOOK_DARK if u < 0.45 else LOOK_BACK if u < 0.9 else LOOK_PUSHED
            g = add_gap(plan, rng, bi, ri, first, count, look, keep=0)
            if g is None:
                continue
            w = g.box[2] - g.box[0]
            if 40 <= w <= 150 and lo <= g.box[0] and g.box[2] <= hi:
                break
            plan.gaps.pop()


def _render_aisle(aisle: Aisle) -> None:
    """(Re)paint aisle.image, gap_mask and the open gap list from its plan, filled set and markers."""
    plan = aisle.plan
    if plan is None:
        raise ValueError("this aisle has no plan to render from")
    filled_idx = frozenset(g.gap_id - 1 for g in aisle.all_gaps if g.gap_id in aisle.filled)
    img, gmask, _ = paint_shelves(plan, filled=filled_idx, debug=True)
    if gmask is None:
        raise RuntimeError("paint_shelves returned no gap mask")
    aisle.marker_boxes = []
    if aisle.with_markers:
        for mid, mx in aisle.markers:
            box = _paint_marker(img, plan, mid, mx)
            aisle.marker_boxes.append((mid, box))
    light = _aisle_lighting(aisle.seed, plan.width, plan.height)
    img = cv2.multiply(img, cv2.merge([light, light, light]), dtype=cv2.CV_8U)
    aisle.image = img
    aisle.gap_mask = gmask
    aisle.gaps = [g for g in aisle.all_gaps if g.gap_id not in aisle.filled]


def _paint_marker(img: np.ndarray, plan: ShelfPlan, mid: int, mx: float) -> tuple[float, float, float, float]:
    """A white shelf-edge label carrying an ArUco marker, hanging from the edge of a middle row."""
    bay = next((b for b in plan.bays if b.x0 <= mx < b.x1 and b.rows), None)
    if bay is None:
        bay = min((b for b in plan.bays if b.rows), key=lambda b: abs((b.x0 + b.x1) / 2 - mx))
    row = bay.rows[min(len(bay.rows) - 1, max(0, len(bay.rows) // 2 - 1))]
    side = int(max(48, min(96, plan.pitch * 0.62)))
    quiet = max(6, side // 6)
    lab = side + 2 * quiet
    x0 = int(round(mx - lab / 2))
    y0 = row.bottom
    cv2.rectangle(img, (x0, y0), (x0 + lab - 1, y0 + lab - 1), (250, 250, 248), -1)
    cv2.rectangle(img, (x0, y0), (x0 + lab - 1, y0 + lab - 1), (90, 90, 90), 1)
    m = _marker_image(mid, side)
    img[y0 + quiet : y0 + quiet + side, x0 + quiet : x0 + quiet + side] = m[:, :, None]
    return (float(x0 + quiet), float(y0 + quiet), float(x0 + quiet + side), float(y0 + quiet + side))


def make_aisle(
    rng: np.random.Generator,
    length_px: int = 4000,
    height_px: int = 480,
    n_gaps: int = 6,
    markers: bool = True,
    marker_ids: tuple[int, int] = (1, 2),
) -> Aisle:
    """A shelf panorama with n_gaps gaps (40-150 px wide at 480 px height) spread along it, away from the ends.

    With markers, an ArUco (DICT_4X4_50) label hangs from a shelf edge near each end: marker_ids[0] near x=0,
    marker_ids[1] near the far end."""
    if height_px < 120:
        raise ValueError(f"height_px must be >= 120, got {height_px}")
    if length_px < 2 * height_px:
        raise ValueError(f"length_px must be at least twice height_px, got {length_px}")
    if n_gaps < 0:
        raise ValueError("n_gaps must be >= 0")
    seed = int(rng.integers(1 << 62))
    r = Rand(np.random.default_rng(seed))
    s = height_px / 480.0
    plan = plan_shelves(
        r,
        length_px,
        height_px,
        pitch_range=(96.0 * s, 118.0 * s),
        bay_width_range=(380.0 / length_px * s, 900.0 / length_px * s),
        top_range=(0.0, 0.05),
        bottom_range=(0.95, 1.02),
        pegboard_p=0.0,
        talker_p=0.0,
    )
    end_margin = 170.0 * s
    marker_list = (
        [(int(marker_ids[0]), 90.0 * s), (int(marker_ids[1]), length_px - 90.0 * s)] if markers else []
    )
    _place_gaps(plan, r, n_gaps, end_margin + 40 * s, length_px - end_margin - 40 * s)
    all_gaps = [AisleGap(i + 1, g.box, g.look) for i, g in enumerate(plan.gaps)]
    aisle = Aisle(
        image=np.zeros((height_px, length_px, 3), np.uint8),
        gaps=[],
        markers=marker_list,
        seed=seed,
        plan=plan,
        all_gaps=all_gaps,
        marker_ids=(int(marker_ids[0]), int(marker_ids[1])),
        with_markers=markers,
    )
    _render_aisle(aisle)
    return aisle


def restock(aisle: Aisle, gap_ids: Iterable[int], rng: np.random.Generator | None = None) -> Aisle:
    """The same aisle with the given gaps filled with the products that belong there (everything else identical).

    `rng` is accepted for interface symmetry; restocking is deterministic."""
    ids = frozenset(int(i) for i in gap_ids)
    unknown = ids - {g.gap_id for g in aisle.all_gaps}
    if unknown:
        raise ValueError(f"unknown gap ids: {sorted(unknown)}")
    out = Aisle(
        image=aisle.image,
        gaps=[],
        markers=list(aisle.markers),
        seed=aisle.seed,
        plan=aisle.plan,
        all_gaps=list(aisle.all_gaps),
        filled=aisle.filled | ids,
        marker_ids=aisle.marker_ids,
        with_markers=aisle.with_markers,
    )
    _render_aisle(out)
    return out


def aisle_length_for(
    seconds: float,
    fps: float,
    speed_px_per_frame: float,
    frame_size: tuple[int, int] = (640, 480),
    height_px: int = 480,
) -> int:
    """Aisle length (px) for a pass of about `seconds` at this fps and speed."""
    view_w = frame_size[0] * height_px / frame_size[1]
    return int(math.ceil(seconds * fps * speed_px_per_frame + view_w))


# ---------------------------------------------------------------------------------------------------------------
# passes


def _geometry(
    aisle: Aisle, speed: float, frame_size: tuple[int, int], seed: int
) -> tuple[float, list[tuple[float, float]]]:
    fw, fh = frame_size
    if fw < 16 or fh < 16:
        raise ValueError(f"frame too small: {frame_size}")
    if speed <= 0:
        raise ValueError("speed_px_per_frame must be positive")
    scale = fh / aisle.height_px
    view_w = fw / scale
    if view_w > aisle.length_px:
        raise ValueError("the aisle is shorter than one frame")
    n = int(math.floor((aisle.length_px - view_w) / speed)) + 1
    g = np.random.default_rng([seed, 11])
    phase = g.uniform(0, 2 * np.pi)
    walk = np.cumsum(g.normal(0, 0.25, n))
    walk -= np.linspace(0, walk[-1], n)  # stays bounded
    ys = np.clip(0.8 * np.sin(phase + np.arange(n) * 0.35) + 0.5 * walk, -2.0, 2.0)
    return scale, [(k * speed, float(ys[k])) for k in range(n)]


def frame_gaps(
    gaps: Sequence[AisleGap], x: float, y: float, scale: float, frame_size: tuple[int, int]
) -> list[FrameGap]:
    """The gaps a frame whose top-left corner is at aisle (x, y) shows, clipped to it, in frame pixels: those with
    at least MIN_VISIBLE of their width in view."""
    fw, fh = frame_size
    out: list[FrameGap] = []
    for g in gaps:
        x0, y0, x1, y1 = (
            (g.box[0] - x) * scale,
            (g.box[1] - y) * scale,
            (g.box[2] - x) * scale,
            (g.box[3] - y) * scale,
        )
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(fw), x1), min(float(fh), y1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        frac = (cx1 - cx0) / max(1e-6, x1 - x0)
        if frac >= MIN_VISIBLE:
            out.append(FrameGap(g.gap_id, (cx0, cy0, cx1, cy1), frac))
    return out


def _frame_truth(
    aisle: Aisle, k: int, x: float, y: float, scale: float, frame_size: tuple[int, int]
) -> FrameTruth:
    fw, fh = frame_size
    gaps = [  # rounded as the truth JSON stores them
        FrameGap(g.gap_id, (round(g.box[0], 2), round(g.box[1], 2), round(g.box[2], 2), round(g.box[3], 2)),
                 round(g.visible_fraction, 3))
        for g in frame_gaps(aisle.gaps, x, y, scale, frame_size)
    ]
    markers: list[FrameMarker] = []
    for mid, (mx0, my0, mx1, my1) in aisle.marker_boxes:
        if (mx0 - x) * scale >= 0 and (mx1 - x) * scale <= fw:
            markers.append(
                FrameMarker(
                    mid, round(((mx0 + mx1) / 2 - x) * scale, 2), round(((my0 + my1) / 2 - y) * scale, 2)
                )
            )
    return FrameTruth(k, round(x, 4), round(y, 4), gaps, markers)


def iter_video_rgb(path: Path | str) -> Iterator[np.ndarray]:
    """Every frame of a video file as RGB, decoded straight through OpenCV (the reference a replay is compared
    with). Raises OSError when the file cannot be opened."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open {path}")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def iter_cart_pass(
    aisle: Aisle,
    fps: float = 15.0,
    speed_px_per_frame: float = 12.0,
    frame_size: tuple[int, int] = (640, 480),
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """RGB frames (frame_size = (w, h)) of a camera facing the shelf, sliding from the aisle's start to its end.

    Frame k looks at aisle x = k * speed_px_per_frame (sub-pixel), with a slight vertical jitter, a little motion
    blur along the travel and sensor noise. `fps` only matters for the video's timing, not the pixels."""
    if fps <= 0:
        raise ValueError("fps must be positive")
    scale, geo = _geometry(aisle, speed_px_per_frame, frame_size, seed)
    fw, fh = frame_size
    g = np.random.default_rng([seed, 13])
    blur = max(1, int(round(speed_px_per_frame * scale * 0.25)))
    for x, y in geo:
        M = np.array([[scale, 0.0, -scale * x], [0.0, scale, -scale * y]], np.float64)
        fr = cv2.warpAffine(aisle.image, M, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if blur > 1:
            fr = cv2.blur(fr, (blur, 1))
        noise = g.standard_normal((fh, fw), dtype=np.float32) * np.float32(g.uniform(1.5, 3.5))
        fr = cv2.add(fr.astype(np.float32), cv2.merge([noise, noise, noise]))
        fr = np.clip(fr, 0, 255).astype(np.uint8)
        yield fr


def render_cart_pass(
    aisle: Aisle,
    out_path: Path,
    fps: float = 15.0,
    speed_px_per_frame: float = 12.0,
    frame_size: tuple[int, int] = (640, 480),
    seed: int = 0,
) -> CartPass:
    """Write the pass as an .mp4 (mp4v) and its ground truth as out_path.with_suffix('.json')."""
    out_path = Path(out_path)
    scale, geo = _geometry(aisle, speed_px_per_frame, frame_size, seed)
    truth = [_frame_truth(aisle, k, x, y, scale, frame_size) for k, (x, y) in enumerate(geo)]
    vw = cv2.VideoWriter(str(out_path), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), tuple(frame_size))
    if not vw.isOpened():
        raise OSError(f"cannot open a video writer for {out_path}")
    n = 0
    try:
        for fr in iter_cart_pass(aisle, fps, speed_px_per_frame, frame_size, seed):
            vw.write(cv2.cvtColor(fr, cv2.COLOR_RGB2BGR))
            n += 1
    finally:
        vw.release()
    cp = CartPass(
        out_path,
        out_path.with_suffix(".json"),
        n,
        float(fps),
        (int(frame_size[0]), int(frame_size[1])),
        float(speed_px_per_frame),
        float(scale),
        list(aisle.gaps),
        list(aisle.markers),
        truth,
    )
    cp.truth_path.write_text(json.dumps(_to_json(cp, aisle), indent=None, separators=(",", ":")))
    return cp


def _to_json(cp: CartPass, aisle: Aisle) -> dict[str, object]:
    return {
        "schema": "shelfscout.cartpass/1",
        "video": cp.path.name,
        "fps": cp.fps,
        "frames": cp.frames,
        "frame_size": list(cp.frame_size),
        "speed_px_per_frame": cp.speed_px_per_frame,
        "scale": cp.scale,
        "aisle": {"length_px": aisle.length_px, "height_px": aisle.height_px, "seed": aisle.seed},
        "markers": [{"id": m, "x": x} for m, x in cp.markers],
        "gaps": [{"id": g.gap_id, "box": list(g.box), "look": g.look} for g in cp.gaps],
        "truth": [
            {
                "index": t.index,
                "x_offset": t.x_offset,
                "y_offset": t.y_offset,
                "gaps": [
                    {"id": fg.gap_id, "box": list(fg.box), "visible": fg.visible_fraction} for fg in t.gaps
                ],
                "markers": [{"id": m.marker_id, "cx": m.cx, "cy": m.cy} for m in t.markers],
            }
            for t in cp.truth
        ],
    }


def load_cart_pass(truth_path: Path) -> CartPass:
    """Read a pass's ground-truth JSON back (the video sits next to it)."""
    truth_path = Path(truth_path)
    d = json.loads(truth_path.read_text())
    if d.get("schema") != "shelfscout.cartpass/1":
        raise ValueError(f"{truth_path} is not a cart-pass truth file")
    gaps = [AisleGap(int(g["id"]), tuple(g["box"]), g.get("look", "")) for g in d["gaps"]]  # type: ignore[arg-type]
    truth = [
        FrameTruth(
            int(t["index"]),
            float(t["x_offset"]),
            float(t["y_offset"]),
            [FrameGap(int(g["id"]), tuple(g["box"]), float(g["visible"])) for g in t["gaps"]],  # type: ignore[arg-type]
            [FrameMarker(int(m["id"]), float(m["cx"]), float(m["cy"])) for m in t["markers"]],
        )
        for t in d["truth"]
    ]
    return CartPass(
        truth_path.with_name(d["video"]),
        truth_path,
        int(d["frames"]),
        float(d["fps"]),
        (int(d["frame_size"][0]), int(d["frame_size"][1])),
        float(d["speed_px_per_frame"]),
        float(d["scale"]),
        gaps,
        [(int(m["id"]), float(m["x"])) for m in d["markers"]],
        truth,
    )
