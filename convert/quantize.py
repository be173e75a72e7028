"""Full-integer int8 conversion of a Keras model with a representative dataset, and the float-vs-int8 parity check.

The converted model's input is int8 with scale 1.0 and zero point -128 (the graph's own Rescaling sees 0..255),
so a camera pixel p goes in as p - 128: the device flips each byte's top bit, one XOR, instead of paying the
uint8 -> int8 QUANTIZE op that a uint8 input puts at the head of the graph and that XNNPACK does not run (0.3 ms
of a 2.7 ms invoke at 320x320 here). `input_type="uint8"` keeps a raw uint8 input. Outputs are int8, each with
its own scale. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a converted model, as the interpreter reports it."""

    name: str  # logical name (the Keras output name) where known, else the interpreter's
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


def convert_int8(
    model: Any, representative: Sequence[np.ndarray], output_type: str = "int8", input_type: str = "int8"
) -> bytes:
    """Convert to a full-integer TFLite model: int8 (or uint8) input, int8 (or uint8) outputs, int8 kernels only.

    `representative` holds uint8 RGB images already at the model's input size.
    """
    import tensorflow as tf

    if not representative:
        raise ValueError("the representative dataset is empty")
    if output_type not in ("int8", "uint8"):
        raise ValueError(f"output_type must be int8 or uint8, got {output_type!r}")
    if input_type not in ("int8", "uint8"):
        raise ValueError(f"input_type must be int8 or uint8, got {input_type!r}")
    h, w = int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2])
    for im in representative:
        if im.shape != (h, w, 3) or im.dtype != np.uint8:
            raise ValueError(f"representative images must be uint8 ({h}, {w}, 3), got {im.dtype} {im.shape}")

    def rep() -> Any:
        for im in representative:
            yield [im[None].astype(np.float32)]

    # The Keras export prints its signature (some 180 lines of "Captures") to stdout: kept out of the commands'
    # JSON on stdout and out of the user's way on stderr.
    # TF warns that an int8/uint8 input "expected statistics" (the old TOCO mean/std flags); with a representative
    # dataset the calibrated range sets the input's scale and zero point (1.0 and -128 for 0..255 pixels, which
    # the bundle reads back from the model), so the warning says nothing here and is filtered by its text only.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8 if input_type == "int8" else tf.uint8
        conv.inference_output_type = tf.int8 if output_type == "int8" else tf.uint8
        return bytes(conv.convert())


def make_interpreter(model_bytes: bytes, threads: int = 2) -> Any:
    """An interpreter with tensors allocated, from the runtime the device would pick (`edge.runtime`), so parity
    and golden figures are measured with the kernels a cart runs."""
    from edge.runtime import make_interpreter as device_interpreter

    return device_interpreter(model_bytes, threads)[0]


def output_names(interpreter: Any) -> list[str]:
    """Logical names of the outputs in the interpreter's output order (from the serving signature when present)."""
    details = interpreter.get_output_details()
    sigs = interpreter.get_signature_list()
    if len(sigs) == 1:
        sig_name = next(iter(sigs))
        runner_out = interpreter.get_signature_runner(sig_name).get_output_details()
        by_index = {d["index"]: name for name, d in runner_out.items()}
        if all(d["index"] in by_index for d in details):
            return [by_index[d["index"]] for d in details]
    return [str(d["name"]) for d in details]


def describe(model_bytes: bytes) -> tuple[TensorInfo, list[TensorInfo]]:
    """The input and the outputs (in the model's output order) of a TFLite model."""
    it = make_interpreter(model_bytes, threads=1)
    inp = it.get_input_details()[0]
    ins = TensorInfo(
        str(inp["name"]), tuple(int(v) for v in inp["shape"]), np.dtype(inp["dtype"]).name,
        float(inp["quantization"][0]), int(inp["quantization"][1]),
    )
    outs = [
        TensorInfo(n, tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name,
                   float(d["quantization"][0]), int(d["quantization"][1]))
        for n, d in zip(output_names(it), it.get_output_details(), strict=True)
    ]
    return ins, outs


class TFLiteRunner:
    """Runs a quantized TFLite model on uint8 RGB images at its input size (mapped to the input tensor the way the
    device maps them): raw (quantized) and dequantized outputs by name."""

    def __init__(self, model_bytes: bytes, threads: int = 2) -> None:
        from edge.detector import PixelMap

        self.it = make_interpreter(model_bytes, threads)
        self.names = output_names(self.it)
        self.inp = self.it.get_input_details()[0]
        self.outs = self.it.get_output_details()
        self._dtype = np.dtype(self.inp["dtype"])
        scale, zp = self.inp["quantization"]
        self._pixels = PixelMap.for_input(self._dtype.name, float(scale), int(zp))

    def raw(self, image: np.ndarray) -> dict[str, np.ndarray]:
        bits = np.array(image, np.uint8, copy=True)
        self._pixels.apply(bits)
        self.it.set_tensor(self.inp["index"], bits.view(self._dtype)[None])
        self.it.invoke()
        return {n: self.it.get_tensor(d["index"]).copy() for n, d in zip(self.names, self.outs, strict=True)}

    def dequantized(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for (n, q), d in zip(self.raw(image).items(), self.outs, strict=True):
            scale, zp = d["quantization"]
            out[n] = (q.astype(np.float32) - zp) * scale if scale else q.astype(np.float32)
        return out


@dataclass(frozen=True)
class ParityReport:
    """Float against int8 on the same images: output differences and, when labels are given, AP50 of each."""

    images: int
    max_abs_diff: dict[str, float]
    mean_abs_diff: dict[str, float]
    quant_step: dict[str, float]  # each output's int8 scale, for scale
    float_ap50: float | None = None
    int8_ap50: float | None = None
    float_f1: float | None = None
    int8_f1: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        lines = ["# int8 parity: float Keras model vs int8 TFLite model", "", f"Images: {self.images}", ""]
        lines += ["| output | int8 step | max abs diff | mean abs diff |", "|---|---|---|---|"]
        for k in self.max_abs_diff:
            lines.append(
                f"| {k} | {self.quant_step[k]:.5f} | {self.max_abs_diff[k]:.5f} | {self.mean_abs_diff[k]:.5f} |"
            )
        if self.float_ap50 is not None and self.int8_ap50 is not None:
            lines += ["", "| | float | int8 |", "|---|---|---|"]
            lines.append(f"| AP50 | {self.float_ap50:.4f} | {self.int8_ap50:.4f} |")
            if self.float_f1 is not None and self.int8_f1 is not None:
                lines.append(f"| F1 at threshold | {self.float_f1:.4f} | {self.int8_f1:.4f} |")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def output_diffs(
    float_fn: Callable[[np.ndarray], dict[str, np.ndarray]], runner: TFLiteRunner, images: Sequence[np.ndarray]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Max and mean absolute differences per output between the float model and the dequantized int8 outputs."""
    mx: dict[str, float] = {}
    sm: dict[str, float] = {}
    n: dict[str, int] = {}
    for im in images:
        f = float_fn(im)
        q = runner.dequantized(im)
        for k, v in q.items():
            d = np.abs(np.asarray(f[k], np.float32).reshape(v.shape) - v)
            mx[k] = max(mx.get(k, 0.0), float(d.max()))
            sm[k] = sm.get(k, 0.0) + float(d.sum())
            n[k] = n.get(k, 0) + d.size
    step = {str(nm): float(d["quantization"][0]) for nm, d in zip(runner.names, runner.outs, strict=True)}
    return mx, {k: sm[k] / max(n[k], 1) for k in sm}, step


def write_parity(report: ParityReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "parity.json", out_dir / "parity.md"
    j.write_text(report.to_json())
    m.write_text(report.to_markdown())
    return j, m
