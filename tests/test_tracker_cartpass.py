"""Tracking on real cart-pass videos from convert.cartpass (encoded mp4, decoded with OpenCV) against their truth.

Detections are the videos' ground-truth gap boxes with detector-like noise (jitter, 1 in 4 missed, a one-frame
false positive), so these tests measure the motion estimation, the tracking and the alert logic on real decoded
frames, independently of any model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from convert.cartpass import Aisle, CartPass, iter_video_rgb, make_aisle, render_cart_pass, restock
from edge.alerts import iou
from edge.config import TrackingConfig
from edge.motion import Odometry, ShiftEstimator
from edge.tracker import GapTracker
from edge.types import AlertEvent, Frame, Gap
from tests.test_tracker_scene import T0_WALL

RESTOCKED = 3  # gap id filled before the second pass


@dataclass
class Passes:
    aisle: Aisle
    first: CartPass
    second: CartPass  # the same aisle with gap RESTOCKED filled


@pytest.fixture(scope="module")
def passes(tmp_path_factory: pytest.TempPathFactory) -> Passes:
    d = tmp_path_factory.mktemp("cartpass")
    aisle = make_aisle(np.random.default_rng(5), length_px=3200, n_gaps=6)
    assert RESTOCKED in {g.gap_id for g in aisle.gaps}
    first = render_cart_pass(aisle, d / "first.mp4", seed=1)
    second = render_cart_pass(restock(aisle, [RESTOCKED]), d / "second.mp4", speed_px_per_frame=11.0, seed=2)
    return Passes(aisle, first, second)


def video_frames(cp: CartPass, start_index: int = 0) -> Iterator[Frame]:
    k = 0
    for k, rgb in enumerate(iter_video_rgb(cp.path), 1):
        i = start_index + k - 1
        yield Frame(rgb, i, i / cp.fps, T0_WALL + i / cp.fps)
    assert k == cp.frames


def noisy(cp: CartPass, k: int, rng: np.random.Generator, fp_at: int | None = None) -> list[Gap]:
    out = []
    for fg in cp.truth[k].gaps:
        if rng.random() < 0.25:
            continue
        j = rng.uniform(-3.0, 3.0, 4)
        x0, y0, x1, y1 = fg.box
        out.append(Gap(x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3], float(rng.uniform(0.45, 0.95))))
    if k == fp_at:
        out.append(Gap(200.0, 40.0, 260.0, 120.0, 0.7))  # on products, for one frame
    return out


def gap_of(cp: CartPass, k: int, bbox_norm: tuple[float, float, float, float]) -> int | None:
    w, h = cp.frame_size
    box = (bbox_norm[0] * w, bbox_norm[1] * h, bbox_norm[2] * w, bbox_norm[3] * h)
    best = max(((iou(box, fg.box), fg.gap_id) for fg in cp.truth[k].gaps), default=(0.0, None))
    return best[1] if best[0] > 0.5 else None


def run(tracker: GapTracker, cp: CartPass, seed: int, start: int = 0, fp_at: int | None = None) -> list:
    rng = np.random.default_rng(seed)
    events: list[tuple[AlertEvent, int]] = []
    for frame in video_frames(cp, start):
        k = frame.index - start
        events += [(e, k) for e in tracker.update(frame, noisy(cp, k, rng, fp_at))]
    return events


def test_shift_and_odometry_on_a_decoded_cart_pass(passes: Passes) -> None:
    cp = passes.first
    est, odo = ShiftEstimator(160), Odometry()
    errs = []
    for frame in video_frames(cp):
        s = est.update(frame.image)
        odo.advance(s)
        k = frame.index
        if k:
            assert s.reliable
            errs.append(s.dx + (cp.truth[k].x_offset - cp.truth[k - 1].x_offset) * cp.scale)
    final = odo.x - cp.truth[-1].x_offset * cp.scale
    print(
        f"cart pass: per-frame |dx error| mean {np.mean(np.abs(errs)):.2f} px, max {np.max(np.abs(errs)):.2f} px; "
        f"odometry error {final:+.1f} px after {cp.truth[-1].x_offset:.0f} px"
    )
    assert np.max(np.abs(errs)) < 1.5
    assert abs(final) < 0.01 * cp.truth[-1].x_offset * cp.scale


def test_one_alert_per_gap_then_one_cleared_for_the_restocked_one(passes: Passes, tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    tracker = GapTracker(TrackingConfig(), "cart-07", state)
    first = run(tracker, passes.first, seed=1, fp_at=30)
    assert all(e.event == "opened" for e, _ in first)
    opened = {gap_of(passes.first, k, e.bbox_norm): e for e, k in first}
    assert Counter(gap_of(passes.first, k, e.bbox_norm) for e, k in first) == Counter(
        g.gap_id for g in passes.aisle.gaps
    )
    marker_ids = {m for m, _ in passes.aisle.markers}
    assert {e.location.aisle for e, _ in first} == {f"aruco-{min(marker_ids)}"}
    # the same video starts over (a hard cut to the aisle's start), the gap RESTOCKED now filled
    second = run(tracker, passes.second, seed=2, start=passes.first.frames)
    assert [(e.event, e.alert_id) for e, _ in second] == [("cleared", opened[RESTOCKED].alert_id)]
    # and after a service restart, a third pass over the restocked aisle changes nothing
    restarted = GapTracker(TrackingConfig(), "cart-07", state)
    assert run(restarted, passes.second, seed=3) == []
    assert {p.alert_id for p in restarted.alerts.open_alerts()} == {
        e.alert_id for g, e in opened.items() if g != RESTOCKED
    }
