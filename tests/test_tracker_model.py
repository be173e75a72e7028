"""The shipped int8 model's own detections through GapTracker, on a decoded cart-pass video, twice.

What the tracker owns is checked, whatever the model's accuracy: no physical gap gets two alerts in one pass (the
model splits gaps into fragments and loses them for a few frames), and a gap alerted on the first pass is not
opened again on the second. Precision and recall are the model's; they are printed, not asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.cartpass import CartPass, iter_video_rgb, make_aisle, render_cart_pass
from convert.passcheck import match_alert, score_pass
from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle
from edge.config import TrackingConfig
from edge.detector import Detector
from edge.tracker import GapTracker
from edge.types import AlertEvent, Frame
from tests.test_tracker_scene import T0_WALL

pytestmark = pytest.mark.skipif(
    not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built"
)


def _payload(e: AlertEvent) -> dict[str, object]:
    return {"id": e.alert_id, "event": e.event, "frame": e.frame_index, "bbox": list(e.bbox_norm)}


def _run(tracker: GapTracker, detector: Detector, cp: CartPass, start: int) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    k = 0
    for k, rgb in enumerate(iter_video_rgb(cp.path), 1):
        i = start + k - 1
        frame = Frame(rgb, i, i / cp.fps, T0_WALL + i / cp.fps)
        for e in tracker.update(frame, detector.detect(frame.image)):
            e.frame_index -= start  # index into this pass's truth
            events.append(e)
    assert k == cp.frames
    return events


def test_model_detections_give_one_alert_per_gap_and_none_again(tmp_path: Path) -> None:
    bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    detector = Detector(bundle, threads=2)
    aisle = make_aisle(np.random.default_rng(5), length_px=2400, n_gaps=5)
    cp = render_cart_pass(aisle, tmp_path / "pass.mp4", speed_px_per_frame=10.0, seed=3)
    tracker = GapTracker(TrackingConfig(), "cart-07", tmp_path / "places.json")
    first = _run(tracker, detector, cp, 0)
    score = score_pass(cp, [_payload(e) for e in first])
    print(f"\nmodel + tracker, first pass: {score.summary()} (recall {score.recall:.2f})")
    assert score.duplicates == {}
    # the same aisle again (a hard cut back to its start): the gaps alerted before are still the same alerts, unless
    # the model lost one for clear_frames frames in full view (then it was `cleared` first, with its own id)
    second = _run(tracker, detector, cp, cp.frames)
    cleared = {e.alert_id for e in second if e.event == "cleared"}
    reopened = [
        g for e in second if e.event == "opened" and (g := match_alert(cp, _payload(e))) in score.matched
    ]
    print(
        f"second pass: {len(second)} events, {len(reopened)} true gaps opened again, {len(cleared)} cleared"
    )
    assert all(set(score.matched[g]) & cleared for g in reopened), "a gap with an open alert was opened again"
    ids = [(e.alert_id, e.event) for e in first + second]
    assert len(ids) == len(set(ids))


def test_a_threshold_sweep_runs_the_model_once_and_scores_as_a_model_run_at_each_threshold(tmp_path: Path) -> None:
    """The benches' sweep (`convert.passcheck.sweep_thresholds`) runs the model once per frame at the lowest
    threshold and keeps, for each higher one, the gaps scoring at least that. It must score the same alerts as the
    model decoded at each threshold on its own."""
    from dataclasses import replace

    from convert.passcheck import PassTally, detect_pass, sweep_thresholds, track_pass

    bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    cp = render_cart_pass(make_aisle(np.random.default_rng(6), length_px=1800, n_gaps=4), tmp_path / "p.mp4",
                          speed_px_per_frame=14.0, seed=4)
    frames = list(iter_video_rgb(cp.path))
    thresholds = [0.3, 0.45, 0.6]
    swept = {thr: tally.row(thr) for thr, tally in sweep_thresholds(bundle, [(cp, frames)], ["p"], thresholds,
                                                                      TrackingConfig())}
    for thr in thresholds:
        alone = detect_pass(Detector(bundle, score_threshold=thr), frames)
        alerts = track_pass(frames, alone, replace(TrackingConfig()))
        tally = PassTally()
        tally.add(score_pass(cp, alerts))
        assert swept[thr] == tally.row(thr)
    assert swept[0.3]["alerted"] >= swept[0.6]["alerted"] > 0  # the thresholds do differ, and the model finds gaps
