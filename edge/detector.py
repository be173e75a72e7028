"""Runs one bundle's int8 model on RGB frames: checks its I/O against the manifest, preprocesses in place, decodes.

Hot path without copies: `preprocess` resizes the frame straight into the interpreter's input tensor view, and
`outputs` dequantizes into float32 buffers allocated once. The interpreter refuses to run while a numpy view of
its buffers is alive, so every view is taken, used and dropped inside one method.

Thread safety: a `Detector` owns one interpreter and its buffers; use one `Detector` per thread. `invoke()`
releases the GIL, so a capture thread keeps running while the model does.

Input pixel mapping. Frames are uint8 RGB. For a quantized input (uint8/int8) the manifest's `scale` and
`zero_point` are the tensor's quantization, checked against the model; the model's real input range is [0, 1]
when `scale * (qmax - zero_point) <= 1.5`, else [0, 255], and each pixel p becomes round(p * norm / scale + zp)
through a 256-entry lookup table. Two mappings skip the table: the identity (uint8, scale 1.0, zero point 0) and
p - 128 (int8, scale 1.0, zero point -128, the built-in model's input), which is p with its top bit flipped: one
XOR over the frame, ~20x cheaper than the table, on the prepare thread instead of a QUANTIZE op inside the model.
For a float32 input, `scale` and `zero_point` are the pixel normalisation: value = p * scale + zero_point.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.bundle import GOLDEN, Bundle, BundleError, Manifest
from edge.decoders import DECODERS
from edge.resize import Letterbox, Resizer
from edge.runtime import RuntimeInfo, make_interpreter
from edge.types import Gap

log = logging.getLogger(__name__)

GOLDEN_TOLERANCE_STEPS = 2  # raw quantized outputs may differ by this many steps on the kernels that made them
# Other kernels round int8 arithmetic differently and the differences add up through the layers: the runtimes'
# built-in kernels (no XNNPACK: tflite-runtime, a failed XNNPACK start) against XNNPACK gave the shipped model's
# box output a mean of 0.8 steps, 99 % within 6, up to 36 (x86 and an emulated Cortex-A72 alike; built-in kernels
# differ between those two CPUs as much). A model with other weights is 5-10 steps off on average. So with other
# kernels the golden check asks for the same function, not the same last bit: per output, a mean within 2 steps and
# 99 % of the values within 12. XNNPACK itself gave the same bits on x86 and emulated Cortex-A53, A72 and A76.
OTHER_KERNELS_MEAN_STEPS = 2.0
OTHER_KERNELS_P99_STEPS = 12.0
KERNELS_XNNPACK, KERNELS_BUILTIN = "xnnpack", "builtin"  # golden.npz's `kernels`: what computed its outputs
REQUIRED_OUTPUTS = {"ssd": ("boxes", "classes", "scores", "count"), "yolo": ("predictions",)}
_QUANT_INPUTS = ("uint8", "int8")
_IDENTITY = np.arange(256, dtype=np.uint8)
_TOP_BIT = np.uint8(0x80)


def _float_tolerance(want: np.ndarray) -> float:
    """How far a float output may be from its golden value, on any kernels: 2 % of the output's range."""
    return 1e-3 + 0.02 * float(np.max(np.abs(want), initial=1.0))


class ModelSignatureError(BundleError):
    """The model's inputs or outputs do not match what its manifest says."""


@dataclass(frozen=True)
class GoldenResult:
    """Outcome of running the bundle's golden vectors: ok, the largest raw difference (quantization steps for
    quantized outputs, real units for float ones) and a one-line detail."""

    ok: bool
    max_abs_diff: float
    detail: str


@dataclass(frozen=True)
class _OutputPlan:
    name: str
    index: int
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    quantized: bool


def _dtype_name(dt: Any) -> str:
    return np.dtype(dt).name


def _shape(s: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in s)


@dataclass(frozen=True, eq=False)
class PixelMap:
    """How uint8 camera pixels become the bytes of a quantized input tensor (see the module docstring): as they
    are, with the top bit flipped (p - 128), or through a 256-entry table. `apply` rewrites pixels in place."""

    table: np.ndarray | None  # None: no table (identity, or the top-bit flip)
    flip_top_bit: bool = False

    @staticmethod
    def for_input(dtype: str, scale: float, zero_point: int) -> PixelMap:
        """The mapping for a uint8 or int8 input tensor with this quantization."""
        if dtype not in _QUANT_INPUTS:
            raise ValueError(f"no pixel mapping for a {dtype} input (quantized inputs are uint8 or int8)")
        info = np.iinfo(np.dtype(dtype))
        # the real-valued range the input covers tells which pixel normalisation the model was trained with
        lo, hi = scale * (info.min - zero_point), scale * (info.max - zero_point)
        p = np.arange(256, dtype=np.float64)
        if hi <= 1.5 and lo < -0.5:
            real = p / 127.5 - 1.0  # -1..1: TF Object Detection API SSDs, MobileNets
        elif hi <= 1.5:
            real = p / 255.0  # 0..1: Ultralytics YOLO exports
        elif lo >= -0.25 * hi:
            real = p  # 0..255: this project's models, EfficientDet-Lite
        else:
            raise ValueError(f"the model's input covers {lo:g}..{hi:g}, which is none of the pixel ranges a camera "
                             "frame is mapped to (0..1, -1..1 or 0..255)")
        bits = np.clip(np.rint(real / scale + zero_point), info.min, info.max).astype(dtype).view(np.uint8)
        if np.array_equal(bits, _IDENTITY):
            return PixelMap(None)
        if np.array_equal(bits, _IDENTITY ^ _TOP_BIT):
            return PixelMap(None, flip_top_bit=True)
        return PixelMap(bits.copy())

    def apply(self, pixels: np.ndarray) -> None:
        """Map uint8 `pixels` in place (one XOR for the flip, ~20x cheaper than the table)."""
        if self.flip_top_bit:
            np.bitwise_xor(pixels, _TOP_BIT, out=pixels)
        elif self.table is not None:
            cv2.LUT(pixels, self.table, dst=pixels)


class Detector:
    """One bundle's model, ready to run: preprocess -> invoke -> outputs/decode, or `detect` for all three."""

    def __init__(
        self,
        bundle: Bundle,
        threads: int = 2,
        score_threshold: float | None = None,
        runtimes: tuple[str, ...] | None = None,
        use_xnnpack: bool = True,
    ):
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        if self.manifest.output.decoding not in DECODERS:
            raise ModelSignatureError(f"no decoder for output decoding {self.manifest.output.decoding!r}")
        thr = self.manifest.thresholds.score if score_threshold is None else float(score_threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"score threshold must be between 0 and 1, got {thr}")
        self.score_threshold = thr
        self._interpreter, runtime = make_interpreter(bundle.model_bytes, threads, runtimes, use_xnnpack)
        self.runtime: RuntimeInfo = runtime
        spec = self.manifest.input
        self.input_size: tuple[int, int] = (spec.width, spec.height)
        self._check_signature()
        in_detail = self._interpreter.get_input_details()[0]
        self._in_index = int(in_detail["index"])
        self._in_dtype = _dtype_name(in_detail["dtype"])
        quantized_input = self._in_dtype in _QUANT_INPUTS
        self._pixels = PixelMap.for_input(self._in_dtype, spec.scale, spec.zero_point) if quantized_input else None
        self._in_np_dtype = np.dtype(self._in_dtype)
        self._bgr = spec.color.upper() == "BGR"
        self._resizer: Resizer | None = None  # for the last frame size (one preparing thread at a time)
        self._letterbox = spec.resize == "letterbox"  # aspect kept, grey bands (Ultralytics models), else squashed
        self._placements: dict[tuple[int, int], tuple[float, float, float, float]] = {}
        self._box: Letterbox | None = None  # where the last frame size lands in the input, when letterboxed
        # float inputs need one uint8 scratch image; quantized ones are written in place
        self._scratch = (
            np.empty((spec.height, spec.width, 3), np.uint8) if not quantized_input else None
        )
        self._outputs = self._plan_outputs()
        self._outputs_integer = all(o.quantized for o in self._outputs)  # read per frame by the pipeline
        self._out_buffers = {o.name: np.empty(o.shape, np.float32) for o in self._outputs}
        self._decode_fn = DECODERS[self.manifest.output.decoding]

    # ---- load-time checks -------------------------------------------------------------------------------------
    def _check_signature(self) -> None:
        m, it = self.manifest, self._interpreter
        ins, outs = it.get_input_details(), it.get_output_details()
        where = f"model {m.name!r} v{m.version}"
        if len(ins) != 1:
            raise ModelSignatureError(f"{where}: model has {len(ins)} inputs, a shelfscout model has exactly 1")
        d = ins[0]
        want = (1, m.input.height, m.input.width, m.input.channels)
        got = _shape(d["shape"])
        if got != want:
            raise ModelSignatureError(f"{where}: input shape is {got} in the model, manifest says {want}")
        if m.input.channels != 3:
            raise ModelSignatureError(f"{where}: input has {m.input.channels} channels; only 3 (RGB/BGR) is supported")
        if m.input.color.upper() not in ("RGB", "BGR"):
            raise ModelSignatureError(f"{where}: input colour order {m.input.color!r} must be RGB or BGR")
        dt = _dtype_name(d["dtype"])
        if dt != m.input.dtype:
            raise ModelSignatureError(f"{where}: input dtype is {dt} in the model, manifest says {m.input.dtype}")
        if dt in _QUANT_INPUTS:
            scale, zp = float(d["quantization"][0]), int(d["quantization"][1])
            if not np.isclose(scale, m.input.scale, rtol=1e-5, atol=0.0) or zp != m.input.zero_point:
                raise ModelSignatureError(
                    f"{where}: input quantization is (scale {scale:g}, zero point {zp}) in the model, "
                    f"manifest says (scale {m.input.scale:g}, zero point {m.input.zero_point})"
                )
        elif dt != "float32":
            raise ModelSignatureError(f"{where}: input dtype {dt} is not supported (uint8, int8 or float32)")
        specs = m.output.tensors
        if len(outs) != len(specs):
            raise ModelSignatureError(
                f"{where}: model has {len(outs)} outputs, manifest lists {len(specs)} ({', '.join(s.name for s in specs)})"
            )
        for i, (o, s) in enumerate(zip(outs, specs, strict=True)):
            oshape, odt = _shape(o["shape"]), _dtype_name(o["dtype"])
            if oshape != tuple(s.shape):
                raise ModelSignatureError(
                    f"{where}: output #{i} {s.name!r} has shape {oshape} in the model, manifest says {tuple(s.shape)}"
                )
            if odt != s.dtype:
                raise ModelSignatureError(
                    f"{where}: output #{i} {s.name!r} has dtype {odt} in the model, manifest says {s.dtype}"
                )
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ModelSignatureError(f"{where}: manifest output names repeat: {names}")
        need = REQUIRED_OUTPUTS.get(m.output.decoding, ())
        missing = [n for n in need if n not in names]
        if missing:
            raise ModelSignatureError(
                f"{where}: {m.output.decoding} decoding needs outputs named {list(need)}; manifest lacks {missing}"
            )

    def _plan_outputs(self) -> tuple[_OutputPlan, ...]:
        plans = []
        for o, s in zip(self._interpreter.get_output_details(), self.manifest.output.tensors, strict=True):
            scale, zp = float(o["quantization"][0]), int(o["quantization"][1])
            quantized = _dtype_name(o["dtype"]) in ("uint8", "int8", "int16") and scale != 0.0
            plans.append(_OutputPlan(s.name, int(o["index"]), _shape(o["shape"]), scale, zp, quantized))
        return tuple(plans)

    # ---- hot path ---------------------------------------------------------------------------------------------
    def preprocess(self, image_rgb: np.ndarray) -> None:
        """Resize an RGB uint8 frame straight into the input tensor (colour order and pixel mapping applied)."""
        view = self._interpreter.tensor(self._in_index)()[0]
        if self._scratch is None:
            self._prepare_into(image_rgb, view if view.dtype == np.uint8 else view.view(np.uint8))
        else:
            self._prepare_into(image_rgb, self._scratch)
            self._scale_into(self._scratch, view)
        del view

    def staging_buffer(self) -> np.ndarray:
        """A new HxWx3 uint8 buffer for `prepare` (allocate a few once, then reuse them)."""
        w, h = self.input_size
        return np.empty((h, w, 3), np.uint8)

    def prepare(self, image_rgb: np.ndarray, staging: np.ndarray) -> None:
        """Do all of `preprocess` into a staging buffer, so it can run on another thread while the model runs."""
        self._prepare_into(image_rgb, staging)

    def load(self, staging: np.ndarray) -> None:
        """Copy a prepared staging buffer into the input tensor (a memcpy for quantized inputs).

        For a quantized input the runtime's own `set_tensor` copies it (the staging bytes viewed as the tensor's
        dtype): it keeps the GIL for the ~20 us copy, where numpy's copy would release it and then wait for it back
        behind the post-processing thread (measured: 0.29 ms per frame on the inference thread)."""
        if self._scratch is None:
            self._interpreter.set_tensor(self._in_index, staging.view(self._in_np_dtype)[np.newaxis])
            return
        view = self._interpreter.tensor(self._in_index)()[0]
        self._scale_into(staging, view)
        del view

    def _prepare_into(self, image_rgb: np.ndarray, dst: np.ndarray) -> None:
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
        w, h = self.input_size
        src_w, src_h = image_rgb.shape[1], image_rgb.shape[0]
        resizer, box = self._resizer, self._box
        if resizer is None or resizer.src != (src_w, src_h):
            box = self._box = Letterbox.fit(src_w, src_h, w, h) if self._letterbox else None
            resizer = self._resizer = Resizer(src_w, src_h, *((box.w, box.h) if box else (w, h)))
        resizer(image_rgb, box.fill(dst) if box else dst)
        if self._bgr:
            cv2.cvtColor(dst, cv2.COLOR_RGB2BGR, dst=dst)
        if self._pixels is not None:
            self._pixels.apply(dst)

    def _scale_into(self, pixels: np.ndarray, view: np.ndarray) -> None:
        np.multiply(pixels, np.float32(self.manifest.input.scale), out=view, casting="unsafe")
        if self.manifest.input.zero_point:
            view += np.float32(self.manifest.input.zero_point)

    def input_pointer(self) -> int:
        """The address of the input tensor's buffer (tests check that it never moves)."""
        view = self._interpreter.tensor(self._in_index)()
        ptr = int(view.ctypes.data)
        del view
        return ptr

    def invoke(self) -> None:
        """Run the model on the current input tensor (the runtime releases the GIL while it runs)."""
        self._interpreter.invoke()

    @property
    def outputs_always_finite(self) -> bool:
        """Every output is an integer tensor, so its dequantized values cannot be NaN or infinite."""
        return self._outputs_integer

    def raw_outputs(self) -> dict[str, np.ndarray]:
        """Copies of the raw (quantized) output tensors by manifest name."""
        out = {}
        for o in self._outputs:
            view = self._interpreter.tensor(o.index)()
            out[o.name] = np.array(view, copy=True)
            del view
        return out

    def outputs(self) -> dict[str, np.ndarray]:
        """Dequantized float32 outputs by manifest name, batch dimension kept.

        The arrays are buffers reused by the next call: copy what you keep beyond the next frame.
        """
        return self.outputs_into(self._out_buffers)

    def output_buffers(self) -> dict[str, np.ndarray]:
        """A new set of float32 buffers shaped like the outputs, for `outputs_into` (allocate a few once)."""
        return {k: np.empty_like(v) for k, v in self._out_buffers.items()}

    def outputs_into(self, dst: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Dequantize the current outputs straight into `dst` (buffers from `output_buffers`); returns `dst`."""
        for o in self._outputs:
            buf = dst[o.name]
            view = self._interpreter.tensor(o.index)()
            np.copyto(buf, view, casting="unsafe")
            del view
            if o.quantized:
                if o.zero_point:
                    buf -= np.float32(o.zero_point)
                buf *= np.float32(o.scale)
        return dst

    def decode(self, orig_w: int, orig_h: int) -> list[Gap]:
        """The gaps in the current outputs, with boxes scaled to an original image of orig_w x orig_h pixels."""
        return self.decode_outputs(self.outputs(), orig_w, orig_h)

    def decode_outputs(self, outputs: dict[str, np.ndarray], orig_w: int, orig_h: int) -> list[Gap]:
        """Decode outputs copied earlier (the pipeline decodes frame k while frame k+1 is being invoked)."""
        boxes, scores = self._decode_fn(outputs, self.manifest, self.score_threshold)
        # input pixels -> the frame's (squashed: scaled; letterboxed: the bands taken off first), clipped to the
        # frame, empty boxes dropped, for either resize (a user's decoder may give boxes past the input's edges)
        px, py, pw, ph = self._placement(orig_w, orig_h)
        sx, sy = orig_w / pw, orig_h / ph
        b = np.asarray(boxes, np.float64).reshape(-1, 4) - [px, py, px, py]
        b = np.clip(b * [sx, sy, sx, sy], 0.0, [orig_w, orig_h, orig_w, orig_h])
        return [Gap(float(x0), float(y0), float(x1), float(y1), float(s))
                for (x0, y0, x1, y1), s in zip(b, scores, strict=True) if x1 > x0 and y1 > y0]

    def _placement(self, orig_w: int, orig_h: int) -> tuple[float, float, float, float]:
        """Where a frame of orig_w x orig_h sits in the model's input: (x0, y0, width, height), input pixels.
        Worked out once per frame size (the decode thread asks for every frame)."""
        key = (orig_w, orig_h)
        got = self._placements.get(key)
        if got is None:
            w, h = self.input_size
            if self._letterbox:
                box = Letterbox.fit(orig_w, orig_h, w, h)
                got = (float(box.x0), float(box.y0), float(box.w), float(box.h))
            else:
                got = (0.0, 0.0, float(w), float(h))
            self._placements[key] = got
        return got

    def detect(self, image_rgb: np.ndarray) -> list[Gap]:
        """preprocess + invoke + decode for one RGB frame; boxes in the frame's pixels."""
        self.preprocess(image_rgb)
        self.invoke()
        return self.decode(image_rgb.shape[1], image_rgb.shape[0])

    # ---- golden vectors ---------------------------------------------------------------------------------------
    def check_golden(self) -> GoldenResult:
        """Run the bundle's golden inputs and compare the raw outputs with the stored ones, within 2 steps."""
        data = self.bundle.members.get(GOLDEN)
        if data is None:
            return GoldenResult(False, float("inf"), f"bundle has no {GOLDEN}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                golden = {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            return GoldenResult(False, float("inf"), f"{GOLDEN} is unreadable: {e}")
        inputs = golden.get("input_0")
        if inputs is None or inputs.ndim != 4 or len(inputs) == 0:
            return GoldenResult(False, float("inf"), f"{GOLDEN} has no input_0 of shape (N, H, W, C)")
        if inputs.dtype != np.uint8 or inputs.shape[-1] != 3:
            return GoldenResult(False, float("inf"), f"{GOLDEN} input_0 is {inputs.dtype} {inputs.shape}, not RGB uint8")
        n = len(inputs)
        for o in self._outputs:
            g = golden.get(f"output_{o.name}")
            if g is None:
                return GoldenResult(False, float("inf"), f"{GOLDEN} has no output_{o.name}")
            if g.shape not in ((n, *o.shape), (n, *o.shape[1:])):
                return GoldenResult(
                    False, float("inf"), f"{GOLDEN} output_{o.name} has shape {g.shape}, expected ({n}, *{o.shape})"
                )
        made = str(golden["kernels"]) if "kernels" in golden else KERNELS_XNNPACK  # bundles before it was recorded
        here = self.kernels
        diffs: dict[str, list[np.ndarray]] = {o.name: [] for o in self._outputs}
        for i in range(n):
            self.preprocess(np.ascontiguousarray(inputs[i]))
            self.invoke()
            raw = self.raw_outputs()
            for o in self._outputs:
                got = raw[o.name].reshape(-1).astype(np.float64)
                want = golden[f"output_{o.name}"][i].reshape(-1).astype(np.float64)
                diffs[o.name].append(np.abs(got - want))
        if made == here == KERNELS_XNNPACK:
            return self._golden_exact(golden, diffs, n)
        return self._golden_other_kernels(golden, diffs, n, made, here)

    @property
    def kernels(self) -> str:
        """Which kernels run the model: XNNPACK (when it takes the graph) or the runtime's built-in ones."""
        return KERNELS_XNNPACK if self.runtime.xnnpack else KERNELS_BUILTIN

    def _golden_exact(self, golden: dict[str, np.ndarray], diffs: dict[str, list[np.ndarray]], n: int) -> GoldenResult:
        """The kernels that made the golden outputs: every value within GOLDEN_TOLERANCE_STEPS."""
        # the worst tensor is the one closest to (or furthest past) its tolerance
        worst_ratio, worst, worst_tol, worst_where, worst_unit = -1.0, 0.0, 0.0, "", "steps"
        for o in self._outputs:
            for i, d in enumerate(diffs[o.name]):
                diff = float(d.max()) if d.size else 0.0
                if o.quantized:
                    tol, unit = float(GOLDEN_TOLERANCE_STEPS), "steps"
                else:
                    tol, unit = _float_tolerance(golden[f"output_{o.name}"][i]), "(float)"
                if diff / tol > worst_ratio:
                    worst_ratio, worst, worst_tol, worst_unit = diff / tol, diff, tol, unit
                    worst_where = f"{o.name} on golden input {i}"
        ok = worst_ratio <= 1.0
        verdict = "within" if ok else "OUTSIDE"
        detail = (
            f"{n} golden inputs: max diff {worst:g} {worst_unit} at {worst_where}, {verdict} "
            f"the tolerance of {worst_tol:g}"
        )
        return GoldenResult(ok, worst, detail)

    def _golden_other_kernels(self, golden: dict[str, np.ndarray], diffs: dict[str, list[np.ndarray]], n: int,
                              made: str, here: str) -> GoldenResult:
        """Golden outputs made on other kernels: the same function within their rounding (see OTHER_KERNELS_*)."""
        ok, worst, parts = True, 0.0, []
        for o in self._outputs:
            d = np.concatenate(diffs[o.name]) if diffs[o.name] else np.zeros(1)
            worst = max(worst, float(d.max(initial=0.0)))
            if o.quantized:
                mean, p99 = float(d.mean()), float(np.percentile(d, 99))
                fits = mean <= OTHER_KERNELS_MEAN_STEPS and p99 <= OTHER_KERNELS_P99_STEPS
                parts.append(f"{o.name} mean {mean:.2f} steps, 99 % within {p99:g} (max {d.max():g})")
            else:
                tol = _float_tolerance(golden[f"output_{o.name}"])
                fits = float(d.max(initial=0.0)) <= tol
                parts.append(f"{o.name} max {d.max():g} (float, tolerance {tol:g})")
            ok = ok and fits
        verdict = "within" if ok else "OUTSIDE"
        detail = (
            f"{n} golden inputs made on {made} kernels, run here on {here} ones, which round differently: "
            f"{'; '.join(parts)}; {verdict} the tolerance for other kernels (mean {OTHER_KERNELS_MEAN_STEPS:g} "
            f"steps, 99 % within {OTHER_KERNELS_P99_STEPS:g})"
        )
        return GoldenResult(ok, worst, detail)
