"""The inference loop: newest frame → model → tracker → alert sink, with model hot-swap between two frames."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from edge.stats import PipelineStats
from edge.types import AlertEvent, Frame, Gap

log = logging.getLogger(__name__)


class FrameFeed(Protocol):
    """Where frames come from: the capture thread (newest frame only) or an in-memory list for bench."""

    def latest(self, timeout: float) -> Frame | None: ...

    @property
    def ended(self) -> bool: ...


class GapDetector(Protocol):
    """The part of edge.detector.Detector the loop uses."""

    def staging_buffer(self) -> Any: ...

    def prepare(self, image_rgb: Any, staging: Any) -> None: ...

    def load(self, staging: Any) -> None: ...

    def invoke(self) -> None: ...

    def output_buffers(self) -> dict[str, Any]: ...

    def outputs_into(self, dst: dict[str, Any]) -> dict[str, Any]: ...

    def decode_outputs(self, outputs: dict[str, Any], orig_w: int, orig_h: int) -> list[Gap]: ...

    @property
    def outputs_always_finite(self) -> bool: ...


class Tracker(Protocol):
    def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]: ...


class AlertSink(Protocol):
    """Takes the tracker's events for every frame (often none): renders snapshots and commits them durably.
    `info` is the slot info of the model that ran the frame: the events name it, not the one running by then."""

    def emit(self, frame: Frame, events: Sequence[AlertEvent], info: Any = None) -> None: ...


class FrameObserver(Protocol):
    """Sees every processed frame after the alerts are committed: preview, watchdog, OTA probation."""

    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None: ...


@dataclass(frozen=True)
class FrameResult:
    """What one pass of the loop measured."""

    preprocess_ms: float
    invoke_ms: float
    decode_ms: float
    track_ms: float
    events: int
    outputs_ok: bool = True
    model: Any = None  # the slot info (the service's Bundle) of the detector that ran this frame


class ModelSlot:
    """Holds the running detector; a swap asked for from any thread takes effect between two frames."""

    def __init__(self, detector: GapDetector, info: Any = None):
        self._detector = detector
        self._info = info
        self._pending: tuple[GapDetector, Any] | None = None
        self._lock = threading.Lock()
        self.swaps = 0

    def request_swap(self, detector: GapDetector, info: Any = None) -> None:
        with self._lock:
            self._pending = (detector, info)

    def current(self) -> GapDetector:
        if self._pending is not None:
            with self._lock:
                if self._pending is not None:
                    self._detector, self._info = self._pending
                    self._pending = None
                    self.swaps += 1
                    log.info("model swapped between frames")
        return self._detector

    @property
    def info(self) -> Any:
        """What describes the running detector (the service keeps its Bundle here)."""
        return self._info

    @property
    def latest_info(self) -> Any:
        """The info of the detector that runs from the next frame on (a requested swap counts)."""
        pending = self._pending
        return pending[1] if pending is not None else self._info


@dataclass
class _Prepared:
    """One frame resized into a staging buffer for `detector`, waiting for the interpreter."""

    frame: Frame
    detector: GapDetector
    staging: Any  # np.ndarray from the detector's staging_buffer()
    prepare_ms: float
    t0: float
    info: Any = None  # the slot's info for `detector`


@dataclass
class _Inferred:
    """One frame after the model ran: what the post-processing stage needs, copied off the interpreter."""

    frame: Frame
    detector: GapDetector
    outputs: dict[str, Any]
    preprocess_ms: float
    invoke_ms: float
    t0: float
    info: Any = None


def tune_process() -> None:
    """Process-wide settings the pipeline's stage threads need; the composition root calls this once at start.

    (A shorter GIL switch interval was tried too: 0.1-5 ms made no measurable difference to pipeline_fps.)"""
    import cv2

    cv2.setNumThreads(1)  # OpenCV's own pool would compete with the interpreter's threads on a small board


@dataclass(frozen=True)
class CorePlan:
    """Which CPU cores the threads may run on: the inference stage keeps its own cores, and every other thread of
    the process (the prepare and post stages, capture, MQTT) shares the last one, so the scheduler never parks them
    on the interpreter's core mid-invoke. Measured on 2 cores (1 interpreter thread, bench frames, interleaved
    pairs): pipeline_fps higher in 7 of 8 pairs, median +5 %."""

    infer: frozenset[int]
    light: frozenset[int]

    @staticmethod
    def for_cores(cores: Sequence[int], interpreter_threads: int) -> CorePlan | None:
        """A plan for these usable cores, or None with fewer than two cores (nothing to split) or when the
        interpreter runs a worker pool (threads > 1): its pool threads are made when a model loads, by whichever
        thread loads it, and a pool made on a pinned thread would be confined to that thread's cores."""
        ordered = sorted(set(cores))
        if len(ordered) < 2 or interpreter_threads != 1:
            return None
        return CorePlan(frozenset(ordered[:-1]), frozenset(ordered[-1:]))

    @staticmethod
    def for_process(interpreter_threads: int) -> CorePlan | None:
        """The plan for the cores this process may use (see `for_cores`); None where the OS has no affinity."""
        import os

        getter = getattr(os, "sched_getaffinity", None)
        return CorePlan.for_cores(sorted(getter(0)), interpreter_threads) if getter is not None else None

    @staticmethod
    def describe(plan: CorePlan | None) -> str:
        """Where the threads run under `plan` (None: not pinned), for logs and the bench."""
        if plan is None:
            return "threads not pinned (one usable core, or an interpreter worker pool)"
        return f"inference thread pinned to cores {sorted(plan.infer)}, the other threads to {sorted(plan.light)}"

    def apply(self) -> dict[int, frozenset[int]]:
        """Pin the calling thread (the inference stage) to `infer` and every other Python thread of the process
        (prepare, post, capture, MQTT network loop, ...) to `light`; returns each pinned thread's previous cores by
        native thread id, for `restore`. Threads started later inherit their starter's cores."""
        me = threading.get_native_id()
        before: dict[int, frozenset[int]] = {}
        try:
            for t in threading.enumerate():
                if t.native_id is None:
                    continue
                prev = _set_affinity(t.native_id, self.infer if t.native_id == me else self.light)
                if prev is not None:
                    before[t.native_id] = prev
        except PermissionError as e:
            # a seccomp filter without sched_setaffinity (the unit's ~@resources) or a cpuset that forbids it
            CorePlan.restore(before)
            log.warning("threads not pinned: the OS refused to set thread affinity (%s)", e.strerror or e)
            return {}
        log.info("%s", CorePlan.describe(self))
        return before

    @staticmethod
    def restore(before: dict[int, frozenset[int]]) -> None:
        """Give the threads `apply` pinned their previous cores back (those that still run)."""
        for tid, cores in before.items():
            try:
                _set_affinity(tid, cores)
            except PermissionError:
                log.warning("thread %d stays pinned: the OS refused to give it cores %s back", tid, sorted(cores))


def _set_affinity(tid: int, cores: frozenset[int]) -> frozenset[int] | None:
    """Restrict one thread (by native id) to `cores`; its previous cores, or None where the OS has no thread
    affinity or the thread has ended."""
    import os

    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        return None
    try:
        before = frozenset(getter(tid))
        setter(tid, cores)  # Linux: a thread id pins that thread only
        return before
    except PermissionError:
        raise  # refused, not gone: the caller says so
    except OSError:
        return None  # it ended meanwhile


class _Handoff:
    """A bounded hand-off between two stage threads, built on C-level SimpleQueues (a token per free slot, and the
    items): the same semantics as queue.Queue(maxsize=slots) without its Python-level locks."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"a hand-off needs at least one slot, got {slots}")
        self._slot: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(slots):
            self._slot.put(True)

    def put(self, item: Any, timeout: float) -> None:
        """Wait up to `timeout` s for the slot to be free, then hand `item` on; raises queue.Full otherwise."""
        try:
            self._slot.get(timeout=timeout)
        except queue.Empty:
            raise queue.Full from None
        self._items.put(item)

    def get(self, timeout: float | None = None) -> Any:
        """The waiting item (raises queue.Empty after `timeout` s); frees the slot for the next one."""
        item = self._items.get(timeout=timeout)
        self._slot.put(True)
        return item

    def empty(self) -> bool:
        return self._items.empty()


_END = object()
STAGING_BUFFERS = 3  # one being filled, one queued, one being loaded into the tensor


class _StagingPool:
    """Reusable input-sized buffers per detector, so the hot path allocates nothing."""

    def __init__(self) -> None:
        self._free: dict[int, queue.SimpleQueue[Any]] = {}

    def take(self, det: GapDetector) -> Any:
        key = id(det)
        if key not in self._free:
            self._free.clear()  # a swapped-out model's buffers are dropped with it
            self._free[key] = queue.SimpleQueue()
            for _ in range(STAGING_BUFFERS):
                self._free[key].put(det.staging_buffer())
        return self._free[key].get()

    def give_back(self, det: GapDetector, buf: Any) -> None:
        q = self._free.get(id(det))
        if q is not None:
            q.put(buf)


# Frames the post stage may have queued. Its work per frame is below the interpreter's on average but comes in
# bursts (a marker look every 10th frame, a snapshot per alert): with one slot the inference stage waited for it
# 0.17 ms per frame (6 % of its time, measured with the bench's frames); a few slots absorb the bursts.
POST_QUEUE = 4
OUTPUT_BUFFERS = POST_QUEUE + 2  # the queued frames', the one being decoded and the one written after the next invoke


class _OutputRing:
    """Preallocated copies of one detector's outputs, reused in turn, so handing outputs on allocates nothing.

    The post stage holds at most POST_QUEUE + 1 frames' outputs (the queued ones and the one being decoded), so the
    next buffer in the ring is always free when the inference stage writes the next frame's outputs into it.
    """

    def __init__(self) -> None:
        self._key: int | None = None
        self._bufs: list[dict[str, Any]] = []
        self._next = 0

    def copy(self, det: GapDetector) -> dict[str, Any]:
        """The detector's current outputs, dequantized straight into the next buffer of the ring."""
        if self._key != id(det):  # a swapped-out model's buffers are dropped with it
            self._key = id(det)
            self._bufs = [det.output_buffers() for _ in range(OUTPUT_BUFFERS)]
            self._next = 0
        dst = self._bufs[self._next]
        self._next = (self._next + 1) % OUTPUT_BUFFERS
        return det.outputs_into(dst)


@dataclass
class Pipeline:
    """Runs the loop until `stop` is set or a finite feed has ended.

    Three stages overlap, each on its own thread: prepare (take the newest frame, resize it into a staging buffer)
    → infer (copy it into the input tensor, invoke; the runtime releases the GIL) → post (decode, track, commit
    alerts, observers). One frame waits before the interpreter, at most POST_QUEUE after it (to absorb the post
    stage's bursts). So the interpreter never waits for Python work, and no backlog builds up: the capture thread
    still drops what the model cannot keep up with.
    """

    feed: FrameFeed
    slot: ModelSlot
    tracker: Tracker
    sink: AlertSink
    observers: list[FrameObserver] = field(default_factory=list)
    stats: PipelineStats = field(default_factory=PipelineStats)
    paused: threading.Event = field(default_factory=threading.Event)
    heartbeat: Callable[[], None] | None = None  # called on every turn of the loop (systemd's watchdog)
    cores: CorePlan | None = None  # pin the stage threads (None: the scheduler places them)
    # whether the tracker may see a frame's gaps (frame, gaps, the slot info of the model that ran it); a frame it
    # may not see is passed over like a frame the camera dropped (OTA probation: a model's garbage frames)
    admit: Callable[[Frame, list[Gap], Any], bool] | None = None
    _withheld_run: int = field(default=0, init=False, repr=False)  # frames since the tracker's last, held back
    # frames taken from the feed and not yet through the post stage, counted under `_flow` with the pause check
    _in_flight: int = field(default=0, init=False, repr=False)
    _flow: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)

    def pause(self, timeout: float) -> bool:
        """Take no more frames, and wait up to `timeout` s until every frame already taken has been through the
        tracker and the sink. True: no alert of a frame from before the pause is still to come (what a backend
        that sent `cmd/pause` expects once it is answered). False: some frames were still on their way (a stage
        is stuck); they go on after the answer. `paused.clear()` resumes."""
        with self._flow:
            self.paused.set()
            return self._flow.wait_for(lambda: self._in_flight == 0, timeout)

    def _through(self) -> None:
        """One frame taken from the feed has been through the post stage (or will not get there)."""
        with self._flow:
            self._in_flight -= 1
            self._flow.notify_all()

    def _invoke(self, item: _Prepared, pool: _StagingPool, ring: _OutputRing) -> _Inferred:
        det = item.detector
        t1 = time.perf_counter()
        det.load(item.staging)
        pool.give_back(det, item.staging)
        t2 = time.perf_counter()
        det.invoke()
        outs = ring.copy(det)
        t3 = time.perf_counter()
        return _Inferred(item.frame, det, outs, item.prepare_ms + (t2 - t1) * 1e3, (t3 - t2) * 1e3, item.t0,
                         item.info)

    def _post(self, item: _Inferred) -> list[Gap]:
        frame = item.frame
        h, w = frame.image.shape[:2]
        t2 = time.perf_counter()
        gaps = item.detector.decode_outputs(item.outputs, w, h)
        t3 = time.perf_counter()
        if self.admit is None or self.admit(frame, gaps, item.info):
            tracked = frame
            if self._withheld_run:  # the tracker measures the cart's motion over the frames it did not see too
                tracked = replace(frame, dropped_before=frame.dropped_before + self._withheld_run)
                self._withheld_run = 0
            events = self.tracker.update(tracked, gaps)
        else:
            events = []
            self.stats.withheld += 1
            self._withheld_run += frame.dropped_before + 1
        self.sink.emit(frame, events, item.info)  # every frame: a sink may be holding earlier events to retry
        for e in events:
            if e.event == "opened":
                self.stats.alerts_opened += 1
            else:
                self.stats.alerts_cleared += 1
        t4 = time.perf_counter()
        s = self.stats
        s.frames += 1
        s.dropped += frame.dropped_before
        s.fps.tick()
        s.preprocess.add(item.preprocess_ms)
        s.invoke.add(item.invoke_ms)
        s.decode.add((t3 - t2) * 1e3)
        s.track.add((t4 - t3) * 1e3)
        s.total.add((t4 - item.t0) * 1e3)
        s.model_swaps = self.slot.swaps
        # NaN/inf outputs fail an OTA probation; dequantized integer outputs cannot have them, so skip the scan
        ok = item.detector.outputs_always_finite or all(
            bool(np.isfinite(v).all()) for v in item.outputs.values()
        )
        result = FrameResult(item.preprocess_ms, item.invoke_ms, (t3 - t2) * 1e3, (t4 - t3) * 1e3, len(events), ok,
                             item.info)
        for obs in self.observers:
            try:
                obs.on_frame(frame, gaps, result)
            except Exception:  # an observer (preview, probation) must never stop the alert stream
                log.exception("frame observer %r failed", obs)
        return gaps

    def run(self, stop: threading.Event) -> None:
        to_infer = _Handoff()
        to_post = _Handoff(POST_QUEUE)
        failure: list[BaseException] = []
        halt = threading.Event()  # the inference stage has left: the prepare stage must not wait for it
        pool = _StagingPool()
        ring = _OutputRing()

        def put(q: _Handoff, item: Any, alive: Callable[[], bool]) -> bool:
            while alive():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def prepare_loop() -> None:
            cpu0 = time.thread_time()
            skipped = 0  # frames passed over while paused
            try:
                while not (stop.is_set() or halt.is_set()):
                    if self.heartbeat is not None:
                        # alive while paused or while the camera is away; a stuck stage blocks this loop
                        self.heartbeat()
                    frame = self.feed.latest(timeout=0.5)
                    if frame is None:
                        if self.feed.ended:
                            log.info("source ended")
                            return
                        continue
                    with self._flow:  # checked and counted in one step, so `pause` waits for every frame it let in
                        paused = self.paused.is_set()
                        if not paused:
                            self._in_flight += 1
                    if paused:
                        skipped += frame.dropped_before + 1
                        continue
                    if skipped:  # the first frame after a pause: the cart may have moved any distance unseen
                        frame = replace(frame, dropped_before=frame.dropped_before + skipped, interrupted=True)
                        skipped = 0
                    det: Any = self.slot.current()
                    t0 = time.perf_counter()
                    buf = pool.take(det)
                    det.prepare(frame.image, buf)
                    item = _Prepared(frame, det, buf, (time.perf_counter() - t0) * 1e3, t0, self.slot.info)
                    if not put(to_infer, item, lambda: not halt.is_set()):
                        return
            except BaseException as e:  # surfaced on the calling thread
                failure.append(e)
            finally:
                self.stats.thread_cpu_s["prepare"] = time.thread_time() - cpu0
                put(to_infer, _END, lambda: not halt.is_set())

        def post_loop() -> None:
            cpu0 = time.thread_time()
            try:
                while True:
                    item = to_post.get()
                    if item is _END:
                        return
                    try:
                        self._post(item)
                    except BaseException as e:  # surfaced on the calling thread, which then stops
                        failure.append(e)
                        halt.set()
                        return
                    finally:
                        self._through()
            finally:
                self.stats.thread_cpu_s["post"] = time.thread_time() - cpu0

        post = threading.Thread(target=post_loop, name="postprocess", daemon=True)
        prep = threading.Thread(target=prepare_loop, name="prepare", daemon=True)
        post.start()
        prep.start()
        # this thread is the inference stage; the stage threads above have started, so `apply` pins them too, and
        # every pinned thread gets its cores back when the loop ends
        pinned = self.cores.apply() if self.cores is not None else {}
        cpu0 = time.thread_time()
        try:
            while not halt.is_set():
                try:
                    item = to_infer.get(timeout=0.5)
                except queue.Empty:
                    if not prep.is_alive() and to_infer.empty():
                        break
                    continue
                if item is _END:
                    break
                if not put(to_post, self._invoke(item, pool, ring), post.is_alive):
                    break
        finally:
            self.stats.thread_cpu_s["infer"] = time.thread_time() - cpu0
            halt.set()
            prep.join()
            # the post stage finishes every frame already inferred: their alerts must be committed
            put(to_post, _END, post.is_alive)
            post.join()
            with self._flow:  # frames a stopped loop will never finish: nobody waits for them
                self._in_flight = 0
                self._flow.notify_all()
            CorePlan.restore(pinned)
        if failure:
            raise failure[0]
