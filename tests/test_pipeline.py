"""The three-stage pipeline: every frame of a lossless feed is processed once, in order, with the real int8 model;
a model swap lands between two frames; a failing observer never stops the alert stream; a failing stage surfaces."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convert.cartpass import iter_cart_pass, make_aisle
from edge.app import load_model
from edge.bundle import DEFAULT_BUNDLE
from edge.config import Config
from edge.detector import Detector
from edge.outbox import Outbox
from edge.payloads import ModelRef
from edge.pipeline import OUTPUT_BUFFERS, POST_QUEUE, CorePlan, FrameResult, ModelSlot, Pipeline, _Handoff
from edge.sink import OutboxSink
from edge.topics import Topics
from edge.types import AlertEvent, Frame, Gap, Location

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")


class ListFeed:
    """A lossless in-memory feed (the capture thread's replay mode, without a thread)."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.frames = [Frame(im, i, time.monotonic(), time.time()) for i, im in enumerate(images)]
        self._i = 0
        self._lock = threading.Lock()

    def latest(self, timeout: float) -> Frame | None:
        with self._lock:
            if self._i >= len(self.frames):
                return None
            f = self.frames[self._i]
            self._i += 1
            return f

    @property
    def ended(self) -> bool:
        return self._i >= len(self.frames)


class RecordingTracker:
    """Records what the post stage saw and opens one event on every 10th frame."""

    def __init__(self, fail_at: int | None = None):
        self.seen: list[tuple[int, int]] = []
        self.fail_at = fail_at

    def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
        if frame.index == self.fail_at:
            raise RuntimeError("tracker exploded")
        self.seen.append((frame.index, len(gaps)))
        if frame.index % 10:
            return []
        return [AlertEvent(f"a{frame.index}", "opened", 0.0, 0.0, 0.0, (0.1, 0.1, 0.2, 0.2), 0.9, 5, frame.index,
                           Location(None, None, "none"))]


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[str] = []

    def emit(self, frame: Frame, events: Sequence[AlertEvent], info: Any = None) -> None:
        self.events.extend(e.alert_id for e in events)


class ModelVersions:
    """Notes which model ran each frame."""

    def __init__(self) -> None:
        self.by_frame: list[Any] = []

    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
        self.by_frame.append(result.model)


class Broken:
    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
        raise ValueError("observer bug")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    aisle = make_aisle(np.random.default_rng(2), length_px=1200, n_gaps=3)
    return list(iter_cart_pass(aisle, speed_px_per_frame=12.0))[:40]


def test_every_frame_once_in_order_with_a_swap_between_frames(images: list[np.ndarray]) -> None:
    bundle = load_model(Config())
    det1, det2 = Detector(bundle), Detector(bundle)
    slot = ModelSlot(det1, "v1")
    tracker, sink = RecordingTracker(), RecordingSink()
    versions = ModelVersions()
    pipe = Pipeline(ListFeed(images), slot, tracker, sink, observers=[Broken(), versions])

    swapped = threading.Event()

    class SwapAt:
        def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
            if frame.index == 15 and not swapped.is_set():
                slot.request_swap(det2, "v2")
                swapped.set()

    pipe.observers.append(SwapAt())
    pipe.run(threading.Event())

    assert [i for i, _ in tracker.seen] == list(range(len(images)))
    assert sink.events == [f"a{i}" for i in range(0, len(images), 10)]
    assert pipe.stats.frames == len(images) and slot.swaps == 1
    # frames before the request ran on v1, and those already on their way (at most: the post queue's, the one
    # being invoked, the one handed to the interpreter and the one being prepared); every frame after them on v2
    first_v2 = versions.by_frame.index("v2")
    assert 15 < first_v2 <= 16 + POST_QUEUE + 3 and set(versions.by_frame[first_v2:]) == {"v2"}
    assert any(n > 0 for _, n in tracker.seen), "the real model found no gap in a pass with gaps"
    p = pipe.stats.stage_percentiles()
    assert p["invoke"]["p50"] is not None and p["invoke"]["p50"] > 0
    cpu = pipe.stats.cpu_ms_per_frame()  # each stage thread measured its own CPU time
    assert set(cpu) == {"prepare", "infer", "post"} and all(v > 0 for v in cpu.values())


def test_an_alert_names_the_model_that_ran_its_frame_not_the_one_running_when_it_is_committed(
        images: list[np.ndarray], tmp_path: Path) -> None:
    """The stages overlap: when a swap lands, frames the old model ran are still on their way to the tracker and
    the sink. Their alerts must name the old model: a backend reads which model found a gap there, and an OTA
    probation's garbage model must not be blamed for (or credited with) the old model's alerts. They named the
    model in the slot when they were committed."""
    bundle = load_model(Config())
    det1, det2 = Detector(bundle), Detector(bundle)
    slot = ModelSlot(det1, "v1")
    outbox = Outbox(tmp_path / "outbox.db")
    sink = OutboxSink(outbox, Topics("shelfscout", "s042", "cart-07"), lambda info: ModelRef("m", int(info[1:])))
    ran: dict[int, str] = {}
    after_switch: list[int] = []  # frames the tracker saw once the slot held v2

    class Ran:
        def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
            ran[frame.index] = result.model

    class SwapAt20(ListFeed):
        """Asks for v2 as it hands out frame 20, so frame 20 is the first prepared on v2 (the stage swaps after
        taking a frame)."""

        def latest(self, timeout: float) -> Frame | None:
            frame = super().latest(timeout)
            if frame is not None and frame.index == 20:
                slot.request_swap(det2, "v2")
            return frame

    class SlowFrom16:
        """An event on every frame; frame 16 waits until the slot holds v2, so frames 16-19, which v1 ran, reach
        the tracker and the sink after the swap (the hand-offs between the stages hold them meanwhile)."""

        def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
            deadline = time.monotonic() + 10
            while frame.index == 16 and slot.info != "v2" and time.monotonic() < deadline:
                time.sleep(0.002)
            if slot.info == "v2":
                after_switch.append(frame.index)
            return [AlertEvent(f"a{frame.index}", "opened", 0.0, 0.0, 0.0, (0.1, 0.1, 0.2, 0.2), 0.9, 5,
                               frame.index, Location(None, None, "none"))]

    try:
        Pipeline(SwapAt20(images), slot, SlowFrom16(), sink, observers=[Ran()]).run(threading.Event())
        said = {json.loads(m.payload)["frame"]: json.loads(m.payload)["model"]["version"]
                for m in outbox.pending(limit=1000) if m.topic.endswith("/alerts")}
    finally:
        outbox.close()
    assert sorted(said) == list(range(len(images)))
    assert [i for i in ran if ran[i] == "v2"] == list(range(20, len(images)))
    # frames v1 ran whose alerts were committed with v2 already in the slot: where the two used to differ
    assert {16, 17, 18, 19} <= set(after_switch), after_switch
    assert said == {i: 1 if i < 20 else 2 for i in range(len(images))}, said


def test_a_pause_is_answered_once_the_frames_already_taken_are_through(images: list[np.ndarray]) -> None:
    """`cmd/pause` stopped the prepare stage only: the frames it had taken (up to 8, in the hand-offs) were still
    tracked after the pause was answered, and their alerts came after the answer. The post stage holds frame 5
    until the pause is asked for, so the hand-offs are full when it is."""
    feed = ListFeed(images)
    at_5, pausing, answered = threading.Event(), threading.Event(), threading.Event()
    after_answer: list[int] = []
    seen: list[int] = []

    class HeldAt5:
        def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
            if frame.index == 5:
                at_5.set()
                pausing.wait(10)
            (after_answer if answered.is_set() else seen).append(frame.index)
            return []

    pipe = Pipeline(feed, ModelSlot(Detector(load_model(Config())), "v1"), HeldAt5(), RecordingSink())
    result: list[bool] = []

    def command() -> None:
        at_5.wait(10)
        taken = -1
        while feed._i != taken:  # until the hand-offs are full and the prepare stage waits
            taken = feed._i
            time.sleep(0.2)
        pausing.set()
        result.append(pipe.pause(10))
        answered.set()

    commander = threading.Thread(target=command)
    commander.start()
    pipe.run(threading.Event())  # the feed runs out while paused: the rest of it is passed over
    commander.join(10)
    assert result == [True]
    assert after_answer == [], after_answer
    assert seen[-1] > 5 and seen == list(range(seen[-1] + 1)), seen  # frames 6.. were on their way: tracked first


class PausingFeed(ListFeed):
    """Pauses the pipeline as it hands over frame `pause_at` and resumes it as it hands over frame `resume_at`, as
    `cmd/pause` and `cmd/resume` would between two camera frames."""

    def __init__(self, images: Sequence[np.ndarray], paused: threading.Event, pause_at: int, resume_at: int):
        super().__init__(images)
        self.paused, self.pause_at, self.resume_at = paused, pause_at, resume_at

    def latest(self, timeout: float) -> Frame | None:
        f = super().latest(timeout)
        if f is not None and f.index == self.pause_at:
            self.paused.set()
        if f is not None and f.index == self.resume_at:
            self.paused.clear()
        return f


class MarkRecorder:
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, bool]] = []

    def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
        self.frames.append((frame.index, frame.dropped_before, frame.interrupted))
        return []


def test_the_first_frame_after_a_pause_says_the_view_was_interrupted_and_what_was_skipped(
    images: list[np.ndarray],
) -> None:
    """The tracker must know the cart may have moved unseen while paused (else it looks for the open gaps where the
    shelf has moved on, and clears them: tests/test_tracker_cartpass.py)."""
    pipe = Pipeline(ListFeed([]), ModelSlot(Detector(load_model(Config())), "v1"), MarkRecorder(), RecordingSink())
    pipe.feed = PausingFeed(images, pipe.paused, pause_at=10, resume_at=22)
    pipe.run(threading.Event())
    tracker = pipe.tracker
    assert isinstance(tracker, MarkRecorder)
    assert [i for i, _, _ in tracker.frames] == [*range(10), *range(22, len(images))]
    assert [(d, m) for i, d, m in tracker.frames if i == 22] == [(12, True)]
    assert not any(m for i, _, m in tracker.frames if i != 22)
    assert pipe.stats.frames == len(images) - 12 and pipe.stats.dropped == 12


def test_frames_held_back_from_the_tracker_count_as_frames_it_did_not_see(images: list[np.ndarray]) -> None:
    """OTA probation holds a garbage model's frames back from the tracker (`admit`): the next frame it sees must say
    how many it missed, or the cart's motion is measured over one frame where many passed (its odometry fell behind
    by 60 %: 149 px of a true 375 over 15 held-back frames)."""
    held = set(range(10, 17))
    pipe = Pipeline(ListFeed(images), ModelSlot(Detector(load_model(Config())), "v1"), MarkRecorder(), RecordingSink(),
                    admit=lambda frame, gaps, model: frame.index not in held)
    pipe.run(threading.Event())
    tracker = pipe.tracker
    assert isinstance(tracker, MarkRecorder)
    assert [i for i, _, _ in tracker.frames] == [i for i in range(len(images)) if i not in held]
    assert [(d, m) for i, d, m in tracker.frames if i == 17] == [(7, False)]
    assert all(d == 0 for i, d, _ in tracker.frames if i != 17)
    assert pipe.stats.withheld == 7 and pipe.stats.dropped == 0  # not camera drops
    assert pipe.stats.frames == len(images)


class GapRecorder:
    """Keeps every frame's gaps."""

    def __init__(self) -> None:
        self.gaps: list[list[Gap]] = []

    def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
        self.gaps.append(gaps)
        return []


def test_same_gaps_as_the_serial_path_from_a_few_reused_output_buffers(images: list[np.ndarray]) -> None:
    det = Detector(load_model(Config()))
    serial = [det.detect(im) for im in images]
    addresses: set[int] = set()
    decode = det.decode_outputs

    def recording_decode(outputs: dict[str, np.ndarray], w: int, h: int) -> list[Gap]:
        # slower than an invoke, so the post stage always has a frame queued and the next invoke has finished
        # before these outputs are read: a buffer still in use that is written again shows up as different gaps
        time.sleep(0.006)
        addresses.update(int(v.ctypes.data) for v in outputs.values())
        return decode(outputs, w, h)

    det.decode_outputs = recording_decode  # type: ignore[method-assign,assignment]
    tracker = GapRecorder()
    Pipeline(ListFeed(images), ModelSlot(det), tracker, RecordingSink()).run(threading.Event())
    # identical boxes and scores: a queued frame's outputs are never overwritten by the next invoke
    assert tracker.gaps == serial
    assert any(serial), "the real model found no gap in a pass with gaps"
    n_outputs = len(det.outputs())
    assert len(addresses) <= OUTPUT_BUFFERS * n_outputs, "outputs were copied into new arrays per frame"


def test_a_failing_stage_surfaces_and_stops(images: list[np.ndarray]) -> None:
    det = Detector(load_model(Config()))
    pipe = Pipeline(ListFeed(images), ModelSlot(det), RecordingTracker(fail_at=7), RecordingSink())
    with pytest.raises(RuntimeError, match="tracker exploded"):
        pipe.run(threading.Event())
    assert pipe.stats.frames == 7


def test_memory_source_plays_forth_and_back_without_a_cut() -> None:
    from edge.pipeline_bench import MemorySource

    src = MemorySource(["a", "b", "c"], count=9)
    src.open()
    got = [src.read() for _ in range(10)]
    # consecutive frames are always neighbours in the recording: no jump from the last frame to the first
    assert got == ["a", "b", "c", "b", "a", "b", "c", "b", "a", None]
    one = MemorySource(["x"], count=2)
    one.open()
    assert [one.read(), one.read(), one.read()] == ["x", "x", None]


def test_handoff_holds_as_many_items_as_slots_then_refuses() -> None:
    import queue

    h = _Handoff(POST_QUEUE)
    for i in range(POST_QUEUE):
        h.put(i, timeout=0.01)
    with pytest.raises(queue.Full):
        h.put("one too many", timeout=0.01)
    assert [h.get(timeout=0.01) for _ in range(POST_QUEUE)] == list(range(POST_QUEUE))  # in order
    with pytest.raises(queue.Empty):
        h.get(timeout=0.01)
    with pytest.raises(ValueError, match="at least one slot"):
        _Handoff(0)


def test_core_plan_splits_the_last_core_off_only_for_a_single_interpreter_thread() -> None:
    plan = CorePlan.for_cores([3, 0, 2, 1], interpreter_threads=1)
    assert plan == CorePlan(frozenset({0, 1, 2}), frozenset({3}))
    assert CorePlan.for_cores([0], interpreter_threads=1) is None  # nothing to split
    # a worker pool made by a pinned thread would be confined to its cores: no pinning then
    assert CorePlan.for_cores([0, 1, 2, 3], interpreter_threads=3) is None


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="no thread affinity on this OS")
def test_pinned_run_confines_each_thread_and_gives_every_thread_its_cores_back(images: list[np.ndarray]) -> None:
    import os

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two usable cores")
    plan = CorePlan.for_cores(cores, interpreter_threads=1)
    assert plan is not None
    seen: dict[str, set[int]] = {}
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(30,), daemon=True)  # another thread, e.g. capture
    other.start()
    assert other.native_id is not None

    class AffinityRecorder(GapRecorder):
        def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
            seen["post"] = set(os.sched_getaffinity(0))
            seen["other"] = set(os.sched_getaffinity(other.native_id))  # type: ignore[arg-type]
            return super().update(frame, gaps)

    det = Detector(load_model(Config()), threads=1)
    tracker = AffinityRecorder()
    Pipeline(ListFeed(images[:6]), ModelSlot(det), tracker, RecordingSink(), cores=plan).run(threading.Event())
    assert len(tracker.gaps) == 6  # every frame went through
    assert seen["post"] == set(plan.light) and seen["other"] == set(plan.light)
    assert set(os.sched_getaffinity(other.native_id)) == set(cores), "a pinned thread kept its pinning after the run"
    release.set()
    other.join(5)
    assert set(os.sched_getaffinity(0)) == set(cores), "the inference thread kept its pinning after the run"
