"""The live preview server over real HTTP: page, MJPEG stream, status JSON, snapshot, lazy encoding, clean stop."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from edge.preview import BOUNDARY, PreviewServer, annotate, model_label, parse_bind
from edge.snapshot import label_place
from edge.tracker import TrackView
from edge.types import Gap
from tests.test_hints import draw_shelf

INFO = {"fps": 14.2, "inference_ms": 31.5, "model": "shelfgap", "model_version": 3, "outbox_depth": 2,
        "device": "cart-07", "store": "s042"}


GAPS = [Gap(100, 60, 180, 140, 0.87)]
TRACKS = [TrackView(track_id=3, box=(420, 60, 500, 140), confirmed=True, hits=4, score=0.9, alert_id="a3"),
          TrackView(track_id=4, box=(300, 200, 350, 290), confirmed=False, hits=1, score=0.6, alert_id=None)]


@pytest.fixture
def server() -> Iterator[PreviewServer]:
    p = PreviewServer("127.0.0.1:0", max_fps=20).start()
    try:
        yield p
    finally:
        p.stop()


class Feeder:
    """Offers frames from a thread, like the pipeline does."""

    def __init__(self, p: PreviewServer, frame: np.ndarray, info: dict | None = None,
                 gaps: list[Gap] | None = None, tracks: list[TrackView] | None = None):
        self.p, self.frame, self.info = p, frame, info or INFO
        self.gaps = GAPS if gaps is None else gaps
        self.tracks = TRACKS if tracks is None else tracks
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.p.offer(self.frame, self.gaps, self.tracks, self.info)
            time.sleep(0.01)

    def __enter__(self) -> Feeder:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def _read_parts(url: str, n: int, timeout: float = 10.0) -> list[bytes]:
    """Read n JPEG parts from a multipart/x-mixed-replace stream."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        parts: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(parts) < n and time.monotonic() < deadline:
            assert r.readline().strip() == b"--" + BOUNDARY.encode()
            headers = {}
            while (line := r.readline().strip()):
                k, _, v = line.decode().partition(":")
                headers[k.lower()] = v.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(r.read(int(headers["content-length"])))
            assert r.readline() == b"\r\n"
        return parts


def test_port_zero_binds_loopback_and_reports_the_port(server: PreviewServer) -> None:
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/"
    status, ctype, body = _get(server.url)
    assert status == 200 and ctype.startswith("text/html")
    page = body.decode()
    assert 'name="viewport"' in page and "/stream.mjpg" in page and "/status.json" in page
    # Only on loopback: the same port on another local address is not served.
    assert server._httpd is not None and server._httpd.server_address[0] == "127.0.0.1"


def test_model_label_accepts_both_shapes() -> None:
    assert model_label({"model": "shelfgap", "model_version": 3}) == "shelfgap v3"
    assert model_label({"model": "shelfgap v3"}) == "shelfgap v3"
    assert model_label({}) == "model ?"


def test_bind_must_name_a_host() -> None:
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:0") == ("::1", 0)
    assert parse_bind("0.0.0.0:8080") == ("0.0.0.0", 8080)  # all interfaces only when asked for
    for bad in (":8080", "8080", "localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_bind(bad)


def test_offer_does_not_encode_while_nobody_watches(server: PreviewServer) -> None:
    frame = draw_shelf(np.random.default_rng(0))
    for _ in range(200):
        server.offer(frame, GAPS, TRACKS, INFO)
    assert server.frames_offered == 200
    assert server.frames_encoded == 0 and not server.watching


def test_stream_serves_annotated_jpegs_of_the_frame(server: PreviewServer) -> None:
    frame = draw_shelf(np.random.default_rng(1))
    with Feeder(server, frame):
        parts = _read_parts(server.url + "stream.mjpg", 4)
    assert len(parts) == 4
    img = cv2.imdecode(np.frombuffer(parts[-1], np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert img is not None and img.shape == frame.shape
    # The gap's red box is drawn on its left edge (x=100, from y=60 to 140); the HUD strip at the top is darkened.
    edge = img[70:130, 99:102].reshape(-1, 3).astype(int)
    red = (edge[:, 2] > 180) & (edge[:, 1] < 90) & (edge[:, 0] < 90)
    assert red.mean() > 0.8
    # The confirmed track is drawn thick green, the unconfirmed one thin yellow.
    green = img[70:130, 412:417].reshape(-1, 3).astype(int)  # drawn just outside the track's box
    assert ((green[:, 1] > 180) & (green[:, 2] < 120)).mean() > 0.8
    yellow = img[220:280, 293:296].reshape(-1, 3).astype(int)
    assert ((yellow[:, 1] > 170) & (yellow[:, 2] > 200) & (yellow[:, 0] < 80)).mean() > 0.5
    assert img[:10, 300:].mean() < frame[:10, 300:].mean()
    deadline = time.monotonic() + 3
    while server.watching and time.monotonic() < deadline:  # the client has gone: encoding stops
        time.sleep(0.02)
    assert not server.watching
    assert server.frames_streamed >= 4


def test_a_viewer_who_joins_while_no_frames_come_gets_the_last_picture_twice(server: PreviewServer) -> None:
    """A browser shows a multipart part only once the next one begins: a page opened while the camera is gone (or
    the pipeline paused) showed a broken image, since no second frame came. The newest frame goes out twice."""
    frame = draw_shelf(np.random.default_rng(2))
    server.offer(frame, GAPS, TRACKS, INFO)  # one frame, then none: the camera has stopped
    parts = _read_parts(server.url + "stream.mjpg", 2, timeout=3.0)
    assert len(parts) == 2 and parts[0] == parts[1]
    assert server.frames_offered == 1


def test_gap_labels_stay_out_of_the_status_strip_and_inside_the_picture() -> None:
    # Above the box when there is room under the strip; else moved down into the box; pulled in from the right edge.
    assert label_place((100, 80), 50, 12, 30, 640) == (100, 80)
    assert label_place((100, 20), 50, 12, 30, 640) == (100, 46)
    assert label_place((100, 40), 50, 12, 30, 640) == (100, 56)
    assert label_place((620, 80), 50, 12, 30, 640) == (585, 80)  # its last column is 639, the picture's last
    assert label_place((-5, 80), 50, 12, 30, 640) == (0, 80)
    # In the drawn frame: a gap at the very top has its red label under the darkened strip, not hidden by it.
    frame = np.full((480, 640, 3), 200, np.uint8)
    img = annotate(frame, [Gap(300, 2, 380, 120, score=0.9)], [], INFO, 640)
    band = img[:12, 300:360].reshape(-1, 3).astype(int)
    assert not ((band[:, 2] > 180) & (band[:, 1] < 90)).any()  # no label fill inside the strip
    below = img[25:45, 305:360].reshape(-1, 3).astype(int)
    assert ((below[:, 2] > 180) & (below[:, 1] < 90) & (below[:, 0] < 90)).mean() > 0.3


def test_tags_are_sized_to_the_picture_so_a_phone_can_read_them() -> None:
    # A 390-px phone shows the picture about 366 CSS px wide: the gap labels and track tags of a 640-px frame were
    # 17 px tall there (9.7 CSS px, letters of 7). They are a 27th of the picture's width now, at any width.
    for width in (640, 1280):
        frame = np.full((width * 3 // 4, width, 3), 200, np.uint8)
        u = width / 640
        gap = Gap(200 * u, 200 * u, 280 * u, 280 * u, score=0.9)
        track = TrackView(track_id=7, box=(400 * u, 150 * u, 480 * u, 230 * u), confirmed=True, hits=4, score=0.9,
                          alert_id="a7")
        img = annotate(frame, [gap], [track], INFO, 960).astype(int)
        shown = img.shape[1]
        k = shown / width
        red = (img[..., 2] > 180) & (img[..., 1] < 90) & (img[..., 0] < 90)
        label = red[: round(200 * u * k) - 2, round(200 * u * k) + 1]  # the label's first column, over the box
        assert label.sum() >= shown / 27 - 1, (width, int(label.sum()))
        green = (img[..., 1] > 180) & (img[..., 2] < 120) & (img[..., 0] < 120)
        tag_bottom = np.nonzero(green[:, round(400 * u * k)])[0].max()  # the tag hangs under the track's box
        assert tag_bottom - 230 * u * k >= shown / 27, (width, int(tag_bottom))


def test_encoding_is_capped_at_max_fps_for_many_viewers() -> None:
    p = PreviewServer("127.0.0.1:0", max_fps=5).start()
    try:
        frame = draw_shelf(np.random.default_rng(2))
        with Feeder(p, frame):
            got: list[int] = []
            threads = [threading.Thread(target=lambda: got.append(len(_read_parts(p.url + "stream.mjpg", 5))))
                       for _ in range(3)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            elapsed = time.monotonic() - t0
        assert got == [5, 5, 5]
        # Three viewers share one encoder: at most max_fps encodes per second (plus the first), not three times that.
        assert p.frames_encoded <= 5 * elapsed + 2, (p.frames_encoded, elapsed)
        print(f"3 viewers, {elapsed:.2f} s: {p.frames_encoded} encodes, {p.frames_offered} frames offered")
    finally:
        p.stop()


def test_status_json_has_info_and_hints(server: PreviewServer) -> None:
    status, ctype, body = _get(server.url + "status.json")
    s = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert s["has_frame"] is False and s["hints"] == []
    dark = (draw_shelf(np.random.default_rng(3)).astype(np.float32) * 0.15).astype(np.uint8)
    server.offer(dark, GAPS, TRACKS, INFO)
    s = json.loads(_get(server.url + "status.json")[2])
    assert s["info"] == INFO and s["gaps"] == 1 and s["tracks"] == 2
    assert [h["code"] for h in s["hints"]] == ["too_dark"]
    assert s["hints"][0]["message"].startswith("Too dark")


def test_snapshot_and_not_found(server: PreviewServer) -> None:
    assert _get(server.url + "snapshot.jpg")[0] == 503
    frame = draw_shelf(np.random.default_rng(4))
    server.offer(frame, GAPS, TRACKS, INFO)
    status, ctype, body = _get(server.url + "snapshot.jpg")
    assert status == 200 and ctype == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == frame.shape
    assert _get(server.url + "nope")[0] == 404


def test_stop_ends_streams_and_frees_the_port() -> None:
    p = PreviewServer("127.0.0.1:0").start()
    port = p.port
    frame = draw_shelf(np.random.default_rng(5))
    ended = threading.Event()

    def watch() -> None:
        try:
            with urllib.request.urlopen(p.url + "stream.mjpg", timeout=10) as r:
                while r.read1(65536):
                    pass
        except OSError:
            pass
        ended.set()

    with Feeder(p, frame):
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while p.frames_streamed < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.frames_streamed >= 2
        p.stop()
        assert ended.wait(5), "the stream client was not disconnected by stop()"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_ipv6_loopback_bind() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        p = PreviewServer("[::1]:0").start()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert p.url == f"http://[::1]:{p.port}/"
        assert _get(p.url + "status.json")[0] == 200
    finally:
        p.stop()


def test_odd_frames_and_values_do_not_break_the_server(server: PreviewServer) -> None:
    grey = np.zeros((120, 160), np.uint8)  # not RGB: no hints, but the JSON still answers
    server.offer(grey, [], [], {"fps": float("nan"), "inference_ms": float("inf"), "model": "m"})
    status, _, body = _get(server.url + "status.json")
    s = json.loads(body)
    assert status == 200 and s["info"]["fps"] is None and s["info"]["inference_ms"] is None and s["hints"] == []
    frame = draw_shelf(np.random.default_rng(6))
    server.offer(frame, GAPS, TRACKS, INFO)
    assert _get(server.url + "snapshot.jpg")[0] == 200  # the server is still there


def test_hints_are_steadied_over_the_last_evaluations() -> None:
    p = PreviewServer("127.0.0.1:0", hints_interval_s=0.0)  # no HTTP needed: the same method serves status.json
    good = draw_shelf(np.random.default_rng(8))
    dark = (good.astype(np.float32) * 0.15).astype(np.uint8)

    def codes(frame: np.ndarray) -> list[str]:
        p.offer(frame, [], [], {})
        return [h.code for h in p.hints()]

    assert codes(dark) == ["too_dark"]  # at first, straight away
    assert codes(good) == []
    assert codes(good) == []
    assert codes(dark) == []  # one dark frame among good ones: no flicker
    assert codes(dark) == ["too_dark"]  # it stays: now it shows
    assert codes(good) == ["too_dark"]
    assert codes(good) == []


def test_a_flood_of_connections_is_refused_not_given_a_thread_each() -> None:
    """Each connection took a thread and a stream kept it: 80 clients made 82 threads, against the unit's
    TasksMax=64 that model updates and hot swaps need too. A few streams and a few connections at once are served;
    more get a 503 at once, and the preview serves again when they go."""
    from edge.preview import MAX_CONNECTIONS, MAX_STREAMS

    p = PreviewServer("127.0.0.1:0", max_fps=5).start()
    socks: list[socket.socket] = []
    try:
        with Feeder(p, draw_shelf(np.random.default_rng(3))):
            def connect(request: bytes | None) -> socket.socket:
                s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
                if request:
                    s.sendall(request)
                socks.append(s)
                return s

            for _ in range(MAX_STREAMS):
                connect(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").recv(64)  # streaming
            deadline = time.monotonic() + 5
            while p.watchers < MAX_STREAMS and time.monotonic() < deadline:
                time.sleep(0.02)
            assert p.watchers == MAX_STREAMS
            extra = connect(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b" 503 " in extra.recv(64).split(b"\r\n")[0]  # one viewer too many
            threads = threading.active_count()
            for _ in range(MAX_CONNECTIONS + 20):
                connect(None)  # connections that say nothing, each one held open
            refused = connect(None)
            assert refused.recv(64).startswith(b"HTTP/1.0 503")
            assert threading.active_count() <= threads + MAX_CONNECTIONS
            for s in socks:
                s.close()
            socks.clear()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if _get(p.url + "status.json")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            assert _get(p.url + "status.json")[0] == 200
    finally:
        for s in socks:
            s.close()
        p.stop()


def test_a_connection_that_gets_no_thread_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the task limit a new thread cannot start: the connection's slot was never given back, and after eight
    such connections the preview refused everyone for good."""
    import socketserver

    from edge.preview import MAX_CONNECTIONS

    real = socketserver.ThreadingMixIn.process_request

    def no_thread(self: Any, request: Any, client_address: Any) -> None:
        raise RuntimeError("can't start new thread")

    p = PreviewServer("127.0.0.1:0", max_fps=5).start()
    try:
        monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", no_thread)
        for _ in range(MAX_CONNECTIONS + 2):
            with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
                s.sendall(b"GET /status.json HTTP/1.0\r\n\r\n")
                s.recv(64)  # closed without an answer: no thread to give one
        monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", real)
        assert _get(p.url + "status.json")[0] == 200
    finally:
        p.stop()


def test_a_page_rebinding_its_own_name_to_the_preview_is_refused() -> None:
    """Bound beyond loopback (while mounting), the preview answered any Host: a web page a phone on the store
    network visits could point its own domain at the cart (DNS rebinding) and read its pictures and status. Only
    the device's own names and addresses are served."""
    from edge.preview import host_allowed

    p = PreviewServer("127.0.0.1:0", max_fps=5).start()
    try:
        for host, code in ((f"127.0.0.1:{p.port}", 200), (f"localhost:{p.port}", 200),
                           (f"{socket.gethostname()}:{p.port}", 200), ("evil.example", 403),
                           (f"rebind.attacker.test:{p.port}", 403)):
            req = urllib.request.Request(p.url + "status.json", headers={"Host": host})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    got = r.status
            except urllib.error.HTTPError as e:
                got = e.code
            assert got == code, host
    finally:
        p.stop()
    assert host_allowed("[::1]:8080") and host_allowed("10.0.42.7") and host_allowed(None)
    assert not host_allowed("10.0.42.7.nip.io")
