"""GapTracker on rendered cart passes: one `opened` per physical gap, none for noise, none again on later passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from edge.config import TrackingConfig
from edge.tracker import GapTracker
from edge.types import AlertEvent, Frame, Gap
from tests.test_tracker_scene import (
    FRAME_W,
    Aisle,
    Camera,
    NoisyDetector,
    drive,
    make_aisle,
    matching_gap,
    offsets,
)

END = 3600 - FRAME_W


def run_pass(
    tracker: GapTracker, camera: Camera, xs: list[float], detector: NoisyDetector | None = None
) -> list[tuple[AlertEvent, float, float]]:
    """Feed one pass; returns each event with the (x, y) offset of the frame it refers to."""
    out = []
    for frame, x, y, gaps in drive(camera, xs, detector):
        for ev in tracker.update(frame, gaps):
            assert ev.frame_index == frame.index
            out.append((ev, x, y))
    return out


def opened_gaps(aisle: Aisle, events: list[tuple[AlertEvent, float, float]]) -> Counter[int | None]:
    return Counter(matching_gap(aisle, e.bbox_norm, x, y) for e, x, y in events if e.event == "opened")


@pytest.fixture(scope="module")
def aisle() -> Aisle:
    return make_aisle()


def test_one_opened_per_true_gap_and_none_for_a_false_positive(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-01")
    cam = Camera(aisle, seed=1)
    fp = (300.0, 20.0, 370.0, 100.0)  # on products, for one frame
    det = NoisyDetector(seed=1, false_positives={40: fp})
    xs = offsets(0, END, 12.0, seed=1)
    events = run_pass(tracker, cam, xs, det)
    assert all(e.event == "opened" for e, _, _ in events)
    assert opened_gaps(aisle, events) == Counter(range(len(aisle.gaps)))
    ids = [e.alert_id for e, _, _ in events]
    assert len(set(ids)) == len(ids)
    for e, _, _ in events:
        assert e.location.aisle == "aruco-3" and e.location.source == "aruco"
        assert e.frames >= 3 and 0.45 <= e.confidence <= 0.95
        assert e.first_seen <= e.last_seen == e.ts
        assert e.snapshot_jpeg is None
    # offsets along the aisle follow the true gap positions, measured from the aisle's marker (id 3)
    by_gap = {matching_gap(aisle, e.bbox_norm, x, y): e.location.offset_m for e, x, y in events}
    marker_x = dict(aisle.markers)[3]
    for i, (x0, _, x1, _) in enumerate(aisle.gaps):
        assert by_gap[i] == pytest.approx((0.5 * (x0 + x1) - marker_x) * 0.0015, abs=0.03)
    # and the cart's own position: the centre of the last frame
    assert tracker.position.offset_m == pytest.approx((xs[-1] + FRAME_W / 2 - marker_x) * 0.0015, abs=0.03)


def test_a_track_lost_mid_view_is_the_same_alert(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-01")
    cam = Camera(aisle, seed=2)
    xs = offsets(0, END, 12.0, seed=2)
    # gap 1 (x 1400..1550) is fully in view for x in ~[910, 1400]: blank it for 6 frames in the middle, longer
    # than lost_frames (its track ends) and shorter than lost_frames + clear_frames (not seen filled)
    mid = next(i for i, x in enumerate(xs) if x > 1100)
    det = NoisyDetector(seed=2, blackout={1: range(mid, mid + 6)})
    events = run_pass(tracker, cam, xs, det)
    assert opened_gaps(aisle, events) == Counter(range(len(aisle.gaps)))


def test_gaps_within_the_place_radius_are_one_alert() -> None:
    # gaps 0 and 1 are 30 px apart on one level, well within place_radius_m (0.25 m = 167 px): one place;
    # gap 2 is 350 px further on, and gap 3 right above gap 0 on another level: places of their own
    aisle = make_aisle(
        seed=5, gaps=((900, 120, 2), (1050, 100, 2), (1500, 100, 2), (900, 120, 1)), marker_ids=()
    )
    tracker = GapTracker(TrackingConfig(aruco=False), "cart-01")
    events = run_pass(tracker, Camera(aisle, seed=5), offsets(0, 1800, 12.0, seed=5), NoisyDetector(seed=5))
    gaps = opened_gaps(aisle, events)
    assert sum(gaps.values()) == 3 and gaps[2] == gaps[3] == 1 and gaps[0] + gaps[1] == 1


def test_second_pass_after_turning_round_reopens_nothing(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-01")
    cam = Camera(aisle, seed=3)
    first = run_pass(tracker, cam, offsets(0, END, 12.0, seed=3), NoisyDetector(seed=3))
    assert opened_gaps(aisle, first) == Counter(range(len(aisle.gaps)))
    # the cart leaves the aisle and turns round: frames of something else, odometry meaningless
    for _ in range(30):
        assert tracker.update(cam.other_scene(), []) == []
    assert abs(tracker.odometry.x - 0.0) > 500  # nowhere near the aisle start by odometry
    second = run_pass(tracker, cam, offsets(0, END, 11.0, seed=4), NoisyDetector(seed=4))
    assert second == []
    assert tracker.position.aisle == "aruco-3"


def test_without_markers_driving_back_along_the_aisle_reopens_nothing(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=6)
    first = run_pass(tracker, cam, offsets(0, END, 12.0, seed=6), NoisyDetector(seed=6))
    assert opened_gaps(aisle, first) == Counter(range(len(aisle.gaps)))
    assert all(e.location.aisle is None and e.location.source == "odometry" for e, _, _ in first)
    back = run_pass(tracker, cam, offsets(END, 0, 14.0, seed=7), NoisyDetector(seed=7))
    assert back == []
    assert tracker.odometry.x == pytest.approx(0.0, abs=40.0)


def test_tracks_for_the_preview_follow_the_gaps(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-01")
    cam = Camera(aisle, seed=8)
    det = NoisyDetector(seed=8, miss=0.0)
    confirmed_seen = False
    for frame, x, y, gaps in drive(cam, offsets(300, 1000, 10.0, seed=8), det):
        tracker.update(frame, gaps)
        for tv in tracker.tracks():
            # the nearest true gap, in this frame's pixels (cut by the frame edge when partly out of view)
            truth = min(
                (tuple(v - o for v, o in zip(g, (x, y, x, y), strict=True)) for g in aisle.gaps),
                key=lambda b: abs(b[0] + b[2] - tv.box[0] - tv.box[2]),
            )
            assert tv.box[1] == pytest.approx(truth[1], abs=6.0)
            assert tv.box[3] == pytest.approx(truth[3], abs=6.0)
            assert tv.box[0] == pytest.approx(truth[0], abs=12.0) or truth[0] < 0.0 or tv.box[0] < 0.0
            assert tv.box[2] == pytest.approx(truth[2], abs=12.0) or truth[2] > FRAME_W or tv.box[2] > FRAME_W
            if tv.confirmed:
                confirmed_seen = True
                assert tv.alert_id is not None and tv.hits >= 3
    assert confirmed_seen


def test_dropped_frames_keep_the_odometry(aisle: Aisle) -> None:
    """The capture thread drops frames: bigger jumps between delivered frames, same positions."""
    tracker = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=9)
    xs = offsets(0, END, 12.0, seed=9)
    events = []
    for k, (frame, x, y, gaps) in enumerate(drive(cam, xs, NoisyDetector(seed=9))):
        if k % 3:
            continue  # two of every three frames never reach the tracker
        delivered = replace(frame, dropped_before=0 if k == 0 else 2)
        events += [(e, x, y) for e in tracker.update(delivered, gaps)]
    assert tracker.odometry.x == pytest.approx(xs[(len(xs) - 1) // 3 * 3], abs=30.0)
    assert opened_gaps(aisle, events) == Counter(range(len(aisle.gaps)))


def test_bad_config_and_degenerate_boxes() -> None:
    with pytest.raises(ValueError, match="confirm_frames"):
        GapTracker(TrackingConfig(confirm_frames=6, window_frames=5), "d")
    with pytest.raises(ValueError, match="match_iou"):
        GapTracker(TrackingConfig(match_iou=0.0), "d")
    tracker = GapTracker(TrackingConfig(), "d")
    cam = Camera(make_aisle(length=1600, marker_ids=()), seed=0)
    frame: Frame = cam.frame(0.0)[0]
    nan = float("nan")
    assert tracker.update(frame, [Gap(10, 10, 5, 50, 0.9), Gap(nan, 1, 2, 3, 0.9)]) == []
    assert tracker.tracks() == []


def test_a_box_that_stays_put_in_the_frame_while_the_shelf_moves_is_not_a_gap() -> None:
    """QA P1: a detector artefact at a fixed frame position (here near the left edge) slides along the shelf in
    shelf coordinates; its track must not be confirmed (nor drag a place along). The same box while the cart
    stands still is indistinguishable from a gap and is confirmed."""
    aisle = make_aisle(seed=8, gaps=(), marker_ids=())
    artefact = [Gap(20.0, 120.0, 130.0, 170.0, 0.8)]
    moving = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=8)
    events = [e for x in offsets(0, 1500, 12.0, seed=8) for e in moving.update(cam.frame(x)[0], artefact)]
    assert events == []
    assert any(t.hits >= 20 for t in moving.tracks())  # it was tracked all along, just never confirmed
    standing = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=9)
    events = [e for _ in range(10) for e in standing.update(cam.frame(400.0)[0], artefact)]
    assert [e.event for e in events] == ["opened"]


@pytest.mark.parametrize("walker_px", [-7.0, -6.0, -5.0])
def test_a_dark_shape_moving_slowly_along_the_shelf_is_not_confirmed(aisle: Aisle, walker_px: float) -> None:
    """A shopper walking slowly past, whose dark clothes the model scores as a gap, was confirmed and alerted: the
    check that a track stays put on the shelf let its shelf position spread by up to half its spread in the frame.
    Here the cart rolls at 10 px a frame and the shape moves 5-7 px a frame in the frame (3-5 px a frame along
    the shelf); a gap that stays put on the shelf, found as noisily, is alerted on the same pass."""
    import numpy as np

    tracker = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=9)
    rng = np.random.default_rng(4)
    events: list[tuple[str, AlertEvent]] = []
    for k, x in enumerate(offsets(300, 900, 10.0, seed=9, wobble=0.0)):
        frame, _, _ = cam.frame(x, 0.0)
        x0 = 480.0 + walker_px * k  # enters at the right, drifts left slower than the shelf
        j = rng.uniform(-3, 3, 4)  # the detector's jitter, on both
        shape = [Gap(x0 + j[0], 150.0 + j[1], x0 + 70.0 + j[2], 330.0 + j[3], score=0.8)] if 20 < x0 < 560 else []
        g0 = 1000.0 - x  # a real gap at shelf x 1000..1080, the same rows
        gap = [Gap(g0 + j[1], 150.0 + j[2], g0 + 80.0 + j[3], 330.0 + j[0], score=0.8)] if 20 < g0 < 540 else []
        for ev in tracker.update(frame, shape + gap):
            shelf_x = 0.5 * (ev.bbox_norm[0] + ev.bbox_norm[2]) * 640 + x
            events.append(("gap" if abs(shelf_x - 1040.0) < 30 else "shape", ev))
    assert [kind for kind, _ in events] == ["gap"], [(kind, e.event, e.frame_index) for kind, e in events]


def test_a_shopper_in_front_of_a_gap_while_the_cart_stands_does_not_clear_it(aisle: Aisle) -> None:
    """The bench's stop_people pass (bench/cart_motions.py): the cart stands in front of an alerted gap and a
    shopper walks slowly in front of it, hiding it. Whole-frame phase correlation took part of the shopper's
    motion for the cart's: the odometry crept about 50 px while the gap was hidden, so the standing cart's views
    seemed to move and the hidden gap counted as seen filled: it was cleared, and alerted again under a new id
    once the shopper had gone. Here the detector does not find the gap while the shopper covers half of it."""
    import cv2

    tracker = GapTracker(TrackingConfig(aruco=False), "cart-01")
    cam = Camera(aisle, seed=7)
    det = NoisyDetector(seed=7, miss=0.0, jitter=1.0)
    gx0, _, gx1, _ = aisle.gaps[0]
    stand = 0.5 * (gx0 + gx1) - FRAME_W / 2  # the gap mid-frame
    xs = offsets(0, stand, 10.0, seed=7, wobble=0.0) + [stand] * 120
    xs += offsets(stand, stand + 200, 10.0, seed=7)  # rolls on with the gap in view
    arrive = xs.index(stand)
    events = []
    for k, x in enumerate(xs):
        frame, fx, fy = cam.frame(x)
        gaps = det.detect(aisle, frame, fx, fy)
        cx = -150 + 8 * (k - arrive - 10)  # from the left, 8 px a frame, 220 px wide
        if k > arrive + 10 and cx < FRAME_W + 150:
            x0, x1 = int(cx - 110), int(cx + 110)
            cv2.rectangle(frame.image, (x0, 60), (x1, frame.image.shape[0]), (120, 40, 40), -1)
            cv2.circle(frame.image, (int(cx), 40), 60, (200, 160, 130), -1)
            gaps = [g for g in gaps if min(g.x1, x1) - max(g.x0, x0) < 0.5 * (g.x1 - g.x0)]
        events += [(e, fx, fy) for e in tracker.update(frame, gaps)]
    assert [matching_gap(aisle, e.bbox_norm, x, y) for e, x, y in events if e.event == "opened"] == [0]
    assert [e.alert_id for e, _, _ in events if e.event == "cleared"] == []
