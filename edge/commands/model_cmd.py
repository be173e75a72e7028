"""`shelfscout model inspect|verify BUNDLE`: show what a bundle holds, or check everything a device would check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.commands.detect import load_bundle_from_args, read_bundle_one_line, stdout_gone
from edge.config import default_threads


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="inspect or verify a model bundle")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    i = msub.add_parser("inspect", help="manifest summary, model I/O, metrics, signer and runtime")
    i.add_argument("bundle", metavar="BUNDLE", help="bundle tar or folder")
    i.add_argument("--keys", metavar="DIR", action="append", default=[], help="extra folder of trusted *.pub keys")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--threads", type=int, default=default_threads(),
                   help="interpreter threads (default: usable cores - 1, at most 4)")
    i.set_defaults(func=inspect_cmd)

    v = msub.add_parser(
        "verify", help="check signature, hashes, I/O signature and golden vectors; non-zero exit on any mismatch"
    )
    v.add_argument("bundle", metavar="BUNDLE", help="bundle tar or folder")
    v.add_argument("--keys", metavar="DIR", action="append", default=[], help="extra folder of trusted *.pub keys")
    v.add_argument("--threads", type=int, default=default_threads(),
                   help="interpreter threads (default: usable cores - 1, at most 4)")
    v.set_defaults(func=verify_cmd)


def _load_any(args: argparse.Namespace) -> tuple[Any, str]:
    """The bundle, hashes checked, and a note on its signature (inspect shows unsigned bundles too)."""
    from edge.bundle import BUILTIN_KEYS, BundleError, load_public_keys, read_bundle

    keys = load_public_keys([BUILTIN_KEYS, *[Path(k) for k in args.keys]])
    path = Path(args.bundle)
    try:
        b = read_bundle_one_line(read_bundle, path, keys)
        return b, f"valid, signed by {b.signed_by}"
    except BundleError as e:
        reason = str(e)
        if "signature" not in reason and "unsigned" not in reason and "no trusted keys" not in reason:
            raise
    b = read_bundle_one_line(read_bundle, path, keys, allow_unsigned=True)
    return b, f"NOT VERIFIED ({reason.split(': ', 1)[-1]})"


def _io_rows(interpreter: Any) -> list[dict[str, Any]]:
    rows = []
    for kind, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        for d in details:
            rows.append({
                "kind": kind,
                "tensor": str(d["name"]),
                "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
            })
    return rows


def inspect_cmd(args: argparse.Namespace) -> int:
    from edge.runtime import make_interpreter

    bundle, sig = _load_any(args)
    m = bundle.manifest
    interpreter, rt = make_interpreter(bundle.model_bytes, args.threads)
    io_rows = _io_rows(interpreter)
    names = [t.name for t in m.output.tensors]
    for row, name in zip([r for r in io_rows if r["kind"] == "output"], names, strict=False):
        row["name"] = name
    summary = {
        "bundle": str(args.bundle),
        "name": m.name,
        "version": m.version,
        "task": m.task,
        "created": m.created,
        "signature": sig,
        "manifest_sha256": bundle.sha256,
        "files": {k: {"bytes": len(bundle.members.get(k, b"")), "sha256": v} for k, v in m.files.items()},
        "input": {"width": m.input.width, "height": m.input.height, "channels": m.input.channels,
                  "color": m.input.color, "dtype": m.input.dtype, "scale": m.input.scale,
                  "zero_point": m.input.zero_point, "resize": m.input.resize},
        "decoding": m.output.decoding,
        "stride": m.output.stride,
        "labels": list(m.labels),
        "thresholds": {"score": m.thresholds.score, "nms_iou": m.thresholds.nms_iou,
                       "max_detections": m.thresholds.max_detections},
        "latency_budget_ms": m.latency_budget_ms,
        "metrics": dict(m.metrics),
        "model_io": io_rows,
        "runtime": {"name": rt.name, "version": rt.version, "xnnpack": rt.xnnpack, "threads": rt.threads,
                    "delegated_partitions": rt.delegated_partitions, "quantized": rt.quantized,
                    "conv_ops": rt.heavy_ops, "conv_ops_on_xnnpack": rt.heavy_ops_delegated},
    }
    if args.json:
        try:
            print(json.dumps(summary, indent=2, default=str), flush=True)
        except BrokenPipeError:
            return stdout_gone()
        return 0
    print(f"{m.name} v{m.version} ({m.task}), created {m.created or '?'}")
    print(f"  bundle     {args.bundle}")
    print(f"  signature  {sig}")
    print("  files      " + ", ".join(f"{k} {v['bytes']} B" for k, v in summary["files"].items()))
    print(f"  input      {m.input.width}x{m.input.height}x{m.input.channels} {m.input.color} {m.input.dtype} "
          f"(scale {m.input.scale:g}, zero point {m.input.zero_point}), frames {m.input.resize}ed")
    print(f"  decoding   {m.output.decoding}" + (f", stride {m.output.stride}" if m.output.stride else "")
          + f", labels {list(m.labels)}")
    print(f"  thresholds score {m.thresholds.score:g}, NMS IoU {m.thresholds.nms_iou:g}, "
          f"max {m.thresholds.max_detections}")
    for r in io_rows:
        label = f" = {r['name']}" if "name" in r else ""
        print(f"  {r['kind']:<6}     {r['tensor']}{label}: {tuple(r['shape'])} {r['dtype']} "
              f"(scale {r['scale']:g}, zp {r['zero_point']})")
    for line in metrics_lines(m.metrics):
        print(line)
    print(f"  runtime    {rt.name} {rt.version}, XNNPACK {'yes' if rt.xnnpack else 'NO'} "
          f"({rt.delegation}), "
          f"{rt.threads} threads, {'int8' if rt.quantized else 'float'} model")
    return 0


_METRIC_COLUMNS = (("AP50", "ap50"), ("P", "precision"), ("R", "recall"), ("F1", "f1"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def metrics_lines(metrics: Any) -> list[str]:
    """The manifest's metrics as text: a table of AP50/P/R/F1 per data set and precision, then the other entries.

    `metrics["sets"]` maps a data set to {"int8": {...}, "float": {...}} (convert's evaluation); any other shape
    is shown as `key: value` lines.
    """
    if not isinstance(metrics, dict) or not metrics:
        return ["  metrics    none in the manifest"]
    out = ["  metrics"]
    sets = metrics.get("sets")
    rest = {k: v for k, v in metrics.items() if k != "sets"}
    if isinstance(sets, dict) and sets:
        width = max(8, *(len(str(k)) for k in sets))
        out.append(f"    {'data set':<{width}}  model " + "".join(f"{h:>8}" for h, _ in _METRIC_COLUMNS))
        for name, by_kind in sets.items():
            if not isinstance(by_kind, dict):
                rest[f"sets.{name}"] = by_kind
                continue
            for kind in sorted(by_kind, key=lambda k: (k != "int8", k != "float", k)):
                row = by_kind[kind]
                if not isinstance(row, dict):
                    continue
                cells = "".join(
                    f"{row[key]:>8.3f}" if isinstance(row.get(key), (int, float)) else f"{'-':>8}"
                    for _, key in _METRIC_COLUMNS
                )
                n = f"  ({row['images']} images)" if "images" in row else ""
                out.append(f"    {name:<{width}}  {kind:<5} {cells}{n}")
    elif sets is not None:
        rest["sets"] = sets
    for k, v in rest.items():
        out.append(f"    {k}: {_fmt(v)}")
    return out


def verify_cmd(args: argparse.Namespace) -> int:
    from edge.bundle import BundleError
    from edge.cli import CliError
    from edge.detector import Detector

    args.model = args.bundle
    bundle = load_bundle_from_args(args)  # signature and hashes; BundleError is the one-line failure
    print(f"signature: ok (key {bundle.signed_by})", flush=True)
    print(f"hashes: ok ({len(bundle.manifest.files)} files: {', '.join(sorted(bundle.manifest.files))})", flush=True)
    try:
        det = Detector(bundle, threads=args.threads)  # ModelSignatureError on an I/O mismatch
    except BundleError as e:
        raise CliError(f"I/O signature: {e}", code=1) from e
    except (ValueError, RuntimeError) as e:
        raise CliError(f"I/O signature: the runtime cannot load the model: {e}", code=1) from e
    m = bundle.manifest  # the Detector has checked the model's tensors against it
    ins = f"input {m.input.width}x{m.input.height}x{m.input.channels} {m.input.dtype}"
    outs = ", ".join(t.name for t in m.output.tensors)
    print(f"I/O signature: ok ({ins}; outputs {outs}; {m.output.decoding} decoding)", flush=True)
    result = det.check_golden()
    if not result.ok:
        raise CliError(f"golden vectors: {result.detail}", code=1)
    print(f"golden vectors: ok ({result.detail})")
    print(f"{m.name} v{m.version}: verified on {det.runtime.describe()}")
    return 0
