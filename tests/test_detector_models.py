"""Builders for tiny real int8 .tflite models (TensorFlow, off-device) used by the inference tests; no tests here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

# TensorFlow's converter and its deprecated tf.lite.Interpreter warn on every use; the tests expect that.
TF_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning"),
]


def build_tiny_yolo_tflite(
    path: Path, size: int = 64, num_classes: int = 1, input_type: str = "uint8", seed: int = 0, int8: bool = True
) -> Path:
    """A real full-int8 model shaped like an Ultralytics export: (1, size, size, 3) in, (1, 4 + nc, N) out.

    Random weights; sigmoid outputs, so boxes are normalised xywh and scores lie in (0, 1). `input_type` "uint8"
    or "int8" gives quantized input (raw pixels) and uint8 output; "float32" gives float input in [0, 1] and float
    output around int8 internals, like Ultralytics' `*_int8.tflite`. `int8=False`: a float model throughout (with a
    float32 input), like an export without int8=True.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = inp if input_type == "float32" else keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(4 + num_classes, 1, bias_initializer=keras.initializers.RandomNormal(0, 1, seed))(x)
    cells = (size // 4) ** 2
    x = keras.layers.Reshape((cells, 4 + num_classes))(x)
    x = keras.layers.Permute((2, 1))(x)
    out = keras.layers.Activation("sigmoid")(x)
    model = keras.Model(inp, out)

    def representative():
        rng = np.random.default_rng(seed)
        for _ in range(16):
            img = rng.integers(0, 256, (1, size, size, 3)).astype(np.float32)
            yield [img / 255.0 if input_type == "float32" else img]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if not int8:
        path.write_bytes(conv.convert())
        return path
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_type != "float32":
        conv.inference_input_type = tf.int8 if input_type == "int8" else tf.uint8
        conv.inference_output_type = tf.uint8
    path.write_bytes(conv.convert())
    return path


def build_tiny_ssd_tflite(path: Path, size: int = 64, grid: int = 8, seed: int = 0) -> Path:
    """A real int8 SSD-style model ending in the TFLite_Detection_PostProcess custom op, as the TF Object Detection
    API exports it: a composite function marked `experimental_implements` that the converter fuses into the op.

    Two convolutions give (1, grid*grid, 4) box encodings and (1, grid*grid, 2) class scores (background + one
    class) over grid x grid anchors of a quarter of the image; uint8 input, the op's four float32 outputs.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n_anchors = grid * grid
    yc, xc = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
    anchors = np.stack([yc.ravel(), xc.ravel(), np.full(n_anchors, 0.25), np.full(n_anchors, 0.25)], 1)
    attrs = {"max_detections": "i: 10", "max_classes_per_detection": "i: 1", "use_regular_nms": "b: false",
             "nms_score_threshold": "f: 0.000000", "nms_iou_threshold": "f: 0.600000", "y_scale": "f: 10.0",
             "x_scale": "f: 10.0", "h_scale": "f: 5.0", "w_scale": "f: 5.0", "num_classes": "i: 1"}
    signature = " ".join(['name: "TFLite_Detection_PostProcess"']
                         + [f'attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs.items()])

    class Ssd(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = tf.Variable(rng.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32))
            self.w2 = tf.Variable(rng.normal(0, 0.3, (3, 3, 8, 6)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, x):  # type: ignore[no-untyped-def]
            x = tf.nn.relu(tf.nn.conv2d(x / 255.0, self.w1, [1, size // grid // 2, size // grid // 2, 1], "SAME"))
            x = tf.reshape(tf.nn.conv2d(x, self.w2, [1, 2, 2, 1], "SAME"), [1, n_anchors, 6])
            return self.post(x[:, :, :4], tf.sigmoid(x[:, :, 4:]), tf.constant(anchors, tf.float32))

        @tf.function(experimental_implements=signature)
        def post(self, box_encodings, class_predictions, anchors):  # type: ignore[no-untyped-def]
            zero = tf.constant(0.0, dtype=tf.float32)
            return zero, zero, zero, zero  # a placeholder the converter replaces with the op

    model = Ssd()
    saved = path.with_suffix(".savedmodel")
    tf.saved_model.save(model, str(saved), signatures=model.__call__)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for _ in range(8):
            yield [rng.integers(0, 256, (1, size, size, 3)).astype(np.float32)]

    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.inference_input_type = tf.uint8
    conv.allow_custom_ops = True
    path.write_bytes(conv.convert())
    return path


def cached_tiny_ssd_bundle(base: Path) -> tuple[Path, Path, Path]:
    """A signed bundle wrapping the tiny SSD model, built once per test session under `base`."""
    from convert.wrap import wrap_external_model

    _, keys_dir, key = cached_tiny_bundle(base)
    root = base / "tiny-models"
    bundle = root / "tiny-ssd.bundle"
    if not bundle.exists():
        model = build_tiny_ssd_tflite(root / "tiny-ssd.tflite")
        wrap_external_model(model, "ssd", "tiny-ssd", 1, ["empty"], bundle, key, score=0.2)
    return bundle, keys_dir, key


def cached_tiny_bundle(base: Path, input_type: str = "uint8", score: float = 0.3) -> tuple[Path, Path, Path]:
    """A signed bundle wrapping the tiny YOLO-shaped model, built once per test session under `base`.

    Returns (bundle path, folder of the trusted public key, private key path).
    """
    from convert.wrap import wrap_external_model
    from edge.bundle import generate_keypair

    root = base / "tiny-models"
    root.mkdir(parents=True, exist_ok=True)
    key, keys_dir = root / "signer.pem", root / "keys"
    if not key.exists():
        generate_keypair(key, keys_dir / "signer.pub")
    bundle = root / f"tiny-yolo-{input_type}.bundle"
    if not bundle.exists():
        model = build_tiny_yolo_tflite(root / f"tiny-yolo-{input_type}.tflite", input_type=input_type)
        wrap_external_model(model, "yolo", f"tiny-yolo-{input_type}", 3, ["empty"], bundle, key, score=score)
    return bundle, keys_dir, key


def test_wrapping_a_float_model_warns_that_it_is_not_int8(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`bundle` is for int8 exports; a float one runs, several times slower on a Pi, and probation's garbage check is
    made for int8: say so (it was signed without a word). An int8 export with float input and output is int8 inside."""
    import logging

    from convert.wrap import wrap_external_model

    for int8, warned in ((False, True), (True, False)):
        model = build_tiny_yolo_tflite(tmp_path / f"m-{int8}.tflite", input_type="float32", int8=int8)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="convert.wrap"):
            wrap_external_model(model, "yolo", "tiny", 3, ["empty"], tmp_path / f"m-{int8}.bundle", None)
        assert ("computes in float" in caplog.text) is warned, (int8, caplog.text)


def test_a_yolo_output_of_the_wrong_rank_is_named_as_such(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    from convert.wrap import wrap_external_model

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(6, 3, strides=2, padding="same")(keras.layers.Rescaling(1 / 255.0)(inp))  # (1,16,16,6)
    path = tmp_path / "4d.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert())
    with pytest.raises(ValueError, match=r"expected \(1, 4 \+ classes, N\) or \(1, N, 4 \+ classes\)"):
        wrap_external_model(path, "yolo", "x", 1, ["empty", "product"], tmp_path / "x.bundle", None)


def test_a_letterboxed_yolo_bundle_sees_the_frame_with_its_aspect_and_maps_boxes_back(tmp_path: Path) -> None:
    """Ultralytics trains letterboxed: the frame keeps its aspect ratio, grey (114) bands fill the rest. A 4:3 frame
    squashed into a square input looks a third taller to such a model. `bundle --decoding yolo` now letterboxes
    (`input.resize` in the manifest); boxes come back in the frame's pixels."""
    from convert.wrap import wrap_external_model
    from edge.bundle import RESIZES, BundleError, Manifest, read_bundle
    from edge.detector import Detector
    from edge.resize import LETTERBOX_PAD, Letterbox, Resizer

    assert Letterbox.fit(640, 480, 320, 320) == Letterbox(320, 240, 0, 40)  # as Ultralytics' LetterBox places it
    assert Letterbox.fit(480, 640, 320, 320) == Letterbox(240, 320, 40, 0)
    model = build_tiny_yolo_tflite(tmp_path / "m.tflite")  # 64x64, uint8 in
    out = tmp_path / "lb.bundle"
    wrap_external_model(model, "yolo", "lb", 3, ["empty"], out, None, score=0.5, resize="letterbox")
    bundle = read_bundle(out, None, allow_unsigned=True)
    assert bundle.manifest.input.resize == "letterbox" and '"resize": "letterbox"' in bundle.manifest_bytes.decode()
    det = Detector(bundle, threads=1)
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)  # 4:3
    staging = det.staging_buffer()
    det.prepare(frame, staging)
    assert (staging[:8] == LETTERBOX_PAD).all() and (staging[56:] == LETTERBOX_PAD).all()
    want = np.empty((48, 64, 3), np.uint8)
    Resizer(128, 96, 64, 48)(frame, want)
    assert np.array_equal(staging[8:56], want)
    # a box the model gives in input pixels (normalised xywh, as Ultralytics' TFLite exports) lands on the frame
    pred = np.zeros((1, 5, 2), np.float32)
    pred[0, :, 0] = [32 / 64, 32 / 64, 16 / 64, 16 / 64, 0.9]  # input box 24..40 x 24..40: frame 48..80 x 32..64
    pred[0, :, 1] = [32 / 64, 4 / 64, 8 / 64, 8 / 64, 0.8]  # wholly in the grey band: no gap on the frame
    (gap,) = det.decode_outputs({"predictions": pred}, 128, 96)
    np.testing.assert_allclose([gap.x0, gap.y0, gap.x1, gap.y1], [48, 32, 80, 64], atol=1e-4)
    # a squashing bundle of the same model is unchanged, and says nothing about resize in its manifest
    sq = tmp_path / "sq.bundle"
    wrap_external_model(model, "yolo", "sq", 3, ["empty"], sq, None, score=0.5)
    assert "resize" not in read_bundle(sq, None, allow_unsigned=True).manifest_bytes.decode()
    d = json.loads(bundle.manifest_bytes)
    d["input"]["resize"] = "crop"
    with pytest.raises(BundleError, match=re.escape(f"unknown input resize 'crop'; expected one of {RESIZES}")):
        Manifest.from_dict(d)
    d["input"]["resize"] = "letterbox"
    d["input"]["pad"] = 0  # a field from a newer shelfscout: said so, not "malformed"
    with pytest.raises(BundleError, match="manifest input has pad, which this shelfscout does not know"):
        Manifest.from_dict(d)


def test_an_ssd_whose_labels_do_not_match_its_classes_is_refused(tmp_path: Path) -> None:
    """The post-processing op says how many classes it outputs: a 1-class SSD wrapped with three labels was signed
    with the gap as class 2, which it never outputs (0 gaps found where the right label found 150)."""
    from convert.wrap import postprocess_num_classes, wrap_external_model

    model = build_tiny_ssd_tflite(tmp_path / "ssd.tflite")
    assert postprocess_num_classes(model.read_bytes()) == 1
    assert postprocess_num_classes(build_tiny_yolo_tflite(tmp_path / "y.tflite").read_bytes()) is None
    with pytest.raises(ValueError, match=r"outputs 1 class\(es\), but the labels name 3 \(product, shelf, empty\)"):
        wrap_external_model(model, "ssd", "s", 1, ["product", "shelf", "empty"], tmp_path / "s.bundle", None)
    assert not (tmp_path / "s.bundle").exists()
    wrap_external_model(model, "ssd", "s", 1, ["empty"], tmp_path / "s.bundle", None)
