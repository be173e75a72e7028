"""Plain typed values that flow between the pipeline stages (frames, gaps, tracks, alert events)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured frame. `image` is RGB uint8 HxWx3; `index` counts frames from the source's start."""

    image: np.ndarray
    index: int
    t_mono: float  # time.monotonic() at capture
    t_wall: float  # time.time() at capture, only for payloads
    dropped_before: int = 0  # frames the capture thread discarded since the previous delivered frame
    # the view was interrupted before this frame (a pause, a live camera reopened): the cart may have moved any
    # distance since the previous frame, so its position is unknown
    interrupted: bool = False


@dataclass(frozen=True)
class Gap:
    """One detected empty spot: box in pixels of the original frame (x0, y0, x1, y1) and a score in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def cx(self) -> float:
        return 0.5 * (self.x0 + self.x1)

    @property
    def cy(self) -> float:
        return 0.5 * (self.y0 + self.y1)


@dataclass(frozen=True)
class Location:
    """Where a gap is along the aisle: the aisle name (from an ArUco marker) and the odometry offset."""

    aisle: str | None
    offset_m: float | None
    source: str  # "odometry", "aruco" or "none"


@dataclass
class AlertEvent:
    """An `opened` or `cleared` event for one physical gap, before it is serialised to a payload."""

    alert_id: str
    event: str  # "opened" | "cleared"
    first_seen: float  # wall-clock seconds
    last_seen: float
    ts: float
    bbox_norm: tuple[float, float, float, float]  # x0, y0, x1, y1 normalised to the frame
    confidence: float
    frames: int
    frame_index: int  # the source frame that bbox and snapshot refer to
    location: Location
    snapshot_jpeg: bytes | None = None  # the frame with the gap marked
    extra: dict[str, object] = field(default_factory=dict)
    # a `cleared` that closes an alert opened twice for one gap (after a restart, before a marker placed it): the
    # id of the alert that stays open for it
    duplicate_of: str | None = None
