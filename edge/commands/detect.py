"""`shelfscout detect PATH...`: offline gap detection on images, folders and videos, as JSON lines, annotated JPEGs
or a YOLO folder of pre-labels."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.commands.prelabel import PrelabelFolder, unique_stem
from edge.config import default_threads
from edge.snapshot import draw_tag
from edge.types import Gap

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".mjpeg", ".mjpg"})


@dataclass(frozen=True)
class Item:
    """One image or video frame to run: its display name (`path` or `path#frame`) and RGB pixels (None: unreadable)."""

    name: str
    image: np.ndarray | None
    path: Path
    frame: int | None = None
    error: str = ""


def add_model_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """The model options shared by detect, bench and model: --model, --keys, --threads, the dev flag."""
    p.add_argument("--model", metavar="BUNDLE", help="model bundle (tar or folder); default: the built-in model")
    p.add_argument("--keys", metavar="DIR", action="append", default=[],
                   help="extra folder of trusted *.pub keys (repeatable); the built-in keys are always trusted")
    if threads:
        p.add_argument("--threads", type=int, default=default_threads(),
                   help="interpreter threads (default: usable cores - 1, at most 4)")
    p.add_argument("--dev-allow-unsigned-models", action="store_true",
                   help="DEVELOPMENT ONLY: run a model whose signature is missing or unknown")


def read_bundle_one_line(read: Callable[..., Any], path: Path, *args: Any, **kwargs: Any) -> Any:
    """`read(path, ...)` (edge.bundle.read_bundle), with any failure as a one-line error naming the path.

    A file that is not a tar archive at all (a config, a .tflite) is named as such instead of tarfile's list of
    every compression it tried.
    """
    from edge.bundle import BundleError
    from edge.cli import CliError

    if path.is_file() and not tarfile.is_tarfile(path):
        raise CliError(f"{path} is not a model bundle (neither a tar archive nor a bundle folder)")
    try:
        return read(path, *args, **kwargs)
    except BundleError as e:
        lines = str(e).strip().splitlines()
        if len(lines) <= 1:
            raise
        raise CliError(lines[0].rstrip(": ")) from e


def load_bundle_from_args(args: argparse.Namespace, model: str | None = None) -> Any:
    """Read and verify the bundle `model` (default: --model, else the built-in one) against the trusted keys of
    --keys, under the same --dev-allow-unsigned-models rule."""
    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, BundleError, load_public_keys, read_bundle
    from edge.cli import CliError

    named = model or args.model
    path = Path(named) if named else DEFAULT_BUNDLE
    if not path.exists():
        hint = "" if named else " (build it with `make model`, or pass --model BUNDLE)"
        raise CliError(f"model bundle {path} does not exist{hint}")
    keys = load_public_keys([BUILTIN_KEYS, *[Path(k) for k in args.keys]])
    allow = bool(getattr(args, "dev_allow_unsigned_models", False))
    try:
        bundle = read_bundle_one_line(read_bundle, path, keys, allow_unsigned=allow)
    except BundleError as e:
        if "signature does not verify" in str(e) and not args.keys:
            raise CliError(f"{e}; a bundle you built (finetune, train, bundle) is signed with your own key: pass "
                           "--keys ~/.config/shelfscout/keys") from e
        raise
    if bundle.signed_by is None:
        print(f"WARNING: running UNSIGNED/UNVERIFIED model {path} (--dev-allow-unsigned-models); "
              "never do this on a device", file=sys.stderr)
    return bundle


def load_detector_from_args(args: argparse.Namespace, score_threshold: float | None = None) -> Any:
    """The verified bundle's Detector; a model the runtime cannot load is a one-line CliError."""
    from edge.bundle import BundleError
    from edge.cli import CliError
    from edge.detector import Detector

    if getattr(args, "threads", default_threads()) < 1:
        raise CliError("--threads must be at least 1")
    bundle = load_bundle_from_args(args)
    try:
        return Detector(bundle, threads=getattr(args, "threads", default_threads()), score_threshold=score_threshold)
    except BundleError:
        raise  # ModelSignatureError names the I/O difference itself
    except (ValueError, RuntimeError) as e:
        raise CliError(f"cannot load model {bundle.source}: {e}") from e


def stdout_gone() -> int:
    """The reader of stdout has gone (`| head`): point stdout at devnull so the exit flush is quiet; exit code 1.

    The recipe from the Python docs' note on SIGPIPE; the caller returns the code instead of calling sys.exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (captured); nothing left to flush to
        pass
    return 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "detect", help="find gaps in images, folders or videos",
        description="Run the model on images, image folders or videos (every frame, or every Nth with --every). "
                    "With --json, print one JSON line per image or frame and nothing else on stdout; boxes are in "
                    "original pixels. An image or video that cannot be read is skipped with a one-line warning on "
                    "stderr and the rest still run. --prelabel turns a store's own recordings into a YOLO folder "
                    "to label for `shelfscout finetune`, starting from the model's guesses.",
        epilog="exit status: 0 when every input was read, 1 when any input was skipped as unreadable (the "
               "others still ran), 2 on a usage, path, model, --annotate or --prelabel write error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder of images/videos, or video file")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image/frame on stdout")
    p.add_argument("--annotate", metavar="DIR", help="write annotated JPEGs (boxes and scores) into DIR")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the bundle's)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="of each video, run every Nth frame only (default 1: every frame; at a "
                        "recording's R fps, N = R x seconds between frames)")
    p.add_argument("--spacing", type=float, default=None, metavar="F",
                   help="of each video, run a frame only once the view has moved F frame widths (or heights) "
                        "since the last frame run, measured by the service's phase-correlation motion; a cart "
                        "standing still gives one frame, not hundreds of copies (0 < F <= 1). With --every N too, "
                        "motion is measured from one Nth frame to the next: keep N small "
                        "enough that the view moves under a third of a frame between them")
    p.add_argument("--prelabel", metavar="DIR",
                   help="also write each image or frame and the gaps found in it as a YOLO folder (DIR/images, "
                        "DIR/labels, DIR/classes.txt) to correct in a labelling tool and fine-tune on; an existing "
                        "label file is never overwritten")
    p.set_defaults(func=run_detect)


def _expand(paths: Sequence[str]) -> list[Path]:
    from edge.cli import CliError

    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                raise CliError(f"{p}: folder holds no images or videos")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise CliError(f"{p}: no such file or folder")
    return out


def iter_items(files: Sequence[Path], every: int = 1, spacing: float | None = None) -> Iterator[Item]:
    """Every image, and every `every`-th frame of every video (from its first), as RGB arrays, in order. With
    `spacing`, a video frame is yielded only when the view has moved `spacing` of the frame's width or height since
    the last frame yielded (the first always is)."""
    for f in files:
        if f.suffix.lower() in VIDEO_EXTS:
            yield from _video_items(f, every, spacing)
        else:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                yield Item(str(f), None, f, None, "not a readable image")
            else:
                yield Item(str(f), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f)


def _video_items(f: Path, every: int, spacing: float | None) -> Iterator[Item]:
    from edge.motion import ShiftEstimator

    cap = cv2.VideoCapture(str(f))
    if not cap.isOpened():
        yield Item(str(f), None, f, None, "cannot open video")
        return
    motion = ShiftEstimator()  # used only with spacing; allocates its buffers on the first frame
    moved_x = moved_y = 0.0  # content shift since the last frame yielded
    idx = 0
    try:
        while True:
            if idx % every:
                if not cap.grab():  # a skipped frame is read but not decoded
                    break
                idx += 1
                continue
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if spacing is not None:
                shift = motion.update(rgb, frames_elapsed=every if idx else 1)
                moved_x, moved_y = moved_x + shift.dx, moved_y + shift.dy
                h, w = rgb.shape[:2]
                if idx and abs(moved_x) < spacing * w and abs(moved_y) < spacing * h:
                    idx += 1
                    continue
                moved_x = moved_y = 0.0
            yield Item(f"{f}#{idx}", rgb, f, idx)
            idx += 1
    finally:
        cap.release()
    if idx == 0:
        yield Item(str(f), None, f, None, "video has no readable frames")


def gaps_json(item: Item, gaps: Sequence[Gap]) -> str:
    if item.image is None:
        raise ValueError(f"{item.name} has no image")
    h, w = item.image.shape[:2]
    return json.dumps({
        "image": item.name,
        "width": int(w),
        "height": int(h),
        "gaps": [{"box": [round(g.x0, 1), round(g.y0, 1), round(g.x1, 1), round(g.y1, 1)], "score": round(g.score, 4)}
                 for g in gaps],
    }, separators=(", ", ": "))


def annotate(image_rgb: np.ndarray, gaps: Sequence[Gap]) -> np.ndarray:
    """A BGR copy of the image with each gap's box and score drawn."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for g in gaps:
        p0, p1 = (round(g.x0), round(g.y0)), (round(g.x1), round(g.y1))
        cv2.rectangle(out, p0, p1, (0, 0, 255), thick)
        draw_tag(out, f"gap {g.score:.2f}", p0, (0, 0, 255), 0.5)
    return out


def _annotation_path(out_dir: Path, item: Item, used: set[str]) -> Path:
    return out_dir / f"{unique_stem(item.path, item.frame, used)}.jpg"


def _open_prelabel(root: Path) -> PrelabelFolder:
    from edge.cli import CliError

    if root.exists() and not root.is_dir():
        raise CliError(f"--prelabel {root}: not a folder")
    try:
        return PrelabelFolder.open(root)
    except OSError as e:
        raise CliError(f"cannot create --prelabel folder {root}: {e.strerror or e}") from e


def run_detect(args: argparse.Namespace) -> int:
    from edge.cli import CliError

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CliError("--threshold must be between 0 and 1")
    if args.every < 1:
        raise CliError(f"--every must be at least 1, got {args.every}")
    if args.spacing is not None and not 0.0 < args.spacing <= 1.0:  # also refuses NaN
        raise CliError(f"--spacing is a share of the frame between 0 and 1 (e.g. 0.5), got {args.spacing}")
    files = _expand(args.paths)
    detector = load_detector_from_args(args, args.threshold)
    out_dir = Path(args.annotate) if args.annotate else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"cannot create --annotate folder {out_dir}: {e.strerror}") from e
    labels = _open_prelabel(Path(args.prelabel)) if args.prelabel else None
    used: set[str] = set()
    failures = done = total_gaps = 0
    try:
        for item in iter_items(files, args.every, args.spacing):
            gaps: list[Gap] | None = None
            if item.image is not None:
                try:
                    gaps = list(detector.detect(item.image))
                except ValueError as e:  # an image the model cannot take; the others still run
                    item = Item(item.name, None, item.path, item.frame, str(e))
            if item.image is None or gaps is None:
                failures += 1
                print(f"shelfscout detect: warning: skipped {item.name}: {item.error}", file=sys.stderr, flush=True)
                continue
            done += 1
            total_gaps += len(gaps)
            if args.json:
                print(gaps_json(item, gaps), flush=True)
            else:
                h, w = item.image.shape[:2]
                boxes = ", ".join(f"[{g.x0:.0f},{g.y0:.0f},{g.x1:.0f},{g.y1:.0f}] {g.score:.2f}" for g in gaps)
                print(f"{item.name} {w}x{h}: {len(gaps)} gap{'s' if len(gaps) != 1 else ''}"
                      + (f": {boxes}" if gaps else ""), flush=True)
            if out_dir is not None:
                target = _annotation_path(out_dir, item, used)
                if not cv2.imwrite(str(target), annotate(item.image, gaps), [cv2.IMWRITE_JPEG_QUALITY, 90]):
                    raise CliError(f"cannot write {target}")
            if labels is not None:
                try:
                    labels.add(item.path, item.frame, item.image, gaps)
                except OSError as e:
                    raise CliError(f"cannot write --prelabel folder {labels.root}: {e.strerror or e}") from e
    except BrokenPipeError:
        return stdout_gone()
    if labels is not None:
        print(f"--prelabel {labels.root}: wrote {labels.written} images/frames with {labels.gaps} gaps; kept "
              f"{labels.kept} existing label file{'s' if labels.kept != 1 else ''} as they were. Correct every label "
              f"file (the model misses gaps and finds false ones), then: shelfscout finetune {labels.root} --out "
              f"BUNDLE", file=sys.stderr)
    if not args.json:
        print(f"{done} images/frames, {total_gaps} gaps, model {detector.manifest.name} v{detector.manifest.version} "
              f"on {detector.runtime.describe()}", file=sys.stderr)
    return 1 if failures else 0
