"""A/B test of training changes by warm-starting the default weights: each arm x each seed, measured like `make model`.

An arm is a name and a JSON object of `AugmentConfig` fields that change the default recipe's augmentation
(`make model`'s, random-convolution restyling included); `{}` is the control, that recipe. For every seed, the arms
share the same generated training images (seed-specific) and training seed, start from the same float weights,
train `--steps` more steps at a low learning rate, are converted to int8 and measured by
`convert.build_default.build` on the same generated validation shelves and, when present, the real ESD `dev/`
photos. One warm-start run is about +-1 ESD AP50 point of noise (models/NOTES.md), so give at least two seeds and
read the per-seed differences, not one number. Bundles are unsigned and stay under --work (pair two with
`shelfscout eval DATA --model A --against B --dev-allow-unsigned-models`); nothing is written to the repository.

    .venv/bin/python bench/warmstart_ab.py --arm control '{}' --arm colour '{"contrast": 0.5}' --seeds 7 8
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from convert.build_default import (
    DEFAULT_NAME,
    DEFAULT_RANDCONV,
    DEFAULT_SEED,
    ESD_DEV,
    MODELS,
    REPO,
    BuildSpec,
    build,
    synth_folder,
)
from convert.dataset import AugmentConfig
from convert.train import TrainConfig, net_config_for

# the augmentation of `make model` (`convert.build_default.default_spec`), which every arm changes
RECIPE_AUG = AugmentConfig(randconv=DEFAULT_RANDCONV)


def parse_arm(name: str, text: str) -> tuple[str, AugmentConfig]:
    try:
        over = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"arm {name!r}: not JSON: {e}") from e
    known = {f.name for f in fields(AugmentConfig)}
    if not isinstance(over, dict) or set(over) - known:
        raise SystemExit(f"arm {name!r}: give an object with AugmentConfig fields ({', '.join(sorted(known))})")
    return name, replace(RECIPE_AUG, **{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                    help="an arm: a name and JSON overrides of the recipe's AugmentConfig ('{}' = control); repeatable")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--images", type=int, default=2500, help="generated training images per seed")
    ap.add_argument("--val", type=int, default=300, help="generated validation images (one set for all runs)")
    ap.add_argument("--init", type=Path, default=MODELS / f"{DEFAULT_NAME}.weights.h5")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "warmstart-ab")
    ap.add_argument("--no-esd", action="store_true", help="do not measure on ../shared/data/esd/dev")
    ap.add_argument("--json", action="store_true", help="one JSON object per run on stdout, nothing else")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    arms = [parse_arm(n, t) for n, t in args.arm]
    net = net_config_for(args.init)
    # the default model's validation seed, so its synthetic-val figures compare with the model card's
    val = synth_folder(args.work / "synth-val", args.val, DEFAULT_SEED + 1, workers=2, progress=False)
    val_sets: list[tuple[str, Path]] = [("synthetic-val", val)]
    if not args.no_esd and ESD_DEV.is_dir():
        val_sets.append(("esd-dev", ESD_DEV))
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in args.seeds:
        data = synth_folder(args.work / f"synth-train-{seed}", args.images, seed, workers=2, progress=False)
        for name, aug in arms:
            run = args.work / f"{name}-s{seed}"
            spec = BuildSpec(
                name=f"{name}-s{seed}", version=1, out_bundle=run / "model.bundle", work_dir=run,
                train=TrainConfig(net=net, steps=args.steps, lr=1e-3, warmup=min(50, args.steps // 10), seed=seed,
                                  aug=aug),
                synth_train=0, synth_val=0, train_dirs=(data,), val_sets=tuple(val_sets),
                init_weights=args.init, key_path=None, progress=False,
            )
            report = build(spec)
            sets = report.metrics["sets"]
            row = {"arm": name, "seed": seed, "threshold": report.threshold, "train_s": report.train_seconds,
                   **{f"{s}_ap50_int8": m["int8"]["ap50"] for s, m in sets.items()},
                   **{f"{s}_ap50_float": m["float"]["ap50"] for s, m in sets.items()}}
            rows[name, seed] = row
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{name:>12} seed {seed}: " + ", ".join(
                    f"{s} AP50 int8 {m['int8']['ap50']:.4f} (float {m['float']['ap50']:.4f})" for s, m in sets.items()
                ), flush=True)
    if not args.json and len(arms) > 1:
        base = arms[0][0]
        print(f"difference from {base!r}, per seed:")
        for name, _ in arms[1:]:
            for s, _p in val_sets:
                key = f"{s}_ap50_int8"
                diffs = [rows[name, sd][key] - rows[base, sd][key] for sd in args.seeds]
                print(f"  {name} {s}: " + ", ".join(f"{d:+.4f}" for d in diffs))


if __name__ == "__main__":
    main()
