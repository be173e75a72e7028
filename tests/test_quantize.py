"""int8 conversion of a tiny gap-heatmap model: int8 (p - 128) input, named int8 outputs close to float, bundle runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.synth import make_shelf_image

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, bytes, list[np.ndarray]]:
    """A tiny 64x64 model briefly trained on generated shelves (real weights and BatchNorm statistics), as int8."""
    from convert.dataset import LabeledImage
    from convert.model import NetConfig
    from convert.quantize import convert_int8
    from convert.train import TrainConfig, load_float_model, train

    net = NetConfig(width=64, height=64, stride=8, channels=(8, 8, 12, 12, 16), fpn=8, head=8)
    rng = np.random.default_rng(0)
    samples = [make_shelf_image(rng, 96, 96) for _ in range(24)]
    data = [LabeledImage(Path(f"{i}.jpg"), s.image, s.boxes) for i, s in enumerate(samples)]
    cfg = TrainConfig(net=net, crop=64, batch=8, steps=20, warmup=5, lr=3e-3, seed=3, deterministic=False)
    res = train(data, cfg, tmp_path_factory.mktemp("tiny"), progress=False)
    model, _ = load_float_model(res.weights)
    images = [make_shelf_image(rng, 64, 64).image for _ in range(12)]
    return model, convert_int8(model, images[:8]), images


def test_int8_outputs_stay_close_to_float(tiny: tuple[object, bytes, list[np.ndarray]]) -> None:
    from convert.quantize import TFLiteRunner, describe, output_diffs

    model, tfl, images = tiny
    ins, outs = describe(tfl)
    assert (ins.dtype, ins.scale, ins.zero_point) == ("int8", 1.0, -128)  # camera pixel p goes in as p - 128
    assert {o.name for o in outs} == {"heatmap", "ltrb"} and all(o.dtype == "int8" for o in outs)
    runner = TFLiteRunner(tfl, threads=1)

    def float_fn(im: np.ndarray) -> dict[str, np.ndarray]:
        out = model(im[None].astype(np.float32), training=False)  # type: ignore[operator]
        return {k: np.asarray(v) for k, v in out.items()}

    mx, mean, step = output_diffs(float_fn, runner, images[8:])  # images not seen by the calibration
    print("max", mx, "mean", mean, "step", step)
    # int8 rounding adds up over ~30 layers: on average within 2% of each output's int8 range (about 5 steps; the
    # sigmoid heatmap within 2 steps), and nowhere off by more than a fifth of the range
    assert mean["heatmap"] <= 2.0 * step["heatmap"]
    for name in ("heatmap", "ltrb"):
        full = 255 * step[name]
        assert mean[name] <= 0.02 * full, name
        assert mx[name] <= 0.2 * full, name


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


def test_int8_input_gives_the_same_outputs_as_a_uint8_input(tiny: tuple[object, bytes, list[np.ndarray]]) -> None:
    """The int8 input (pixels XORed with 0x80 on the device) is exact: the same weights converted with a raw uint8
    input, whose graph starts with a QUANTIZE op, give bit-identical outputs, through TFLiteRunner and Detector."""
    from convert.bundler import heatmap_manifest
    from convert.quantize import TFLiteRunner, convert_int8, describe
    from edge.bundle import MODEL, Bundle, Thresholds
    from edge.detector import Detector

    model, tfl_i8, images = tiny
    tfl_u8 = convert_int8(model, images[:8], input_type="uint8")
    assert describe(tfl_u8)[0].dtype == "uint8"
    r8, ru = TFLiteRunner(tfl_i8, threads=1), TFLiteRunner(tfl_u8, threads=1)
    dets = []
    for tfl in (tfl_i8, tfl_u8):
        m = heatmap_manifest(tfl, "tiny", 1, 8, Thresholds(score=0.3))
        dets.append(Detector(Bundle(m, m.to_json_bytes(), {MODEL: tfl}, None, "<test>"), threads=1))
    staging = dets[0].staging_buffer()
    for im in images:
        a, b = r8.raw(im), ru.raw(im)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        outs = []
        for det in dets:
            det.prepare(im, staging)  # the pipeline's path: prepare on one thread, load on the inference thread
            det.load(staging)
            det.invoke()
            outs.append(det.raw_outputs())
        for k in outs[0]:
            np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)
            np.testing.assert_array_equal(outs[0][k], a[k], err_msg=k)
    with pytest.raises(ValueError, match="input_type"):
        convert_int8(model, images[:8], input_type="float32")
