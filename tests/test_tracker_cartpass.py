"""Tracking on real cart-pass videos from convert.cartpass (encoded mp4, decoded with OpenCV) against their truth.

Detections are the videos' ground-truth gap boxes with detector-like noise (jitter, 1 in 4 missed, a one-frame
false positive), so these tests measure the motion estimation, the tracking and the alert logic on real decoded
frames, independently of any model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from convert.cartpass import Aisle, CartPass, iter_video_rgb, make_aisle, render_cart_pass, restock
from edge.alerts import AlertManager, iou
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


def _paused_run(tracker: GapTracker, cp: CartPass, skip: range, interrupted: bool, seed: int = 1, start: int = 0
                ) -> list:
    """The pass with the frames in `skip` never processed (the service paused while the cart rolled on); the frame
    after them carries what the pipeline marks on it (`interrupted`, and the skipped frames as dropped)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[AlertEvent, int]] = []
    for frame in video_frames(cp, start):
        k = frame.index - start
        dets = noisy(cp, k, rng)
        if k in skip:
            continue
        if k == skip.stop:
            frame = replace(frame, dropped_before=len(skip) if interrupted else 0, interrupted=interrupted)
        events += [(e, k) for e in tracker.update(frame, dets)]
    return events


def _second_pass_paused(passes: Passes, tmp_path: Path, interrupted: bool, away_s: float | None = None,
                        start_at: float = 1 / 3) -> list:
    """The aisle passed once (every gap alerted), then again (the same shelves, nothing restocked) with 1.5 s of
    frames never processed a `start_at` of the way along, while the cart rolls on; `away_s`: the frame after the
    skipped ones comes that many seconds after the last one processed (a longer pause)."""
    cp = passes.first
    tracker = GapTracker(TrackingConfig(), "cart-07", tmp_path / "alerts.json")
    first = run(tracker, cp, seed=1)
    assert Counter(gap_of(cp, k, e.bbox_norm) for e, k in first) == Counter(g.gap_id for g in passes.aisle.gaps)
    start = int(cp.frames * start_at)
    skip = range(start, start + round(1.5 * cp.fps))
    if away_s is not None:
        update = tracker.update
        late = cp.frames + skip.stop

        def later(frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
            return update(replace(frame, t_mono=frame.t_mono + away_s) if frame.index >= late else frame, gaps)

        tracker.update = later  # type: ignore[method-assign]
    return _paused_run(tracker, cp, skip, interrupted, seed=2, start=cp.frames)


@pytest.mark.parametrize("start_at", [1 / 4, 1 / 3, 1 / 2])
def test_a_pause_while_the_cart_rolls_on_changes_no_alert(passes: Passes, tmp_path: Path, start_at: float) -> None:
    """`cmd/pause`, then `cmd/resume` 1.5 s later, on a second pass past gaps alerted on the first: the frames in
    between were never looked at and the cart moved on about a third of the frame. The tracker bridges the pause
    with the cart's speed, and nothing is cleared or opened again."""
    assert _second_pass_paused(passes, tmp_path, interrupted=True, start_at=start_at) == []


def test_a_long_pause_never_clears_a_gap_that_is_still_empty(passes: Passes, tmp_path: Path) -> None:
    """After a long pause (20 s) the tracker cannot guess how far the cart went (here it rolled on about a third of
    the frame), so it no longer knows the aisle either: the gaps it sees are opened again, unplaced, and must never
    clear one that is still empty. At the aisle's far-end marker they are found to be the first pass's gaps: each
    is cleared as that alert's duplicate (`duplicate_of`; before, they stayed open for good, placed in the aisle
    at an offset off by the distance rolled), and one alert per gap is left open."""
    events = _second_pass_paused(passes, tmp_path, interrupted=True, away_s=20.0)
    opened = {e.alert_id: e for e, _ in events if e.event == "opened"}
    assert all(gap_of(passes.first, k, e.bbox_norm) is not None for e, k in events if e.event == "opened")
    assert opened and all(e.location.aisle is None and e.location.source == "odometry" for e in opened.values())
    cleared = [e for e, _ in events if e.event == "cleared"]
    assert all(e.duplicate_of is not None for e in cleared)  # none restocked: the shelves are as they were
    assert {e.alert_id for e in cleared} == set(opened)
    left = AlertManager(TrackingConfig(), "cart-07", tmp_path / "alerts.json").open_alerts()
    assert len(left) == len(passes.aisle.gaps) and not {p.alert_id for p in left} & set(opened)


def test_without_the_pause_mark_the_same_pause_clears_gaps_that_are_still_empty(
    passes: Passes, tmp_path: Path
) -> None:
    """What the mark prevents (the service before it): frames skipped unannounced look like a one-frame shift, the
    old places are looked for where the shelf has moved on, and gaps that are still empty are `cleared`."""
    events = _second_pass_paused(passes, tmp_path, interrupted=False)
    assert [gap_of(passes.first, k, e.bbox_norm) for e, k in events if e.event == "cleared"] != []


def test_a_pause_in_the_first_pass_opens_each_gap_once(passes: Passes, tmp_path: Path) -> None:
    cp = passes.first
    start = cp.frames // 3
    tracker = GapTracker(TrackingConfig(), "cart-07", tmp_path / "alerts.json")
    events = _paused_run(tracker, cp, range(start, start + round(1.5 * cp.fps)), interrupted=True)
    opened = Counter(gap_of(cp, k, e.bbox_norm) for e, k in events)
    assert {e.event for e, _ in events} == {"opened"}
    assert opened == Counter(g.gap_id for g in passes.aisle.gaps)


def test_alerts_kept_through_a_pause_are_cleared_on_the_next_pass_once_restocked(
    passes: Passes, tmp_path: Path
) -> None:
    """Places the pause left unplaced are placed again by the aisle's marker on the next pass: the restocked one is
    cleared, the others stay open."""
    cp = passes.first
    start = cp.frames // 3
    tracker = GapTracker(TrackingConfig(), "cart-07", tmp_path / "alerts.json")
    first = _paused_run(tracker, cp, range(start, start + round(1.5 * cp.fps)), interrupted=True)
    opened = {e.alert_id: gap_of(cp, k, e.bbox_norm) for e, k in first}
    assert RESTOCKED in opened.values()
    second = run(tracker, passes.second, seed=2, start=cp.frames)
    assert [(e.event, opened[e.alert_id]) for e, _ in second] == [("cleared", RESTOCKED)]
