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
