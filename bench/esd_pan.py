"""Alert-level accuracy on real shelf photos: a camera window panned across real ESD images, model + tracker.

Each "pass" places K real photos from ESD `dev/` side by side (each scaled to the frame height) and slides a 640x480
window across them at a fixed speed, so the tracker sees real pixels moving past, as on a cart, with the photos'
empty-space boxes as ground truth in panorama coordinates. The int8 model and the GapTracker run frame by frame
and the `opened` alerts are scored as in `bench/cartpass_eval.py`: labelled gaps alerted (recall), duplicates (one
labelled gap alerted twice) and false alarms (an alert on no labelled gap; ESD leaves some empty spots unlabelled,
so this over-counts). Nothing is copied: ESD is read where it lies and is for evaluation only (see its README).

Several `--model`s run over the same passes (a paired comparison); `--plot PNG` draws each one's trade-off between
gaps alerted and false alerts across `--thresholds` (log axis), its own threshold circled and labelled, as is its
best point within `--budget` false alerts per pass.

    .venv/bin/python bench/esd_pan.py --passes 8 --thresholds 0.3 0.46 0.6 [--dump DIR]
    .venv/bin/python bench/esd_pan.py --data DIR --model A --model B --keys K --thresholds ... --plot out.png
    .venv/bin/python bench/esd_pan.py --heldout 0.3 --passes 16 --model FINETUNED.bundle ...  # its unseen 30 %
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from convert.build_default import ESD_DEV
from convert.passcheck import (
    PassTally,
    add_keys_argument,
    bench_config,
    labelled_pass,
    score_pass,
    sweep_thresholds,
    track_pass,
)
from convert.photopan import load_photos, pan_pass
from edge.app import load_model


def heldout_folder(data: Path, share: float, split_seed: int) -> Path:
    """A temporary YOLO folder of links to the held-out share of `data`, split as `shelfscout finetune` does."""
    import tempfile

    from convert.build_default import split_folder

    _, held = split_folder(data, share, split_seed)
    root = Path(tempfile.mkdtemp(prefix="esd-heldout-"))
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for item in held:
        (root / "images" / item.path.name).symlink_to(item.path.resolve())
        label = data / "labels" / f"{item.path.stem}.txt"
        if label.exists():
            (root / "labels" / label.name).symlink_to(label.resolve())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ESD_DEV, help="a YOLO folder of real photos (default ESD dev/)")
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--photos", type=int, default=5, help="photos per pass")
    ap.add_argument("--speed", type=float, default=12.0, help="window travel per frame, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[],
                    help="score thresholds to run (default: each model's own)")
    ap.add_argument("--model", action="append", default=[], metavar="BUNDLE",
                    help="bundle to measure (repeatable; default: the built-in model)")
    ap.add_argument("--label", action="append", default=[], help="a name per --model for the plot (repeatable)")
    add_keys_argument(ap)
    ap.add_argument("--dump", type=Path, default=None, help="write each false alarm's frame, box marked, here")
    ap.add_argument("--plot", type=Path, default=None, metavar="PNG", help="draw the models' alert trade-offs here")
    ap.add_argument("--budget", type=float, default=1.0, metavar="PER_PASS",
                    help="false alerts per pass the plot marks; each model's point with the most gaps alerted "
                         "within it is labelled (default 1)")
    ap.add_argument("--heldout", type=float, default=None, metavar="SHARE",
                    help="pan across only the held-out share of --data, split as `shelfscout finetune` splits it "
                         "(its --val-share, default 0.3, and --split-seed): the photos a fine-tuned model never saw")
    ap.add_argument("--split-seed", type=int, default=0, help="the split's seed, as finetune's (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no photos at {args.data} (ESD is not part of the repository; --data DIR names a folder)")
    if args.heldout is not None:
        args.data = heldout_folder(args.data, args.heldout, args.split_seed)
    if args.label and len(args.label) != max(len(args.model), 1):
        raise SystemExit("give one --label per --model")
    cfg = bench_config(args.keys)
    bundles = [load_model(cfg, m) for m in args.model] if args.model else [load_model(cfg)]
    passes = [
        pan_pass(load_photos(args.data, args.photos, seed=args.seed + k), args.speed, seed=args.seed + k)
        for k in range(args.passes)
    ]
    names = [f"pass{k}" for k in range(args.passes)]
    ceiling = PassTally()
    for cp, frames in passes:  # the labelled boxes as detections: one alert per place caps what any model scores
        ceiling.add(score_pass(cp, track_pass(frames, labelled_pass(cp), cfg.tracking)))
    if not args.json:
        print("labelled boxes as detections (the most one alert per place allows): "
              + ceiling.line(1.0, "labelled gaps", "alerts on no labelled gap"), flush=True)
    results: list[dict[str, Any]] = []
    for n, bundle in enumerate(bundles):
        own = bundle.manifest.thresholds.score
        label = args.label[n] if args.label else f"{bundle.manifest.name} v{bundle.manifest.version}"
        rows = []
        dump = args.dump / f"model{n}" if args.dump is not None and len(bundles) > 1 else args.dump
        for thr, tally in sweep_thresholds(bundle, passes, names, args.thresholds or [own], cfg.tracking, dump):
            rows.append(tally.row(thr))
            if not args.json:
                print(f"{label}: " + tally.line(thr, "labelled gaps",
                                                f"alerts on no labelled gap, passes of {args.photos} photos"),
                      flush=True)
        results.append({"model": f"{bundle.manifest.name} v{bundle.manifest.version}", "label": label,
                        "own_threshold": own, "rows": rows})
    if args.json:
        print(json.dumps({"data": str(args.data), "passes": len(passes), "photos_per_pass": args.photos,
                          "labelled_as_detections": ceiling.row(1.0), "models": results}))
    if args.plot is not None:
        import cv2

        from convert.report import AlertPoint, draw_alert_tradeoff

        series = [(r["label"], [AlertPoint(row["threshold"], row["recall"], row["false_alarms_per_pass"])
                                for row in r["rows"]], r["own_threshold"]) for r in results]
        img = draw_alert_tradeoff(series, size=560, ceiling=ceiling.row(1.0)["recall"], scale=2, log_x=True,
                                  budget=args.budget)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.plot), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    main()
