"""The network config: the optional shared head, and net configs written before the option (one head per output)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from convert.model import NetConfig

pytest.importorskip("tensorflow")

SMALL = dict(width=64, height=64, stride=8, channels=(8, 8, 12, 12, 16), fpn=8, head=8)


def _layer_names(cfg: NetConfig) -> set[str]:
    from convert.model import build_model

    return {layer.name for layer in build_model(cfg).layers}


def test_shared_head_feeds_both_outputs_and_old_configs_keep_two_heads() -> None:
    shared = NetConfig(**SMALL, shared_head=True)  # type: ignore[arg-type]
    names = _layer_names(shared)
    assert "head_dw" in names and not {"hm_head_dw", "box_head_dw"} & names
    assert {"heatmap", "ltrb_conv"} <= names  # two output convs, so two separately quantized output tensors
    assert NetConfig.from_dict(shared.to_dict()) == shared

    old = dataclasses.asdict(shared)
    del old["shared_head"]  # a net config written before the option (the shipped model's, for one)
    cfg = NetConfig.from_dict(json.loads(json.dumps(old)))
    assert not cfg.shared_head
    assert {"hm_head_dw", "box_head_dw"} <= _layer_names(cfg)


def test_the_shipped_weights_load_with_their_own_net_config() -> None:
    """`finetune` starts from models/shelfgap-default.weights.h5: its config must build the net those weights fit."""
    from convert.build_default import DEFAULT_NAME, MODELS
    from convert.train import load_float_model, net_config_for

    weights = MODELS / f"{DEFAULT_NAME}.weights.h5"
    net = net_config_for(weights)
    model, loaded = load_float_model(weights)
    assert loaded == net
    assert model.count_params() == json.loads((MODELS / f"{DEFAULT_NAME}.json").read_text())["report"]["params"]


def test_nearest_up2_repeats_each_pixel_like_upsampling2d() -> None:
    """The XNNPACK-friendly upsampling (concat + depth_to_space) is exactly Keras's nearest UpSampling2D."""
    import keras
    import numpy as np

    from convert.model import nearest_up2

    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    ours = np.asarray(nearest_up2("up")(x))
    assert ours.shape == (2, 10, 14, 3)
    np.testing.assert_array_equal(ours, np.asarray(keras.layers.UpSampling2D(2)(x)))
    np.testing.assert_array_equal(ours[:, 1::2, 0::2], x)  # and by hand: every 2x2 block is its source pixel
    # training crops have no fixed size: the layer keeps the unknown dimensions unknown
    inp = keras.Input((None, None, 3))
    assert tuple(nearest_up2("up")(inp).shape) == (None, None, None, 3)


def test_int8_graph_runs_as_one_xnnpack_partition() -> None:
    """Every op of the converted net is one XNNPACK takes, so the delegate runs the graph as one piece (with Keras's
    UpSampling2D it was four, with single-threaded shape ops between them)."""
    pytest.importorskip("ai_edge_litert")
    import numpy as np

    from convert.model import build_model
    from convert.quantize import convert_int8
    from convert.synth import make_shelf_image
    from edge.runtime import make_interpreter

    cfg = NetConfig(**{**SMALL, "stride": 4})  # type: ignore[arg-type]  # three upsamplings, as in the default net
    rng = np.random.default_rng(0)
    tfl = convert_int8(build_model(cfg), [make_shelf_image(rng, 64, 64).image for _ in range(4)])
    _, info = make_interpreter(tfl, threads=2)
    assert info.xnnpack and info.quantized
    assert info.delegated_partitions == 1
    assert info.heavy_ops == info.heavy_ops_delegated > 0
