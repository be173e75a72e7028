"""Camera sources behind one small `FrameSource` protocol: picamera2, V4L2 devices, RTSP/HTTP streams, files, folders.

A source is opened, read one RGB uint8 frame at a time, and closed. `read()` returns None only when a finite source
(a video file or an image folder, not looped) has ended; every failure is a `SourceError` with one clear line.
Sources never retry on their own: `edge.capture.CaptureThread` reopens them with backoff.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import cv2
import numpy as np

from edge.config import CameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
PICAMERA2_BUFFERS = 4  # buffers the camera streams into, besides those held for snapshots
SNAPSHOT_HELD = 3  # picamera2 requests held so an alert's snapshot is its own frame at full resolution
PICAMERA2_MAIN_WIDTH = 1280  # main stream width, kept for snapshots; the lores stream feeds inference
DEFAULT_TIMEOUT_S = 5.0  # a live source with no frame for this long has failed (read timeout / stall)


def quiet_video_logs() -> None:
    """Keep FFmpeg's and OpenCV's own lines out of stderr; call once, before the first capture (the CLI does).

    Each failed (re)connect of a network camera made FFmpeg and OpenCV write their own lines to stderr ("[tcp @ 0x..]
    Connection to tcp://.. failed: Connection refused", "[ WARN:0@23.8] global cap.cpp:212 open VIDEOIO(FFMPEG): ..")
    between the service's own clear line (a `SourceError`). FFmpeg reads its level at the first capture; OpenCV read
    its own when first imported, so it is set by call. OpenCV's errors still show, and an operator's own values win
    (OPENCV_FFMPEG_LOGLEVEL=16: FFmpeg's errors for a camera that will not connect).
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv_logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if cv_logging is not None and "OPENCV_LOG_LEVEL" not in os.environ:
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)


class SourceError(Exception):
    """A source that cannot be opened or has failed, as one line: `camera /dev/video3: no such device`."""


@runtime_checkable
class FrameSource(Protocol):
    """Where frames come from. `read()` gives an RGB uint8 HxWx3 array, or None once a finite source has ended."""

    name: str  # for messages and logs; credentials in URLs are masked
    finite: bool  # True for a file or folder that is not looped
    fps: float | None  # nominal rate when known (a file's own rate, a camera's requested rate)

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


@runtime_checkable
class Seekable(Protocol):
    """A finite source that can resume at a frame index after it was reopened."""

    def seek(self, index: int) -> None: ...


@dataclass(frozen=True)
class MainFrame:
    """A full-resolution frame for snapshots. `index` is the source-local count (0-based) of the read it belongs to."""

    index: int
    image: np.ndarray  # RGB uint8


@runtime_checkable
class SnapshotSource(Protocol):
    """A source with a second, larger stream for snapshots (picamera2's main stream)."""

    def snapshot_frame(self, index: int | None = None) -> MainFrame | None:
        """The full-resolution frame of source-local read `index` (the latest read when None), or None when it is
        not held (any more)."""
        ...


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, for messages and logs (edge.config.redact_url)."""
    from edge.broker_url import redact_url

    return redact_url(url)


_TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def upright(image: np.ndarray, degrees: int) -> np.ndarray:
    """The frame turned `degrees` clockwise (camera.rotate), so shelves stand upright however the camera is mounted."""
    return cv2.rotate(image, _TURNS[degrees]) if degrees else image


ASPECT_TOLERANCE = 0.02  # a source whose shape differs from camera.width:height by more is said to be stretched


class FrameFit:
    """Resizes a source's frames to camera.width x camera.height, and says once (a warning naming the source) when
    their shape is another: the frames, the preview and the snapshots are then stretched, and the config should
    give the source's own shape."""

    def __init__(self, size: tuple[int, int], label: str):
        self.size = size
        self.label = label
        self.warned = False

    def __call__(self, image: np.ndarray) -> np.ndarray:
        w, h = self.size
        src_h, src_w = image.shape[:2]
        if src_w == w and src_h == h:
            return image
        if not self.warned and abs((src_w / src_h) / (w / h) - 1.0) > ASPECT_TOLERANCE:
            self.warned = True
            fitted = max(2, round(w * src_h / src_w / 2) * 2)
            log.warning("%s delivers %dx%d frames (%.2f:1), camera.width x camera.height is %dx%d (%.2f:1): the "
                        "frames, the preview and the snapshots are stretched to fit; set width = %d and height = %d "
                        "under [camera] for this source's shape", self.label, src_w, src_h, src_w / src_h, w, h,
                        w / h, w, fitted)
        shrink = src_w > w and src_h > h
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class Pacer:
    """Paces reads at `fps` on the monotonic clock; a reader that falls behind restarts the schedule, not a burst."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def reset(self) -> None:
        self._next = None

    def wait(self) -> None:
        """Sleep until the next frame is due."""
        now = self._clock()
        if self._next is None or now - self._next > self.period:
            self._next = now  # first frame, or more than a frame late: no catch-up burst
        elif self._next > now:
            self._sleep(self._next - now)
        self._next += self.period


class OpenCVSource:
    """A V4L2 device, an RTSP/HTTP(S) MJPEG stream or a video file, read through OpenCV and converted BGR → RGB.

    `kind` is "device", "stream" or "file". Devices and streams are live: a read that fails or times out
    raises SourceError. A file ends with None, unless it is looped; a file that stops before its frame count
    raises SourceError, so the capture thread can reopen it and `seek()` to where it stopped.
    """

    def __init__(self, target: str | int, kind: str, cfg: CameraConfig, timeout_s: float = DEFAULT_TIMEOUT_S):
        if kind not in ("device", "stream", "file"):
            raise ValueError(f"kind must be device, stream or file, not {kind!r}")
        self.target = target
        self.kind = kind
        self.size = (cfg.width, cfg.height)
        self.rotate = cfg.rotate
        self.realtime = cfg.realtime and kind == "file"
        self.loop = cfg.loop and kind == "file"
        self.finite = kind == "file" and not cfg.loop
        self.timeout_s = timeout_s
        self._cfg_fps = cfg.fps
        self.fps: float | None = cfg.fps if kind != "stream" else None
        if kind == "device":
            self.name = f"/dev/video{target}" if isinstance(target, int) else str(target)
        elif kind == "stream":
            self.name = mask_url(str(target))
        else:
            self.name = str(target)
        self._fit = FrameFit(self.size, self._label())
        self._cap: Any = None
        self._index = 0  # frames read since open (or since the seek target)
        self._frame_count = 0
        self._pacer: Pacer | None = None

    def _label(self) -> str:
        return {"device": "camera", "stream": "stream", "file": "video"}[self.kind] + f" {self.name}"

    def open(self) -> None:
        self.close()
        if self.kind == "device":
            self._cap = self._open_device()
        elif self.kind == "stream":
            self._cap = self._open_stream()
        else:
            self._cap = self._open_file()
        self._index = 0
        self._pacer = Pacer(self.fps) if self.realtime and self.fps else None

    def _open_device(self) -> Any:
        path = Path(self.name)
        if os.name == "posix" and self.name.startswith("/dev/"):
            if not path.exists():
                raise SourceError(f"camera {self.name}: no such device")
            if not os.access(path, os.R_OK | os.W_OK):
                raise SourceError(f"camera {self.name}: permission denied (add the user to the 'video' group)")
        api = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY) if os.name == "posix" else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.target if isinstance(self.target, int) else self.name, api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {self.name}: cannot open (busy, or not a video capture device)")
        w, h = self.size
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        cap.set(cv2.CAP_PROP_FPS, self._cfg_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        got = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(got) if got and got > 0 else self._cfg_fps
        return cap

    def _open_stream(self) -> Any:
        ms = int(self.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"stream {self.name}: cannot connect (unreachable, refused or not a video stream)")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # only some backends honour it; the capture thread keeps the newest
        got = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(got) if got and 0 < got < 1000 else None
        return cap

    def _open_file(self) -> Any:
        path = Path(str(self.target))
        if not path.exists():
            raise SourceError(f"video {self.name}: no such file or folder")
        if not path.is_file():
            raise SourceError(f"video {self.name}: not a file")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"video {self.name}: cannot decode (unsupported format, truncated or corrupt)")
        got = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(got) if got and 0 < got < 1000 else self._cfg_fps
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._frame_count = int(count) if count and 0 < count < 1e9 else 0
        return cap

    def seek(self, index: int) -> None:
        """Resume a reopened file at frame `index` (CAP_PROP_POS_FRAMES, checked; else decode forward)."""
        if self._cap is None or self.kind != "file":
            raise SourceError(f"{self._label()}: cannot seek a source that is not an open file")
        if index <= 0:
            return
        if self._frame_count and index >= self._frame_count:
            raise SourceError(f"{self._label()}: cannot resume at frame {index}, the file has {self._frame_count}")
        ok = self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        if not ok or int(round(self._cap.get(cv2.CAP_PROP_POS_FRAMES))) != index:
            self._cap.release()
            self._cap = self._open_file()
            for i in range(index):
                if not self._cap.grab():
                    raise SourceError(f"{self._label()}: cannot resume at frame {index}, it stops at {i}")
        self._index = index

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError(f"{self._label()}: not open")
        if self._pacer is not None:
            self._pacer.wait()
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.kind == "file":
                if self._frame_count and self._index < self._frame_count - 1:
                    raise SourceError(f"{self._label()}: read failed at frame {self._index} of {self._frame_count}")
                if not self.loop:
                    return None
                if self._index == 0:
                    raise SourceError(f"{self._label()}: no frames to loop")
                if not self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    self._cap.release()
                    self._cap = self._open_file()
                self._index = 0
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    raise SourceError(f"{self._label()}: cannot read the first frame after rewinding")
            elif self.kind == "stream":
                raise SourceError(f"{self._label()}: no frame within {self.timeout_s:g} s (connection lost or stalled)")
            else:
                raise SourceError(f"{self._label()}: read failed (unplugged or stalled)")
        self._index += 1
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        return upright(cv2.cvtColor(self._fit(bgr), cv2.COLOR_BGR2RGB), self.rotate)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """The .jpg/.png images of a folder in name order, as RGB frames; finite unless looped.

    An image that cannot be decoded is skipped with a warning, so frame indices count decoded images.
    """

    def __init__(self, folder: Path | str, cfg: CameraConfig):
        self.folder = Path(folder)
        self.name = str(folder)
        self.size = (cfg.width, cfg.height)
        self._fit = FrameFit(self.size, f"folder {self.name}")
        self.rotate = cfg.rotate
        self.loop = cfg.loop
        self.finite = not cfg.loop
        self.fps: float | None = cfg.fps
        self.realtime = cfg.realtime
        self._files: list[Path] = []
        self._pos = 0
        self._decoded = 0  # images decoded so far, the frame index of the next one
        self._file_of: dict[int, int] = {}  # frame index -> file position, kept across reopens for `seek`
        self._pacer: Pacer | None = None
        self._open = False

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"folder {self.name}: no such folder")
        try:
            files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as e:
            raise SourceError(f"folder {self.name}: cannot list: {e.strerror}") from None
        if not files:
            raise SourceError(f"folder {self.name}: no .jpg or .png images")
        if files != self._files:
            self._file_of = {}
        self._files = files
        self._pos = 0
        self._decoded = 0
        self._pacer = Pacer(self.fps) if self.realtime and self.fps else None
        self._open = True

    def seek(self, index: int) -> None:
        """Resume at frame `index`: the `index`-th decoded image, so images that failed to decode before the reopen
        are skipped as they were (by file position when that frame was read before, else the index-th file)."""
        if not self._open:
            raise SourceError(f"folder {self.name}: not open")
        index = max(0, index)
        if index in self._file_of:
            pos = self._file_of[index]
        elif index - 1 in self._file_of:  # the frame after the last one read: the file after that one's
            pos = self._file_of[index - 1] + 1
        else:
            pos = index
        self._pos = min(pos, len(self._files))
        self._decoded = index

    def read(self) -> np.ndarray | None:
        if not self._open:
            raise SourceError(f"folder {self.name}: not open")
        if self._pacer is not None:
            self._pacer.wait()
        skipped = 0
        while True:
            if self._pos >= len(self._files):
                if not self.loop:
                    return None
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                if not self.loop:  # only a finite folder is resumed by `seek` (and a looped one would grow this)
                    self._file_of[self._decoded] = self._pos - 1
                self._decoded += 1
                return upright(cv2.cvtColor(self._fit(bgr), cv2.COLOR_BGR2RGB), self.rotate)
            log.warning("folder %s: skipping %s (cannot decode)", self.name, path.name)
            skipped += 1
            if skipped >= len(self._files):
                raise SourceError(f"folder {self.name}: none of the images can be decoded")

    def close(self) -> None:
        self._open = False


class Picamera2Source:
    """A Raspberry Pi camera through picamera2: the lores YUV420 stream feeds inference, the main stream snapshots.

    picamera2 comes from Raspberry Pi OS's apt (python3-picamera2); it is imported in `open()` only. The main
    stream is configured as "RGB888", which picamera2 lays out as [B, G, R] bytes (OpenCV order), so it is
    converted once when a snapshot is asked for. The requests of the last SNAPSHOT_HELD reads are held (buffers of
    the pool, which is made that much larger), so `snapshot_frame(index)` finds the frame an alert was seen in although
    the pipeline decides on it a frame or two after the camera has moved on, and it costs nothing on frames without
    an alert.
    """

    finite = False

    def __init__(self, cfg: CameraConfig, camera_num: int = 0,
                 main_size: tuple[int, int] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = "picamera2" if camera_num == 0 else f"picamera2:{camera_num}"
        self.camera_num = camera_num
        self.fps: float | None = cfg.fps
        self.rotate = cfg.rotate
        self.lores_size = (cfg.width - cfg.width % 2, cfg.height - cfg.height % 2)
        if main_size is None:  # same aspect as lores, so the ISP scales both from the same field of view
            k = max(1.0, PICAMERA2_MAIN_WIDTH / self.lores_size[0])
            main_size = (int(self.lores_size[0] * k) // 2 * 2, int(self.lores_size[1] * k) // 2 * 2)
        self.main_size = (max(main_size[0], self.lores_size[0]), max(main_size[1], self.lores_size[1]))
        self.timeout_s = timeout_s
        self._cam: Any = None
        self._lock = threading.Lock()
        self._held: deque[tuple[int, Any]] = deque()  # (read index, request) of the last reads, for snapshot_frame()
        self._reads = 0

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise SourceError("picamera2 is not installed (apt install python3-picamera2, "
                              "and make the venv with --system-site-packages)") from None
        try:
            info = Picamera2.global_camera_info()
        except Exception as e:  # libcamera not usable here
            raise SourceError(f"{self.name}: cannot list cameras: {e}") from None
        if len(info) <= self.camera_num:
            raise SourceError(f"{self.name}: no camera found (is the ribbon cable seated? "
                              f"{len(info)} camera(s) detected)")
        cam = None
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_video_configuration(
                main={"size": self.main_size, "format": "RGB888"},
                lores={"size": self.lores_size, "format": "YUV420"},
                controls={"FrameRate": float(self.fps or 15.0)},
                buffer_count=PICAMERA2_BUFFERS + SNAPSHOT_HELD,  # the camera's own, and those held for snapshots
            )
            cam.configure(config)
            cam.start()
        except Exception as e:
            if cam is not None:
                try:
                    cam.close()
                except Exception:
                    pass
            raise SourceError(f"{self.name}: cannot start the camera: {e}") from None
        self._cam = cam
        self._reads = 0

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        try:
            # A number for `wait` is a timeout in seconds (picamera2 >= 0.3.17); older versions just block.
            request = self._cam.capture_request(wait=self.timeout_s)
        except (TimeoutError, concurrent.futures.TimeoutError):  # distinct classes before Python 3.11
            raise SourceError(f"{self.name}: no frame within {self.timeout_s:g} s") from None
        except Exception as e:
            raise SourceError(f"{self.name}: capture failed: {e}") from None
        try:
            yuv = request.make_array("lores")  # (h * 3/2, stride) I420, stride >= width
            w, h = self.lores_size
            rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
            if rgb.shape[1] != w:
                rgb = np.ascontiguousarray(rgb[:, :w])
            if rgb.shape[0] != h:
                raise SourceError(f"{self.name}: lores frame is {rgb.shape[1]}x{rgb.shape[0]}, expected {w}x{h}")
        except Exception:
            request.release()
            raise
        with self._lock:
            self._held.append((self._reads, request))
            while len(self._held) > SNAPSHOT_HELD:
                self._held.popleft()[1].release()
        self._reads += 1
        return upright(rgb, self.rotate)

    def snapshot_frame(self, index: int | None = None) -> MainFrame | None:
        """The main-stream (full resolution) RGB image of read `index` (the most recent read when None), or None
        when that read is not held (before the first read, or SNAPSHOT_HELD reads ago)."""
        with self._lock:
            found = [(i, r) for i, r in self._held if index is None or i == index]
            if not found:
                return None
            i, request = found[-1]
            bgr = request.make_array("main")
        return MainFrame(index=i, image=upright(cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB), self.rotate))

    def close(self) -> None:
        with self._lock:
            while self._held:
                try:
                    self._held.popleft()[1].release()
                except Exception:
                    pass
        cam, self._cam = self._cam, None
        if cam is not None:
            for step in (cam.stop, cam.close):
                try:
                    step()
                except Exception as e:  # closing must not raise; the next open reports real trouble
                    log.debug("%s: %s during close: %s", self.name, step.__name__, e)


_DEVICE_RE = re.compile(r"^/dev/(video\d+|v4l/.+)$")


def open_source(cfg: CameraConfig, timeout_s: float = DEFAULT_TIMEOUT_S) -> FrameSource:
    """Build the (unopened) source that `cfg.source` names; call `open()` on it.

    `picamera2` or `picamera2:N`; a device index such as `0`; `/dev/videoN` or `/dev/v4l/by-id/...`;
    `rtsp://`, `http(s)://` (MJPEG, a phone on the cart) and other FFmpeg stream URLs; `file://` paths;
    a folder of .jpg/.png images; anything else is a video file. `timeout_s` is how long a live source may go
    without a frame before it counts as failed.
    """
    src = cfg.source.strip()
    if not src:
        raise SourceError("camera.source is empty")
    if src == "picamera2" or src.startswith("picamera2:"):
        num = src.partition(":")[2] or "0"
        if not num.isdigit():
            raise SourceError(f"camera.source {src!r}: expected picamera2 or picamera2:N")
        return Picamera2Source(cfg, camera_num=int(num), timeout_s=timeout_s)
    if src.isdigit():
        return OpenCVSource(int(src), "device", cfg, timeout_s)
    if _DEVICE_RE.match(src):
        return OpenCVSource(src, "device", cfg, timeout_s)
    if "://" in src:
        scheme = src.split("://", 1)[0].lower()
        if scheme == "file":
            src = urlsplit(src).path
        elif scheme in STREAM_SCHEMES:
            return OpenCVSource(src, "stream", cfg, timeout_s)
        else:
            raise SourceError(f"camera.source: unsupported URL scheme {scheme!r} "
                              f"(use rtsp://, http://, https:// or a path)")
    if Path(src).is_dir():
        return FolderSource(src, cfg)
    return OpenCVSource(src, "file", cfg, timeout_s)
