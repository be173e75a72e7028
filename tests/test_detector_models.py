"""Builders for tiny real int8 .tflite models (TensorFlow, off-device) used by the inference tests; no tests here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# TensorFlow's converter and its deprecated tf.lite.Interpreter warn on every use; the tests expect that.
TF_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning"),
]


def build_tiny_yolo_tflite(
    path: Path, size: int = 64, num_classes: int = 1, input_type: str = "uint8", seed: int = 0
) -> Path:
    """A real full-int8 model shaped like an Ultralytics export: (1, size, size, 3) in, (1, 4 + nc, N) out.

    Random weights; sigmoid outputs, so boxes are normalised xywh and scores lie in (0, 1). `input_type` "uint8"
    or "int8" gives quantized input (raw pixels) and uint8 output; "float32" gives float input in [0, 1] and float
    output around int8 internals, like Ultralytics' `*_int8.tflite`.
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
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_type != "float32":
        conv.inference_input_type = tf.int8 if input_type == "int8" else tf.uint8
        conv.inference_output_type = tf.uint8
    path.write_bytes(conv.convert())
    return path


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
