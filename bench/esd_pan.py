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
import dataclasses
import json
from pathlib import Path

from convert.build_default import ESD_DEV
from convert.passcheck import sweep_thresholds
from convert.photopan import load_photos, pan_pass
from edge.app import load_model
from edge.config import Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ESD_DEV, help="a YOLO folder of real photos (default ESD dev/)")
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--photos", type=int, default=5, help="photos per pass")
    ap.add_argument("--speed", type=float, default=12.0, help="window travel per frame, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[])
    ap.add_argument("--model", default=None)
    ap.add_argument("--keys", default=None, metavar="DIR",
                    help="folder of trusted *.pub keys besides the built-in ones (e.g. for a fine-tuned bundle)")
    ap.add_argument("--dump", type=Path, default=None, help="write each false alarm's frame, box marked, here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no photos at {args.data} (ESD is not part of the repository)")
    cfg = Config()
    if args.keys:
        cfg = dataclasses.replace(cfg, ota=dataclasses.replace(cfg.ota, keys_dir=args.keys))
    bundle = load_model(cfg, args.model)
    thresholds = args.thresholds or [bundle.manifest.thresholds.score]
    passes = [
        pan_pass(load_photos(args.data, args.photos, seed=args.seed + k), args.speed, seed=args.seed + k)
        for k in range(args.passes)
    ]
    rows = []
    names = [f"pass{k}" for k in range(args.passes)]
    for thr, tally in sweep_thresholds(bundle, passes, names, thresholds, cfg.tracking, args.dump):
        rows.append(tally.row(thr))
        if not args.json:
            print(tally.line(thr, "labelled gaps", f"alerts on no labelled gap, passes of {args.photos} photos"),
                  flush=True)
    if args.json:
        print(json.dumps({"model": f"{bundle.manifest.name} v{bundle.manifest.version}", "passes": len(passes),
                          "photos_per_pass": args.photos, "rows": rows}))


if __name__ == "__main__":
    main()
