"""The release gate: is a new bundle measurably worse than the one the fleet runs, on labelled frames of its stores?

Both bundles run through the device detector on the same frames; the new one is refused only when its AP50 is lower
across the whole 95 % paired bootstrap interval: a difference the frames cannot tell from noise does not block a
release, a regression they resolve does. More frames resolve smaller regressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.bootstrap import DEFAULT_RESAMPLES, Comparison, Matched, compare_ap50


@dataclass(frozen=True)
class GateResult:
    """AP50 of both bundles on the gate's frames and their paired difference (new minus current)."""

    new: str
    current: str
    data: str
    images: int
    new_ap50: float
    current_ap50: float
    comparison: Comparison

    @property
    def passed(self) -> bool:
        """False only when the new bundle is worse across the whole interval."""
        return self.comparison.diff.high >= 0.0

    def describe(self) -> str:
        d = self.comparison.diff
        verdict = "passed" if self.passed else "REFUSED: the new model is worse on these frames"
        return (f"release gate {verdict}: {self.new} AP50 {self.new_ap50:.3f} against {self.current} "
                f"{self.current_ap50:.3f} on {self.images} images of {self.data}, difference {d.value:+.3f} "
                f"({d.level * 100:.0f} % paired interval {d.low:+.3f} to {d.high:+.3f})")


def gate(new: Any, current: Any, data: Path, resamples: int = DEFAULT_RESAMPLES, threads: int = 2) -> GateResult:
    """Measure bundles `new` and `current` on the YOLO folder `data` and compare them."""
    from convert.dataset import load_yolo_folder
    from convert.evaluate import detect_with_bundle

    items = load_yolo_folder(data)
    if not items:
        raise ValueError(f"no labelled images in {data}")
    if not any(len(it.boxes) for it in items):
        raise ValueError(f"{data} has no labelled gap: AP50 is not defined there, so it cannot tell a model that finds "
                         "gaps from one that finds none. Gate on frames with labelled gaps")
    images, gts = [it.image for it in items], [it.boxes for it in items]
    a = Matched.of(detect_with_bundle(new, images, threads=threads), gts)
    b = Matched.of(detect_with_bundle(current, images, threads=threads), gts)
    w = np.ones(len(items))
    return GateResult(
        new=_label(new), current=_label(current), data=str(data), images=len(items),
        new_ap50=a.ap50(w), current_ap50=b.ap50(w), comparison=compare_ap50(a, b, resamples),
    )


def _label(bundle: Any) -> str:
    return f"{bundle.manifest.name} v{bundle.manifest.version} ({Path(bundle.source).name})"
