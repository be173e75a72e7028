"""`shelfscout markers`: printable ArUco labels for aisle ends, which name the aisle and reset the cart's odometry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.alerts import other_end

DICT_SIZE = 50  # cv2.aruco.DICT_4X4_50, what edge.motion.MarkerDetector reads
DEFAULT_SIZE_MM = 60.0  # ~40 px at 1.5 mm/px (the recommended mount): twice the detector's minimum
A4_MM = (210.0, 297.0)
MM_PER_INCH = 25.4


def marker_label(marker_id: int, size_mm: float = DEFAULT_SIZE_MM, dpi: int = 300) -> np.ndarray:
    """One label (greyscale uint8): the marker `size_mm` wide with a white margin of one marker cell around it, and
    its id and print size written underneath, at `dpi`."""
    if not 0 <= marker_id < DICT_SIZE:
        raise ValueError(f"marker ids are 0-{DICT_SIZE - 1} (ArUco DICT_4X4_50), got {marker_id}")
    if size_mm <= 0 or dpi <= 0:
        raise ValueError("size and dpi must be positive")
    side = max(6, round(size_mm / MM_PER_INCH * dpi))
    side -= side % 6  # 4x4 bits + a 1-cell black border: 6 cells, each a whole number of pixels
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    marker = cv2.aruco.generateImageMarker(dictionary, marker_id, side)
    cell = side // 6
    text = f"aisle marker {marker_id} - {size_mm:g} mm"
    width = side + 2 * cell
    scale, thick = 1.0, max(1, cell // 12)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    scale = (width - 2 * cell) / tw  # the text spans the marker's width
    th = round(th * scale)
    label = np.full((side + 3 * cell + th, width), 255, np.uint8)
    label[cell:cell + side, cell:cell + side] = marker
    cv2.putText(label, text, (cell, side + 2 * cell + th), cv2.FONT_HERSHEY_SIMPLEX, scale, 0, thick, cv2.LINE_AA)
    return label


def a4_pages(labels: list[np.ndarray], dpi: int = 300) -> list[np.ndarray]:
    """The labels laid out on white A4 pages at `dpi`, row by row, as many pages as they need."""
    w, h = (round(v / MM_PER_INCH * dpi) for v in A4_MM)
    margin, gap = round(10 / MM_PER_INCH * dpi), round(5 / MM_PER_INCH * dpi)
    pages: list[np.ndarray] = []
    page = None
    x = y = row_h = 0
    for lab in labels:
        lh, lw = lab.shape
        if lw > w - 2 * margin or lh > h - 2 * margin:
            raise ValueError("a label is larger than an A4 page; choose a smaller --size-mm")
        if page is not None and x + lw > w - margin:
            x, y, row_h = margin, y + row_h + gap, 0
        if page is None or y + lh > h - margin:
            page = np.full((h, w), 255, np.uint8)
            pages.append(page)
            x, y, row_h = margin, margin, 0
        page[y:y + lh, x:x + lw] = lab
        x += lw + gap
        row_h = max(row_h, lh)
    return pages


def register(sub: Any) -> None:
    p = sub.add_parser(
        "markers", help="print ArUco labels for aisle ends (they name aisles and reset the cart's position)",
        description="Write one PNG label per marker id, plus A4 pages of them, ready to print at the given size. "
                    "Hang one at each end of every aisle, at camera height; use each id once per store. The two "
                    "ends of one aisle carry an odd id and the next even one (1 and 2, 3 and 4, ...): only its "
                    "partner joins an aisle, so a missed far end never merges the next aisle into this one.",
    )
    p.add_argument("out", type=Path, help="folder for marker-<id>.png and markers-a4-<page>.png")
    p.add_argument("--ids", type=int, nargs="+", required=True,
                   help=f"marker ids, 1-{DICT_SIZE - 2} in pairs (1 2 for one aisle's ends, 3 4 for the next), each once")
    p.add_argument("--size-mm", type=float, default=DEFAULT_SIZE_MM,
                   help=f"printed marker width in mm (default {DEFAULT_SIZE_MM:g})")
    p.add_argument("--dpi", type=int, default=300, help="print resolution (default 300)")
    p.set_defaults(func=markers_cmd)


def markers_cmd(args: argparse.Namespace) -> int:
    from edge.cli import CliError

    outside = [i for i in args.ids if not 1 <= i <= DICT_SIZE - 2]
    if outside:
        raise CliError(f"--ids: {' '.join(map(str, outside))}: marker ids are 1-{DICT_SIZE - 2}, an odd id and the "
                       f"next even one per aisle (0 and {DICT_SIZE - 1} have no partner, so no aisle could be paired)")
    if len(set(args.ids)) != len(args.ids):
        raise CliError("--ids: each marker id may be used once (a repeated id would name two places alike)")
    try:
        labels = [marker_label(i, args.size_mm, args.dpi) for i in args.ids]
    except ValueError as e:
        raise CliError(f"--ids/--size-mm: {e}") from None
    try:
        pages = a4_pages(labels, args.dpi)
    except ValueError as e:
        raise CliError(str(e)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    for i, lab in zip(args.ids, labels, strict=True):
        cv2.imwrite(str(args.out / f"marker-{i}.png"), lab)
    for k, page in enumerate(pages, 1):
        cv2.imwrite(str(args.out / f"markers-a4-{k}.png"), page)
    print(f"wrote {len(labels)} labels and {len(pages)} A4 page(s) to {args.out}; print at {args.dpi} dpi and 100 % "
          f"scale, then check that a marker's black square measures {args.size_mm:g} mm")
    alone = [i for i in args.ids if other_end(i) not in args.ids]
    if alone:
        print(f"note: {' '.join(map(str, alone))} without the other end's id here (an aisle's ends are an odd id and "
              f"the next even one: 1 and 2, 3 and 4, ...); a marker whose partner never hangs in the store names an "
              f"aisle of its own", file=sys.stderr)
    return 0
