"""Draws the README's model figures: what the model sees on a generated shelf, and its PR curves by data set.

- `model-view.jpg`: a generated 640x480 shelf (never trained on), the model's gap heatmap over it, and the decoded
  gaps against the generator's labels (green hit, amber missed, red false alarm).
- `gap-dressing.jpg`: the same generated gaps plain (top) and dressed (bottom; `convert.synth.dress_gaps`), the
  way they differ from real ones on the realism report's per-gap rows.
- `pr-curves.png`: precision/recall of the bundle on generated validation shelves and on the real ESD `dev/`
  photos, and, with `--finetuned`, of a fine-tuned bundle on the held-out share of its folder (the split
  `shelfscout finetune` used). Only curves are drawn from ESD: its photos are not redistributable, so none is
  written.
- `score-by-place.png`: for the generated shelves and the real photos, the bundle's detections binned by their
  height in the frame, each bin's mean score against the share that are labelled gaps (`convert.calibration`).

Usage: .venv/bin/python bench/figures.py [--model BUNDLE] [--out docs/img] [--esd DIR] [--finetuned BUNDLE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
ESD_DEV = REPO.parent / "shared" / "data" / "esd" / "dev"
VIEW_SEED = 20261129


def model_view(bundle: Any, seed: int = VIEW_SEED) -> np.ndarray:
    """Three panels side by side (RGB): the frame, the heatmap over it, the gaps against the labels."""
    from convert.evaluate import ImageDetections, match_images
    from convert.report import Example, annotate
    from convert.synth import make_shelf_image
    from edge.detector import Detector

    sample = make_shelf_image(np.random.default_rng(seed), width=640, height=480)
    det = Detector(bundle, threads=2)
    gaps = det.detect(sample.image)
    heat = det.outputs()["heatmap"][0, :, :, 0]
    h, w = sample.image.shape[:2]
    heat_big = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat_big * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    overlay = cv2.addWeighted(sample.image, 0.45, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), 0.55, 0.0)
    dets = ImageDetections(np.array([g.box for g in gaps], np.float32).reshape(-1, 4),
                           np.array([g.score for g in gaps], np.float32))
    match = match_images([dets], [sample.boxes], det.score_threshold)[0]
    boxes = annotate(Example("view", sample.image, sample.boxes, match), max_side=max(w, h))
    panels = []
    for img, title in ((sample.image, "camera frame (generated shelf)"), (overlay, "gap heatmap (model output)"),
                       (boxes, f"gaps: {int(match.det_tp.sum())} hit, {int((~match.gt_hit).sum())} missed, "
                               f"{int((~match.det_tp).sum())} false")):
        p = np.full((h + 28, w, 3), 255, np.uint8)
        p[28:] = img
        cv2.putText(p, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(p)
    return np.hstack(panels)


def gap_dressing(seed: int = VIEW_SEED, n: int = 8, tile: int = 150) -> np.ndarray:
    """Crops around n generated gaps, painted plain (top row) and dressed (bottom row), RGB."""
    import copy

    from convert.synth import add_random_gaps, dress_gaps, paint_shelves, plan_shelves

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
    args = ap.parse_args(argv)

    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle

    keys = load_public_keys([BUILTIN_KEYS, *args.keys])
    bundle = read_bundle(args.model or DEFAULT_BUNDLE, keys)
    finetuned = read_bundle(args.finetuned, keys) if args.finetuned else None
    if finetuned is not None and args.esd is None:
        print("figures: error: --finetuned needs --esd (the folder it was fine-tuned on)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    view = model_view(bundle)
    view = cv2.resize(view, (1440, round(view.shape[0] * 1440 / view.shape[1])), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(args.out / "model-view.jpg"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    dressing = gap_dressing()
    cv2.imwrite(str(args.out / "gap-dressing.jpg"), cv2.cvtColor(dressing, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    from convert.report import draw_pr_curves

    measured: list[tuple[str, list[Any], list[Any]]] = []
    pr = draw_pr_curves(pr_series(bundle, args.esd, finetuned, args.split_seed, args.val_share, measured), size=560)
    cv2.imwrite(str(args.out / "pr-curves.png"), cv2.cvtColor(pr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    places = place_charts(bundle, measured)
    cv2.imwrite(str(args.out / "score-by-place.png"), cv2.cvtColor(places, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out / 'model-view.jpg'}, {args.out / 'gap-dressing.jpg'}, {args.out / 'pr-curves.png'} "
          f"and {args.out / 'score-by-place.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
