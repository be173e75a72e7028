"""Draws the README's model figures: what the model sees on a generated shelf, and its PR curves by data set.

- `model-view.jpg`: the model's gap heatmap over a generated 640x480 shelf (never trained on), and the decoded gaps
  against the generator's labels (green hit, amber missed, red false alarm), on the shelf of median recall of 15.
- `gap-dressing.jpg`: the same generated gaps plain (top) and dressed (bottom; `convert.shelf_plan.dress_gaps`),
  the way they differ from real ones on the realism report's per-gap rows.
- `pr-curves.png`: precision/recall of the bundle on generated validation shelves and on the real ESD `dev/`
  photos, and, with `--finetuned`, of a fine-tuned bundle on the held-out share of its folder (the split
  `shelfscout finetune` used). Only curves are drawn from ESD: its photos are not redistributable, so none is
  written.
- `score-by-place.png`: for the generated shelves and the real photos, the bundle's detections binned by their
  height in the frame, each bin's mean score against the share that are labelled gaps (`convert.calibration`).

Usage: .venv/bin/python bench/figures.py [--model BUNDLE] [--out docs/img] [--esd DIR] [--finetuned BUNDLE]
       [--only model-view|gap-dressing|pr-curves|score-by-place ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
ESD_DEV = REPO.parent / "shared" / "data" / "esd" / "dev"
VIEW_SEED = 20261129
VIEW_SHELVES = 15  # generated shelves model-view.jpg picks the one of median recall from
FIGURES = ("model-view", "gap-dressing", "pr-curves", "score-by-place")


@dataclass(frozen=True)
class View:
    """One generated shelf as the model sees it: the frame, the heatmap, the decoded gaps matched to the labels."""

    seed: int
    image: np.ndarray  # RGB
    heat: np.ndarray  # the model's gap heatmap, 0..1, at its output's size
    match: Any  # convert.evaluate.ImageMatch at the bundle's threshold
    labels: np.ndarray  # (M, 4) the generator's gap boxes

    @property
    def recall(self) -> float:
        return float(self.match.gt_hit.mean()) if len(self.match.gt_hit) else 1.0


def look(detector: Any, seed: int) -> View:
    """The model's view of the generated 640x480 shelf of `seed`."""
    from convert.evaluate import ImageDetections, match_images
    from convert.synth import make_shelf_image

    sample = make_shelf_image(np.random.default_rng(seed), width=640, height=480)
    gaps = detector.detect(sample.image)
    dets = ImageDetections(np.array([g.box for g in gaps], np.float32).reshape(-1, 4),
                           np.array([g.score for g in gaps], np.float32))
    match = match_images([dets], [sample.boxes], detector.score_threshold)[0]
    return View(seed, sample.image, detector.outputs()["heatmap"][0, :, :, 0].copy(), match, sample.boxes)


def median_view(detector: Any, seeds: range) -> tuple[View, list[float]]:
    """Of the shelves of `seeds`, the one whose recall is nearest their median (a typical shelf, not the best or
    the worst), and all their recalls."""
    views = [look(detector, seed) for seed in seeds]
    recalls = [v.recall for v in views]
    median = float(np.median(recalls))
    return min(views, key=lambda v: (abs(v.recall - median), v.seed)), recalls


def model_view(bundle: Any, seeds: range = range(VIEW_SEED, VIEW_SEED + VIEW_SHELVES)) -> np.ndarray:
    """Two panels side by side (RGB), for a shelf of typical recall among `seeds`: the model's heatmap over the
    frame, and the decoded gaps against the labels with their scores. (Three panels, the plain frame first, were
    253 px each at the README's 760: the scores could not be read.)"""
    from convert.report import Example, annotate
    from edge.detector import Detector

    view, recalls = median_view(Detector(bundle, threads=2), seeds)
    h, w = view.image.shape[:2]
    heat_big = cv2.resize(view.heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat_big * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    overlay = cv2.addWeighted(view.image, 0.45, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), 0.55, 0.0)
    boxes = annotate(Example("view", view.image, view.labels, view.match), max_side=max(w, h))
    m = view.match
    hit, missed, false = int(m.det_tp.sum()), int((~m.gt_hit).sum()), int((~m.det_tp).sum())
    titles = ("gap heatmap (model output) over a generated shelf",
              f"{hit} hit, {missed} missed, {false} false (median recall of {len(recalls)}: {np.median(recalls):.2f})")
    panels = []
    for img, title in zip((overlay, boxes), titles, strict=True):
        p = np.full((h + 40, w, 3), 255, np.uint8)
        p[40:] = img
        cv2.putText(p, title, (6, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * min(1.0, (w - 12) / _text_width(title, 0.7)),
                    (0, 0, 0), 2, cv2.LINE_AA)
        panels.append(p)
    gutter = np.full((h + 40, 12, 3), 255, np.uint8)
    return np.hstack([panels[0], gutter, panels[1]])


def _text_width(text: str, font: float) -> int:
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 2)[0][0]


def gap_dressing(seed: int = VIEW_SEED, n: int = 8, tile: int = 150) -> np.ndarray:
    """Crops around n generated gaps, painted plain (top row) and dressed (bottom row), RGB."""
    import copy

    from convert.shelf_paint import paint_shelves
    from convert.shelf_plan import add_random_gaps, dress_gaps, plan_shelves

    rng = np.random.default_rng(seed)
    plan = plan_shelves(rng, 1400, 700, pitch_range=(70.0, 90.0), top_range=(0.05, 0.1))
    add_random_gaps(plan, rng, 3 * n, (0, 0, 1400, 700))
    dressed = copy.deepcopy(plan)
    dress_gaps(dressed, np.random.default_rng(seed + 1), 1.0)
    rows = []
    for p in (plan, dressed):
        img = paint_shelves(p)[0]
        tiles = []
        for g in p.gaps[:n]:
            x0, y0, x1, y1 = g.box
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.8 + 10
            a, b = int(max(0, cx - r)), int(min(img.shape[1], cx + r))
            c, d = int(max(0, cy - r)), int(min(img.shape[0], cy + r))
            t = np.ascontiguousarray(img[c:d, a:b])
            cv2.rectangle(t, (int(x0) - a, int(y0) - c), (int(x1) - a - 1, int(y1) - c - 1), (255, 0, 255), 1)
            tiles.append(cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA))
        rows.append(np.hstack(tiles))
    head = np.full((24, rows[0].shape[1], 3), 255, np.uint8)
    mid = head.copy()
    cv2.putText(head, "plain generated gaps", (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(mid, "the same gaps dressed: uneven light, back panel, left-overs, neighbours' sides, lighter holes",
                (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([head, rows[0], mid, rows[1]])


def pr_series(bundle: Any, esd: Path | None, finetuned: Any | None, split_seed: int, val_share: float,
              measured: list[tuple[str, list[Any], list[Any]]] | None = None) -> list[tuple[str, Any, float]]:
    """(label, PR curve, threshold) for each data set that is there; `measured`, when given, collects the
    bundle's (data set name, items, detections) for the generated shelves and the real photos."""
    from convert.build_default import DEFAULT_SEED, split_items, synth_folder
    from convert.dataset import load_yolo_folder
    from convert.evaluate import detect_with_bundle, evaluate

    def curve(b: Any, items: list[Any], name: str, dets: list[Any] | None = None) -> tuple[str, Any, float]:
        thr = b.manifest.thresholds.score
        dets = dets if dets is not None else detect_with_bundle(b, [it.image for it in items])
        r = evaluate(dets, [it.boxes for it in items], thr)
        label = f"{b.manifest.name} v{b.manifest.version}, {name}: AP50 {r.ap50:.2f}"
        print(label, f"(P {r.precision:.2f} R {r.recall:.2f} at {thr:.2f})")
        return label, r.pr_curve, thr

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        synth = load_yolo_folder(synth_folder(Path(tmp) / "val", 300, DEFAULT_SEED + 1, 2, False))
        synth_dets = detect_with_bundle(bundle, [it.image for it in synth])
        out.append(curve(bundle, synth, "generated shelves", synth_dets))
        if measured is not None:
            measured.append(("generated shelves", synth, synth_dets))
    if esd is not None:
        items = load_yolo_folder(esd)
        dets = detect_with_bundle(bundle, [it.image for it in items])
        out.append(curve(bundle, items, f"real photos ({esd.parent.name} {esd.name})", dets))
        if measured is not None:
            measured.append((f"real photos ({esd.parent.name} {esd.name})", items, dets))
        if finetuned is not None:
            # the held-out share `shelfscout finetune` measured on: the same split of the same (items, detections)
            _, held = split_items(list(zip(items, dets, strict=True)), val_share, split_seed)
            held_items = [it for it, _ in held]
            out.append(curve(bundle, held_items, f"held-out {val_share:.0%} of them", [d for _, d in held]))
            out.append(curve(finetuned, held_items, f"held-out {val_share:.0%}, fine-tuned on the rest"))
    return out


def place_charts(bundle: Any, measured: list[tuple[str, list[Any], list[Any]]], width: int = 560) -> np.ndarray:
    """The bundle's score chart by place in the frame (`convert.calibration`), one per data set, stacked."""
    from convert.calibration import MIN_SCORE, score_bins
    from convert.report import draw_score_bins

    rows = []
    for name, items, dets in measured:
        by_place = score_bins(dets, [it.boxes for it in items], [it.image.shape[0] for it in items],
                              bundle.manifest.input.height)[1]
        band = np.full((30, width, 3), 255, np.uint8)
        cv2.putText(band, f"{name}: detections >= {MIN_SCORE:g} by height in the frame (top 0, bottom 1)", (6, 21),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [band, draw_score_bins(by_place, width=width, height=190)]
    return np.vstack(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", type=Path, default=None, help="bundle (default: the built-in default bundle)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="where the PNGs go (default docs/img)")
    ap.add_argument("--esd", type=Path, default=ESD_DEV if ESD_DEV.exists() else None, help="real YOLO folder")
    ap.add_argument("--finetuned", type=Path, default=None, help="a bundle fine-tuned on 70%% of --esd")
    ap.add_argument("--keys", type=Path, action="append", default=[], help="extra trusted key folder")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-share", type=float, default=0.3)
    ap.add_argument("--only", action="append", choices=FIGURES, default=[],
                    help="draw only this figure (repeatable; default all): pr-curves.png with --finetuned needs "
                         "that bundle, so redraw the others without it")
    args = ap.parse_args(argv)

    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle

    keys = load_public_keys([BUILTIN_KEYS, *args.keys])
    bundle = read_bundle(args.model or DEFAULT_BUNDLE, keys)
    finetuned = read_bundle(args.finetuned, keys) if args.finetuned else None
    if finetuned is not None and args.esd is None:
        print("figures: error: --finetuned needs --esd (the folder it was fine-tuned on)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or FIGURES)
    wrote = []
    if "model-view" in only:
        cv2.imwrite(str(args.out / "model-view.jpg"), cv2.cvtColor(model_view(bundle), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
        wrote.append("model-view.jpg")
    if "gap-dressing" in only:
        cv2.imwrite(str(args.out / "gap-dressing.jpg"), cv2.cvtColor(gap_dressing(), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
        wrote.append("gap-dressing.jpg")
    if only & {"pr-curves", "score-by-place"}:
        from convert.report import draw_pr_curves

        measured: list[tuple[str, list[Any], list[Any]]] = []
        series = pr_series(bundle, args.esd, finetuned, args.split_seed, args.val_share, measured)
        if "pr-curves" in only:
            pr = draw_pr_curves(series, size=560)
            cv2.imwrite(str(args.out / "pr-curves.png"), cv2.cvtColor(pr, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
            wrote.append("pr-curves.png")
        if "score-by-place" in only:
            cv2.imwrite(str(args.out / "score-by-place.png"), cv2.cvtColor(place_charts(bundle, measured),
                                                                           cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])
            wrote.append("score-by-place.png")
    print(f"wrote {', '.join(wrote)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
