"""Alert-level accuracy on real shelf photos: a camera window panned across real ESD images, model + tracker.

Each "pass" places K real photos from ESD `dev/` side by side (each scaled to the frame height) and slides a 640x480
window across them at a fixed speed, so the tracker sees real pixels moving past, as on a cart, with the photos'
empty-space boxes as ground truth in panorama coordinates. The int8 model and the GapTracker run frame by frame
and the `opened` alerts are scored as in `bench/cartpass_eval.py`: labelled gaps alerted (recall), duplicates (one
labelled gap alerted twice) and false alarms (an alert on no labelled gap; ESD leaves some empty spots unlabelled,
so this over-counts). Nothing is copied: ESD is read where it lies and is for evaluation only (see its README).

    .venv/bin/python bench/esd_pan.py --passes 8 --thresholds 0.3 0.46 0.6 [--dump DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convert.cartpass import MIN_VISIBLE, AisleGap, CartPass, FrameGap, FrameTruth
from convert.dataset import list_yolo_images, load_yolo_folder
from convert.passcheck import PassTally, dump_alert_frames, replay_pass, score_pass
from edge.app import load_model
from edge.config import Config
from edge.detector import Detector

ESD_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "esd" / "dev"
FRAME = (640, 480)


def make_pass(items: list[Any], speed: float, seed: int) -> tuple[CartPass, list[np.ndarray]]:
    """Frames and truth of a window sliding across `items` (LabeledImage: RGB image + pixel boxes) placed in a row."""
    fw, fh = FRAME
    tiles: list[np.ndarray] = []
    gaps: list[AisleGap] = []
    x = 0
    for it in items:
        h, w = it.image.shape[:2]
        s = fh / h
        tile = cv2.resize(it.image, (round(w * s), fh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        for b in np.asarray(it.boxes, np.float64).reshape(-1, 4):
            gaps.append(AisleGap(len(gaps), (x + b[0] * s, b[1] * s, x + b[2] * s, b[3] * s), "esd"))
        tiles.append(tile)
        x += tile.shape[1]
    pano = np.ascontiguousarray(np.hstack(tiles))
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    n = int((pano.shape[1] - fw) // speed) + 1
    for k in range(n):
        x0 = k * speed
        # sub-pixel position and a little sensor noise, so motion estimation sees what a camera gives it
        m = np.array([[1.0, 0.0, -x0], [0.0, 1.0, 0.0]], np.float32)
        f = cv2.warpAffine(pano, m, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        noise = rng.normal(0.0, 2.0, f.shape)
        frames.append(np.clip(f.astype(np.float32) + noise, 0, 255).astype(np.uint8))
        fg = []
        for g in gaps:
            bx0, by0, bx1, by1 = g.box[0] - x0, g.box[1], g.box[2] - x0, g.box[3]
            cx0, cx1 = max(0.0, bx0), min(float(fw), bx1)
            if cx1 <= cx0:
                continue
            frac = (cx1 - cx0) / max(1e-6, bx1 - bx0)
            if frac >= MIN_VISIBLE:
                fg.append(FrameGap(g.gap_id, (cx0, max(0.0, by0), cx1, min(float(fh), by1)), frac))
        truth.append(FrameTruth(k, x0, 0.0, fg, []))
    work = Path(tempfile.gettempdir())
    cp = CartPass(work / "esd-pan.mp4", work / "esd-pan.json", n, 15.0, FRAME, speed, 1.0, gaps, [], truth)
    return cp, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ESD_DEV, help="a YOLO folder of real photos (default ESD dev/)")
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--photos", type=int, default=5, help="photos per pass")
    ap.add_argument("--speed", type=float, default=12.0, help="window travel per frame, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dump", type=Path, default=None, help="write each false alarm's frame, box marked, here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no photos at {args.data} (ESD is not part of the repository)")
    cfg = Config()
    bundle = load_model(cfg, args.model)
    thresholds = args.thresholds or [bundle.manifest.thresholds.score]
    paths = list_yolo_images(args.data)
    rng = np.random.default_rng(args.seed)
    picks = [rng.choice(len(paths), size=args.photos, replace=False) for _ in range(args.passes)]
    items = load_yolo_folder(args.data)
    passes = [make_pass([items[int(i)] for i in pick], args.speed, args.seed + k) for k, pick in enumerate(picks)]
    rows = []
    for thr in thresholds:
        det = Detector(bundle, score_threshold=thr)
        tally = PassTally()
        for k, (cp, frames) in enumerate(passes):
            events: list[Any] = []
            s = score_pass(cp, replay_pass(det, frames, replace(cfg.tracking), events))
            tally.add(s)
            if args.dump is not None:
                dump_alert_frames(args.dump, f"t{thr:.2f}-pass{k}", frames, events, s.false_alarms)
        rows.append(tally.row(thr))
        if not args.json:
            print(tally.line(thr, "labelled gaps", f"alerts on no labelled gap, passes of {args.photos} photos"),
                  flush=True)
    if args.json:
        print(json.dumps({"model": f"{bundle.manifest.name} v{bundle.manifest.version}", "passes": len(passes),
                          "photos_per_pass": args.photos, "rows": rows}))


if __name__ == "__main__":
    main()
