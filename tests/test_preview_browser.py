"""The preview page in headless Chromium at a phone's size: it loads, runs its script, shows stream frames and hints."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preview import PreviewServer
from tests.test_hints import _rotate, shelf_images
from tests.test_preview import INFO, Feeder

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


def test_preview_page_in_headless_chromium(tmp_path: Path) -> None:
    # A slightly tilted shelf: the page should show the stream, the numbers and the tilt hint.
    name, shelf = shelf_images(7)[-1]
    frame = _rotate(shelf, 8.0)
    p = PreviewServer("127.0.0.1:0", max_fps=10).start()
    try:
        with Feeder(p, frame, dict(INFO, state="running")):
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
    assert ">14.2<" in html and ">v3<" in html and ">32<" in html
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
