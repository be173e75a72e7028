"""A phone-style HTTP MJPEG stream that drops or stalls is reopened, with degraded/ok status, and frames resume.

The stream is real: a tiny http.server on 127.0.0.1 sends multipart/x-mixed-replace JPEGs, read by OpenCV's FFmpeg
backend exactly as a phone camera app on the cart would be. Each frame carries a number that says which server
(or which connection) sent it, so the test can tell old frames from frames after the reconnect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import pytest

from edge.capture import CaptureThread
from edge.config import CameraConfig
from edge.sources import open_source
from edge.types import Frame
from tests.test_capture import States
from tests.test_sources import H, W, frame_bgr, frame_id

BOUNDARY = "shelfscoutframe"


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream at http://127.0.0.1:PORT/video.

    Frame numbers are `64 * (base + connection) + counter % 64`, so `frame_id(img) // 64 - base` is the connection.
    With `stall_first`, the first connection sends that many frames and then holds the socket open, silent.
    """

    def __init__(self, port: int = 0, base: int = 0, stall_first: int | None = None, fps: float = 30.0):
        self.base = base
        self.stall_first = stall_first
        self.period = 1.0 / fps
        self.stopping = threading.Event()
        self.connections = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    conn = outer.connections
                    outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                i = 0
                try:
                    while not outer.stopping.is_set():
                        if conn == 0 and outer.stall_first is not None and i >= outer.stall_first:
                            outer.stopping.wait(30)  # silent, socket still open
                            return
                        ok, jpg = cv2.imencode(".jpg", frame_bgr(64 * (outer.base + conn) + i % 64))
                        assert ok
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg.tobytes() + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        outer.stopping.wait(outer.period)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/video"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> MjpegServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill the stream mid-frame-sequence: open connections end, new ones are refused."""
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def servers() -> Iterator[list[MjpegServer]]:
    started: list[MjpegServer] = []
    yield started
    for s in started:
        if not s.stopping.is_set():
            s.stop()


def wait_frame(ct: CaptureThread, pred: Callable[[Frame], bool], timeout: float = 20.0) -> list[Frame]:
    """Frames taken until one satisfies `pred` (included)."""
    got: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = ct.latest(timeout=0.5)
        if f is None:
            continue
        got.append(f)
        if pred(f):
            return got
    raise AssertionError(f"no matching frame within {timeout} s; last ids {[frame_id(f.image) for f in got[-5:]]}")


def test_a_stream_that_drops_is_reopened_and_frames_resume(servers: list[MjpegServer]) -> None:
    first = MjpegServer().start()
    servers.append(first)
    cfg = CameraConfig(source=first.url, width=W, height=H, reopen_min_s=0.05, reopen_max_s=0.4)
    states = States()
    ct = CaptureThread(lambda: open_source(cfg, timeout_s=2.0), cfg, states, stall_s=2.0)
    ct.start()
    try:
        assert not ct.lossless and not ct.finite
        before = wait_frame(ct, lambda f: f.index >= 4)
        assert all(frame_id(f.image) // 64 == 0 for f in before)
        assert states.calls == []

        first.stop()  # the phone app dies mid-stream
        state, reason = states.wait_for("degraded")
        assert reason.startswith(f"camera: stream {first.url}: ")
        time.sleep(0.3)  # a few reconnects are refused meanwhile

        second = MjpegServer(port=first.port, base=2).start()  # the app comes back on the same address
        servers.append(second)
        after = wait_frame(ct, lambda f: frame_id(f.image) // 64 == 2)
        states.wait_for("ok")
        more = wait_frame(ct, lambda f: True)
    finally:
        ct.stop()
    # degraded (the read failed), maybe again with a new reason (reconnects refused), then ok once.
    assert states.calls[-1] == ("ok", "") and all(s == "degraded" for s, _ in states.calls[:-1])
    frames = before + after + more
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))  # indices keep increasing across the reconnect
    assert frame_id(more[-1].image) // 64 == 2
    assert second.connections >= 1


def test_a_stalled_stream_is_reported_and_reopened(servers: list[MjpegServer]) -> None:
    server = MjpegServer(stall_first=5).start()
    servers.append(server)
    cfg = CameraConfig(source=server.url, width=W, height=H, reopen_min_s=0.05, reopen_max_s=0.4)
    states = States()
    # The read gives up after 1.5 s; the watchdog reports the stall after 0.5 s, while the read is still blocked.
    ct = CaptureThread(lambda: open_source(cfg, timeout_s=1.5), cfg, states, stall_s=0.5)
    ct.start()
    try:
        state, reason = states.wait_for("degraded")
        assert reason == f"camera: {server.url}: no frame for 0.5 s"
        resumed = wait_frame(ct, lambda f: frame_id(f.image) // 64 >= 1)
        states.wait_for("ok")
    finally:
        ct.stop()
    assert frame_id(resumed[-1].image) // 64 >= 1  # a new connection, after the stalled one was dropped
    assert server.connections >= 2
    assert states.calls[0][0] == "degraded" and states.calls[-1] == ("ok", "")
