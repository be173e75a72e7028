"""Times the default model against an int8 SSDLite-MobileNetV2-300 in the same run, runtime and thread count.

The target (model issue): the default model's invoke latency is at most 0.25x SSDLite-MobileNetV2-300's.
SSDLite here is the TF Object Detection API layout: a MobileNetV2 (alpha 1.0, 300x300) backbone with feature maps
at 19x19 (block_13_expand_relu) and 10x10 (out_relu), four extra stride-2 inverted-bottleneck layers (5, 3, 2,
1), and depthwise-separable box and class heads (3 then 6 anchors per cell, 91 classes: 1917 anchors). Weights
are random (timing only); it is converted to full int8 with a representative set and cached under build/, twice:
with a uint8 input (the usual SSDLite int8 export: its graph starts with a uint8 -> int8 QUANTIZE op) and with an
int8 input like the default model's. The like-for-like ratio (both int8 inputs) is the headline; the ratio against
the uint8-input export is printed too. Its post-processing (TFLite_Detection_PostProcess) is not included, which
flatters the baseline.

Usage: .venv/bin/python bench/ssdlite_baseline.py [--model BUNDLE] [--also OTHER_BUNDLE] [--threads 2] [--runs 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "ssdlite_mobilenetv2_300_int8.tflite"  # uint8 input
CACHE_INT8_INPUT = REPO / "build" / "ssdlite_mobilenetv2_300_int8_in8.tflite"
SSD_U8, SSD_I8 = "ssdlite_mobilenetv2_300", "ssdlite_mobilenetv2_300_int8_input"
NUM_CLASSES = 91


def build_ssdlite_keras() -> Any:
    """SSDLite-MobileNetV2-300 with random weights (Keras 3)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((300, 300, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    backbone = keras.applications.MobileNetV2(input_shape=(300, 300, 3), alpha=1.0, include_top=False,
                                              weights=None)
    feats_model = keras.Model(backbone.input, [backbone.get_layer("block_13_expand_relu").output,
                                               backbone.get_layer("out_relu").output])
    f19, f10 = feats_model(x)

    def relu6_bn(t: Any) -> Any:
        return layers.ReLU(6.0)(layers.BatchNormalization()(t))

    feats = [f19, f10]
    t = f10
    for depth in (512, 256, 256, 128):
        t = relu6_bn(layers.Conv2D(depth // 2, 1, use_bias=False)(t))
        t = relu6_bn(layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(t))
        t = relu6_bn(layers.Conv2D(depth, 1, use_bias=False)(t))
        feats.append(t)
    boxes: list[Any] = []
    classes: list[Any] = []
    for i, f in enumerate(feats):
        anchors = 3 if i == 0 else 6
        for n, out in ((4, boxes), (NUM_CLASSES, classes)):
            h = relu6_bn(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(f))
            h = layers.Conv2D(anchors * n, 1)(h)
            out.append(layers.Reshape((-1, n))(h))
    box = layers.Concatenate(axis=1, name="box_encodings")(boxes)
    cls = layers.Activation("sigmoid")(layers.Concatenate(axis=1)(classes))
    return keras.Model(inp, [box, cls], name="ssdlite_mobilenetv2_300")


def ssdlite_int8(cache: Path = CACHE, input_type: str = "uint8") -> bytes:
    """The int8 SSDLite model with a uint8 or int8 input, built and converted once, then read from the cache."""
    if cache.exists():
        return cache.read_bytes()
    import tensorflow as tf

    model = build_ssdlite_keras()

    def representative() -> Any:
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.integers(0, 256, (1, 300, 300, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8 if input_type == "int8" else tf.uint8
    conv.inference_output_type = tf.uint8
    data = conv.convert()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(cache)
    return data


def _fill_input(interpreter: Any, frame: np.ndarray) -> None:
    import cv2

    d = interpreter.get_input_details()[0]
    _, h, w, _ = (int(v) for v in d["shape"])
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    if d["dtype"] == np.float32:
        interpreter.set_tensor(d["index"], (img.astype(np.float32) / 255.0)[None])
        return
    from edge.detector import PixelMap  # the device's own mapping for a quantized input

    dtype = np.dtype(d["dtype"])
    PixelMap.for_input(dtype.name, float(d["quantization"][0]), int(d["quantization"][1])).apply(img)
    interpreter.set_tensor(d["index"], img.view(dtype)[None])


def time_models(models: dict[str, bytes], threads: int, runs: int, frame: np.ndarray) -> dict[str, Any]:
    """Interleaved invoke timings (ms) of each model with the same runtime and threads."""
    from edge.runtime import make_interpreter

    its, infos = {}, {}
    for name, data in models.items():
        its[name], infos[name] = make_interpreter(data, threads)
        _fill_input(its[name], frame)
        for _ in range(3):
            its[name].invoke()
    ms: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            ms[name].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {}
    for name in models:
        a = np.asarray(ms[name])
        info = infos[name]
        out[name] = {"min_ms": round(float(a.min()), 3), "p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
                     "mean_ms": round(float(a.mean()), 3), "runtime": f"{info.name} {info.version}",
                     "xnnpack": info.xnnpack, "partitions": info.delegated_partitions, "threads": info.threads,
                     "model_bytes": len(models[name]),
                     "input_dtype": np.dtype(its[name].get_input_details()[0]["dtype"]).name}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", help="bundle to compare (default: the built-in default bundle)")
    ap.add_argument("--also", action="append", default=[], metavar="BUNDLE",
                    help="another bundle timed in the same interleaved run, e.g. the previous version (repeatable)")
    ap.add_argument("--keys", action="append", default=[], help="extra trusted key folder")
    ap.add_argument("--dev-allow-unsigned-models", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle

    path = Path(args.model) if args.model else DEFAULT_BUNDLE
    for p in (path, *map(Path, args.also)):
        if not p.exists():
            print(f"ssdlite_baseline: error: bundle {p} does not exist", file=sys.stderr)
            return 2
    keys = load_public_keys([BUILTIN_KEYS, *args.keys])
    bundle = read_bundle(path, keys, allow_unsigned=args.dev_allow_unsigned_models)
    others = {f"{b.manifest.name} v{b.manifest.version} ({p.name})": b.model_bytes
              for p in map(Path, args.also)
              for b in [read_bundle(p, keys, allow_unsigned=args.dev_allow_unsigned_models)]}
    if not args.json:
        print("building/loading the int8 SSDLite-MobileNetV2-300 (cached in build/) ...", file=sys.stderr)
    t0 = time.monotonic()
    ssd = ssdlite_int8()
    ssd_i8 = ssdlite_int8(CACHE_INT8_INPUT, "int8")
    build_s = time.monotonic() - t0
    try:
        from convert.synth import make_shelf_image

        frame = make_shelf_image(np.random.default_rng(0), width=640, height=480).image
    except ImportError:
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    label = f"{bundle.manifest.name} v{bundle.manifest.version}"
    res = time_models({SSD_U8: ssd, SSD_I8: ssd_i8, label: bundle.model_bytes, **others}, args.threads, args.runs, frame)
    base = SSD_I8 if res[label]["input_dtype"] == "int8" else SSD_U8  # like for like: the same input type
    ratio = res[label]["p50_ms"] / res[base]["p50_ms"]
    ratio_min = res[label]["min_ms"] / res[base]["min_ms"]
    report = {"models": res, "baseline": base, "default_over_ssdlite_p50": round(ratio, 4),
              "default_over_ssdlite_min": round(ratio_min, 4),
              "default_over_ssdlite_uint8_input_p50": round(res[label]["p50_ms"] / res[SSD_U8]["p50_ms"], 4),
              "also_over_ssdlite_p50": {n: round(res[n]["p50_ms"] / res[base]["p50_ms"], 4) for n in others},
              "target": 0.25, "meets_target": ratio <= 0.25,
              "runs": args.runs, "threads": args.threads, "ssdlite_build_or_load_s": round(build_s, 1)}
    if args.json:
        print(json.dumps(report))
    else:
        for name, r in res.items():
            print(f"{name:<28} min {r['min_ms']:7.2f} ms  p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  {r['model_bytes'] / 1e6:.2f} MB  "
                  f"{r['runtime']}, XNNPACK {r['xnnpack']} ({r['partitions']} partition{'' if r['partitions'] == 1 else 's'}), {r['threads']} threads")
        print(f"default / SSDLite with a uint8 input: p50 {report['default_over_ssdlite_uint8_input_p50']:.3f}")
        print(f"default / {base} latency (same input type): p50 {ratio:.3f}, min {ratio_min:.3f}  "
              f"(target <= 0.25 at p50: {'met' if ratio <= 0.25 else 'NOT met'}; min is the less load-sensitive figure)")
        for n, r in report["also_over_ssdlite_p50"].items():
            print(f"{n} / {base}: p50 {r:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
