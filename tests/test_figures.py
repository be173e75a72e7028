"""bench/figures.py's model-view.jpg: two panels readable at the README's 760 px, on a shelf of typical recall
(visual audit, L6: three 253-px panels whose scores could not be read, on a shelf with under half its gaps found)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from edge.bundle import DEFAULT_BUNDLE

REPO = Path(__file__).resolve().parents[1]


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_figures", REPO / "bench" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_view_is_the_shelf_of_median_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _figures()
    recalls = {10: 0.9, 11: 0.45, 12: 0.7, 13: 0.75, 14: 0.5}

    def look(detector: object, seed: int) -> object:
        hit = np.array([True] * round(recalls[seed] * 20) + [False] * (20 - round(recalls[seed] * 20)))
        return figures.View(seed, np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), _Match(hit), np.zeros((20, 4)))

    monkeypatch.setattr(figures, "look", look)
    view, got = figures.median_view(object(), range(10, 15))
    assert view.seed == 12 and got == [0.9, 0.45, 0.7, 0.75, 0.5]


class _Match:
    def __init__(self, gt_hit: np.ndarray):
        self.gt_hit = gt_hit


@pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")
def test_only_the_model_view_is_drawn_in_two_panels(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "figures.py"), "--only", "model-view", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-view.jpg"]  # the figures that need ESD untouched
    img = cv2.imread(str(tmp_path / "model-view.jpg"))
    assert img is not None and img.shape[1] == 2 * 640 + 12  # two frames and a gutter: 374 px each at 760
