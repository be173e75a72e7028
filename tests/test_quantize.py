"""int8 conversion of a tiny gap-heatmap model: raw uint8 input, named int8 outputs close to float, bundle runs."""

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
    assert (ins.dtype, ins.scale, ins.zero_point) == ("uint8", 1.0, 0)  # raw camera pixels go in as they are
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
