"""Serves the installer's live preview over HTTP: annotated MJPEG, status JSON and mounting hints for a phone.

The pipeline calls `offer()` on every frame; that only stores references. JPEG encoding and the hint analysis run in
the HTTP handler threads, at most `max_fps` times a second and only while a `/stream.mjpg` client is connected (or a
`/snapshot.jpg` / `/status.json` request asks for them), so an unwatched preview costs the pipeline nothing.

`info` keys the page shows when present: `fps`, `inference_ms`, `model` (a name, or "name vN"), `model_version`,
`outbox_depth`, `dropped`, `state` (or `status`), `device`, `store`; `shift_px_per_frame` (or `shift_px`),
`exposure_s` and `frame_interval_s` feed the hints. Any other JSON-friendly key is passed through to `/status.json`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import cv2
import numpy as np

from edge.hints import Exposure, Hint, mounting_hints
from edge.snapshot import FONT, draw_tag, tag_height
from edge.types import Gap

log = logging.getLogger(__name__)

BOUNDARY = "shelfscoutframe"


class TrackLike(Protocol):
    """What the preview needs from a tracker's track view."""

    @property
    def box(self) -> tuple[float, float, float, float]: ...

    @property
    def track_id(self) -> int: ...

    @property
    def confirmed(self) -> bool: ...


@dataclass(frozen=True)
class _Offer:
    seq: int
    frame: np.ndarray
    gaps: tuple[Gap, ...]
    tracks: tuple[Any, ...]
    info: dict[str, Any]


def parse_bind(bind: str) -> tuple[str, int]:
    """"127.0.0.1:8080" / "[::1]:0" / "0.0.0.0:8080" -> (host, port). A host is required: no implicit all-interfaces."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"preview bind {bind!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def model_label(info: dict[str, Any]) -> str:
    """"shelfgap v3" from `model` and `model_version`, or `model` alone when it already carries the version."""
    name, version = info.get("model"), info.get("model_version")
    if name is None:
        return "model ?" if version is None else f"model v{version}"
    return f"{name} v{version}" if version is not None else str(name)


TAG_FONT_PER_PX = 1 / 900  # font scale per pixel of picture width: a tag a 27th of the width tall


def annotate(frame_rgb: np.ndarray, gaps: Sequence[Gap], tracks: Sequence[Any], info: dict[str, Any],
             max_width: int = 960) -> np.ndarray:
    """Draw gaps (red, with score), tracks (id; confirmed ones thicker) and a HUD line. Returns a BGR image.

    Tags are sized to the picture's width (a 27th of it tall), so they keep their share of it however wide a
    screen shows it: about 13 CSS px on a 390-px phone. The HUD line shrinks to fit the width."""
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, max_width / w)
    if scale < 1.0:
        img = cv2.resize(frame_rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    else:
        img = frame_rgb.copy()
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    thick = max(1, round(img.shape[1] / 320))
    font_scale = TAG_FONT_PER_PX * img.shape[1]

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * scale), round(y * scale)

    for t in tracks:
        x0, y0, x1, y1 = t.box
        confirmed = bool(t.confirmed)
        colour = (80, 220, 80) if confirmed else (0, 210, 255)
        pad = thick * 3  # outside the gap's red box, so both stay visible
        p0, p1 = pt(x0, y0), pt(x1, y1)
        p0, p1 = (p0[0] - pad, p0[1] - pad), (p1[0] + pad, p1[1] + pad)
        cv2.rectangle(img, p0, p1, colour, thick * 3 if confirmed else thick)
        # a tag under the box's bottom-left corner (its top-left corner, were the tag a box of its own)
        draw_tag(img, f"#{t.track_id}", (p0[0], min(img.shape[0] - 1, p1[1] + tag_height(font_scale))), colour,
                 font_scale, ink=(0, 0, 0))

    hud = (f"{_fmt(info.get('fps'))} fps  |  {_fmt(info.get('inference_ms'))} ms  |  {model_label(info)}  |  "
           f"outbox {_fmt(info.get('outbox_depth'))}  |  gaps {len(gaps)}")
    (hud_w, _), _ = cv2.getTextSize(hud, FONT, font_scale, 1)
    hud_scale = font_scale * min(1.0, (img.shape[1] - 12) / max(hud_w, 1))  # shrunk to fit the width
    (_, hud_h), _ = cv2.getTextSize(hud, FONT, hud_scale, 1)
    band_h = hud_h + 12  # the darkened strip at the top, drawn last: no gap label may sit under it

    for g in gaps:  # on top of the tracks, so the scores stay readable
        p0, p1 = pt(g.x0, g.y0), pt(g.x1, g.y1)
        cv2.rectangle(img, p0, p1, (40, 40, 235), thick + 1)
        draw_tag(img, f"gap {g.score:.2f}", p0, (40, 40, 235), font_scale, top_h=band_h)

    band = img[:band_h]
    band[:] = (band.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken the strip under the HUD
    cv2.putText(img, hud, (6, hud_h + 5), FONT, hud_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


# Every connection is a thread, and the unit caps the service's tasks (TasksMax=64): a preview reachable from the
# store network must not let a flood of connections take the threads that model updates and hot swaps need.
MAX_CONNECTIONS = 8
MAX_STREAMS = 3


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def __init__(self, *args: Any, **kw: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)  # connections being served now
        self.open: set[socket.socket] = set()  # their sockets, closed by `close_connections`
        self.open_lock = threading.Lock()
        super().__init__(*args, **kw)

    def close_connections(self) -> None:
        """End every connection being served: a stopped preview answers no kept-alive status request either."""
        with self.open_lock:
            conns = list(self.open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # busy: refused at once, in this thread, without a new one
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Connection: close\r\n\r\ntoo many preview connections\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (the task limit): the slot is not held by anyone
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.open_lock:
                self.open.discard(request)
            self.slots.release()


class PreviewServer:
    """The live preview web server. Start it, `offer()` frames, `stop()` it; `url` has the bound port."""

    def __init__(self, bind: str = "127.0.0.1:8080", max_fps: float = 10.0, jpeg_quality: int = 75,
                 hints_interval_s: float = 1.0, max_width: int = 960):
        if max_fps <= 0:
            raise ValueError("preview max_fps must be positive")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("preview jpeg_quality must be between 1 and 100")
        self.host, self.port = parse_bind(bind)
        self.max_fps = max_fps
        self.jpeg_quality = jpeg_quality
        self.hints_interval_s = hints_interval_s
        self.max_width = max_width
        self._offer: _Offer | None = None
        self._seq = 0
        self._cond = threading.Condition()
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, float, bytes] | None = None  # (seq, monotonic time, bytes)
        self._hints_lock = threading.Lock()
        self._hints: tuple[float, list[Hint]] | None = None
        self._hint_history: collections.deque[list[Hint]] = collections.deque(maxlen=3)
        self._clients = 0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.frames_offered = 0
        self.frames_streamed = 0  # multipart JPEG parts written to /stream.mjpg clients
        self.streams_opened = 0  # /stream.mjpg requests served, since the start
        self.frames_encoded = 0
        self._service: tuple[str, str | None] | None = None  # the service's status: (state, reason)
        self._offered_at: float | None = None  # monotonic time of the newest frame
        # Changes with every start: an open page that sees another value reconnects its stream (the old one ended)
        self.boot = f"{time.time():.6f}"

    # ---- the pipeline side -------------------------------------------------------------------------------------
    def offer(self, frame_rgb: np.ndarray, gaps: Sequence[Gap], tracks: Sequence[Any], info: dict[str, Any]) -> None:
        """Hand over the newest frame. O(1): keeps references only (do not modify the frame afterwards)."""
        with self._cond:
            self._seq += 1
            self.frames_offered += 1
            self._offered_at = time.monotonic()
            self._offer = _Offer(self._seq, frame_rgb, tuple(gaps), tuple(tracks), info)
            if self._clients:
                self._cond.notify_all()

    def set_service_status(self, state: str, reason: str | None) -> None:
        """The service's own status (online | degraded, and why): the page shows it, so a camera that stopped is
        not a frozen picture under "looks good"."""
        self._service = (state, reason)

    @property
    def watchers(self) -> int:
        """Browsers connected to the stream now."""
        return self._clients

    @property
    def watching(self) -> bool:
        """True while at least one browser is connected to the stream."""
        return self._clients > 0

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> PreviewServer:
        if self._httpd is not None:
            return self
        server_cls = type("_PreviewHTTPServer", (_Server,), {
            "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET})
        try:
            httpd = server_cls((self.host, self.port), _make_handler(self))
        except OSError as e:
            raise OSError(e.errno, f"preview: cannot listen on {self.host}:{self.port}: {e.strerror}") from None
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="preview-http", daemon=True)
        self._thread.start()
        if self.host in ("0.0.0.0", "::", ""):
            log.warning("preview listens on ALL interfaces (port %d): anyone on the network sees the camera; "
                        "set preview.bind back to 127.0.0.1 after mounting", self.port)
        else:
            log.info("preview on %s", self.url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PreviewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- lazily computed views ---------------------------------------------------------------------------------
    def _wait_newer(self, seq: int, timeout: float) -> _Offer | None:
        with self._cond:
            if self._offer is None or self._offer.seq <= seq:
                self._cond.wait(timeout)
            o = self._offer
        return o if o is not None and o.seq > seq else None

    def jpeg(self, fresh_within: float | None = None) -> tuple[int, bytes] | None:
        """The newest annotated frame as JPEG, encoded at most once per `fresh_within` seconds (1/max_fps)."""
        o = self._offer
        if o is None:
            return None
        period = 1.0 / self.max_fps if fresh_within is None else fresh_within
        with self._jpeg_lock:
            cached = self._jpeg
            now = time.monotonic()
            if cached is not None and (cached[0] >= o.seq or now - cached[1] < period):
                return cached[0], cached[2]
            img = annotate(o.frame, o.gaps, o.tracks, o.info, self.max_width)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                return None
            self._jpeg = (o.seq, now, buf.tobytes())
            self.frames_encoded += 1
            return o.seq, self._jpeg[2]

    def hints(self) -> list[Hint]:
        """Mounting hints for the newest frames, recomputed at most every `hints_interval_s`.

        Once three evaluations exist, a hint shows only while it is in at least two of the last three, so one odd
        frame (an aisle end, a passer-by) does not make the advice flicker.
        """
        o = self._offer
        if o is None:
            return []
        with self._hints_lock:
            now = time.monotonic()
            if self._hints is not None and now - self._hints[0] < self.hints_interval_s:
                return self._hints[1]
            exposure = None
            exp_s, interval_s = o.info.get("exposure_s"), o.info.get("frame_interval_s")
            if isinstance(exp_s, (int, float)) and isinstance(interval_s, (int, float)) and interval_s > 0:
                exposure = Exposure(float(exp_s), float(interval_s))
            shift = o.info.get("shift_px_per_frame", o.info.get("shift_px"))
            try:
                hints = mounting_hints(o.frame, float(shift) if isinstance(shift, (int, float)) else None, exposure)
            except ValueError as e:  # a frame the analysis cannot use (grey, tiny): no hints rather than an error
                log.debug("preview: no hints for this frame: %s", e)
                hints = []
            self._hint_history.append(hints)
            if len(self._hint_history) == self._hint_history.maxlen:
                # Steady hints only: a code shown in most of the last evaluations, with its newest message.
                counts = collections.Counter(code for hs in self._hint_history for code in {h.code for h in hs})
                steady = {code for code, n in counts.items() if n >= 2}
                shown: dict[str, Hint] = {}
                for hs in reversed(self._hint_history):  # newest first: its order and wording win
                    for h in hs:
                        if h.code in steady:
                            shown.setdefault(h.code, h)
                hints = list(shown.values())
            self._hints = (now, hints)
            return hints

    def status(self) -> dict[str, Any]:
        o = self._offer
        info = dict(o.info) if o is not None else {}
        service, offered_at = self._service, self._offered_at
        return {
            "info": info,
            "service": None if service is None else {"state": service[0], "reason": service[1]},
            "frame_age_s": None if offered_at is None else round(time.monotonic() - offered_at, 1),
            "hints": [asdict(h) for h in self.hints()],
            "has_frame": o is not None,
            "gaps": len(o.gaps) if o is not None else 0,
            "tracks": len(o.tracks) if o is not None else 0,
            "watchers": self._clients,
            "frames_offered": self.frames_offered,
            "frames_streamed": self.frames_streamed,
            "boot": self.boot,
        }

    def _stream(self, write: Callable[[bytes], None], alive: Callable[[], bool]) -> None:
        with self._cond:
            self._clients += 1
            self.streams_opened += 1
        try:
            seq = 0
            period = 1.0 / self.max_fps
            next_t = 0.0
            while not self._stopping.is_set():
                delay = next_t - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    break
                if self._wait_newer(seq, timeout=0.5) is None:
                    if not alive():  # no new frame to write: notice a viewer that has gone away
                        break
                    continue
                got = self.jpeg()
                if got is None:
                    continue
                first = seq == 0
                seq, data = got
                part = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                # Browsers show a multipart part once the next one begins: the first frame goes twice, so a page
                # opened while no new frames come (the camera gone, paused) shows the last picture, not a broken one
                write(part + part if first else part)
                with self._cond:
                    self.frames_streamed += 2 if first else 1
                next_t = time.monotonic() + period
        finally:
            with self._cond:
                self._clients -= 1


def host_allowed(host: str | None) -> bool:
    """Whether a request's Host header names this device: an IP address, localhost, or its own host name (plain or
    `.local`). A DNS-rebinding page (its own domain pointed at this address) sends its domain and is refused, so a
    browser on the store network cannot hand the preview's pictures and status to a site it visits."""
    import ipaddress

    if not host:
        return True  # HTTP/1.0 clients and curl without a Host: not a browser following a web page
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    me = socket.gethostname().lower()
    return name in ("localhost", me, f"{me}.local", me.split(".", 1)[0], f"{me.split('.', 1)[0]}.local")


def _finite(v: Any) -> Any:
    """JSON for browsers: NaN and infinities (e.g. a latency percentile before the first frame) become null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _make_handler(server: PreviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "shelfscout-preview"
        protocol_version = "HTTP/1.1"
        timeout = 15  # a stalled client must not pin a handler thread forever

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("preview %s: " + format, self.client_address[0], *args)

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if not host_allowed(self.headers.get("Host")):
                # a name that is not this device's: a web page elsewhere rebinding its own name to this address
                self._send(403, "text/plain; charset=utf-8", b"open the preview by this device's address\n")
                return
            try:
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode("utf-8"))
                elif path == "/status.json":
                    body = json.dumps(_finite(server.status()), default=str, allow_nan=False).encode()
                    self._send(200, "application/json", body)
                elif path == "/snapshot.jpg":
                    got = server.jpeg(fresh_within=0.0)
                    if got is None:
                        self._send(503, "text/plain; charset=utf-8", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", got[1])
                elif path == "/stream.mjpg" and server.watchers >= MAX_STREAMS:
                    self._send(503, "text/plain; charset=utf-8",
                               f"{MAX_STREAMS} viewers watch already; close one\n".encode())
                elif path == "/stream.mjpg":
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    if self.command != "HEAD":
                        server._stream(self._write, self._alive)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            except Exception:  # the preview must never take the service down, nor leave a client hanging
                log.exception("preview: error serving %s", path)
                self.close_connection = True

        def _alive(self) -> bool:
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
            except OSError:
                return False

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

    return Handler


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="color-scheme" content="dark">
<meta name="theme-color" content="#0f1115">
<title>shelfscout preview</title>
<style>
  :root { --bg:#0f1115; --card:#1a1d24; --fg:#e8eaed; --dim:#9aa0a6; --ok:#34c759; --warn:#ffb020; --bad:#ff453a; }
  * { box-sizing: border-box; }
  body { margin:0; background:var(--bg); color:var(--fg);
         font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
  header { display:flex; align-items:baseline; justify-content:space-between; padding:12px 14px 8px; }
  h1 { font-size:20px; margin:0; letter-spacing:.3px; }
  #who { color:var(--dim); font-size:14px; }
  #live { width:100%; max-height:60vh; display:block; background:#000; aspect-ratio:4/3; object-fit:contain; }
  /* a laptop: the picture beside the numbers and hints, all above the fold, instead of a 2x upscale on top */
  @media (min-width: 900px) {
    main { display:grid; grid-template-columns:minmax(0, 3fr) minmax(320px, 2fr); align-items:start; }
    #live { max-height:calc(100vh - 56px); }
  }
  .grid { display:grid; grid-template-columns:1fr 1fr; gap:10px; padding:12px 14px; }
  .tile { background:var(--card); border-radius:14px; padding:10px 14px; }
  .num { font-size:34px; font-weight:700; line-height:1.1; font-variant-numeric:tabular-nums; }
  .lbl { color:var(--dim); font-size:13px; text-transform:uppercase; letter-spacing:.6px; }
  h2 { font-size:14px; color:var(--dim); text-transform:uppercase; letter-spacing:.6px; margin:4px 14px 8px; }
  #hints { margin:0 14px 16px; padding:0; list-style:none; }
  #hints li { background:var(--card); border-left:6px solid var(--warn); border-radius:10px; padding:12px 14px;
              margin-bottom:8px; font-size:18px; line-height:1.35; }
  #hints li.ok { border-left-color:var(--ok); }
  #hints li.bad { border-left-color:var(--bad); }
  #state { font-size:13px; padding:2px 8px; border-radius:8px; background:var(--card); color:var(--dim); }
  #state.ok { color:#0f1115; background:var(--ok); }
  #state.warn { color:#0f1115; background:var(--warn); }
  #state.bad { color:#fff; background:var(--bad); }
  footer { color:var(--dim); font-size:12px; padding:0 14px 18px; }
</style>
</head>
<body>
<header><h1>shelfscout</h1><span id="who">live preview</span><span id="state">…</span></header>
<main>
<img id="live" src="/stream.mjpg" alt="live camera view">
<div>
<div class="grid">
  <div class="tile"><div class="num" id="fps">–</div><div class="lbl">frames / s</div></div>
  <div class="tile"><div class="num" id="ms">–</div><div class="lbl">inference ms</div></div>
  <div class="tile"><div class="num" id="model">–</div><div class="lbl" id="modelname">model</div></div>
  <div class="tile"><div class="num" id="outbox">–</div><div class="lbl">messages to send</div></div>
</div>
<h2>Mounting check</h2>
<ul id="hints"><li class="ok">Waiting for the camera…</li></ul>
<footer>Red boxes: gaps the model sees, with its score. Green: confirmed gaps (one alert each). Yellow: gaps being checked.</footer>
</div>
</main>
<script>
function fmt(v, d) { return (typeof v === "number") ? v.toFixed(d) : (v == null ? "–" : String(v)); }
function set(id, text) { document.getElementById(id).textContent = text; }
function note(ul, cls, code, text) {
  const li = document.createElement("li"); if (cls) li.className = cls; if (code) li.dataset.code = code;
  li.textContent = text; ul.appendChild(li); }
const live = document.getElementById("live");
function reconnect() { live.src = "/stream.mjpg?t=" + Date.now(); }
// The service restarts (an update, the watchdog): reconnect the stream instead of showing a broken image.
live.onerror = () => setTimeout(reconnect, 2000);
let boot = null, lostAt = null;
async function tick() {
  let s;
  try {
    const r = await fetch("/status.json", {cache: "no-store"});
    s = await r.json();
  } catch (e) {  // the service is gone (stopped, restarting, the cart out of reach): say so, show nothing stale
    if (lostAt == null) lostAt = new Date();
    const pill = document.getElementById("state"); pill.textContent = "offline"; pill.className = "bad";
    for (const id of ["fps", "ms", "outbox"]) set(id, "–");
    const ul = document.getElementById("hints"); ul.textContent = "";
    note(ul, "bad", "lost", "Lost contact with the cart at " + lostAt.toLocaleTimeString() +
         ": the picture is frozen. Waiting for it to come back…");
    return;
  }
  // back after a lost contact, or the service started anew: the old stream has ended, so open a new one
  if (lostAt != null || (boot != null && s.boot !== boot)) reconnect();
  lostAt = null; boot = s.boot;
  const i = s.info || {};
  const svc = s.service || {};
  // the picture is old (the camera gone, paused by command): its frame rate and its mounting advice are too
  const stale = s.frame_age_s != null && s.frame_age_s > 3;
  set("fps", stale ? "–" : fmt(i.fps, 1));
  set("ms", stale ? "–" : fmt(i.inference_ms, 0));
  const named = /^(.*) v(\\d+)$/.exec(i.model || "");
  const version = i.model_version != null ? i.model_version : (named ? named[2] : null);
  set("model", version != null ? "v" + version : "–");
  set("modelname", "model " + (named ? named[1] : (i.model || "")));
  set("outbox", fmt(i.outbox_depth, 0));
  const state = svc.state || i.state || i.status || (s.has_frame ? "running" : "no frames");
  const pill = document.getElementById("state"); pill.textContent = state;
  pill.className = state === "degraded" ? "bad" : (stale ? "warn" : "ok");
  if (i.device) set("who", i.device + (i.store ? " @ " + i.store : ""));
  const ul = document.getElementById("hints"); ul.textContent = "";
  const age = stale ? " (picture from " + Math.round(s.frame_age_s) + " s ago)" : "";
  // the service's own trouble first (a camera gone, the broker refusing): red; a note (paused) in amber
  if (svc.state === "degraded") note(ul, "bad", "service", (svc.reason || "Degraded") + age);
  else if (stale) note(ul, "", "service", (svc.reason || "No new frame") + age);
  if (!s.has_frame) note(ul, "", "", "Waiting for the camera…");
  else if (!stale) {
    const hints = s.hints || [];
    if (!hints.length && svc.state !== "degraded") note(ul, "ok", "", "\\u2713 Camera view looks good.");
    for (const h of hints) note(ul, "", h.code, h.message);
  }
}
tick(); setInterval(tick, 1000);
</script>
</body>
</html>
"""
