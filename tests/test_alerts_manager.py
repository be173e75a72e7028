"""AlertManager: one alert per place across passes and restarts, `cleared` on restock, atomic state file."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge.alerts import AlertManager, MarkerPlace, View
from edge.config import TrackingConfig
from edge.tracker import GapTracker
from tests.test_tracker import END, opened_gaps, run_pass
from tests.test_tracker_scene import (
    Aisle,
    Camera,
    NoisyDetector,
    drive,
    make_aisle,
    matching_gap,
    offsets,
    restock,
)


@pytest.fixture(scope="module")
def aisle() -> Aisle:
    return make_aisle(seed=21)


def test_restart_with_state_file_reopens_nothing(aisle: Aisle, tmp_path: Path) -> None:
    state = tmp_path / "state" / "alerts.json"
    first_tracker = GapTracker(TrackingConfig(), "cart-01", state)
    cam = Camera(aisle, seed=1)
    first = run_pass(first_tracker, cam, offsets(0, END, 12.0, seed=1), NoisyDetector(seed=1))
    assert opened_gaps(aisle, first) == Counter(range(len(aisle.gaps)))
    saved = json.loads(state.read_text())
    assert saved["version"] == 1
    assert sorted(p["alert_id"] for p in saved["places"]) == sorted(e.alert_id for e, _, _ in first)
    assert {p["aisle"] for p in saved["places"]} == {"aruco-3"}
    assert {int(k) for k in saved["markers"]} == {3, 4}
    assert [p.name for p in state.parent.iterdir()] == ["alerts.json"]  # no temp file left behind
    # the service restarts (a new process: fresh odometry) while the cart is at the far end, and drives back
    second_tracker = GapTracker(TrackingConfig(), "cart-01", state)
    assert len(second_tracker.alerts.open_alerts()) == len(aisle.gaps)
    back = run_pass(
        second_tracker, Camera(aisle, seed=2), offsets(END, 0, 12.0, seed=2), NoisyDetector(seed=2)
    )
    assert back == []
    assert second_tracker.position.aisle == "aruco-3"


def test_restart_without_markers_from_the_same_start_reopens_nothing(aisle: Aisle, tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    cfg = TrackingConfig(aruco=False)
    first = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=3), offsets(0, END, 12.0, seed=3))
    assert opened_gaps(aisle, first) == Counter(range(len(aisle.gaps)))
    again = run_pass(
        GapTracker(cfg, "cart-01", state),
        Camera(aisle, seed=4),
        offsets(0, END, 13.0, seed=4),
        NoisyDetector(seed=4),
    )
    assert again == []
    assert all(e.location.aisle is None and e.location.source == "odometry" for e, _, _ in first)


def test_restocked_gap_is_cleared_once_with_its_id(aisle: Aisle) -> None:
    tracker = GapTracker(TrackingConfig(), "cart-01")
    cam = Camera(aisle, seed=5)
    first = run_pass(tracker, cam, offsets(0, END, 12.0, seed=5), NoisyDetector(seed=5))
    ids = {matching_gap(aisle, e.bbox_norm, x, y): e.alert_id for e, x, y in first}
    assert sorted(k for k in ids if k is not None) == list(range(len(aisle.gaps)))
    for _ in range(20):  # turning round
        tracker.update(cam.other_scene(), [])
    filled = restock(aisle, 2)
    cam.aisle = filled
    second = run_pass(tracker, cam, offsets(0, END, 11.0, seed=6), NoisyDetector(seed=6))
    assert [(e.event, e.alert_id) for e, _, _ in second] == [("cleared", ids[2])]
    ev, x, y = second[0]
    gx0, gy0, gx1, gy1 = aisle.gaps[2]
    assert ev.bbox_norm[0] * 640 == pytest.approx(gx0 - x, abs=20)
    assert ev.bbox_norm[3] * 480 == pytest.approx(gy1 - y, abs=10)
    assert ev.location.aisle == "aruco-3" and ev.frames >= 3
    assert ev.last_seen < ev.ts
    third = run_pass(tracker, cam, offsets(0, END, 12.0, seed=7), NoisyDetector(seed=7))
    assert third == []
    assert len(tracker.alerts.open_alerts()) == len(aisle.gaps) - 1


_PLACE = {"alert_id": "x", "aisle": None, "box": [1, 2, 30, 40], "first_seen": 1.0, "last_seen": 2.0,
          "confidence": 0.9, "frames": 5, "state": "open"}


@pytest.mark.parametrize("content", [
    bytes(range(128, 256)) * 20,  # not UTF-8 (random bytes after a bad sector)
    json.dumps({"version": 1, "seq": 1e400, "places": []}).encode(),  # seq Infinity
    b'{"version": 1, "seq": Infinity, "places": []}',
    b'{"version": 1, "places": [' + json.dumps({**_PLACE, "box": [1, 2, "nan", 40]}).encode() + b"]}",
    b'{"version": 1, "places": [' + json.dumps(_PLACE).replace("30", "NaN").encode() + b"]}",
    b'{"version": 1, "places": [' + json.dumps({**_PLACE, "box": [30, 2, 1, 40]}).encode() + b"]}",
])
def test_a_state_file_that_cannot_be_a_cart_s_state_is_moved_aside_not_crashed_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    """A place at NaN would match every later gap on its aisle and never clear; a crash at start-up would be
    restarted until systemd gives up. Either way the cart would stop alerting."""
    state = tmp_path / "alerts.json"
    state.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        mgr = AlertManager(TrackingConfig(), "cart-01", state)
    assert mgr.open_alerts() == [] and not state.exists() and (tmp_path / "alerts.json.corrupt").exists()
    assert "unreadable" in caplog.text
    state.write_text(json.dumps({"version": 1, "seq": 3, "places": [_PLACE]}))  # the control: a sound file loads
    assert [p.alert_id for p in AlertManager(TrackingConfig(), "cart-01", state).open_alerts()] == ["x"]


def test_corrupt_state_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "alerts.json"
    state.write_text('{"version": 1, "places": [{"alert_id": "x"')
    with caplog.at_level(logging.WARNING):
        mgr = AlertManager(TrackingConfig(), "cart-01", state)
    assert mgr.open_alerts() == [] and mgr.markers == {}
    assert not state.exists() and (tmp_path / "alerts.json.corrupt").exists()
    assert "unreadable" in caplog.text
    state.write_text(json.dumps({"version": 99}))
    assert AlertManager(TrackingConfig(), "cart-01", state).open_alerts() == []


def _view(path: float, aisle: str | None = None, t: float = 1_780_000_000.0, index: int = 0,
          ox: float = 0.0) -> View:
    return View(index, t, 640, 480, aisle, ox, 0.0, path, True)


def _opened(
    mgr: AlertManager, track_id: int, box: tuple[float, float, float, float], view: View
) -> str | None:
    ev = mgr.confirm(track_id, box, box, [0.8, 0.7, 0.9], 3, view.t_wall, view)
    mgr.track_ended(track_id)
    return None if ev is None else ev.alert_id


def test_same_place_is_within_the_radius_on_the_same_shelf_level() -> None:
    cfg = TrackingConfig()  # 0.25 m at 0.0015 m/px = 167 px
    mgr = AlertManager(cfg, "cart/01 #2")
    first = _opened(mgr, 1, (1000, 100, 1100, 200), _view(0.0))
    assert first is not None and first.startswith("cart_01__2-1780000000000-")
    # found again after its track was lost, a second empty facing a hand's width along, or seen again on a later
    # pass through odometry drift: the same place (its box refined by the sightings that overlap it)
    assert _opened(mgr, 2, (1050, 100, 1150, 200), _view(40.0)) is None
    assert _opened(mgr, 3, (1200, 120, 1280, 190), _view(80.0)) is None
    assert _opened(mgr, 4, (1100, 100, 1150, 200), _view(5000.0)) is None
    # another shelf level, or 0.35 m away, is not
    assert _opened(mgr, 5, (1100, 230, 1150, 330), _view(5000.0)) is not None
    assert _opened(mgr, 6, (1500, 100, 1600, 200), _view(5000.0)) is not None
    assert len(mgr.open_alerts()) == 3
    assert len({p.alert_id for p in mgr.open_alerts()}) == 3


def test_an_alert_id_carries_the_milliseconds_its_first_seen_says() -> None:
    """A backend reads `first_seen` and may read the id's time: both say the same millisecond (the id rounded,
    the timestamp truncates)."""
    from edge.payloads import epoch_ms, rfc3339

    mgr = AlertManager(TrackingConfig(), "cart-01")
    v = _view(0.0, t=1_780_000_000.3187)
    ev = mgr.confirm(1, (100, 100, 200, 200), (100, 100, 200, 200), [0.9], 3, v.t_wall, v)
    assert ev is not None and ev.alert_id == "cart-01-1780000000318-1"
    assert rfc3339(ev.first_seen).endswith(":40.318Z")
    for t in np.random.default_rng(0).uniform(1.7e9, 1.9e9, 20000):  # also where float products round otherwise
        assert rfc3339(float(t))[-4:-1] == f"{epoch_ms(float(t)) % 1000:03d}", t


def test_two_tracks_on_one_place_keep_it_from_clearing() -> None:
    mgr = AlertManager(TrackingConfig(clear_frames=2), "cart-01")
    v = _view(0.0)
    ev = mgr.confirm(1, (100, 100, 200, 200), (100, 100, 200, 200), [0.9], 3, v.t_wall, v)
    assert ev is not None and ev.event == "opened"
    # the detector splits the gap: a second track on its right half, live at the same time
    assert mgr.confirm(2, (210, 100, 260, 200), (210, 100, 260, 200), [0.9], 3, v.t_wall, v) is None
    assert mgr.alert_id_for(1) == mgr.alert_id_for(2) == ev.alert_id
    mgr.track_ended(1)
    for i in range(3):  # no detections, but track 2 still follows the gap (the cart rolls on, 8 px a frame)
        assert mgr.check_clear([], _view(float(i), index=i, ox=8.0 * i)) == []
    mgr.track_ended(2)
    events = [e for i in range(3, 6) for e in mgr.check_clear([], _view(float(i), index=i, ox=8.0 * i))]
    assert [(e.event, e.alert_id, e.frame_index) for e in events] == [("cleared", ev.alert_id, 4)]


def test_a_cart_standing_in_front_of_a_gap_does_not_clear_it() -> None:
    """A cart stands still in front of an empty spot the detector finds in some frames and not in others: each
    view is the same, so a run of frames without it is no evidence that the shelf was filled. The place was
    `cleared` after 5 such frames and opened again under a new id moments later, again and again (23 alerts for one
    gap in a 60 s stop on a rendered aisle). Once the cart rolls on, frames count again."""
    mgr = AlertManager(TrackingConfig(clear_frames=5), "cart-01")
    v = _view(0.0, ox=100.0)
    ev = mgr.confirm(1, (300, 100, 400, 200), (200, 100, 300, 200), [0.9], 5, v.t_wall, v)
    assert ev is not None
    mgr.track_ended(1)
    standing = [e for i in range(1, 200) for e in mgr.check_clear([], _view(0.0, index=i, ox=100.0 + (i % 3)))]
    assert standing == []  # 199 frames of the same view (a pixel or two of jitter), no detection
    rolling = [e for i in range(200, 206) for e in mgr.check_clear([], _view(0.0, index=i,
                                                                            ox=100.0 + 8.0 * (i - 199)))]
    assert [(e.event, e.alert_id) for e in rolling] == [("cleared", ev.alert_id)]


def test_markers_name_aisles_and_restore_positions() -> None:
    mgr = AlertManager(TrackingConfig(), "cart-01")
    # a gap seen before any marker, then the aisle's first marker: the place joins that aisle
    assert _opened(mgr, 1, (500, 100, 600, 200), _view(0.0)) is not None
    assert mgr.on_marker(3, 900.0) == 900.0 and mgr.aisle == "aruco-3"
    assert mgr.open_alerts()[0].aisle == "aruco-3"
    assert mgr.on_marker(4, 4000.0) == 4000.0 and mgr.aisle == "aruco-3"  # the aisle's other end
    assert mgr.on_marker(7, 50.0) == 50.0 and mgr.aisle == "aruco-7"  # a third marker: another aisle
    assert mgr.on_marker(3, 123.0) == 900.0 and mgr.aisle == "aruco-3"  # known: its position is restored
    assert mgr.on_marker(4, -10.0) == 4000.0


def test_a_missed_far_end_does_not_merge_the_next_aisle_into_this_one() -> None:
    """The cart saw aisle 3's first marker, missed the one at its far end (4: hidden, blurred) and went on into
    the next aisle, whose first marker is 5. Any unknown marker joined an aisle with fewer than two: 5 became aisle
    3's far end and the next aisle's gaps were placed in aisle 3's frame, named after marker 3. An aisle's ends
    are an odd id and the next even one (docs/INSTALL.md): 5 is not 3's other end, so it starts its own aisle."""
    mgr = AlertManager(TrackingConfig(), "cart-01")
    assert mgr.on_marker(3, 90.0) == 90.0 and mgr.aisle == "aruco-3"
    assert mgr.on_marker(5, 5200.0) == 5200.0 and mgr.aisle == "aruco-5"
    view = _view(0.0, aisle=mgr.aisle, ox=5200.0)
    ev = mgr.confirm(1, (5500, 100, 5600, 200), (300, 100, 400, 200), [0.8], 3, view.t_wall, view)
    assert ev is not None and ev.location.aisle == "aruco-5"
    assert ev.location.offset_m == pytest.approx(0.0015 * (5550 - 5200))  # from marker 5, not from marker 3
    assert mgr.on_marker(6, 9000.0) == 9000.0 and mgr.aisle == "aruco-5"  # its far end: the same aisle
    assert mgr.on_marker(3, 120.0) == 90.0 and mgr.aisle == "aruco-3"  # back in aisle 3
    assert mgr.on_marker(4, 4000.0) == 4000.0 and mgr.aisle == "aruco-3"  # and its far end, seen this time
    assert {k: m.aisle for k, m in mgr.markers.items()} == {3: "aruco-3", 4: "aruco-3", 5: "aruco-5", 6: "aruco-5"}


def test_an_aisle_whose_ends_were_seen_on_different_passes_becomes_one_aisle(tmp_path: Path) -> None:
    """The first pass entered aisle 1-2 at its far end (marker 2) and left it with its near end (1) missed; a later
    pass, in another run, entered at 1. Marker 1 rightly started an aisle of its own (its partner was not this
    aisle's), but when the cart then reached 2, the two stayed two aisles for ever: the gap both passes saw was two
    open alerts, in two aisles' frames. Now the second aisle joins the first at marker 2: its places move into that
    frame, and the gap opened again is cleared as the first alert's duplicate."""
    state = tmp_path / "alerts.json"
    first = AlertManager(TrackingConfig(), "cart-01", state)
    assert first.on_marker(2, 100.0) == 100.0 and first.aisle == "aruco-2"
    view = _view(0.0, aisle="aruco-2")
    kept = first.confirm(1, (1500, 100, 1600, 200), (300, 100, 400, 200), [0.8], 3, view.t_wall, view)
    assert kept is not None
    first.track_ended(1)
    first.save()
    # the next run: another aisle (5), then aisle 1-2 from its near end, where marker 1 is 3000 px from marker 2
    mgr = AlertManager(TrackingConfig(), "cart-01", state)
    assert mgr.on_marker(5, 0.0) == 0.0 and mgr.aisle == "aruco-5"
    assert mgr.on_marker(1, 7000.0) == 7000.0 and mgr.aisle == "aruco-1"
    view = _view(1000.0, aisle="aruco-1", ox=7000.0)
    again = mgr.confirm(2, (4500, 100, 4600, 200), (300, 100, 400, 200), [0.8], 3, view.t_wall, view)
    other = mgr.confirm(3, (5500, 100, 5600, 200), (300, 100, 400, 200), [0.8], 3, view.t_wall, view)
    assert again is not None and other is not None and again.alert_id != kept.alert_id
    assert mgr.on_marker(2, 3100.0) == 100.0 and mgr.aisle == "aruco-2"  # known: the position is restored
    assert {k: m for k, m in mgr.markers.items() if k in (1, 2)} == {
        1: MarkerPlace("aruco-2", 4000.0), 2: MarkerPlace("aruco-2", 100.0)}
    cleared = mgr.check_clear([], _view(1100.0, aisle="aruco-2", ox=100.0, index=1))
    assert [(e.event, e.alert_id, e.duplicate_of) for e in cleared] == [
        ("cleared", again.alert_id, kept.alert_id)]
    left = {p.alert_id: p for p in mgr.open_alerts()}
    assert set(left) == {kept.alert_id, other.alert_id}
    assert left[other.alert_id].aisle == "aruco-2" and left[other.alert_id].box[0] == pytest.approx(2500.0)
    # the other way round a known marker is just a known marker: aisle 5 (5 alone) is not 2's other end
    assert mgr.on_marker(5, 0.0) == 0.0 and mgr.aisle == "aruco-5"
    assert mgr.on_marker(2, 900.0) == 100.0 and mgr.markers[5].aisle == "aruco-5"


def test_a_crash_before_the_event_was_committed_resends_it_with_the_same_id(
    aisle: Aisle, tmp_path: Path
) -> None:
    """SIGKILL between the state write and the outbox commit: the restarted service announces it again."""
    state = tmp_path / "alerts.json"
    crashed = GapTracker(TrackingConfig(), "cart-01", state)
    cam = Camera(aisle, seed=8)
    det = NoisyDetector(seed=8)
    lost = None
    for frame, _x, _y, gaps in drive(cam, offsets(0, END, 12.0, seed=8), det):
        events = crashed.update(frame, gaps)
        if events:
            lost = events[0]
            break  # killed before the pipeline committed the event: no further frame reaches this tracker
    assert lost is not None and lost.event == "opened"
    assert [p["state"] for p in json.loads(state.read_text())["places"]] == ["opening"]
    restarted = GapTracker(TrackingConfig(), "cart-01", state)
    again = run_pass(restarted, Camera(aisle, seed=9), offsets(0, END, 12.0, seed=9), NoisyDetector(seed=9))
    assert opened_gaps(aisle, again) == Counter(range(len(aisle.gaps)))
    assert [e.alert_id for e, _, _ in again].count(lost.alert_id) == 1
    assert {p["state"] for p in json.loads(state.read_text())["places"]} == {"open"}
    # once the next frame has run (the event was committed), a restart sends nothing again
    assert (
        run_pass(
            GapTracker(TrackingConfig(), "cart-01", state),
            Camera(aisle, seed=10),
            offsets(0, END, 12.0, seed=10),
            NoisyDetector(seed=10),
        )
        == []
    )


def test_a_crash_right_after_cleared_resends_the_cleared(tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    cfg = TrackingConfig(clear_frames=3)
    mgr = AlertManager(cfg, "cart-01", state)
    v = _view(0.0)
    opened = mgr.confirm(1, (100, 100, 200, 200), (100, 100, 200, 200), [0.8], 3, v.t_wall, v)
    assert opened is not None
    mgr.track_ended(1)
    events = []
    for i in range(1, 4):
        mgr.begin_frame()
        events += mgr.check_clear([], _view(float(i), index=i, ox=8.0 * i))
        mgr.flush()
    assert [(e.event, e.alert_id, e.frame_index) for e in events] == [("cleared", opened.alert_id, 3)]
    # killed here: the restarted service sends the cleared again the next time the place is in view
    mgr2 = AlertManager(cfg, "cart-01", state)
    assert mgr2.open_alerts() == []
    assert (
        mgr2.confirm(7, (100, 100, 200, 200), (100, 100, 200, 200), [0.8], 3, v.t_wall, v) is not None
    )  # new gap
    again = mgr2.check_clear([(100, 100, 200, 200)], _view(10.0, index=10))
    assert [(e.event, e.alert_id) for e in again] == [("cleared", opened.alert_id)]
    mgr2.begin_frame()
    assert mgr2.check_clear([(100, 100, 200, 200)], _view(11.0, index=11)) == []
    mgr2.flush()
    saved = json.loads(state.read_text())["places"]
    assert [p["alert_id"] for p in saved] != [opened.alert_id] and len(saved) == 1


def test_an_unwritable_state_file_does_not_stop_the_alerts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    mgr = AlertManager(TrackingConfig(), "cart-01", blocker / "alerts.json")
    v = _view(0.0)
    with caplog.at_level(logging.WARNING):
        ev = mgr.confirm(1, (100, 100, 200, 200), (100, 100, 200, 200), [0.8], 3, v.t_wall, v)
        mgr.flush()
        mgr.begin_frame()
        mgr.flush()
    assert ev is not None and ev.event == "opened"
    assert caplog.text.count("cannot write tracking state") == 1  # logged once, retried quietly


def test_state_with_wrong_shapes_is_moved_aside(tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    state.write_text(json.dumps({"version": 1, "markers": [1, 2], "places": []}))
    assert AlertManager(TrackingConfig(), "cart-01", state).markers == {}
    assert (tmp_path / "alerts.json.corrupt").exists()


def test_a_place_is_not_dragged_by_a_track_that_slides_off_it() -> None:
    """QA P1: alert 4 opened at 1.37 m was stored at 2.15 m: a confirmed track slid and dragged its place along."""
    mgr = AlertManager(TrackingConfig(), "cart-01")
    v = _view(0.0)
    ev = mgr.confirm(1, (1000, 100, 1100, 200), (300, 100, 400, 200), [0.8], 5, v.t_wall, v, [350.0])
    assert ev is not None
    for i in range(60):  # a box fixed in the frame while the cart moves on: 12 px/frame along the shelf
        x = 1000 + 12.0 * (i + 1)
        mgr.seen(1, (x, 100, x + 100, 200), [0.8], _view(12.0 * (i + 1), index=i + 1))
    place = mgr.open_alerts()[0]
    assert place.box[0] == pytest.approx(1000, abs=30) and place.box[2] == pytest.approx(1100, abs=30)
    assert mgr.alert_id_for(1) is None  # the track no longer vouches for the place
    # sightings on the place itself refine its box (median), within the anchor's reach
    mgr.confirm(2, (1004, 102, 1104, 198), (304, 102, 404, 198), [0.8], 5, v.t_wall, v)
    for _ in range(5):
        mgr.seen(2, (1006, 101, 1106, 201), [0.8], v)
    assert mgr.open_alerts()[0].box == pytest.approx((1005, 101, 1105, 199), abs=2.0)


def test_gaps_a_place_apart_stay_apart_while_the_position_is_fresh() -> None:
    """Two gaps 150 px (0.22 m) apart: two alerts just after a marker fix; far from any fix (odometry may have
    drifted by more than that) a gap there is the same place as the open alert."""
    mgr = AlertManager(TrackingConfig(), "cart-01")
    mgr.on_marker(1, 90.0, path=0.0)
    first = _opened(mgr, 1, (1530, 230, 1575, 268), _view(0.0, "aruco-1"))
    second = _opened(mgr, 2, (1725, 232, 1770, 315), _view(100.0, "aruco-1"))
    assert first is not None and second is not None and first != second
    assert _opened(mgr, 3, (1390, 230, 1430, 268), _view(9000.0, "aruco-1")) is None


def test_a_place_counts_as_filled_only_where_the_detector_has_seen_it() -> None:
    """A gap the detector sees only near the frame's left edge is not `cleared` while it sits mid-frame."""
    mgr = AlertManager(TrackingConfig(clear_frames=3), "cart-01")

    def at(ox: float, i: int) -> View:
        return View(i, 1_780_000_000.0 + i, 640, 480, None, ox, 0.0, 0.0, True)

    v = at(1000.0, 0)
    ev = mgr.confirm(1, (1030, 100, 1090, 200), (30, 100, 90, 200), [0.8], 5, v.t_wall, v, [50.0, 55.0, 60.0])
    assert ev is not None
    mgr.track_ended(1)
    mid = [e for i in range(1, 20) for e in mgr.check_clear([], at(700.0 - 8 * (i % 2), i))]  # the place mid-frame
    assert mid == []
    left = [e for i in range(20, 24) for e in mgr.check_clear([], at(1000.0 - 8 * (i - 20), i))]
    assert [(e.event, e.alert_id, e.frame_index) for e in left] == [("cleared", ev.alert_id, 22)]


def test_an_event_held_uncommitted_keeps_its_mark_until_stored_and_is_resent_after_a_crash(
    aisle: Aisle, tmp_path: Path
) -> None:
    """While the outbox cannot store (a full disk), the sink holds events in memory and the tracker is told their
    ids: the place stays `opening` in the state file frame after frame, so a crash before the disk has room resends
    the event after the restart, with its id. Once stored, the next frame marks it `open`."""
    state = tmp_path / "alerts.json"
    tracker = GapTracker(TrackingConfig(), "cart-01", state)
    held: set[str] = set()
    tracker.uncommitted = lambda: held
    frames = drive(Camera(aisle, seed=8), offsets(0, END, 12.0, seed=8), NoisyDetector(seed=8))
    first = None
    for frame, _x, _y, gaps in frames:
        events = tracker.update(frame, gaps)
        if events:
            first = events[0]
            held.add(first.alert_id)  # the sink could not store it
            break
    assert first is not None and first.event == "opened"
    for _ in range(20):  # frames go on while the event waits in memory
        frame, _x, _y, gaps = next(frames)
        tracker.update(frame, gaps)
    by_id = {p["alert_id"]: p["state"] for p in json.loads(state.read_text())["places"]}
    assert by_id[first.alert_id] == "opening"

    # killed now: the restarted service announces it again, with the same id, when it sees the gap again
    restarted = GapTracker(TrackingConfig(), "cart-01", state)
    again = run_pass(restarted, Camera(aisle, seed=9), offsets(0, END, 12.0, seed=9), NoisyDetector(seed=9))
    assert [e.alert_id for e, _, _ in again].count(first.alert_id) == 1

    # not killed: once stored, the next frame marks it open, and a clean stop writes that
    held.clear()
    frame, _x, _y, gaps = next(frames)
    tracker.update(frame, gaps)
    tracker.close()
    by_id = {p["alert_id"]: p["state"] for p in json.loads(state.read_text())["places"]}
    assert by_id[first.alert_id] == "open"


def test_a_clean_stop_marks_the_last_frames_committed_events_open(aisle: Aisle, tmp_path: Path) -> None:
    state = tmp_path / "alerts.json"
    tracker = GapTracker(TrackingConfig(), "cart-01", state)
    for frame, _x, _y, gaps in drive(Camera(aisle, seed=8), offsets(0, END, 12.0, seed=8), NoisyDetector(seed=8)):
        if tracker.update(frame, gaps):
            break  # stopped right after the frame that opened an alert (its event committed by the sink)
    assert {p["state"] for p in json.loads(state.read_text())["places"]} == {"opening"}
    tracker.close()
    assert {p["state"] for p in json.loads(state.read_text())["places"]} == {"open"}


def test_a_power_cut_mid_aisle_without_markers_clears_nothing_still_empty(tmp_path: Path) -> None:
    """Without markers a place's box is in the odometry frame of the run that recorded it, whose origin is where
    the cart stood when that run started. A cart switched off mid-aisle powers up where it stopped: the boxes
    loaded from the state file are then nowhere near their gaps, and the first run of the service after the power
    cut `cleared` gaps that were still empty. A restart loses the position like a pause does: the loaded places
    are kept open and not cleared until a new sighting places them again."""
    aisle = make_aisle(seed=21, marker_ids=())
    state = tmp_path / "alerts.json"
    cfg = TrackingConfig(aruco=False)
    first = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=3), offsets(0, END, 12.0, seed=3))
    assert opened_gaps(aisle, first) == Counter(range(len(aisle.gaps)))
    # powered up again half-way along (nothing restocked), and on to the end
    second = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=4), offsets(1300, END, 12.0, seed=4),
                      NoisyDetector(seed=4))
    assert [e.alert_id for e, _, _ in second if e.event == "cleared"] == []
    assert {p.alert_id for p in AlertManager(cfg, "cart-01", state).open_alerts()} >= {e.alert_id for e, _, _ in first}


def test_gaps_found_after_a_power_cut_join_the_aisle_at_its_known_marker(tmp_path: Path) -> None:
    """Powered up mid-aisle, the cart knows no aisle until it sees a marker, so the gaps it opens on the way are
    recorded in this run's odometry frame. When the marker it then reaches is one it knows, those places move into
    that aisle at the marker's known position (as they do into a new aisle at an unknown marker); before, they
    stayed aisle-less, and the next pass through the aisle opened every one of them again under a new id."""
    aisle = make_aisle(seed=21)  # markers 3 (x 240) and 4 (x 3360)
    state = tmp_path / "alerts.json"
    cfg = TrackingConfig()
    # the first run sees marker 3 and the first two gaps, then the power is cut
    first = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=1), offsets(0, 1000, 12.0, seed=1))
    assert opened_gaps(aisle, first) == Counter([0, 1])
    # powered up near the far end (marker 4 out of view), the cart is pushed back to the start, past marker 3
    second = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=2), offsets(2600, 0, 12.0, seed=2),
                      NoisyDetector(seed=2))
    opened = {e.alert_id: matching_gap(aisle, e.bbox_norm, x, y) for e, x, y in second if e.event == "opened"}
    assert set(opened.values()) >= {2, 3, 4}
    # gaps 0 and 1 were opened again before the marker said where the cart is: once it does, each of those is
    # cleared as the duplicate of the first run's alert for that gap, which stays open (the shelf is still empty)
    first_ids = {matching_gap(aisle, e.bbox_norm, x, y): e.alert_id for e, x, y in first}
    cleared = [e for e, _, _ in second if e.event == "cleared"]
    assert cleared and all(e.duplicate_of in first_ids.values() and e.alert_id in opened for e in cleared)
    assert {opened[e.alert_id] for e in cleared} == {g for g in (0, 1) if g in opened.values()}
    left = AlertManager(cfg, "cart-01", state).open_alerts()
    assert {p.aisle for p in left} == {"aruco-3"} and len(left) == len(aisle.gaps)  # one open alert per gap
    assert {first_ids[0], first_ids[1]} <= {p.alert_id for p in left}
    # the next pass, from the start: every gap is an alert already (the first run's last `opened` may come again
    # with its id: it was cut off before it was marked committed)
    third = run_pass(GapTracker(cfg, "cart-01", state), Camera(aisle, seed=5), offsets(0, END, 12.0, seed=5),
                     NoisyDetector(seed=5))
    assert [e.event for e, _, _ in third] == ["opened"] * len(third)
    assert {e.alert_id for e, _, _ in third} <= {e.alert_id for e, _, _ in first}


def test_a_gap_seen_before_a_pause_is_not_placed_by_the_marker_after_it() -> None:
    """A place recorded before the position was lost (a pause) may be anywhere: the first marker after it must
    not move it by the marker's correction and call it placed (it was then cleared at the wrong spot)."""
    mgr = AlertManager(TrackingConfig(), "cart-01")
    mgr.markers[3] = MarkerPlace("aruco-3", 900.0)  # known from an earlier run
    assert _opened(mgr, 1, (500, 100, 600, 200), _view(0.0)) is not None
    mgr.position_lost(100.0)  # paused, moved unseen
    mgr.on_marker(3, 1560.0, 200.0)  # a known marker: this run's odometry is 660 px off the aisle's frame
    (place,) = mgr.open_alerts()
    assert place.aisle == "aruco-3" and place.stale  # in the aisle, but not placed: not cleared until seen again


def test_a_clock_stepped_back_never_makes_an_alert_last_seen_before_it_was_first_seen() -> None:
    """NTP steps a Pi's clock back as well as forward: the place seen again after the step keeps the later time
    (the alerts' `last_seen` read a day before their `first_seen`)."""
    mgr = AlertManager(TrackingConfig(), "cart-01")
    t = 1_780_000_000.0
    assert _opened(mgr, 1, (500, 100, 600, 200), _view(0.0, t=t)) is not None
    assert mgr.confirm(2, (505, 100, 600, 200), (505, 100, 600, 200), [0.8], 3, t - 86400, _view(10.0, t=t - 86400)) \
        is None  # the same place, seen again after the clock went back a day
    place = mgr.open_alerts()[0]
    assert place.first_seen == t and place.last_seen == t


def test_a_marker_takes_one_gap_for_an_old_alert_s_duplicate_not_two_and_a_crash_keeps_it_so(tmp_path: Path) -> None:
    """After a restart two gaps 120 px apart (two alerts: this run's tight radius kept them apart) were both
    cleared as duplicates of one old alert near them, leaving a still empty gap without an alert. One to one,
    nearest first, within the tight radius now. And the duplicate's cleared, resent after a crash, still says
    `duplicate_of` (it was a plain cleared: a restock to whoever missed the first)."""
    from edge.alerts import Place

    state = tmp_path / "alerts.json"
    mgr = AlertManager(TrackingConfig(), "cart-01", state)
    mgr.markers[3] = MarkerPlace("aruco-3", 900.0)  # known from an earlier run, with its alert A
    mgr.places.append(Place("old-A", "aruco-3", (500.0, 100.0, 600.0, 200.0), 1.0, 2.0, 0.9, 5))
    b = _opened(mgr, 1, (505, 100, 600, 200), _view(0.0))  # this run, before the marker: A's gap again
    c = _opened(mgr, 2, (720, 100, 820, 200), _view(0.0))  # and another gap 120 px to the right of it
    assert b and c and b != c
    mgr.begin_frame()  # both opened events committed
    mgr.on_marker(3, 900.0, 0.0)  # the known marker, where the aisle has it: no correction
    events = mgr.check_clear([], _view(0.0, aisle="aruco-3"))
    assert [(e.event, e.alert_id, e.duplicate_of) for e in events] == [("cleared", b, "old-A")]
    assert sorted(p.alert_id for p in mgr.open_alerts()) == sorted(["old-A", c])
    mgr.save()  # the power goes before the cleared is committed
    again = AlertManager(TrackingConfig(), "cart-01", state)
    resent = again.check_clear([], _view(0.0, aisle="aruco-3"))
    assert [(e.event, e.alert_id, e.duplicate_of) for e in resent] == [("cleared", b, "old-A")]
