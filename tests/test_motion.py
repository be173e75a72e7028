"""Shift estimation, odometry and ArUco markers on rendered aisle frames."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge.motion import MarkerDetector, Odometry, Shift, ShiftEstimator, detect_markers
from tests.test_tracker_scene import FRAME_W, Aisle, Camera, make_aisle, offsets


@pytest.fixture(scope="module")
def aisle() -> Aisle:
    return make_aisle(seed=11)


@pytest.mark.parametrize(
    ("step_x", "step_y"), [(12.0, 0.0), (-7.5, 0.0), (0.0, 0.0), (3.25, 2.0), (40.0, -3.0), (-95.0, 0.0)]
)
def test_phase_correlation_recovers_a_known_shift(aisle: Aisle, step_x: float, step_y: float) -> None:
    cam = Camera(aisle, seed=1)
    est = ShiftEstimator(160)
    first = est.update(cam.frame(1000.0, 0.0)[0].image)
    assert not first.reliable and first.response == 0.0
    s = est.update(cam.frame(1000.0 + step_x, step_y)[0].image)
    # the camera moved by +step, so the content moved by -step
    assert s.reliable and s.response > 0.3
    assert s.dx == pytest.approx(-step_x, abs=0.8)
    assert s.dy == pytest.approx(-step_y, abs=0.8)


def test_odometry_over_a_pass_stays_within_one_percent(aisle: Aisle) -> None:
    cam = Camera(aisle, seed=2)
    est, odo = ShiftEstimator(160), Odometry()
    xs = offsets(0, 3600 - FRAME_W, 12.0, seed=2)
    errors = []
    t0 = time.perf_counter()
    for x in xs:
        frame, fx, _ = cam.frame(x)
        s = est.update(frame.image)
        odo.advance(s)
        errors.append(odo.x - fx)
    per_frame_ms = (time.perf_counter() - t0) / len(xs) * 1e3
    print(
        f"odometry: final error {errors[-1]:+.1f} px over {xs[-1]:.0f} px; render+estimate {per_frame_ms:.2f} ms"
    )
    assert abs(errors[-1]) < 0.01 * xs[-1]
    assert odo.path == pytest.approx(xs[-1], rel=0.01)
    assert abs(odo.y) < 5.0  # the camera bobs, it does not climb


def test_low_response_falls_back_to_constant_velocity(aisle: Aisle) -> None:
    cam = Camera(aisle, seed=3)
    est = ShiftEstimator(160)
    est.update(cam.frame(500.0, 0.0)[0].image)
    s = est.update(cam.frame(511.0, 0.0)[0].image)
    assert s.reliable and s.dx == pytest.approx(-11.0, abs=0.8)
    blank = np.full((480, 640, 3), 128, np.uint8)  # a lens cap, a white wall: nothing to correlate
    guess = est.update(blank, frames_elapsed=2)
    assert not guess.reliable
    assert guess.dx == pytest.approx(2 * s.dx) and guess.dy == pytest.approx(2 * s.dy)
    assert est.velocity == (s.dx, s.dy)
    est.reset()
    assert est.velocity == (0.0, 0.0)


def test_an_unrelated_frame_is_not_a_measurement(aisle: Aisle) -> None:
    cam = Camera(aisle, seed=4)
    est = ShiftEstimator(160)
    est.update(cam.frame(500.0, 0.0)[0].image)
    s = est.update(cam.other_scene().image)
    assert not s.reliable


def test_frame_size_change_and_bad_input() -> None:
    est = ShiftEstimator(160)
    rng = np.random.default_rng(0)
    est.update(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    s = est.update(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    assert s == Shift(0.0, 0.0, 0.0, False)  # new buffers, no previous frame of that size
    with pytest.raises(ValueError, match="RGB"):
        est.update(np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError, match="width"):
        ShiftEstimator(8)


def test_markers_are_found_with_their_centres(aisle: Aisle) -> None:
    cam = Camera(aisle, seed=5)
    frame, x, y = cam.frame(100.0, 0.0)
    markers = detect_markers(frame.image)
    assert [m.id for m in markers] == [3]
    assert markers[0].cx == pytest.approx(aisle.markers[0][1] - x, abs=2.0)
    assert markers[0].cy == pytest.approx(240.0 - y, abs=2.0)
    far, fx, _ = cam.frame(3600.0 - FRAME_W, 0.0)
    found = detect_markers(far.image)
    assert [m.id for m in found] == [4]
    assert found[0].cx == pytest.approx(aisle.markers[1][1] - fx, abs=2.0)
    assert detect_markers(cam.frame(1500.0, 0.0)[0].image) == []


def test_marker_detection_runs_every_k_frames(aisle: Aisle) -> None:
    cam = Camera(aisle, seed=6)
    det = MarkerDetector(every=3)
    results = [det.maybe_detect(cam.frame(100.0 + i, 0.0)[0].image) for i in range(7)]
    assert [r is not None for r in results] == [True, False, False, True, False, False, True]
    assert all(r is not None and [m.id for m in r] == [3] for r in results[::3])
    with pytest.raises(ValueError):
        MarkerDetector(every=0)


def test_something_large_crossing_the_view_does_not_move_the_cart(aisle: Aisle) -> None:
    """One phase correlation over the whole frame takes whatever dominates the frame for the cart's motion. A
    field audit saw a shopper walking past close to the lens read +48 to +85 px a frame while the cart rolled at
    -10: the odometry ended 370 px off, an open alert was mapped onto full shelf and cleared, and its gap opened
    again under a new id. A jump no cart makes in one frame is unreliable now (the cart keeps its speed), for at
    most a few frames in a row. Here: a strongly patterned coat filling most of the view, crossing in 4 frames."""
    import cv2

    cam = Camera(aisle, seed=3)
    est, odo = ShiftEstimator(160), Odometry()
    rng = np.random.default_rng(5)
    coat = cv2.resize(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (440, 480), interpolation=cv2.INTER_NEAREST)
    worst, unreliable = 0.0, 0
    for k in range(30):
        x = 1200.0 + 10.0 * k  # the cart rolls on at 10 px a frame: the shelf moves by -10
        frame = cam.frame(x, 0.0)[0].image.copy()
        if 10 <= k < 14:  # the coat sweeps across at 70 px a frame
            left = -200 + 70 * (k - 10)
            a, b = max(left, 0), min(left + 440, FRAME_W)
            frame[:, a:b] = coat[:, a - left:b - left]
        s = est.update(frame)
        unreliable += not s.reliable and k > 0
        if k:
            odo.advance(s)
            worst = max(worst, abs(odo.x - (x - 1200.0)))
    assert worst < 25.0, f"the odometry was {worst:.0f} px off the cart's position"
    assert 1 <= unreliable <= 6  # the crossing frames, not the rest of the pass


def test_a_real_jolt_is_believed_after_a_few_frames(aisle: Aisle) -> None:
    """The other side of that rule: a cart that really stops dead (it hit something) is set aside as a jump only
    for a few frames; then the stop is believed, and what those frames were guessed wrong is taken back, so the
    odometry ends where the cart is."""
    cam = Camera(aisle, seed=4)
    est, odo = ShiftEstimator(160), Odometry()
    x = 1000.0
    for k in range(40):
        x += 45.0 if k < 15 else 0.0  # 1 m/s at 15 fps, then standing
        s = est.update(cam.frame(x, 0.0)[0].image)
        if k:
            odo.advance(s)
    assert s.reliable and abs(s.dx) < 1.0  # standing, measured
    # within the estimator's own accuracy over 630 px (1 %), not the 5 x 45 px the set-aside frames were guessed
    assert abs(odo.x - (x - 1000.0 - 45.0)) <= 12.0  # (the first frame is the start: it has no shift)


def test_a_shopper_walking_slowly_past_a_standing_cart_does_not_move_it(aisle: Aisle) -> None:
    """A shopper walking in front of the lens makes a second phase-correlation peak at its own shift. At 8 px a
    frame (2 px at the estimator's 160 px) it lay inside the 5x5 window whose centroid cv2.phaseCorrelate takes,
    and dragged the standing cart's odometry 100 px in 100 frames; the peak's own lobe keeps it in place."""
    import cv2

    cam = Camera(aisle, seed=5)
    est, odo = ShiftEstimator(160), Odometry()
    for k in range(100):
        frame = cam.frame(435.0, 0.0)[0].image.copy()
        cx = FRAME_W + 150 - 8 * k
        cv2.rectangle(frame, (cx - 110, 60), (cx + 110, frame.shape[0]), (120, 40, 40), -1)
        cv2.circle(frame, (cx, 40), 60, (200, 160, 130), -1)
        s = est.update(frame)
        if k:
            odo.advance(s)
    assert abs(odo.x) < 15.0, f"the standing cart's odometry moved {odo.x:+.0f} px"
