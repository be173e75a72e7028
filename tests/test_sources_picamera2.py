"""The picamera2 adapter, tested against a STAND-IN for picamera2: the real library needs a Raspberry Pi camera
(libcamera) and cannot run on this machine.

The stand-in follows picamera2's documented API and data layout (the Picamera2 manual and picamera2/request.py):
`Picamera2.global_camera_info()`, `Picamera2(camera_num)`, `create_video_configuration(main=..., lores=...,
controls=...)`, `configure`, `start`, `capture_request(wait=seconds)` (TimeoutError when no frame comes),
`request.make_array(name)` and `request.release()`, `stop`, `close`. `make_array("lores")` on a YUV420 stream
gives a (height * 3/2, stride) uint8 I420 array with the stride padding left in; `make_array("main")` on an
"RGB888" stream gives (h, w, 3) bytes in [B, G, R] order. It is injected into sys.modules as `picamera2`.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from edge.capture import CaptureThread
from edge.config import CameraConfig
from edge.sources import PICAMERA2_BUFFERS, SNAPSHOT_HELD, Picamera2Source, SourceError, open_source
from tests.test_capture import States

LW, LH = 300, 224  # lores: a width whose stride (64-byte aligned: 320) has padding, like a real Pi
MW, MH = 1280, 954  # main: 1280 wide at the lores aspect, even


def scene(w: int, h: int, t: int) -> np.ndarray:
    """An RGB test picture at time t: smooth gradients plus a red, a green and a blue patch that move with t."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 128)], axis=-1).astype(np.uint8)
    s = w // 10
    ox = (t * s // 4) % (w - 3 * s)
    img[h // 4:h // 4 + s, ox:ox + s] = (230, 20, 20)
    img[h // 2:h // 2 + s, ox + s:ox + 2 * s] = (20, 230, 20)
    img[3 * h // 4 - s:3 * h // 4, ox + 2 * s:ox + 3 * s] = (20, 20, 230)
    return img


def align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


class StandInRequest:
    def __init__(self, cam: StandInPicamera2, t: int):
        self.cam, self.t, self.released = cam, t, False

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released, "make_array after release"
        stream = self.cam.camera_config[name]
        w, h = stream["size"]
        rgb = scene(w, h, self.t)
        if stream["format"] == "YUV420":
            stride = stream["stride"]
            padded = np.pad(rgb, ((0, 0), (0, stride - w), (0, 0)), mode="edge")
            return cv2.cvtColor(padded, cv2.COLOR_RGB2YUV_I420)  # (h * 3/2, stride): Y, then U and V at stride/2
        if stream["format"] == "RGB888":
            return np.ascontiguousarray(rgb[:, :, ::-1])  # picamera2's RGB888 is [B, G, R] in memory
        raise RuntimeError("Format " + stream["format"] + " not supported")

    def release(self) -> None:
        if self.released:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        self.released = True
        self.cam.outstanding -= 1


class StandInPicamera2:
    cameras: list[dict[str, Any]] = [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0/imx708"}]
    instances: list[StandInPicamera2] = []
    fail_after: int | None = None  # capture_request raises after this many frames (per instance 0 only)
    hang: bool = False  # capture_request times out

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return list(StandInPicamera2.cameras)

    def __init__(self, camera_num: int = 0):
        if camera_num >= len(self.cameras):
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] = {}
        self.started = False
        self.closed = False
        self.frames = 0
        self.outstanding = 0
        self.calls: list[str] = []
        StandInPicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any] | None = None, lores: dict[str, Any] | None = None,
                                   controls: dict[str, Any] | None = None, buffer_count: int = 6,
                                   **kw: Any) -> dict[str, Any]:
        return {"use_case": "video", "main": dict(main or {"size": (1280, 720), "format": "XBGR8888"}),
                "lores": dict(lores) if lores else None, "controls": dict(controls or {}),
                "buffer_count": buffer_count}

    def configure(self, config: dict[str, Any]) -> None:
        self.calls.append("configure")
        for name in ("main", "lores"):
            s = config.get(name)
            if s is None:
                continue
            w, h = s["size"]
            if name == "lores" and (w > config["main"]["size"][0] or h > config["main"]["size"][1]):
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            bpp = 1 if s["format"] == "YUV420" else 3
            s["stride"] = align(w * bpp)
        self.camera_config = config

    def start(self) -> None:
        self.calls.append("start")
        self.started = True

    def capture_request(self, wait: Any = None, flush: Any = None) -> StandInRequest:
        assert self.started, "capture_request before start"
        if self.outstanding >= self.camera_config["buffer_count"]:
            raise RuntimeError("no buffers left: requests are not being released")
        if StandInPicamera2.hang:
            if isinstance(wait, (int, float)) and not isinstance(wait, bool):
                time.sleep(min(wait, 0.05))
                raise TimeoutError
            raise AssertionError("the adapter must pass a timeout")
        if StandInPicamera2.fail_after is not None and self is StandInPicamera2.instances[0] \
                and self.frames >= StandInPicamera2.fail_after:
            raise RuntimeError("Camera frontend has timed out!")
        self.frames += 1
        self.outstanding += 1
        return StandInRequest(self, self.frames - 1)

    def stop(self) -> None:
        self.calls.append("stop")
        self.started = False

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True


@pytest.fixture
def picam(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StandInPicamera2]]:
    mod = types.ModuleType("picamera2")
    mod.Picamera2 = StandInPicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    monkeypatch.setattr(StandInPicamera2, "instances", [])
    monkeypatch.setattr(StandInPicamera2, "fail_after", None)
    monkeypatch.setattr(StandInPicamera2, "hang", False)
    yield StandInPicamera2


def cfg(**kw: Any) -> CameraConfig:
    return CameraConfig(source="picamera2", width=LW, height=LH, fps=20.0, **kw)


def test_lores_yuv_becomes_rgb_and_main_is_kept_for_snapshots(picam: type[StandInPicamera2]) -> None:
    src = open_source(cfg())
    assert isinstance(src, Picamera2Source) and not src.finite
    src.open()
    cam = picam.instances[0]
    conf = cam.camera_config
    assert conf["lores"]["format"] == "YUV420" and conf["lores"]["size"] == (LW, LH)
    assert conf["main"]["format"] == "RGB888" and conf["main"]["size"] == (MW, MH)
    assert conf["controls"]["FrameRate"] == 20.0
    assert cam.calls == ["configure", "start"]
    try:
        assert src.snapshot_frame() is None  # nothing read yet
        frames = [src.read() for _ in range(5)]
        for t, img in enumerate(frames):
            assert img is not None and img.shape == (LH, LW, 3) and img.dtype == np.uint8
            assert img.flags["C_CONTIGUOUS"]
            want = scene(LW, LH, t)
            # YUV 4:2:0 loses some chroma at edges; the picture must still match closely, in RGB order.
            assert np.abs(img.astype(int) - want).mean() < 4
            s = LW // 10
            ox = (t * s // 4) % (LW - 3 * s)
            r, g, b = img[LH // 4 + 5:LH // 4 + s - 5, ox + 5:ox + s - 5].reshape(-1, 3).mean(axis=0)
            assert r > 180 and g < 70 and b < 70
        snap = src.snapshot_frame()
        assert snap is not None and snap.index == 4
        assert snap.image.shape == (MH, MW, 3) and np.array_equal(snap.image, scene(MW, MH, 4))
        assert cam.outstanding == SNAPSHOT_HELD  # every request released except those held for snapshots
        # the pipeline decides on a frame after the camera has moved on: the last SNAPSHOT_HELD reads are there,
        # each its own picture, and older ones are gone (never another frame's picture under their index)
        for t in range(5 - SNAPSHOT_HELD, 5):
            held = src.snapshot_frame(t)
            assert held is not None and held.index == t and np.array_equal(held.image, scene(MW, MH, t))
        assert src.snapshot_frame(4 - SNAPSHOT_HELD) is None
        assert conf["buffer_count"] == PICAMERA2_BUFFERS + SNAPSHOT_HELD
        for _ in range(40):  # the stand-in refuses a request when every buffer is held
            assert src.read() is not None
        assert cam.outstanding == SNAPSHOT_HELD
    finally:
        src.close()
    assert cam.outstanding == 0 and cam.calls[-2:] == ["stop", "close"]


def test_main_stream_keeps_the_lores_aspect(picam: type[StandInPicamera2]) -> None:
    assert Picamera2Source(CameraConfig(width=640, height=480)).main_size == (1280, 960)
    assert Picamera2Source(CameraConfig(width=640, height=360)).main_size == (1280, 720)
    assert Picamera2Source(CameraConfig(width=1920, height=1080)).main_size == (1920, 1080)


def test_small_main_size_grows_to_the_lores_size(picam: type[StandInPicamera2]) -> None:
    src = Picamera2Source(cfg(), main_size=(160, 120))
    src.open()
    try:
        assert picam.instances[0].camera_config["main"]["size"] == (LW, LH)
        img = src.read()
        assert img is not None and img.shape == (LH, LW, 3)
    finally:
        src.close()


def test_not_installed_no_camera_and_timeout_are_clear_errors(
        picam: type[StandInPicamera2], monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "picamera2", None)  # what `import picamera2` sees off a Pi
        with pytest.raises(SourceError) as e:
            open_source(cfg()).open()
        assert str(e.value).startswith("picamera2 is not installed (apt install python3-picamera2")
    with monkeypatch.context() as m:
        m.setattr(StandInPicamera2, "cameras", [])
        with pytest.raises(SourceError, match=r"^picamera2: no camera found"):
            open_source(cfg()).open()
    with pytest.raises(SourceError, match=r"^picamera2:1: no camera found"):
        open_source(CameraConfig(source="picamera2:1")).open()
    src = Picamera2Source(cfg(), timeout_s=0.2)
    src.open()
    try:
        picam.hang = True
        with pytest.raises(SourceError) as e:
            src.read()
        assert str(e.value) == "picamera2: no frame within 0.2 s"
    finally:
        src.close()


def test_capture_thread_reopens_a_failing_pi_camera(picam: type[StandInPicamera2]) -> None:
    picam.fail_after = 6  # the first camera instance fails after six frames, like a loose ribbon cable
    c = cfg(reopen_min_s=0.02, reopen_max_s=0.1)
    states = States()
    ct = CaptureThread(lambda: open_source(c), c, states, lossless=True)
    ct.start()
    try:
        frames = [ct.latest(timeout=10) for _ in range(12)]
        snap = ct.snapshot_frame()
        last = frames[-1]
        own = ct.snapshot_frame(last.index) if last is not None else None
        before_reopen = ct.snapshot_frame(2)  # read from the first camera, closed since
        states.wait_for("ok")
    finally:
        ct.stop()
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(12))
    assert states.calls[0] == ("degraded", "camera: picamera2: capture failed: Camera frontend has timed out!")
    assert states.calls[-1] == ("ok", "")
    assert len(picam.instances) >= 2 and picam.instances[0].closed
    assert all(cam.outstanding == 0 for cam in picam.instances)
    assert snap is not None and snap.image.shape == (MH, MW, 3) and snap.index >= 11
    assert own is not None and last is not None and own.index == last.index
    assert before_reopen is None


def test_camera_rotate_turns_the_lores_frames_and_the_snapshots(picam: type[StandInPicamera2]) -> None:
    """A Pi camera mounted on its side (camera.rotate = 90): inference frames and snapshots both stand upright."""
    src = open_source(cfg(rotate=90))
    src.open()
    try:
        img = src.read()
        assert img is not None and img.shape == (LW, LH, 3)
        want = cv2.rotate(scene(LW, LH, 0), cv2.ROTATE_90_CLOCKWISE)
        assert np.abs(img.astype(int) - want).mean() < 4
        snap = src.snapshot_frame()
        assert snap is not None and np.array_equal(snap.image, cv2.rotate(scene(MW, MH, 0), cv2.ROTATE_90_CLOCKWISE))
    finally:
        src.close()
