"""Wraps a user's own int8 SSD or Ultralytics YOLO `.tflite` into a signed shelfscout bundle with golden vectors.

The model's I/O is read with the device runtime (no TensorFlow needed), the outputs get the logical names the
decoders use, golden vectors are made by running a few generated shelf images through the same `Detector`
code path the device uses, and `edge.bundle.write_bundle` signs and writes the tar.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from convert.bundler import build_time, golden_npz
from edge.bundle import (
    GOLDEN,
    MODEL,
    RESIZES,
    InputSpec,
    Manifest,
    OutputSpec,
    TensorSpec,
    Thresholds,
    load_private_key,
    write_bundle,
)
from edge.runtime import make_interpreter

log = logging.getLogger(__name__)

WRAPPABLE = ("ssd", "yolo")
_POSTPROCESS = re.compile(r"^(?P<base>.*TFLite_Detection_PostProcess)(?::(?P<k>[0-3]))?$")
_SSD_ORDER = ("boxes", "classes", "scores", "count")  # the op's output order, by `:k` suffix


def _shape(s: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in s)


def golden_images(width: int, height: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` RGB uint8 images of the model's input size: generated shelves when convert.synth exists, else noise."""
    rng = np.random.default_rng(seed)
    try:
        from convert.synth import make_shelf_image
    except ImportError:
        return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    return np.stack([make_shelf_image(rng, width=width, height=height).image for _ in range(n)]).astype(np.uint8)


def _yolo_names(outs: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    if len(outs) != 1:
        raise ValueError(f"a YOLO export has one output tensor; this model has {len(outs)}")
    shape = _shape(outs[0]["shape"])
    width = 4 + len(labels)
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"YOLO output shape {shape}: expected (1, 4 + classes, N) or (1, N, 4 + classes), as "
                         "Ultralytics exports a detection model")
    if width not in shape[1:]:
        raise ValueError(
            f"YOLO output shape {shape} has no axis of 4 + {len(labels)} labels = {width}; pass the model's labels"
        )
    return ["predictions"]


def postprocess_num_classes(model_bytes: bytes) -> int | None:
    """`num_classes` of the model's TFLite_Detection_PostProcess op, from its custom options (a flexbuffer map);
    None when there is no such op or the TFLite schema module is not at hand."""
    try:
        from flatbuffers import flexbuffers
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:
        return None
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    custom = {i for i in range(model.OperatorCodesLength())
              if model.OperatorCodes(i).CustomCode() == b"TFLite_Detection_PostProcess"}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            if op.OpcodeIndex() in custom and op.CustomOptionsLength() > 0:
                options = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
                if isinstance(options, dict) and "num_classes" in options:
                    return int(options["num_classes"])
    return None


def _ssd_names(outs: Sequence[dict[str, Any]], interpreter: Any) -> list[str]:
    """Logical names for the four TFLite_Detection_PostProcess outputs, in the model's output order."""
    if len(outs) != 4:
        raise ValueError(f"an SSD model with TFLite_Detection_PostProcess has 4 outputs; this one has {len(outs)}")
    # 1. The op itself says which tensor is which: its outputs are boxes, classes, scores, count in that order.
    try:
        post = [op for op in interpreter._get_ops_details() if op.get("op_name") == "TFLite_Detection_PostProcess"]
    except Exception:  # noqa: BLE001 - a private API; fall through to names and values
        post = []
    if len(post) == 1:
        role = {int(t): n for t, n in zip(post[0]["outputs"], _SSD_ORDER, strict=False)}
        names = [role.get(int(o["index"]), "") for o in outs]
        if sorted(names) == sorted(_SSD_ORDER):
            return names
    # 2. Tensor names that carry the op's output index.
    matches = [_POSTPROCESS.match(str(o["name"])) for o in outs]
    if all(matches):
        names = [_SSD_ORDER[int(m.group("k") or 0)] for m in matches if m]
        if sorted(names) == sorted(_SSD_ORDER):
            return names
    # 3. Tell the tensors apart by shape, then classes from scores by their values.
    names = [""] * 4
    pair: list[int] = []
    for i, o in enumerate(outs):
        shape = _shape(o["shape"])
        if len(shape) == 3 and shape[-1] == 4:
            names[i] = "boxes"
        elif int(np.prod(shape)) == 1:
            names[i] = "count"
        elif len(shape) == 2:
            pair.append(i)
    if sorted(n for n in names if n) != ["boxes", "count"] or len(pair) != 2:
        raise ValueError(f"cannot tell the SSD outputs apart: shapes {[_shape(o['shape']) for o in outs]}")
    a, b = pair
    looks = _classes_or_scores(interpreter, outs[a]["index"], outs[b]["index"])
    if looks == "second-is-classes":
        a, b = b, a
    elif looks == "ambiguous":
        raise ValueError("cannot tell the SSD classes output from the scores output by name or by value")
    names[a], names[b] = "classes", "scores"
    return names


def _classes_or_scores(interpreter: Any, first: int, second: int) -> str:
    """Run a few images: classes are whole numbers, scores lie in [0, 1] and never increase along a row."""
    d = interpreter.get_input_details()[0]
    shape = _shape(d["shape"])
    imgs = golden_images(shape[2], shape[1], 2, seed=1)
    votes = {"first-is-classes": 0, "second-is-classes": 0}
    for img in imgs:
        x = img[None].astype(np.float32) / 255.0 if np.dtype(d["dtype"]) == np.float32 else img[None]
        if np.dtype(d["dtype"]) == np.int8:
            x = (img[None].astype(np.int16) - 128).astype(np.int8)
        interpreter.set_tensor(d["index"], x.astype(d["dtype"]))
        interpreter.invoke()
        v = [interpreter.get_tensor(i).astype(np.float64).reshape(-1) for i in (first, second)]
        whole = [bool(np.all(t == np.rint(t))) for t in v]
        scorey = [bool(np.all((t >= 0) & (t <= 1)) and np.all(np.diff(t) <= 1e-6)) for t in v]
        if whole[0] and not whole[1] or scorey[1] and not scorey[0]:
            votes["first-is-classes"] += 1
        elif whole[1] and not whole[0] or scorey[0] and not scorey[1]:
            votes["second-is-classes"] += 1
    if votes["first-is-classes"] and not votes["second-is-classes"]:
        return "first-is-classes"
    if votes["second-is-classes"] and not votes["first-is-classes"]:
        return "second-is-classes"
    return "ambiguous"


BACKGROUND_LABELS = frozenset({"???", "background", "__background__", "bg", "none"})


def ultralytics_names(model_bytes: bytes) -> list[str] | None:
    """The class names an Ultralytics export carries (a zip with `metadata.json` appended to the .tflite, whose
    `names` maps class index to name), in class order; None when the file carries none."""
    import io
    import json
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            meta = json.loads(zf.read("metadata.json").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, OSError):
        return None
    names = meta.get("names") if isinstance(meta, dict) else None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names or None
    if not isinstance(names, dict):
        return None
    try:
        by_index = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))] or None


def choose_gap_classes(labels: Sequence[str], given: Sequence[str] = ()) -> tuple[int, ...]:
    """The class indices that are empty spots: the labels named in `given`, else the labels whose whole name
    means one (`edge.decoders.GAP_NAMES`), else the only class. A model with several classes and none of them
    named as a gap is refused: every product would become an alert."""
    from edge.decoders import gap_labels, normal_label

    if given:
        wanted = {normal_label(g) for g in given}
        found = tuple(i for i, label in enumerate(labels) if normal_label(label) in wanted)
        missing = wanted - {normal_label(labels[i]) for i in found}
        if missing:
            raise ValueError(f"--gap-class {', '.join(sorted(missing))}: no such label among {', '.join(labels)}")
        return found
    found = gap_labels(labels)
    if found:
        return found
    if len(labels) == 1:
        return (0,)
    raise ValueError(f"which of the labels {', '.join(labels)} is an empty spot? None is named like one (empty, gap, "
                     "out_of_stock, ...): pass --gap-class LABEL, or every product would be an alert")


def wrap_external_model(
    tflite_path: Path | str,
    decoding: str,
    name: str,
    version: int,
    labels: Sequence[str],
    out_path: Path | str,
    private_key: Ed25519PrivateKey | Path | str | None,
    score: float = 0.4,
    nms: float = 0.5,
    max_detections: int = 100,
    color: str = "RGB",
    resize: str = "squash",
    float_input_scale: float = 1.0 / 255.0,
    golden_count: int = 3,
    metrics: dict[str, Any] | None = None,
    gap_labels_given: Sequence[str] = (),
) -> Manifest:
    """Bundle an external int8 `.tflite` ("ssd" or "yolo" decoding) and return the manifest as written.

    `private_key` signs it (a key or a PEM path); None writes an unsigned bundle, which runs only with the
    development flag. `float_input_scale` is the pixel normalisation for a float32 input (Ultralytics: 1/255).
    """
    if decoding not in WRAPPABLE:
        raise ValueError(f"decoding must be one of {WRAPPABLE}, got {decoding!r}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    if not labels:
        raise ValueError("labels must name at least one class")
    if decoding == "ssd" and labels[0].strip().lower() in BACKGROUND_LABELS:
        # TF label maps list the background first, but the PostProcess op's class 0 is the first real class:
        # with it left in, every class index would be one off (a product class read as the gap class)
        raise ValueError(f"the first label {labels[0]!r} is the background class, which TFLite_Detection_PostProcess "
                         "does not output: list the real classes only, starting with the op's class 0")
    gap_classes = choose_gap_classes(labels, gap_labels_given)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    if not 0.0 < score < 1.0 or not 0.0 < nms <= 1.0:
        raise ValueError(f"score ({score}) and nms ({nms}) thresholds must be in (0, 1)")
    model_bytes = Path(tflite_path).read_bytes()
    if decoding == "ssd":
        n = postprocess_num_classes(model_bytes)
        if n is not None and n != len(labels):
            # a label list of another length shifts or misses the gap class: a bundle that never alerts, or
            # alerts on products
            raise ValueError(f"the model's TFLite_Detection_PostProcess outputs {n} class(es), but the labels name "
                             f"{len(labels)} ({', '.join(labels)}): list exactly its classes, in its order, from "
                             "its class 0")
    interpreter, _info = make_interpreter(model_bytes, threads=1)
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(ins) != 1:
        raise ValueError(f"the model has {len(ins)} inputs; shelfscout runs single-image models")
    if not any(np.dtype(t["dtype"]).name in ("int8", "uint8") for t in interpreter.get_tensor_details()):
        log.warning("%s computes in float (no int8 tensor): on a cart's CPU it runs several times slower than an "
                    "int8 export (Ultralytics: export with int8=True and calibration data), and probation's check "
                    "for garbage outputs is made for int8 models", tflite_path)
    shape = _shape(ins[0]["shape"])
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ValueError(f"the model's input shape is {shape}; expected (1, H, W, 3)")
    dtype = np.dtype(ins[0]["dtype"]).name
    if dtype in ("uint8", "int8"):
        in_scale, in_zp = float(ins[0]["quantization"][0]), int(ins[0]["quantization"][1])
    elif dtype == "float32":
        in_scale, in_zp = float(float_input_scale), 0
    else:
        raise ValueError(f"the model's input dtype is {dtype}; expected uint8, int8 or float32")
    names = _yolo_names(outs, labels) if decoding == "yolo" else _ssd_names(outs, interpreter)
    tensors = tuple(
        TensorSpec(n, _shape(o["shape"]), np.dtype(o["dtype"]).name) for n, o in zip(names, outs, strict=True)
    )
    manifest = Manifest(
        name=name,
        version=version,
        task="shelf-gap-detection",
        input=InputSpec(width=shape[2], height=shape[1], channels=3, color=color, dtype=dtype,
                        scale=in_scale, zero_point=in_zp, resize=resize),
        output=OutputSpec(decoding=decoding, tensors=tensors),
        labels=tuple(str(x) for x in labels),
        gap_classes=gap_classes,
        thresholds=Thresholds(score=score, nms_iou=nms, max_detections=max_detections),
        metrics=dict(metrics or {"source": f"external {decoding} model {Path(tflite_path).name}"}),
        created=build_time(),
    )
    golden = make_golden(manifest, model_bytes, golden_count)
    key = load_private_key(private_key) if isinstance(private_key, (str, Path)) else private_key
    return write_bundle(out_path, manifest, {MODEL: model_bytes, GOLDEN: golden}, key)


def make_golden(manifest: Manifest, model_bytes: bytes, n: int = 3, seed: int = 0) -> bytes:
    """golden.npz bytes: `n` generated input images and the raw outputs the device code path gives for them."""
    return golden_npz(manifest, model_bytes, list(golden_images(manifest.input.width, manifest.input.height, n, seed)))
