"""Do the model's int8 outputs on a 64-bit ARM CPU match this machine's? Raw outputs, detections and golden vectors.

The int8 kernels that LiteRT (XNNPACK) picks depend on the CPU's features (NEON only on a Cortex-A53 or A72, the dot
product instructions on an A76), and the rounding of int8 arithmetic can differ between them. A bundle's golden
vectors, checked by every cart before an update goes live, tolerate `GOLDEN_TOLERANCE_STEPS`; this measures what an
ARM CPU actually gives.

    python bench/arm_parity.py dump OUT.npz [--images N]     # here: generated shelves and their raw outputs
    python bench/arm_parity.py compare OUT.npz               # on the ARM side (bench/arm64_check.sh runs it)

Only the device's own code and packages are used on the comparing side (numpy, OpenCV, LiteRT), no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bundle import load_public_keys, read_bundle  # noqa: E402
from edge.detector import Detector  # noqa: E402

BUNDLE = ROOT / "models" / "shelfgap-default.bundle"
KEYS = ROOT / "models" / "keys"


def _detector(bundle: Path, threads: int, xnnpack: bool = True, runtime: str | None = None) -> Detector:
    return Detector(read_bundle(bundle, load_public_keys([KEYS])), threads=threads, use_xnnpack=xnnpack,
                    runtimes=(runtime,) if runtime else None)


def run(det: Detector, images: np.ndarray) -> tuple[dict[str, np.ndarray], list[list[list[float]]]]:
    """Raw int8 outputs (stacked per output) and decoded detections [x0, y0, x1, y1, score] per image."""
    raws: dict[str, list[np.ndarray]] = {}
    dets = []
    for im in images:
        det.preprocess(np.ascontiguousarray(im))
        det.invoke()
        for k, v in det.raw_outputs().items():
            raws.setdefault(k, []).append(np.array(v, copy=True))
        h, w = im.shape[:2]
        dets.append([[*map(float, g.box), float(g.score)] for g in det.decode(w, h)])
    return {k: np.stack(v) for k, v in raws.items()}, dets


def dump(out: Path, n: int, threads: int, xnnpack: bool = True) -> None:
    from convert.synth import make_shelf_image, sample_rng  # generated shelves: free to ship anywhere

    images = np.stack([make_shelf_image(sample_rng(20261206, i), 416, 416).image for i in range(n)])
    raws, dets = run(_detector(BUNDLE, threads, xnnpack), images)
    np.savez_compressed(out, images=images, dets=json.dumps(dets),
                        **{f"raw_{k}": v for k, v in raws.items()})
    print(f"{n} images, outputs {sorted(raws)} from {platform.machine()} written to {out}")


def compare(ref: Path, threads: int, xnnpack: bool = True, runtime: str | None = None) -> int:
    data = np.load(ref)
    images = data["images"]
    det = _detector(BUNDLE, threads, xnnpack, runtime)
    golden = det.check_golden()
    raws, dets = run(det, images)
    want_dets = json.loads(str(data["dets"]))
    report: dict[str, object] = {"machine": platform.machine(), "runtime": det.runtime.name,
                                 "xnnpack": det.runtime.xnnpack, "threads": threads, "images": len(images),
                                 "golden_ok": golden.ok, "golden": golden.detail}
    for k, got in raws.items():
        want = data[f"raw_{k}"]
        d = np.abs(got.astype(np.int32) - want.astype(np.int32))
        report[f"{k}_max_steps"] = int(d.max())
        report[f"{k}_share_differing"] = round(float((d > 0).mean()), 6)
        report[f"{k}_p99_steps"] = float(np.percentile(d, 99))
        report[f"{k}_mean_steps"] = round(float(d.mean()), 4)
    same = sum(1 for a, b in zip(dets, want_dets, strict=True)
               if len(a) == len(b) and np.allclose(np.array(a).reshape(-1, 5), np.array(b).reshape(-1, 5), atol=1e-4))
    report["images_with_identical_detections"] = same
    report["detections"] = [sum(len(x) for x in dets), sum(len(x) for x in want_dets)]
    print(json.dumps(report))
    return 0 if golden.ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["dump", "compare"])
    ap.add_argument("file", type=Path)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-xnnpack", action="store_true", help="the runtime's built-in kernels only")
    ap.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], help="compare: this runtime only")
    args = ap.parse_args()
    if args.what == "dump":
        dump(args.file, args.images, args.threads, not args.no_xnnpack)
        return 0
    return compare(args.file, args.threads, not args.no_xnnpack, args.runtime)


if __name__ == "__main__":
    raise SystemExit(main())
