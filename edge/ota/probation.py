"""The probation window of a freshly switched model: per-frame latency and output sanity, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProbationWindow:
    """Collects `frames` observations; a verdict is due when full, or early once too many outputs were bad."""

    frames: int
    latency_budget_ms: float | None
    max_bad_share: float = 0.25
    latencies: list[float] = field(default_factory=list)
    bad: int = 0

    def add(self, latency_ms: float, outputs_ok: bool) -> None:
        self.latencies.append(float(latency_ms))
        if not outputs_ok:
            self.bad += 1

    @property
    def done(self) -> bool:
        return len(self.latencies) >= self.frames or self.bad > self.max_bad_share * self.frames

    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if self.latencies else 0.0

    def verdict(self) -> tuple[str, str] | None:
        """None when the model passed, else (code, reason)."""
        if self.bad > self.max_bad_share * self.frames:
            return ("probation-garbage", f"{self.bad} of {len(self.latencies)} frames had NaN/inf or constant "
                                         "outputs")
        if self.latency_budget_ms is not None and self.p95() > self.latency_budget_ms:
            return ("probation-latency", f"p95 inference latency {self.p95():.1f} ms over {len(self.latencies)} "
                                         f"frames exceeds the budget of {self.latency_budget_ms:g} ms")
        return None
