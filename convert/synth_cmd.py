"""The `shelfscout synth` and `shelfscout render-pass` subcommands: generated training data and cart-pass videos."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a YOLO folder of procedural shelf images with empty-spot labels",
        description="Write OUT/images/NNNNN.jpg and OUT/labels/NNNNN.txt ('0 cx cy w h', normalised). "
        "The same --seed always gives the same images.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (created)")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=416, help="square image size in pixels (default 416)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: number of CPUs)")
    p.set_defaults(func=_cmd_synth)

    r = sub.add_parser(
        "render-pass",
        help="render a cart-pass video along a generated aisle, with ground-truth JSON",
        description="Write OUT.mp4 and OUT.json (gaps in shelf coordinates, per-frame offsets and gap boxes).",
    )
    r.add_argument("out", type=Path, metavar="OUT.mp4", help="output video path")
    r.add_argument("--seconds", type=float, default=10.0, help="length of the pass (default 10)")
    r.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    r.add_argument(
        "--speed", type=float, default=12.0, help="cart speed in shelf pixels per frame (default 12)"
    )
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument(
        "--gaps", type=int, default=None, help="number of gaps (default: one per ~600 px of aisle)"
    )
    r.add_argument("--no-markers", action="store_true", help="leave out the ArUco markers at the aisle ends")
    r.add_argument(
        "--restocked-copy",
        action="store_true",
        help="also write OUT-restocked.mp4/.json: the same pass with every gap filled",
    )
    r.set_defaults(func=_cmd_render_pass)


def _cmd_synth(args: argparse.Namespace) -> int:
    from convert.synth import write_yolo_dataset
    from edge.cli import CliError

    if args.n < 1:
        raise CliError("--n must be at least 1")
    if args.size < 64:
        raise CliError("--size must be at least 64")
    workers = args.workers or max(1, os.cpu_count() or 1)
    t0 = time.monotonic()
    bar: Any = None
    try:
        from tqdm import tqdm

        bar = tqdm(total=args.n, unit="img", desc="synth")
    except ImportError:
        bar = None
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if bar is not None:
            bar.update(k)

    old = [f for sub in ("images", "labels") if (args.out / sub).is_dir() for f in (args.out / sub).iterdir()]
    if old:  # image i is named by its index: a second run would mix two data sets under one folder
        raise CliError(f"{args.out} already holds {len(old)} files of an earlier run: give a new folder, or remove "
                       "its images/ and labels/ first")
    try:
        write_yolo_dataset(
            args.out, args.n, args.seed, args.size, args.size, workers=workers, progress=progress
        )
    except OSError as e:
        raise CliError(f"cannot write {args.out}: {e}") from e
    finally:
        if bar is not None:
            bar.close()
    dt = time.monotonic() - t0
    print(f"wrote {done} images to {args.out} in {dt:.1f} s ({1000 * dt / max(done, 1):.1f} ms/image)")
    return 0


def _cmd_render_pass(args: argparse.Namespace) -> int:
    import numpy as np

    from convert.cartpass import aisle_length_for, make_aisle, render_cart_pass, restock
    from edge.cli import CliError

    if args.seconds <= 0 or args.fps <= 0 or args.speed <= 0:
        raise CliError("--seconds, --fps and --speed must be positive")
    if args.out.suffix.lower() != ".mp4":
        raise CliError("OUT must end in .mp4")
    length = aisle_length_for(args.seconds, args.fps, args.speed)
    n_gaps = args.gaps if args.gaps is not None else max(1, length // 600)
    rng = np.random.default_rng(args.seed)
    try:
        aisle = make_aisle(rng, length_px=length, n_gaps=n_gaps, markers=not args.no_markers)
    except ValueError as e:
        raise CliError(str(e)) from e
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cp = render_cart_pass(aisle, args.out, fps=args.fps, speed_px_per_frame=args.speed, seed=args.seed)
    print(
        f"wrote {args.out} ({cp.frames} frames, {len(aisle.gaps)} gaps, markers "
        f"{[m[0] for m in aisle.markers]}) and {args.out.with_suffix('.json')} in {time.monotonic() - t0:.1f} s"
    )
    if args.restocked_copy:
        full = restock(aisle, [g.gap_id for g in aisle.gaps], np.random.default_rng(args.seed + 1))
        out2 = args.out.with_name(args.out.stem + "-restocked.mp4")
        render_cart_pass(full, out2, fps=args.fps, speed_px_per_frame=args.speed, seed=args.seed)
        print(f"wrote {out2} (all gaps restocked)")
    return 0
