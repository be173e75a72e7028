"""Alert-level accuracy on rendered cart passes: model + tracker, scored against each pass's ground truth.

For each seed it renders an aisle pass (convert.cartpass), decodes the .mp4 as the service would, runs the int8
model and the GapTracker frame by frame, and scores the `opened` alerts with convert.passcheck: true gaps alerted,
duplicates (one physical gap alerted twice) and false alarms (alerts on filled shelf). `--thresholds` sweeps the
model score threshold the device uses (config `model.score_threshold`).

    .venv/bin/python bench/cartpass_eval.py --passes 4 --thresholds 0.3 0.4 0.5 0.6
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from convert.cartpass import CartPass, aisle_length_for, iter_video_rgb, make_aisle, render_cart_pass
from convert.passcheck import add_keys_argument, bench_config, sweep_thresholds
from edge.app import load_model


def render(seed: int, work: Path, seconds: float = 12.0) -> CartPass:
    length = aisle_length_for(seconds, 15.0, 10.0)
    aisle = make_aisle(np.random.default_rng(seed), length_px=length, n_gaps=6)
    return render_cart_pass(aisle, work / f"pass-{seed}.mp4", fps=15.0, speed_px_per_frame=10.0, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[])
    ap.add_argument("--model", default=None)
    add_keys_argument(ap)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump", type=Path, default=None, help="write each false alarm's frame, box marked, here")
    args = ap.parse_args()
    cfg = bench_config(args.keys)
    bundle = load_model(cfg, args.model)
    thresholds = args.thresholds or [bundle.manifest.thresholds.score]
    work = Path(tempfile.mkdtemp(prefix="cartpass-eval-"))
    passes = [render(args.seed + k, work) for k in range(args.passes)]
    decoded = [(cp, list(iter_video_rgb(cp.path))) for cp in passes]
    rows = []
    names = [f"pass{args.seed + k}" for k in range(args.passes)]
    for thr, tally in sweep_thresholds(bundle, decoded, names, thresholds, cfg.tracking, args.dump):
        rows.append(tally.row(thr))
        if not args.json:
            print(tally.line(thr), flush=True)
    if args.json:
        print(json.dumps({"model": f"{bundle.manifest.name} v{bundle.manifest.version}", "passes": len(passes),
                          "rows": rows}))


if __name__ == "__main__":
    main()
