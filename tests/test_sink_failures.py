"""What an alert's commit does when part of it fails, on a rendered cart pass with the real int8 model, the real
tracker, sink and SQLite outbox. The failures are injected into the sink's own steps (a stand-in for a bug or a
library error there; nothing real fails on demand): a snapshot that cannot be made costs the picture, never the
alert, and an alert whose commit raised (the service then stops) is announced again, same id, after the restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convert.cartpass import iter_cart_pass, make_aisle
from edge import sink as sink_mod
from edge.alerts import OPEN, OPENING
from edge.app import load_model
from edge.bundle import DEFAULT_BUNDLE
from edge.config import Config, TrackingConfig
from edge.detector import Detector
from edge.outbox import Outbox
from edge.payloads import ModelRef
from edge.pipeline import ModelSlot, Pipeline
from edge.sink import OutboxSink
from edge.topics import Topics
from edge.tracker import GapTracker
from tests.test_pipeline import ListFeed

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    aisle = make_aisle(np.random.default_rng(5), length_px=2400, n_gaps=4)
    return list(iter_cart_pass(aisle, speed_px_per_frame=12.0))


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(load_model(Config()))


def run(frames: list[np.ndarray], detector: Detector, folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One pass: the alert payloads stored in the outbox, and the snapshot topics."""
    folder.mkdir(exist_ok=True)
    tracker = GapTracker(TrackingConfig(), "cart-07", folder / "places.json")
    with Outbox(folder / "outbox.db") as outbox:
        sink = OutboxSink(outbox, Topics("shelfscout", "s042", "cart-07"), lambda _info: ModelRef("m", 1))
        tracker.uncommitted = sink.held_alert_ids
        try:
            Pipeline(ListFeed(frames), ModelSlot(detector), tracker, sink).run(threading.Event())
        finally:
            tracker.close()  # as the service does on the way out, whatever stopped it
        rows = outbox.pending(limit=10_000)
    alerts = [json.loads(m.payload) for m in rows if m.topic.endswith("/alerts")]
    return alerts, [m.topic for m in rows if "/snapshots/" in m.topic]


def places(folder: Path) -> dict[str, str]:
    return {p["alert_id"]: p["state"] for p in json.loads((folder / "places.json").read_text())["places"]}


def test_an_alert_whose_commit_failed_is_announced_again_after_the_restart(
    frames: list[np.ndarray], detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = run(frames, detector, tmp_path / "reference")
    opened = [a["id"] for a in reference if a["event"] == "opened"]
    assert len(opened) >= 2, "the pass should open several gaps"

    real = sink_mod.alert_messages
    calls = {"n": 0}

    def fails_first(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("payload bug")
        return real(*args, **kw)

    monkeypatch.setattr(sink_mod, "alert_messages", fails_first)
    with pytest.raises(RuntimeError, match="payload bug"):
        run(frames, detector, tmp_path / "cart")
    monkeypatch.setattr(sink_mod, "alert_messages", real)
    saved = places(tmp_path / "cart")
    assert list(saved.values()) == [OPENING], saved  # never stored: still marked for a resend, not `open`
    (lost_id,) = saved

    alerts, _ = run(frames, detector, tmp_path / "cart")  # the restart, same state and outbox
    again = [a for a in alerts if a["event"] == "opened"]
    assert again[0]["id"] == lost_id  # announced again under its id
    assert len(again) == len(opened)  # and every other gap of the pass, as in the reference
    assert set(places(tmp_path / "cart").values()) == {OPEN}


def test_a_snapshot_that_cannot_be_made_costs_the_picture_not_the_alert(
    frames: list[np.ndarray], detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    reference, ref_snaps = run(frames, detector, tmp_path / "reference")
    assert len(ref_snaps) == len(reference)

    def broken(*args: Any, **kw: Any) -> bytes:
        raise ValueError("encoder refused the image")

    monkeypatch.setattr(sink_mod, "render_snapshot", broken)
    alerts, snaps = run(frames, detector, tmp_path / "cart")
    assert [(a["id"].rsplit("-", 1)[-1], a["event"], a["frame"]) for a in alerts] == [
        (a["id"].rsplit("-", 1)[-1], a["event"], a["frame"]) for a in reference]
    assert snaps == [] and all(a["snapshot"] is None for a in alerts)
    assert caplog.text.count("no snapshot could be made") == len(alerts)


def test_a_duplicate_s_cleared_goes_out_without_a_restocked_picture(tmp_path: Path) -> None:
    """The cleared that closes a duplicate alert is no restock: its place is usually out of the frame (its box a
    line at the edge), and the snapshot said "restocked". It goes out without a snapshot; a real cleared keeps its."""
    from edge.types import AlertEvent, Frame, Location

    frame = Frame(np.zeros((480, 640, 3), np.uint8), 7, 0.0, 1.78e9)
    loc = Location("aruco-3", 1.0, "aruco")
    dup = AlertEvent("cart-07-1-2", "cleared", 1.78e9, 1.78e9, 1.78e9, (0.0, 0.2, 0.0, 0.4), 0.8, 5, 7, loc,
                     duplicate_of="cart-07-1-1")
    real = AlertEvent("cart-07-1-3", "cleared", 1.78e9, 1.78e9, 1.78e9, (0.2, 0.2, 0.4, 0.4), 0.8, 5, 7, loc)
    with Outbox(tmp_path / "outbox.db") as outbox:
        OutboxSink(outbox, Topics("shelfscout", "s042", "cart-07"), lambda _info: ModelRef("m", 1)).emit(frame, [dup, real])
        rows = outbox.pending(limit=10)
    alerts = {json.loads(m.payload)["id"]: json.loads(m.payload) for m in rows if m.topic.endswith("/alerts")}
    assert alerts["cart-07-1-2"]["snapshot"] is None and alerts["cart-07-1-2"]["duplicate_of"] == "cart-07-1-1"
    assert alerts["cart-07-1-3"]["snapshot"] is not None
    assert [m.topic.rsplit("/", 1)[1] for m in rows if "/snapshots/" in m.topic] == ["cart-07-1-3"]
