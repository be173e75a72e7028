"""The Detector on real int8 models: I/O signature checks at load, in-place preprocessing, decoding to original
pixels, golden vectors; and wrapping an external YOLO-shaped model into a signed bundle."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.wrap import wrap_external_model
from edge.bundle import (
    GOLDEN,
    MODEL,
    Bundle,
    Manifest,
    TensorSpec,
    load_public_keys,
    read_bundle,
    write_bundle,
)
from edge.decoders.yolo import decode_yolo
from edge.detector import Detector, ModelSignatureError
from tests.test_detector_models import TF_WARNINGS, cached_tiny_bundle, cached_tiny_ssd_bundle

pytestmark = TF_WARNINGS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path, keys, _ = cached_tiny_bundle(tmp_path_factory.getbasetemp())
    return read_bundle(path, load_public_keys([keys]))


@pytest.fixture(scope="module")
def tiny_int8_input(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path, keys, _ = cached_tiny_bundle(tmp_path_factory.getbasetemp(), input_type="int8")
    return read_bundle(path, load_public_keys([keys]))


@pytest.fixture(scope="module")
def tiny_float_io(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path, keys, _ = cached_tiny_bundle(tmp_path_factory.getbasetemp(), input_type="float32")
    return read_bundle(path, load_public_keys([keys]))


def _with_manifest(b: Bundle, **changes: object) -> Bundle:
    m = dataclasses.replace(b.manifest, **changes)  # type: ignore[arg-type]
    return Bundle(m, m.to_json_bytes(), b.members, None, "edited")


def _frame(seed: int, w: int = 640, h: int = 480) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- signature checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda m: {"input": dataclasses.replace(m.input, width=96)}, r"input shape is \(1, 64, 64, 3\) in the model, manifest says \(1, 64, 96, 3\)"),
    (lambda m: {"input": dataclasses.replace(m.input, dtype="int8")}, "input dtype is uint8 in the model, manifest says int8"),
    (lambda m: {"input": dataclasses.replace(m.input, scale=1 / 255)}, r"input quantization is \(scale 1, zero point 0\)"),
    (lambda m: {"input": dataclasses.replace(m.input, zero_point=3)}, "manifest says .*zero point 3"),
    (lambda m: {"output": dataclasses.replace(m.output, tensors=(TensorSpec("predictions", (1, 256, 5), "uint8"),))},
     r"output #0 'predictions' has shape \(1, 5, 256\) in the model, manifest says \(1, 256, 5\)"),
    (lambda m: {"output": dataclasses.replace(m.output, tensors=(TensorSpec("predictions", (1, 5, 256), "int8"),))},
     "output #0 'predictions' has dtype uint8 in the model, manifest says int8"),
    (lambda m: {"output": dataclasses.replace(m.output, tensors=m.output.tensors * 2)}, "model has 1 outputs, manifest lists 2"),
    (lambda m: {"output": dataclasses.replace(m.output, tensors=(TensorSpec("heatmap", (1, 5, 256), "uint8"),))},
     r"yolo decoding needs outputs named \['predictions'\]"),
])
def test_refuses_a_manifest_that_does_not_match_the_model(tiny: Bundle, change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelSignatureError, match=message):
        Detector(_with_manifest(tiny, **change(tiny.manifest)), threads=1)


def test_refusal_through_a_real_signed_bundle_file(tiny: Bundle, tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """A bundle whose (validly signed) manifest lies about the model is refused at load, naming the difference."""
    _, keys, key = cached_tiny_bundle(tmp_path_factory.getbasetemp())
    from edge.bundle import load_private_key

    bad = dataclasses.replace(tiny.manifest, input=dataclasses.replace(tiny.manifest.input, height=48))
    out = tmp_path / "bad.bundle"
    write_bundle(out, bad, {MODEL: tiny.members[MODEL], GOLDEN: tiny.members[GOLDEN]}, load_private_key(key))
    b = read_bundle(out, load_public_keys([keys]))  # signature and hashes are fine
    with pytest.raises(ModelSignatureError, match=r"input shape .* manifest says \(1, 48, 64, 3\)"):
        Detector(b)


# ---- preprocessing ---------------------------------------------------------------------------------------------
def test_preprocess_writes_into_the_same_input_buffer_every_frame(tiny: Bundle) -> None:
    det = Detector(tiny, threads=1)
    ptr = det.input_pointer()
    for i, (w, h) in enumerate([(640, 480), (320, 240), (64, 64), (33, 17)]):
        img = _frame(i, w, h)
        det.preprocess(img)
        assert det.input_pointer() == ptr  # no reallocation of the tensor
        got = det._interpreter.get_tensor(det._in_index)[0]
        interp = cv2.INTER_AREA if w > 64 or h > 64 else cv2.INTER_LINEAR
        np.testing.assert_array_equal(got, cv2.resize(img, (64, 64), interpolation=interp))
        det.invoke()  # no numpy view of the interpreter's buffers is left alive
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        det.preprocess(np.zeros((10, 10), np.uint8))


def test_hot_path_allocates_no_arrays(tiny: Bundle) -> None:
    """preprocess -> invoke -> outputs allocates nothing the size of a tensor (numpy reports to tracemalloc)."""
    import tracemalloc

    det = Detector(tiny, threads=1)
    frames = [_frame(i) for i in range(4)]
    for f in frames:  # warm up
        det.preprocess(f)
        det.invoke()
        det.outputs()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            det.preprocess(frames[i % 4])
            det.invoke()
            det.outputs()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # a copy of any tensor would show up as at least its size; numpy view headers (the resize's strided row views,
    # the tensor views) come and go at a few hundred bytes each
    smallest_tensor = min(64 * 64 * 3, 5 * 256 * 4)
    assert peak < smallest_tensor, f"{peak} bytes allocated on the hot path"


def test_preprocess_bgr_and_int8_input_mapping(tiny: Bundle, tiny_int8_input: Bundle) -> None:
    img = _frame(7, 128, 128)
    ref = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    bgr = Detector(_with_manifest(tiny, input=dataclasses.replace(tiny.manifest.input, color="BGR")), threads=1)
    bgr.preprocess(img)
    np.testing.assert_array_equal(bgr._interpreter.get_tensor(bgr._in_index)[0], ref[..., ::-1])
    assert tiny_int8_input.manifest.input.dtype == "int8" and tiny_int8_input.manifest.input.zero_point == -128
    det = Detector(tiny_int8_input, threads=1)
    ptr = det.input_pointer()
    det.preprocess(img)
    got = det._interpreter.get_tensor(det._in_index)[0]
    assert got.dtype == np.int8 and det.input_pointer() == ptr
    np.testing.assert_array_equal(got.astype(int), ref.astype(int) - 128)


def test_float_io_model_like_an_ultralytics_int8_export(tiny_float_io: Bundle) -> None:
    m = tiny_float_io.manifest
    assert (m.input.dtype, m.input.scale, m.input.zero_point) == ("float32", pytest.approx(1 / 255), 0)
    assert m.output.tensors[0].dtype == "float32"
    det = Detector(tiny_float_io, threads=1, score_threshold=0.2)
    img = _frame(11, 640, 480)
    ptr = det.input_pointer()
    det.preprocess(img)
    got = det._interpreter.get_tensor(det._in_index)[0]
    ref = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert det.input_pointer() == ptr
    det.invoke()
    np.testing.assert_array_equal(det.outputs()["predictions"], det.raw_outputs()["predictions"])
    assert all(0 <= g.x0 < g.x1 <= 640 and 0 <= g.y0 < g.y1 <= 480 for g in det.detect(img))
    res = det.check_golden()
    assert res.ok, res.detail


# ---- outputs and decoding --------------------------------------------------------------------------------------
def test_outputs_are_dequantized_and_boxes_scaled_to_the_original(tiny: Bundle) -> None:
    det = Detector(tiny, threads=1, score_threshold=0.25)
    img = _frame(3, 640, 480)
    gaps = det.detect(img)
    raw = det.raw_outputs()["predictions"]
    scale, zp = det._outputs[0].scale, det._outputs[0].zero_point
    out = det.outputs()
    assert out["predictions"].dtype == np.float32 and out["predictions"].shape == (1, 5, 256)
    np.testing.assert_allclose(out["predictions"], (raw.astype(np.float32) - zp) * scale)
    assert det.outputs()["predictions"] is out["predictions"]  # buffers are reused, not reallocated
    boxes, scores = decode_yolo(out, det.manifest, 0.25)
    assert len(gaps) == len(boxes) > 0, "the tiny model should find something at a 0.25 threshold"
    got = np.array([g.box for g in gaps])
    np.testing.assert_allclose(got, boxes * np.array([10, 7.5, 10, 7.5]), rtol=1e-5)
    assert (got[:, [0, 2]] >= 0).all() and (got[:, [0, 2]] <= 640).all()
    assert (got[:, [1, 3]] >= 0).all() and (got[:, [1, 3]] <= 480).all()
    assert [g.score for g in gaps] == pytest.approx(scores.tolist())
    # the bundle's threshold (0.3) applies unless overridden
    assert Detector(tiny, threads=1).score_threshold == pytest.approx(0.3)
    assert all(g.score >= 0.3 for g in Detector(tiny, threads=1).detect(img))


def test_boxes_past_the_input_edges_are_clipped_to_the_frame_and_empty_ones_dropped(tiny: Bundle) -> None:
    """A user's detector may box past the input's edges (a YOLO box centred near the border): the gap is the part
    in the picture, in the frame's pixels, and a box with no part in it is no gap."""
    det = Detector(tiny, threads=1, score_threshold=0.25)
    w, h = det.input_size
    pred = np.zeros((1, 5, 256), np.float32)
    pred[0, :, 0] = [2.0, h / 2, 20.0, 10.0, 0.9]  # 8 px past the left edge
    pred[0, :, 1] = [-20.0, h / 2, 4.0, 10.0, 0.8]  # wholly left of the picture
    gaps = det.decode_outputs({"predictions": pred}, 640, 480)
    assert len(gaps) == 1 and gaps[0].score == pytest.approx(0.9)
    sx, sy = 640 / w, 480 / h
    assert gaps[0].box == pytest.approx((0.0, (h / 2 - 5) * sy, 12.0 * sx, (h / 2 + 5) * sy))


# ---- golden vectors --------------------------------------------------------------------------------------------
def test_golden_vectors_reproduce_and_a_drift_is_caught(tiny: Bundle) -> None:
    res = Detector(tiny, threads=2).check_golden()
    assert res.ok and res.max_abs_diff <= 2, res.detail
    with np.load(io.BytesIO(tiny.members[GOLDEN])) as z:
        arrays = {k: z[k] for k in z.files}
    drift = arrays["output_predictions"].astype(np.int16)
    drift[1, 0, 4, 17] = (drift[1, 0, 4, 17] + 5) % 256  # one value 5 steps off (or wrapped further)
    arrays["output_predictions"] = drift.astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    res = Detector(Bundle(tiny.manifest, tiny.manifest_bytes, {**tiny.members, GOLDEN: buf.getvalue()}, None, "t"),
                   threads=1).check_golden()
    assert not res.ok and res.max_abs_diff >= 5 and "golden input 1" in res.detail
    # the same one-value drift is tolerated on kernels other than those that made the outputs (they round
    # differently everywhere; test_golden_default measures how much), as long as the function is the same
    with np.load(io.BytesIO(tiny.members[GOLDEN])) as z:
        assert str(z["kernels"]) == "xnnpack"  # recorded when the bundle was built
    res = Detector(Bundle(tiny.manifest, tiny.manifest_bytes, {**tiny.members, GOLDEN: buf.getvalue()}, None, "t"),
                   threads=1, use_xnnpack=False).check_golden()
    assert res.ok and "run here on builtin ones" in res.detail, res.detail
    no_golden = {k: v for k, v in tiny.members.items() if k != GOLDEN}
    res = Detector(Bundle(tiny.manifest, tiny.manifest_bytes, no_golden, None, "t"), threads=1).check_golden()
    assert not res.ok and "no golden.npz" in res.detail


# ---- wrapping an external model --------------------------------------------------------------------------------
def test_wrap_reads_the_model_io_into_a_signed_manifest(tiny: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    m: Manifest = tiny.manifest
    assert tiny.signed_by == "signer.pub"
    assert (m.input.width, m.input.height, m.input.dtype, m.input.scale, m.input.zero_point) == (64, 64, "uint8", 1.0, 0)
    assert m.output.decoding == "yolo"
    assert m.output.tensors == (TensorSpec("predictions", (1, 5, 256), "uint8"),)
    assert m.labels == ("empty",) and m.version == 3 and set(m.files) == {MODEL, GOLDEN}
    with np.load(io.BytesIO(tiny.members[GOLDEN])) as z:
        assert z["input_0"].shape == (3, 64, 64, 3) and z["input_0"].dtype == np.uint8
        assert z["output_predictions"].shape == (3, 1, 5, 256)


def test_wrap_and_run_a_real_ssd_model_with_the_postprocess_op(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The model ends in a real TFLite_Detection_PostProcess op whose outputs the runtime lists out of order
    (classes, count, boxes, scores); wrap names them from the op itself, and the detector decodes them."""
    path, keys, _ = cached_tiny_ssd_bundle(tmp_path_factory.getbasetemp())
    b = read_bundle(path, load_public_keys([keys]))
    specs = {t.name: t for t in b.manifest.output.tensors}
    assert [t.name for t in b.manifest.output.tensors] == ["classes", "count", "boxes", "scores"]
    assert specs["boxes"].shape == (1, 10, 4) and specs["count"].shape == (1,)
    assert all(t.dtype == "float32" for t in specs.values())
    det = Detector(b, threads=1, score_threshold=0.1)
    assert det.check_golden().ok
    img = _frame(2, 640, 480)
    gaps = det.detect(img)
    raw = det.raw_outputs()
    n = int(raw["count"][0])
    assert n == 10 and np.all(raw["classes"][0, :n] == 0)
    keep = raw["scores"][0, :n] >= 0.1
    yx = np.clip(raw["boxes"][0, :n][keep], 0, 1)
    want = np.stack([yx[:, 1] * 640, yx[:, 0] * 480, yx[:, 3] * 640, yx[:, 2] * 480], 1)
    want = want[(want[:, 2] > want[:, 0]) & (want[:, 3] > want[:, 1])]
    assert len(gaps) == len(want) > 0
    np.testing.assert_allclose(np.array([g.box for g in gaps]), want, rtol=1e-4, atol=1e-3)


def test_wrap_refuses_what_it_cannot_wrap(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    cached_tiny_bundle(tmp_path_factory.getbasetemp())
    model = root / "tiny-yolo-uint8.tflite"
    with pytest.raises(ValueError, match=r"4 \+ 2 labels = 6"):
        wrap_external_model(model, "yolo", "x", 1, ["empty", "product"], tmp_path / "x.bundle", None)
    with pytest.raises(ValueError, match="decoding must be one of"):
        wrap_external_model(model, "gap-heatmap", "x", 1, ["empty"], tmp_path / "x.bundle", None)
    with pytest.raises(ValueError, match="4 outputs"):
        wrap_external_model(model, "ssd", "x", 1, ["empty"], tmp_path / "x.bundle", None)
    # a TF label map's leading background entry would shift every SSD class by one (product read as gap)
    for first in ("???", "background"):
        with pytest.raises(ValueError, match="is the background class"):
            wrap_external_model(model, "ssd", "x", 1, [first, "empty", "product"], tmp_path / "x.bundle", None)
    assert not (tmp_path / "x.bundle").exists()


def test_only_integer_outputs_skip_the_nan_scan(tiny: Bundle, tiny_float_io: Bundle) -> None:
    """The pipeline scans outputs for NaN/inf (an OTA probation failure) only where they can occur: float tensors."""
    assert Detector(tiny, threads=1).outputs_always_finite
    assert not Detector(tiny_float_io, threads=1).outputs_always_finite


def test_a_model_trained_on_pixels_in_minus_one_to_one_sees_them_so() -> None:
    """TF Object Detection API SSDs and MobileNets take pixels / 127.5 - 1: a uint8 input with scale 1/128 and zero
    point 128. The mapping looked at the top of the range only and fed them pixels / 255 (black as 0, not -1).
    A real int8 model (an identity 1x1 convolution calibrated on -1..1 inputs) must see what it was made for."""
    import contextlib
    import io

    import keras
    import tensorflow as tf

    from convert.quantize import TFLiteRunner
    from edge.detector import PixelMap

    inp = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.eye(3, dtype=np.float32)[None, None]])

    def representative():  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.integers(0, 256, (1, 16, 16, 3)).astype(np.float32) / 127.5 - 1.0]

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = representative
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.uint8
    c.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()):
        runner = TFLiteRunner(c.convert())
    scale, zp = runner.inp["quantization"]
    assert scale * (0 - zp) < -0.9  # the converter made a -1..1 input, as the model was calibrated
    for pixel in (0, 64, 128, 255):
        seen = float(next(iter(runner.dequantized(np.full((16, 16, 3), pixel, np.uint8)).values())).mean())
        assert abs(seen - (pixel / 127.5 - 1.0)) < 0.03, (pixel, seen)
    # the other two ranges stay as they were, and a range no camera pixel maps to is refused
    assert PixelMap.for_input("int8", 1.0, -128).flip_top_bit  # 0..255 (this project's models)
    table = PixelMap.for_input("uint8", 1 / 255, 0)
    assert table.table is None and not table.flip_top_bit  # 0..1: the bytes are the pixels
    with pytest.raises(ValueError, match="none of the pixel ranges"):
        PixelMap.for_input("int8", 1.0, 0)  # -128..127
