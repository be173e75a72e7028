"""The capture thread on real files: newest-only with drop counting, lossless replay, and a video that ends abruptly.

No test here asserts on speed: drops are forced by a consumer that waits for the source to end, and the
assertions are on the frame indices and the drop bookkeeping, which must add up whatever the timing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.capture import CaptureThread
from edge.config import CameraConfig
from edge.sources import FrameSource, SourceError, open_source
from edge.types import Frame
from tests.test_sources import H, W, decode_all, frame_bgr, frame_id, write_video


class States:
    """Records on_state calls from the capture thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, state: str, reason: str) -> None:
        with self._lock:
            self.calls.append((state, reason))

    def wait_for(self, state: str, timeout: float = 20.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for c in self.calls:
                    if c[0] == state:
                        return c
            time.sleep(0.02)
        raise AssertionError(f"no {state!r} state within {timeout} s; got {self.calls}")


def cam(source: str | Path, **kw: object) -> CameraConfig:
    return CameraConfig(source=str(source), width=W, height=H, **kw)  # type: ignore[arg-type]


def drain(ct: CaptureThread, timeout: float = 20.0) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = ct.latest(timeout=1.0)
        if f is None:
            if ct.ended:
                return out
            continue
        out.append(f)
    raise AssertionError(f"source did not end within {timeout} s ({len(out)} frames)")


def test_lossless_replay_delivers_every_frame_once_in_order(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 40)
    cfg = cam(video)
    states = States()
    ct = CaptureThread(lambda: open_source(cfg), cfg, states)
    ct.start()
    try:
        assert ct.lossless  # a finite source replayed as fast as possible
        frames = []
        while (f := ct.latest(timeout=10)) is not None:
            frames.append(f)
            time.sleep(0.005)  # a consumer slower than the decoder must still get every frame
        assert ct.ended and ct.error is None
    finally:
        ct.stop()
    ref = decode_all(video)
    assert [f.index for f in frames] == list(range(40))
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, ref, strict=True))
    assert all(f.dropped_before == 0 for f in frames) and ct.dropped == 0
    assert ct.frames == 40 and states.calls == []
    assert all(b.t_mono >= a.t_mono for a, b in zip(frames, frames[1:], strict=False))


def test_lossless_folder_replay(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame_bgr(i))
    cfg = cam(folder)
    ct = CaptureThread(lambda: open_source(cfg), cfg, States())
    ct.start()
    try:
        frames = drain(ct)
    finally:
        ct.stop()
    assert [f.index for f in frames] == list(range(12))
    assert [frame_id(f.image) for f in frames] == list(range(12))


def test_live_mode_keeps_the_newest_frame_and_counts_drops(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 30)
    cfg = cam(video)
    ct = CaptureThread(lambda: open_source(cfg), cfg, States(), lossless=False)
    ct.start()
    try:
        # which frame comes first depends on how soon this thread wakes (the reader decodes a frame in about a
        # millisecond), so it is checked for what it says, not for being frame 0
        first = ct.latest(timeout=10)
        assert first is not None and frame_id(first.image) == first.index
        assert first.dropped_before == first.index  # every earlier frame was overwritten, none taken
        deadline = time.monotonic() + 20
        while not ct._ended and time.monotonic() < deadline:  # the reader runs to the end meanwhile
            time.sleep(0.01)
        last = ct.latest(timeout=1) if first.index < 29 else None
        assert ct.latest(timeout=0.2) is None and ct.ended
    finally:
        ct.stop()
    if first.index == 29:  # this thread slept through the whole video: one frame taken, the rest dropped
        assert ct.dropped == 29 and ct.frames == 30
        return
    assert last is not None
    assert last.index == 29 and frame_id(last.image) == 29  # the newest frame, not an old queued one
    assert last.dropped_before == 28 - first.index  # the frames between the two were overwritten
    assert ct.dropped == 28 and ct.frames == 30


def test_slow_consumer_drops_add_up(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 60)
    cfg = cam(video)
    ct = CaptureThread(lambda: open_source(cfg), cfg, States(), lossless=False)
    ct.start()
    try:
        frames = []
        while (f := ct.latest(timeout=10)) is not None:
            frames.append(f)
            time.sleep(0.03)  # slower than decoding a 320x240 frame
        assert ct.ended
    finally:
        ct.stop()
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx)) and idx[-1] == 59  # increasing, and the newest frame is delivered
    assert all(frame_id(f.image) == f.index for f in frames)
    prev = -1
    for f in frames:  # every frame read was either delivered or counted as dropped before the next delivery
        assert f.dropped_before == f.index - prev - 1
        prev = f.index
    assert ct.dropped == 60 - len(frames) and ct.dropped > 0


def test_a_video_that_stops_abruptly_is_reopened_and_resumes_at_the_next_frame(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 60)
    ref_ids = list(range(60))
    original = video.read_bytes()
    cfg = cam(video, reopen_min_s=0.05, reopen_max_s=0.3, reopen_attempts=100)
    states = States()
    ct = CaptureThread(lambda: open_source(cfg), cfg, states)
    ct.start()
    frames: list[Frame] = []
    try:
        for _ in range(8):
            f = ct.latest(timeout=10)
            assert f is not None
            frames.append(f)
        with open(video, "r+b") as fh:  # the file is cut short under the open reader
            fh.truncate(len(original) * 3 // 10)
        while (f := ct.latest(timeout=0.2)) is not None:
            frames.append(f)  # the frames still readable before the cut
        state, reason = states.wait_for("degraded")
        assert reason.startswith("camera: video ") and str(video) in reason
        video.write_bytes(original)  # the file is back (a remount, a sync finishing)
        frames += drain(ct)
        assert ct.error is None
    finally:
        ct.stop()
    assert [f.index for f in frames] == ref_ids  # contiguous: resumed at the next frame, nothing repeated
    ids = [frame_id(f.image) for f in frames]
    # The frame read across the cut may be partly concealed by the decoder; every other frame is exact.
    assert sum(a != b for a, b in zip(ids, ref_ids, strict=True)) <= 1
    assert states.calls[-1] == ("ok", "")
    assert all(f.dropped_before == 0 for f in frames)


def test_a_finite_source_that_cannot_come_back_ends_with_the_reason(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 30)
    original_len = video.stat().st_size
    cfg = cam(video, reopen_min_s=0.02, reopen_max_s=0.05, reopen_attempts=3)
    states = States()
    ct = CaptureThread(lambda: open_source(cfg), cfg, states)
    ct.start()
    try:
        assert ct.latest(timeout=10) is not None
        with open(video, "r+b") as fh:
            fh.truncate(original_len // 4)
        rest = drain(ct)
    finally:
        ct.stop()
    assert len(rest) < 29
    assert ct.ended and ct.error is not None and "gave up after 3 attempts" in ct.error
    assert states.calls and states.calls[-1][0] == "degraded"


def test_missing_file_fails_at_start_with_one_line() -> None:
    cfg = cam("/nonexistent/aisle7.mp4")
    ct = CaptureThread(lambda: open_source(cfg), cfg, States())
    with pytest.raises(SourceError, match=r"^video /nonexistent/aisle7\.mp4: no such file or folder$"):
        ct.start()


def test_missing_camera_is_degraded_and_retried_until_stopped() -> None:
    cfg = cam("/dev/video99", reopen_min_s=0.02, reopen_max_s=0.05)
    states = States()
    opens = []

    def factory() -> object:
        opens.append(1)
        return open_source(cfg)

    ct = CaptureThread(factory, cfg, states)  # type: ignore[arg-type]
    ct.start()  # a live camera may be plugged in later: no exception, degraded status
    try:
        assert states.wait_for("degraded") == ("degraded", "camera: /dev/video99: no such device")
        deadline = time.monotonic() + 10
        while len(opens) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(opens) >= 4  # still retrying, with backoff
        assert ct.latest(timeout=0.1) is None and not ct.ended
    finally:
        t = time.monotonic()
        ct.stop()
        assert time.monotonic() - t < 5  # stop() interrupts the backoff wait
    assert states.calls == [("degraded", "camera: /dev/video99: no such device")]  # reported once, not per retry


def test_looped_file_runs_past_its_end_with_increasing_indices(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 8)
    cfg = cam(video, loop=True)
    ct = CaptureThread(lambda: open_source(cfg), cfg, States(), lossless=True)
    ct.start()
    try:
        frames = [ct.latest(timeout=10) for _ in range(20)]
    finally:
        ct.stop()
    assert not ct.finite
    assert [f.index for f in frames if f] == list(range(20))
    assert [frame_id(f.image) for f in frames if f] == [i % 8 for i in range(20)]


def test_a_recorded_cart_pass_replays_identically_whatever_the_consumer_speed(tmp_path: Path) -> None:
    from convert.cartpass import iter_cart_pass, make_aisle, render_cart_pass

    aisle = make_aisle(np.random.default_rng(3), length_px=1600, n_gaps=2)
    cp = render_cart_pass(aisle, tmp_path / "pass.mp4", speed_px_per_frame=24.0)
    cfg = CameraConfig(source=str(cp.path), width=cp.frame_size[0], height=cp.frame_size[1])
    runs = []
    for delay in (0.0, 0.004):  # a fast consumer, then a slow one: lossless replay must not care
        ct = CaptureThread(lambda: open_source(cfg), cfg, States())
        ct.start()
        try:
            frames = []
            while (f := ct.latest(timeout=10)) is not None:
                frames.append(f)
                time.sleep(delay)
        finally:
            ct.stop()
        assert ct.ended and ct.dropped == 0
        runs.append(frames)
    a, b = runs
    assert len(a) == len(b) == cp.frames
    assert [f.index for f in a] == [f.index for f in b] == list(range(cp.frames))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    # The decoded frames are the rendered ones (in RGB order), up to mp4v's compression loss.
    truth = list(iter_cart_pass(aisle, speed_px_per_frame=24.0))
    for f, t in zip(a, truth, strict=True):
        d = float(np.abs(f.image.astype(np.int16) - t).mean())
        swapped = float(np.abs(f.image[:, :, ::-1].astype(np.int16) - t).mean())
        assert d < 9.0 and swapped > d + 5.0, (f.index, d, swapped)


class Counting:
    """A real source, with its open/close calls counted."""

    def __init__(self, inner: FrameSource):
        self.inner = inner
        self.name, self.finite, self.fps = inner.name, inner.finite, inner.fps
        self.opens = self.closes = 0

    def open(self) -> None:
        self.opens += 1
        self.inner.open()

    def read(self) -> np.ndarray | None:
        return self.inner.read()

    def close(self) -> None:
        self.closes += 1
        self.inner.close()


def test_every_opened_source_is_closed(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 5)
    cfg = cam(video)
    made: list[Counting] = []

    def factory() -> FrameSource:
        made.append(Counting(open_source(cfg)))
        return made[-1]

    ct = CaptureThread(factory, cfg, States())
    ct.start()
    try:
        assert len(drain(ct)) == 5
    finally:
        ct.stop()
    assert len(made) == 1 and made[0].opens == 1 and made[0].closes >= 1

    # Stopped mid-way (a live consumer that quits): the source is closed too.
    made.clear()
    ct = CaptureThread(factory, cfg, States())
    ct.start()
    assert ct.latest(timeout=10) is not None
    ct.stop()
    assert made[0].closes >= 1


def test_a_realtime_replay_behaves_like_a_live_camera(tmp_path: Path) -> None:
    video = write_video(tmp_path / "pass.mp4", 12, fps=60.0)
    cfg = cam(video, realtime=True)
    ct = CaptureThread(lambda: open_source(cfg), cfg, States())
    ct.start()
    try:
        assert not ct.lossless  # paced at the file's rate, newest frame only, drops counted
        frames = drain(ct)
    finally:
        ct.stop()
    assert frames[-1].index == 11 and frame_id(frames[-1].image) == 11
    assert sum(f.dropped_before for f in frames) + len(frames) == 12 == ct.frames


class LiveCamera:
    """A real video source posing as a live camera (picamera2 and V4L2 cannot run here) whose first instance fails
    after `fail_after` frames, as a camera unplugged mid-pass."""

    def __init__(self, inner: FrameSource, fail_after: int | None):
        self.inner, self.fail_after, self.reads = inner, fail_after, 0
        self.name, self.finite, self.fps = "live test camera", False, inner.fps

    def open(self) -> None:
        self.inner.open()

    def read(self) -> np.ndarray | None:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise SourceError("live test camera: unplugged")
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("slow_consumer", [False, True])
def test_the_first_frame_after_a_live_camera_came_back_says_the_view_was_interrupted(
    tmp_path: Path, slow_consumer: bool
) -> None:
    """Whatever passed the camera while it was away was never seen: the tracker must not take the next frame for
    the one after the last (tests/test_tracker_cartpass.py). With a slow consumer the marked frame is overwritten
    by newer ones before it is taken; the mark moves on with them."""
    video = write_video(tmp_path / "pass.mp4", 40)
    cfg = cam(video, reopen_min_s=0.05, reopen_max_s=0.1, loop=True)  # looped: it never ends by itself
    made: list[LiveCamera] = []

    def factory() -> FrameSource:
        made.append(LiveCamera(open_source(cfg), fail_after=6 if not made else None))
        return made[-1]

    states = States()
    ct = CaptureThread(factory, cfg, states, lossless=not slow_consumer)
    ct.start()
    frames: list[Frame] = []
    try:
        while len(made) < 2 or len(frames) < 12:
            f = ct.latest(timeout=10)
            assert f is not None
            frames.append(f)
            if slow_consumer and len(made) == 2:
                time.sleep(0.2)  # the reopened camera's next frames overwrite each other meanwhile
    finally:
        ct.stop()
    assert states.wait_for("degraded")[1] == "camera: live test camera: unplugged"
    marked = [f.index for f in frames if f.interrupted]
    assert marked == [next(f.index for f in frames if f.index >= 6)]
    if not slow_consumer:
        assert [f.index for f in frames][:7] == list(range(7)) and marked == [6]
