"""The probation window of a freshly switched model: per-frame latency and output sanity, and the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.types import Gap

# A frame whose gaps are this many, or cover this share of the picture, is not a shelf a gap model can be right
# about: a model fed the wrong input scale or colour order finds "gaps" everywhere.
IMPLAUSIBLE_GAPS = 40
IMPLAUSIBLE_COVER = 0.6


def plausible(gaps: Sequence[Gap], width: int, height: int) -> bool:
    """Whether one frame's gaps could be a real shelf's: fewer than IMPLAUSIBLE_GAPS, covering (box areas summed,
    overlaps counted twice) less than IMPLAUSIBLE_COVER of the frame."""
    if len(gaps) >= IMPLAUSIBLE_GAPS:
        return False
    area = sum(max(0.0, g.x1 - g.x0) * max(0.0, g.y1 - g.y0) for g in gaps)
    return area < IMPLAUSIBLE_COVER * max(1, width * height)


@dataclass
class ProbationWindow:
    """Collects `frames` observations; a verdict is due when full, or early once too many outputs were bad.

    `baseline_implausible`: the share of implausible frames the previous model gave just before the switch (None
    when unknown). A new model that sees implausible frames where the old one did not is garbage; where the old one
    did too (a real aisle stripped bare, say), implausible frames do not count against the new one."""

    frames: int
    latency_budget_ms: float | None
    max_bad_share: float = 0.25
    baseline_implausible: float | None = None
    latencies: list[float] = field(default_factory=list)
    bad: int = 0
    implausible: int = 0

    def add(self, latency_ms: float, outputs_ok: bool, is_plausible: bool = True) -> None:
        self.latencies.append(float(latency_ms))
        if not outputs_ok:
            self.bad += 1
        if not is_plausible:
            self.implausible += 1

    @property
    def counts_implausible(self) -> bool:
        """Whether implausible frames count against the new model (not when the old one saw them too)."""
        return self.baseline_implausible is None or self.baseline_implausible < self.max_bad_share / 2

    @property
    def _counted_implausible(self) -> int:
        return self.implausible if self.counts_implausible else 0

    @property
    def done(self) -> bool:
        limit = self.max_bad_share * self.frames
        return len(self.latencies) >= self.frames or self.bad > limit or self._counted_implausible > limit

    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if self.latencies else 0.0

    def verdict(self) -> tuple[str, str] | None:
        """None when the model passed, else (code, reason)."""
        n = len(self.latencies)
        if self.bad > self.max_bad_share * self.frames:
            return ("probation-garbage", f"{self.bad} of {n} frames had NaN or infinite outputs")
        if self._counted_implausible > self.max_bad_share * self.frames:
            before = ("" if self.baseline_implausible is None
                      else f" (the previous model: {self.baseline_implausible:.0%} of its last frames)")
            return ("probation-garbage", f"{self.implausible} of {n} frames had {IMPLAUSIBLE_GAPS} gaps or more, or "
                                         f"gaps over {IMPLAUSIBLE_COVER:.0%} of the picture{before}")
        if self.latency_budget_ms is not None and self.p95() > self.latency_budget_ms:
            return ("probation-latency", f"p95 inference latency {self.p95():.1f} ms over {n} "
                                         f"frames exceeds the budget of {self.latency_budget_ms:g} ms")
        return None
