"""The preview page in headless Chromium at a phone's size: it loads, runs its script, shows stream frames and hints."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preview import PreviewServer
from edge.tracker import TrackView
from edge.types import Gap
from tests.cdp import Browser
from tests.test_hints import shelf_images
from tests.test_ota_support import wait_for
from tests.test_preview import Feeder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img" / "preview.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's `chromium` package is not installed "
                                                           "(apt-get install chromium)")


def _chromium(url: str, tmp: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--window-size=412,915",
           "--virtual-time-budget=3000", *mode, url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp)


def tilted_scene(deg: float) -> tuple[str, np.ndarray, list[Gap], list[TrackView]]:
    """A shelf turned by `deg` (so the tilt hint shows), with its true empty spots as gaps and tracks."""
    try:
        from convert.synth import make_shelf_image
    except ImportError:
        name, img, boxes = "drawn", shelf_images(7)[0][1], np.array([[100, 60, 180, 140], [300, 200, 350, 290]], float)
    else:
        sample = make_shelf_image(np.random.default_rng(7), width=640, height=480)
        name, img, boxes = "synth", sample.image, sample.boxes
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.2)  # turn and zoom so no empty corners show
    gaps: list[Gap] = []
    tracks: list[TrackView] = []
    for i, (x0, y0, x1, y1) in enumerate(boxes[:6]):
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]) @ m.T
        bx = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
              float(corners[:, 1].max()))
        if bx[2] < 0 or bx[3] < 0 or bx[0] > w or bx[1] > h:
            continue
        gaps.append(Gap(*bx, score=0.93 - 0.07 * i))
        tracks.append(TrackView(track_id=11 + i, box=bx, confirmed=i % 3 != 2, hits=5, score=0.9, alert_id=None))
    return name, cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT), gaps, tracks


def test_preview_page_in_headless_chromium(tmp_path: Path) -> None:
    # A slightly tilted shelf: the page should show the stream, the numbers and the tilt hint.
    name, frame, gaps, tracks = tilted_scene(8.0)
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    try:
        # The info as edge/app.py's preview observer sends it: the model as "name vN", `status`, `shift_px`.
        info = {"fps": 14.2, "inference_ms": 4.6, "model": "shelfgap-default v6", "outbox_depth": 2, "status": "online",
                "shift_px": 4.0, "dropped": 0}
        with Feeder(p, frame, info, gaps=gaps, tracks=tracks):
            shot = tmp_path / "preview.png"
            r = _chromium(p.url, tmp_path, f"--screenshot={shot}")
            assert r.returncode == 0, r.stderr[-2000:]
            streamed = p.frames_streamed
            dom = _chromium(p.url, tmp_path, "--dump-dom")
            assert dom.returncode == 0, dom.stderr[-2000:]
    finally:
        p.stop()

    # The browser pulled several JPEG frames from /stream.mjpg while it rendered.
    assert streamed >= 2, f"only {streamed} stream frames reached the browser"
    # Its script fetched /status.json and filled in the numbers and the mounting hint.
    html = dom.stdout
    assert ">14.2<" in html and ">v6<" in html and ">5<" in html and ">model shelfgap-default<" in html
    assert ">online<" in html
    assert "Shelf edges slope" in html and "level the camera" in html
    assert 'data-code="tilted"' in html

    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (915, 412)
    assert img.std() > 20  # not a blank page
    # The live image is at the top, under the header: it carries the frame's colours, not the page's dark grey.
    strip = img[60:300]
    assert float(np.mean(strip.max(axis=2).astype(int) - strip.min(axis=2).astype(int))) > 30
    print(f"chromium: {streamed} stream frames, screenshot {shot} ({name} shelf)")
    if os.environ.get("SHELFSCOUT_UPDATE_DOCS_IMG"):
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG)


def test_the_page_says_what_is_wrong_with_the_service_instead_of_looks_good(tmp_path: Path) -> None:
    """The page said "Camera view looks good" while MQTT and systemd said degraded: a camera stream that had ended
    (the last picture stayed up, frozen), a broker refusing the cart's alerts. It shows the service's own state and
    reason now and no "looks good"; with no new frame, /status.json says how old the picture is (the page adds it).
    The browser part runs while frames flow (a headless browser waits on a stream that sends nothing)."""
    reason = "the broker refused 3 outbox message(s), last on shelfscout/s042/cart-07/alerts: Not authorized"
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    try:
        frame = shelf_images(7)[0][1]
        p.set_service_status("degraded", reason)
        with Feeder(p, frame, {"fps": 14.8, "model": "shelfgap v6", "status": "online"}):
            dom = _chromium(p.url, tmp_path, "--dump-dom")
            assert dom.returncode == 0, dom.stderr[-2000:]
        p.set_service_status("degraded", "camera: http://phone:8080/video: the stream ended")
        time.sleep(3.2)  # the camera stopped: no frame since
        status = p.status()
    finally:
        p.stop()
    html = dom.stdout
    assert 'data-code="service"' in html and "Not authorized" in html
    assert ">degraded<" in html and '<li class="ok">' not in html  # no "Camera view looks good"
    assert status["service"] == {"state": "degraded", "reason": "camera: http://phone:8080/video: the stream ended"}
    assert status["frame_age_s"] >= 3.0 and status["has_frame"]



def test_an_open_page_says_it_lost_the_cart_and_blanks_its_numbers(tmp_path: Path) -> None:
    """The service stopped under an open page: only the small grey pill said "offline", while the frozen picture,
    "Camera view looks good", the frame rate and the queue stayed up. Now the page says in red that it lost
    contact and the picture is frozen, and blanks the numbers."""
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    frame = shelf_images(7)[0][1]
    try:
        with Browser(p.url, tmp_path) as page:
            with Feeder(p, frame, {"fps": 14.8, "inference_ms": 4.6, "model": "shelfgap v6", "outbox_depth": 2}):
                shown = page.wait_for("document.getElementById('fps').textContent === '14.8'", 60)
                assert shown, "the page never showed the service's numbers"
                assert page.eval("document.querySelector('#hints li.ok') !== null")  # "looks good" while all is
            p.stop()  # the service is gone
            lost = page.wait_for("document.querySelector('#hints li[data-code=lost]')?.textContent", 15)
            pill = page.eval("[document.getElementById('state').textContent, document.getElementById('state')"
                             ".className]")
            numbers = page.eval("['fps', 'ms', 'outbox'].map(id => document.getElementById(id).textContent)")
            good = page.eval("document.querySelector('#hints li.ok') !== null")
    finally:
        p.stop()
    assert lost and "Lost contact with the cart" in lost and "picture is frozen" in lost
    assert pill == ["offline", "bad"]
    assert numbers == ["–", "–", "–"]  # no stale frame rate or queue
    assert not good  # no "Camera view looks good" under it


def test_an_open_page_reconnects_its_stream_after_the_service_restarts(tmp_path: Path) -> None:
    """After a restart the picture stayed frozen for good: the old stream had ended without an error event, and the
    page reconnected only on one. The status carries a token of the service's start; a new one reopens the stream;
    so does the first status after a lost contact."""
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    frame = shelf_images(7)[0][1]
    try:
        with Feeder(p, frame, {"fps": 14.8, "model": "shelfgap v6"}), Browser(p.url, tmp_path) as page:
            assert wait_for(lambda: p.streams_opened >= 1 and p.frames_streamed >= 3, 60), "the page never streamed"
            assert page.wait_for("document.getElementById('fps').textContent === '14.8'", 30)
            first = page.eval("document.getElementById('live').src")
            p.boot = "a later start"  # what the status of a service started anew on the same port says
            reopened = wait_for(lambda: p.streams_opened >= 2, 30)
            second = page.eval("document.getElementById('live').src")
    finally:
        p.stop()
    assert reopened, "the page did not open the stream again"
    assert first != second and "/stream.mjpg?t=" in second



@pytest.mark.parametrize("size", [(1280, 800), (1366, 768), (412, 915)])
def test_the_numbers_and_the_first_hint_are_above_the_fold(tmp_path: Path, size: tuple[int, int]) -> None:
    """On a 1280x800 laptop the 640x480 picture was stretched to the page's width (1280x960, a 2x upscale): the
    numbers and the mounting hints were all below the fold. The picture now takes at most 60 % of the height, and
    sits beside them on a wide screen; a phone keeps the picture on top."""
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    frame = shelf_images(7)[0][1]
    try:
        with Feeder(p, frame, {"fps": 14.8, "inference_ms": 4.6, "model": "shelfgap v6", "outbox_depth": 2}), \
                Browser(p.url, tmp_path, size=size) as page:
            assert page.wait_for("document.getElementById('fps').textContent === '14.8'", 60)
            assert page.wait_for("document.getElementById('live').naturalWidth > 0", 30), "no picture shown"
            box = page.eval("""(() => {
                const r = sel => document.querySelector(sel).getBoundingClientRect();
                const live = r('#live');
                return {w: innerWidth, h: innerHeight, live: [live.top, live.width, live.height],
                        tiles: r('.grid').bottom, hint: r('#hints li').top};
            })()""")
    finally:
        p.stop()
    assert box["tiles"] <= box["h"] and box["hint"] < box["h"], box  # numbers and the first hint in view
    top, width, height = box["live"]
    assert top < 80 and height >= 0.3 * box["h"], box  # the picture first, and not shrunk to a stamp
    if box["w"] < 900:
        assert width >= box["w"] - 1, box  # a phone: the full width
