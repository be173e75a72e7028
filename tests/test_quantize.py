"""int8 conversion of a tiny gap-heatmap model: raw uint8 input, named int8 outputs close to float, bundle runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.synth import make_shelf_image

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tiny() -> tuple[object, bytes, list[np.ndarray]]:
    import keras

    from convert.model import NetConfig, build_model
    from convert.quantize import convert_int8

    keras.utils.set_random_seed(3)
    net = NetConfig(width=64, height=64, stride=8, channels=(8, 8, 12, 12, 16), fpn=8, head=8)
    model = build_model(net)
    # a few training-mode passes give the BatchNorm layers real statistics, like a trained model has
    rng = np.random.default_rng(0)
    images = [make_shelf_image(rng, 64, 64).image for _ in range(12)]
    x = np.stack(images).astype(np.float32)
    for _ in range(3):
        model(x, training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)
    return model, convert_int8(model, images[:8]), images


def test_int8_outputs_stay_close_to_float(tiny: tuple[object, bytes, list[np.ndarray]]) -> None:
    from convert.quantize import TFLiteRunner, describe, output_diffs

    model, tfl, images = tiny
    ins, outs = describe(tfl)
    assert (ins.dtype, ins.scale, ins.zero_point) == ("uint8", 1.0, 0)  # raw camera pixels go in as they are
    assert {o.name for o in outs} == {"heatmap", "ltrb"} and all(o.dtype == "int8" for o in outs)
    runner = TFLiteRunner(tfl, threads=1)

    def float_fn(im: np.ndarray) -> dict[str, np.ndarray]:
        out = model(im[None].astype(np.float32), training=False)  # type: ignore[operator]
        return {k: np.asarray(v) for k, v in out.items()}

    mx, mean, step = output_diffs(float_fn, runner, images[8:])  # images not seen by the calibration
    print("max", mx, "mean", mean, "step", step)
    for name in ("heatmap", "ltrb"):
        assert mean[name] <= 2.0 * step[name], name  # on average within two int8 steps
        assert mx[name] <= 12.0 * step[name], name


def test_tiny_model_bundles_and_runs_on_the_device_path(tmp_path: Path, tiny: tuple[object, bytes, list[np.ndarray]]) -> None:
    from convert.bundler import build_heatmap_bundle, load_or_create_key
    from edge.bundle import Thresholds, load_public_keys, read_bundle
    from edge.detector import Detector

    _, tfl, images = tiny
    key = load_or_create_key(tmp_path / "k.key", tmp_path / "keys" / "k.pub")
    m = build_heatmap_bundle(tmp_path / "tiny.bundle", tfl, images[:2], "tiny", 7, 8, Thresholds(score=0.3), key)
    assert m.output.decoding == "gap-heatmap" and m.output.stride == 8
    assert [t.shape for t in m.output.tensors] == [(1, 8, 8, 4) if t.name == "ltrb" else (1, 8, 8, 1) for t in m.output.tensors]
    b = read_bundle(tmp_path / "tiny.bundle", load_public_keys([tmp_path / "keys"]))
    assert b.signed_by == "k.pub"
    det = Detector(b, threads=1)
    assert det.check_golden().ok
    gaps = det.detect(make_shelf_image(np.random.default_rng(5), 200, 150).image)
    for g in gaps:
        assert 0 <= g.x0 <= g.x1 <= 200 and 0 <= g.y0 <= g.y1 <= 150 and 0.3 <= g.score <= 1
