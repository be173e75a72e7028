"""Rolling per-stage latency windows and frame-rate counters for the stats topic, the preview and bench."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


class LatencyWindow:
    """The last `size` durations of one stage, in milliseconds, with percentiles."""

    def __init__(self, size: int = 300):
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentile(self, q: float) -> float | None:
        with self._lock:
            if not self._values:
                return None
            return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    def values(self) -> list[float]:
        with self._lock:
            return list(self._values)

    def __len__(self) -> int:
        return len(self._values)


class RateMeter:
    """Events per second over a sliding window of monotonic timestamps."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(self._times[-1] - self._times[0], 1e-6)
            return (len(self._times) - 1) / span


@dataclass
class PipelineStats:
    """Counters and windows the pipeline fills and the stats publisher, preview and bench read."""

    frames: int = 0
    dropped: int = 0
    alerts_opened: int = 0
    alerts_cleared: int = 0
    model_swaps: int = 0
    withheld: int = 0  # frames whose gaps the tracker did not see (a model on probation gave a garbage frame)

    def __post_init__(self) -> None:
        self.fps = RateMeter()
        self.preprocess = LatencyWindow()
        self.invoke = LatencyWindow()
        self.decode = LatencyWindow()
        self.track = LatencyWindow()
        self.total = LatencyWindow()
        self.started = time.monotonic()
        self.thread_cpu_s: dict[str, float] = {}  # CPU seconds each stage thread used in its last run

    def cpu_ms_per_frame(self) -> dict[str, float]:
        """CPU milliseconds per processed frame, by stage thread (what the stages cost the cores, waits excluded)."""
        n = max(1, self.frames)
        return {k: round(v * 1e3 / n, 3) for k, v in self.thread_cpu_s.items()}

    def stage_percentiles(self) -> dict[str, dict[str, float | None]]:
        stages = {"preprocess": self.preprocess, "invoke": self.invoke, "decode": self.decode,
                  "track": self.track, "total": self.total}
        return {k: {"p50": w.percentile(50), "p95": w.percentile(95)} for k, w in stages.items()}
