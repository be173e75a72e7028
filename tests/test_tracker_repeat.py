"""Repeated passes over an unchanged aisle, and markers on real rendered frames (QA findings P1).

The pass is the one QA used (`shelfscout render-pass --seconds 8`: seed 0, 12 px/frame), decoded from its .mp4,
with the shipped int8 model's own detections. The same frames fed again are a second pass over the same, unchanged
aisle (odometry restarts at the aisle start where marker 1 is seen): every place must keep its id, nothing may be
`cleared` or opened again, and replaying the recording with the same state file must give no new alerts. Which
alerts the model raises (true or false) is its business; they are printed, not asserted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.cartpass import CartPass, aisle_length_for, iter_video_rgb, make_aisle, render_cart_pass
from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle
from edge.config import TrackingConfig
from edge.detector import Detector
from edge.motion import MarkerDetector
from edge.tracker import GapTracker
from edge.types import AlertEvent, Frame, Gap
from tests.test_tracker_scene import T0_WALL

FPS, SPEED = 15.0, 12.0


@dataclass
class Recording:
    cp: CartPass
    frames: list[np.ndarray]  # decoded RGB
    gaps: list[list[Gap]]  # the model's detections per frame


def _decode(cp: CartPass) -> list[np.ndarray]:
    frames = list(iter_video_rgb(cp.path))
    assert len(frames) == cp.frames
    return frames


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    if not DEFAULT_BUNDLE.exists():
        pytest.skip("the default model bundle has not been built")
    d = tmp_path_factory.mktemp("repeat")
    aisle = make_aisle(np.random.default_rng(0), length_px=aisle_length_for(8.0, FPS, SPEED), n_gaps=3)
    cp = render_cart_pass(aisle, d / "p.mp4", fps=FPS, speed_px_per_frame=SPEED, seed=0)
    frames = _decode(cp)
    detector = Detector(read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS])), threads=2)
    return Recording(cp, frames, [detector.detect(f) for f in frames])


def _run(tracker: GapTracker, rec: Recording, start: int) -> list[AlertEvent]:
    events = []
    for k, (img, gaps) in enumerate(zip(rec.frames, rec.gaps, strict=True)):
        i = start + k
        events.extend(tracker.update(Frame(img, i, i / FPS, T0_WALL + i / FPS), gaps))
    return events


def _show(events: list[AlertEvent]) -> list[tuple[str, str, int, float | None]]:
    return [(e.alert_id.rsplit("-", 1)[1], e.event, e.frame_index, e.location.offset_m) for e in events]


def test_second_pass_over_an_unchanged_aisle_keeps_every_alert(recording: Recording, tmp_path: Path) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-07", tmp_path / "places.json")
    first = _run(tracker, recording, 0)
    print(f"\nfirst pass: {_show(first)}")
    assert first and all(e.event == "opened" for e in first)
    assert {e.location.aisle for e in first} == {"aruco-1"}
    opened_at = {e.alert_id: e.location.offset_m for e in first}
    for p in tracker.alerts.open_alerts():  # a place stays where it was confirmed (no drag by a sliding track)
        assert tracker.alerts.location_of(0.5 * (p.box[0] + p.box[2]), p.aisle).offset_m == pytest.approx(
            opened_at[p.alert_id], abs=0.03
        )
    n = len(recording.frames)
    for k in (1, 2):  # the same frames again: the cart went back to the start and drove the aisle again
        again = _run(tracker, recording, k * n)
        print(f"pass {k + 1}: {_show(again)}")
        assert again == [], "an unchanged aisle gave events on a repeated pass"
    assert {p.alert_id for p in tracker.alerts.open_alerts()} == set(opened_at)


def test_replaying_the_recording_with_the_same_state_file_opens_nothing_new(
    recording: Recording, tmp_path: Path
) -> None:
    state = tmp_path / "places.json"
    tracker = GapTracker(TrackingConfig(), "cart-07", state)
    first = _run(tracker, recording, 0)
    tracker.close()
    before = {p.alert_id: p.box for p in tracker.alerts.open_alerts()}
    assert before
    restarted = GapTracker(TrackingConfig(), "cart-07", state)
    replay = _run(restarted, recording, 0)
    print(f"\nrun 1: {_show(first)}\nrun 2: {_show(replay)}")
    assert replay == []
    after = {p.alert_id: p.box for p in restarted.alerts.open_alerts()}
    assert set(after) == set(before)
    for aid, box in after.items():
        assert box == pytest.approx(before[aid], abs=6.0)


def _demo_frames(tmp_path: Path) -> list[np.ndarray]:
    """The scene of `shelfscout demo` (seed 7, 6 gaps, 10 px/frame), where shelf texture decodes as markers 17/37."""
    aisle = make_aisle(np.random.default_rng(7), length_px=aisle_length_for(20.0, 15.0, 10.0), n_gaps=6)
    assert sorted(m for m, _ in aisle.markers) == [1, 2]
    return _decode(render_cart_pass(aisle, tmp_path / "demo.mp4", fps=15.0, speed_px_per_frame=10.0, seed=7))


def test_only_the_scenes_markers_are_registered(tmp_path: Path) -> None:
    frames = _demo_frames(tmp_path)
    raw = cv2.aruco.ArucoDetector(
        cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50), cv2.aruco.DetectorParameters()
    )
    decoded: set[int] = set()
    for img in frames[240:300]:
        _c, ids, _r = raw.detectMarkers(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
        decoded |= set() if ids is None else {int(i) for i in ids.reshape(-1)}
    assert decoded - {1, 2}, "the scene no longer has texture that decodes as a marker: this test tests nothing"
    for scale in (0.5, 1.0):  # the detector's own checks, on every frame
        md = MarkerDetector(every=1, scale=scale)
        seen = {m.id for img in frames for m in md.detect(img)}
        assert seen == {1, 2}, f"scale {scale}"
    tracker = GapTracker(TrackingConfig(), "demo-cart", tmp_path / "places.json", marker_every=1)
    for i, img in enumerate(frames):
        tracker.update(Frame(img, i, i / 15.0, T0_WALL + i / 15.0), [])
    assert sorted(tracker.alerts.markers) == [1, 2]
    assert {m.aisle for m in tracker.alerts.markers.values()} == {"aruco-1"}


def test_a_marker_seen_once_is_not_registered(tmp_path: Path) -> None:
    """One look at a marker (e.g. texture that decodes once) is not enough; two looks at one shelf x are."""
    frames = _demo_frames(tmp_path)[:8]  # marker 1 is in view in the first frames
    tracker = GapTracker(TrackingConfig(), "demo-cart", None, marker_every=1)
    tracker.update(Frame(frames[0], 0, 0.0, T0_WALL), [])
    assert tracker.alerts.markers == {}
    blank = np.full_like(frames[0], 128)
    tracker.update(Frame(blank, 1, 1 / 15.0, T0_WALL), [])
    assert tracker.alerts.markers == {}
    for i in (2, 3):
        tracker.update(Frame(frames[i], i, i / 15.0, T0_WALL), [])
    assert sorted(tracker.alerts.markers) == [1]
