"""Measures how close generated shelf images come to a real labelled YOLO folder on simple image and box statistics."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from convert.synth import make_shelf_image, sample_rng
from edge.yolo import read_yolo_labels

DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "esd" / "dev"


@dataclass
class ImageStats:
    """Per-image measurements (all at the image's own resolution)."""

    n_boxes: int
    box_w: list[float]
    box_h: list[float]
    box_cy: list[float]  # normalised centre y
    gap_luma: float | None  # mean luma inside boxes
    rest_luma: float  # mean luma outside boxes
    gap_sat: float | None
    rest_sat: float
    gap_edges: float | None  # Canny edge density inside boxes
    rest_edges: float
    luma_hist: np.ndarray  # 32-bin histogram of all pixels' luma (normalised)
    gap_luma_hist: np.ndarray  # 32-bin luma histogram of gap pixels (unnormalised counts)
    # per gap, on the image squashed to 416 x 416 (so camera resolution does not count)
    gap_side_ratio: list[float] = field(default_factory=list)  # gap luma / luma of the strips left and right of it
    gap_inner_std: list[float] = field(default_factory=list)  # luma spread over the middle 60 % of the gap


@dataclass
class Row:
    metric: str
    real: float
    synth: float
    distance: float  # metric-specific: relative difference, or a distribution distance (W1 / 1 - overlap)
    note: str = ""


@dataclass
class RealismReport:
    n_real: int
    n_synth: int
    rows: list[Row] = field(default_factory=list)

    def table(self) -> str:
        w = max(len(r.metric) for r in self.rows)
        lines = [f"{'metric':<{w}}  {'real':>9}  {'synth':>9}  {'dist':>7}  note", "-" * (w + 44)]
        for r in self.rows:
            lines.append(f"{r.metric:<{w}}  {r.real:9.3f}  {r.synth:9.3f}  {r.distance:7.3f}  {r.note}")
        lines.append(f"(real images: {self.n_real}, synthetic: {self.n_synth})")
        return "\n".join(lines)


def image_stats(image_rgb: np.ndarray, boxes: np.ndarray) -> ImageStats:
    h, w = image_rgb.shape[:2]
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)
    luma = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(luma, 80, 160) > 0
    m = np.zeros((h, w), bool)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    for x0, y0, x1, y1 in b:
        m[max(0, int(y0)) : max(0, int(np.ceil(y1))), max(0, int(x0)) : max(0, int(np.ceil(x1)))] = True
    has = bool(m.any())
    rest = ~m
    bins = np.linspace(0, 256, 33)
    lh = np.histogram(luma, bins)[0].astype(np.float64)
    ratio, inner = _per_gap(luma, b)
    return ImageStats(
        n_boxes=len(b),
        box_w=list((b[:, 2] - b[:, 0]) * 416.0 / w),
        box_h=list((b[:, 3] - b[:, 1]) * 416.0 / h),
        box_cy=list((b[:, 1] + b[:, 3]) / 2 / h),
        gap_luma=float(luma[m].mean()) if has else None,
        rest_luma=float(luma[rest].mean()),
        gap_sat=float(hsv[..., 1][m].mean()) if has else None,
        rest_sat=float(hsv[..., 1][rest].mean()),
        gap_edges=float(edges[m].mean()) if has else None,
        rest_edges=float(edges[rest].mean()),
        luma_hist=lh / lh.sum(),
        gap_luma_hist=np.histogram(luma[m], bins)[0].astype(np.float64),
        gap_side_ratio=ratio,
        gap_inner_std=inner,
    )


def _per_gap(luma: np.ndarray, boxes: np.ndarray, side: int = 416) -> tuple[list[float], list[float]]:
    """Each gap's luma against its left and right neighbours (strips as wide as the gap is high), and how varied
    its inside is: the two looks the model keys on (a plain gap much darker than the products beside it)."""
    h, w = luma.shape
    small = cv2.resize(luma, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    ratio: list[float] = []
    inner: list[float] = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4) * [side / w, side / h, side / w, side / h]:
        a, b = int(max(0.0, x0)), int(min(side, np.ceil(x1)))
        c, d = int(max(0.0, y0)), int(min(side, np.ceil(y1)))
        if b - a < 3 or d - c < 3:
            continue
        gap = small[c:d, a:b]
        sw = max(3, d - c)
        sides = np.concatenate([small[c:d, max(0, a - sw) : a].ravel(), small[c:d, b : min(side, b + sw)].ravel()])
        if sides.size >= 4:
            ratio.append(float(gap.mean() / max(float(sides.mean()), 1.0)))
        iw, ih = (b - a) // 5, (d - c) // 5
        inner.append(float(gap[ih : d - c - ih, iw : b - a - iw].std()))
    return ratio, inner


def _w1(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """1-D Wasserstein distance between two samples (via quantiles)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    q = np.linspace(0.005, 0.995, 199)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def _overlap_distance(h1: np.ndarray, h2: np.ndarray) -> float:
    """1 - histogram intersection of two histograms (0 = identical shapes, 1 = disjoint)."""
    p, q = h1 / max(h1.sum(), 1e-9), h2 / max(h2.sum(), 1e-9)
    return float(1.0 - np.minimum(p, q).sum())


def _rel(a: float | np.floating, b: float | np.floating) -> float:
    fa, fb = float(a), float(b)
    return abs(fa - fb) / max(abs(fa), 1e-9)


def compare(real: Sequence[ImageStats], synth: Sequence[ImageStats]) -> RealismReport:
    rep = RealismReport(len(real), len(synth))

    def col(stats: Iterable[ImageStats], name: str) -> list[float]:
        out: list[float] = []
        for s in stats:
            v = getattr(s, name)
            if isinstance(v, list):
                out += [float(x) for x in v]
            elif v is not None:
                out.append(float(v))
        return out

    rc, sc = col(real, "n_boxes"), col(synth, "n_boxes")
    rep.rows.append(
        Row("boxes/image mean", float(np.mean(rc)), float(np.mean(sc)), _rel(np.mean(rc), np.mean(sc)))
    )
    rep.rows.append(
        Row("boxes/image W1", float(np.median(rc)), float(np.median(sc)), _w1(rc, sc), "value: median")
    )
    rep.rows.append(
        Row(
            "images with 0 boxes %",
            100 * float(np.mean(np.equal(rc, 0))),
            100 * float(np.mean(np.equal(sc, 0))),
            0.0,
        )
    )
    for name, label in (("box_w", "box width px"), ("box_h", "box height px")):
        a, b = col(real, name), col(synth, name)
        rep.rows.append(
            Row(f"{label} median", float(np.median(a)), float(np.median(b)), _rel(np.median(a), np.median(b)))
        )
        rep.rows.append(
            Row(
                f"{label} log W1",
                float(np.median(np.log(a))),
                float(np.median(np.log(b))),
                _w1(np.log(a), np.log(b)),
                "value: median log",
            )
        )
    ra = np.log(np.divide(col(real, "box_w"), col(real, "box_h")))
    sa = np.log(np.divide(col(synth, "box_w"), col(synth, "box_h")))
    rep.rows.append(
        Row(
            "box aspect log(w/h) W1", float(np.median(ra)), float(np.median(sa)), _w1(ra, sa), "value: median"
        )
    )
    rarea = np.multiply(col(real, "box_w"), col(real, "box_h")) / 416.0**2 * 100
    sarea = np.multiply(col(synth, "box_w"), col(synth, "box_h")) / 416.0**2 * 100
    rep.rows.append(
        Row(
            "box area % median",
            float(np.median(rarea)),
            float(np.median(sarea)),
            _rel(np.median(rarea), np.median(sarea)),
        )
    )
    rcy, scy = col(real, "box_cy"), col(synth, "box_cy")
    rep.rows.append(
        Row("box centre y W1", float(np.median(rcy)), float(np.median(scy)), _w1(rcy, scy), "value: median")
    )
    for name, label in (
        ("gap_luma", "gap luma mean"),
        ("rest_luma", "non-gap luma mean"),
        ("gap_sat", "gap saturation mean"),
        ("rest_sat", "non-gap saturation mean"),
        ("gap_edges", "gap edge density"),
        ("rest_edges", "non-gap edge density"),
    ):
        a, b = col(real, name), col(synth, name)
        rep.rows.append(Row(label, float(np.mean(a)), float(np.mean(b)), _w1(a, b), "dist: W1 over images"))
    rg = np.mean(col(real, "gap_luma")) / np.mean(col(real, "rest_luma"))
    sg = np.mean(col(synth, "gap_luma")) / np.mean(col(synth, "rest_luma"))
    rep.rows.append(Row("gap/non-gap luma ratio", float(rg), float(sg), _rel(rg, sg)))
    per_gap = {n: (col(real, n), col(synth, n)) for n in ("gap_side_ratio", "gap_inner_std")}
    for name, label in (("gap_side_ratio", "per gap: luma / sides"), ("gap_inner_std", "per gap: inner luma std")):
        a, b = per_gap[name]
        if a and b:
            rep.rows.append(Row(label, float(np.median(a)), float(np.median(b)), _w1(a, b), "value: median; W1"))
    ra_, sa_ = per_gap["gap_side_ratio"]
    if ra_ and sa_:
        rep.rows.append(Row("per gap: not darker than sides %", 100 * float(np.mean(np.greater(ra_, 0.8))),
                            100 * float(np.mean(np.greater(sa_, 0.8))), 0.0, "luma / sides > 0.8"))
    rh = np.sum([s.luma_hist for s in real], axis=0)
    sh = np.sum([s.luma_hist for s in synth], axis=0)
    rep.rows.append(Row("luma histogram (all px)", 0.0, 0.0, _overlap_distance(rh, sh), "dist: 1 - overlap"))
    rgh = np.sum([s.gap_luma_hist for s in real], axis=0)
    sgh = np.sum([s.gap_luma_hist for s in synth], axis=0)
    rep.rows.append(
        Row("luma histogram (gap px)", 0.0, 0.0, _overlap_distance(rgh, sgh), "dist: 1 - overlap")
    )
    return rep


def load_real(real_dir: Path, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    real_dir = Path(real_dir)
    paths = sorted((real_dir / "images").glob("*.jpg"))
    if not paths:
        raise ValueError(f"no images in {real_dir / 'images'}")
    if limit:
        paths = paths[:limit]
    out = []
    for p in paths:
        img = cv2.imread(str(p))
        if img is None:
            continue
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        lp = real_dir / "labels" / f"{p.stem}.txt"
        boxes = (
            read_yolo_labels(lp, img.shape[1], img.shape[0]) if lp.exists() else np.zeros((0, 4), np.float32)
        )
        out.append((img, boxes))
    return out


def measure_realism(
    real_dir: Path = DEFAULT_REAL,
    n_synth: int = 300,
    seed: int = 0,
    real_limit: int | None = None,
    dress_p: float | None = None,
) -> tuple[RealismReport, list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Compare n_synth generated images (seed; `dress_p`: share of dressed gaps, None = the generator's own) with
    the real folder; returns the report and both image sets."""
    real = load_real(real_dir, real_limit)
    synth = []
    for i in range(n_synth):
        s = make_shelf_image(sample_rng(seed, i), 416, 416, dress_p=dress_p)
        synth.append((s.image, s.boxes))
    rep = compare([image_stats(i, b) for i, b in real], [image_stats(i, b) for i, b in synth])
    return rep, real, synth


def montage(
    real: Sequence[tuple[np.ndarray, np.ndarray]],
    synth: Sequence[tuple[np.ndarray, np.ndarray]],
    n: int = 5,
    tile: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """RGB montage: top row synthetic, bottom row real, boxes drawn."""
    rng = np.random.default_rng(seed)

    def tiles(items: Sequence[tuple[np.ndarray, np.ndarray]], colour: tuple[int, int, int]) -> np.ndarray:
        idx = rng.choice(len(items), min(n, len(items)), replace=False)
        out = []
        for i in idx:
            img, boxes = items[int(i)]
            h, w = img.shape[:2]
            t = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
            for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
                p0 = (int(x0 * tile / w), int(y0 * tile / h))
                p1 = (int(x1 * tile / w), int(y1 * tile / h))
                cv2.rectangle(t, p0, p1, colour, 1)
            out.append(t)
        while len(out) < n:
            out.append(np.zeros((tile, tile, 3), np.uint8))
        return np.hstack(out)

    top = tiles(synth, (255, 0, 0))
    bottom = tiles(real, (255, 0, 0))
    sep = np.full((6, top.shape[1], 3), 255, np.uint8)
    grid = np.vstack([top, sep, bottom])
    cv2.putText(grid, "synthetic", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
    cv2.putText(grid, "real (ESD dev)", (6, tile + 6 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.realism", description=__doc__)
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real YOLO folder (images/ + labels/)")
    ap.add_argument("--n", type=int, default=300, help="synthetic images to generate (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=Path("build/realism.png"), help="montage PNG (default build/realism.png)"
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--dress", type=float, default=None, metavar="P",
                    help="share of generated gaps with a dressed inside (default: the generator's own)")
    args = ap.parse_args(argv)
    try:
        rep, real, synth = measure_realism(args.real, args.n, args.seed, dress_p=args.dress)
    except ValueError as e:
        print(f"realism: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps({"n_real": rep.n_real, "n_synth": rep.n_synth, "rows": [asdict(r) for r in rep.rows]})
        )
    else:
        print(rep.table())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(montage(real, synth, seed=args.seed), cv2.COLOR_RGB2BGR))
    if not args.json:
        print(f"montage: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
