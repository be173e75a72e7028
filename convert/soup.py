"""Fine-tunes several runs from the same start with different seeds and ships their averaged weights (a model soup).

Runs that start from the same weights and see the same frames in a different order land in one basin of the loss;
their uniform average (Wortsman et al. 2022, "Model soups") is one model with one model's invoke time, and on the
ESD split soups of 2, 3 and 5 runs measured 1.0-1.9 AP50 points over their members' mean (models/NOTES.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from convert.build_default import BuildReport, BuildSpec, build
from convert.train import CONFIG_FILE, load_float_model, net_config_for


@dataclass(frozen=True)
class Member:
    """One fine-tuning run of the soup: its seed, work folder and held-out AP50 (int8) on the threshold set."""

    seed: int
    work_dir: str
    ap50: float


@dataclass(frozen=True)
class SoupReport:
    """The averaged model's build report and its members."""

    report: BuildReport
    members: tuple[Member, ...]
    seconds: float  # the whole soup: every member's build and the average's

    def to_dict(self) -> dict[str, Any]:
        ms = [m.ap50 for m in self.members]
        return {"members": [asdict(m) for m in self.members], "members_mean_ap50": round(float(np.mean(ms)), 4),
                "members_best_ap50": round(max(ms), 4), "seconds": round(self.seconds, 1)}


def average_weights(sources: Sequence[Path], out: Path) -> Path:
    """Write the element-wise mean of float weights files that share one net config to `out`, with its config."""
    if not sources:
        raise ValueError("no weights to average")
    net = net_config_for(sources[0])
    for s in sources[1:]:
        if net_config_for(s) != net:
            raise ValueError(f"{s} has another net config than {sources[0]}; only runs of one net can be averaged")
    models = [load_float_model(s, net)[0] for s in sources]
    mean = [np.mean(ws, axis=0) for ws in zip(*(m.get_weights() for m in models), strict=True)]
    models[0].set_weights(mean)
    out.parent.mkdir(parents=True, exist_ok=True)
    models[0].save_weights(str(out))
    config = json.loads((sources[0].parent / CONFIG_FILE).read_text())
    config["seconds"] = round(sum(_seconds(s) for s in sources), 1)  # what the soup cost to train
    config["soup"] = [str(s) for s in sources]
    (out.parent / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _seconds(weights: Path) -> float:
    return float(json.loads((weights.parent / CONFIG_FILE).read_text()).get("seconds", 0.0))


def build_soup(spec: BuildSpec, runs: int) -> SoupReport:
    """Fine-tune `runs` times (seeds spec.train.seed + k, each in WORK/member-k, measured unsigned there), average
    the weights into WORK/float and build the signed bundle from them, measured like any build."""
    if runs < 2:
        raise ValueError(f"a soup needs at least 2 runs, got {runs}")
    t0 = time.monotonic()
    members: list[Member] = []
    weights: list[Path] = []
    for k in range(runs):
        work = spec.work_dir / f"member-{k}"
        seed = spec.train.seed + k
        member = replace(spec, work_dir=work, out_bundle=work / "member.bundle", key_path=None, public_key_out=None,
                         train=replace(spec.train, seed=seed), reuse_weights=False)
        rep = build(member)
        members.append(Member(seed, str(work), float(rep.metrics["sets"][spec.threshold_set]["int8"]["ap50"])))
        weights.append(work / "float" / "model.weights.h5")
    average_weights(weights, spec.work_dir / "float" / "model.weights.h5")
    report = build(replace(spec, reuse_weights=True))
    return SoupReport(report, tuple(members), time.monotonic() - t0)
