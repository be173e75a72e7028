"""`shelfscout demo` end to end (what `make demo` runs): embedded amqtt broker, the real service and model, alerts
received, summary and contact sheet written; also panning across a folder of labelled photos (generated here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.synth import make_shelf_image
from edge.bundle import DEFAULT_BUNDLE
from edge.yolo import yolo_lines

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="the default model bundle has not been built")


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", "demo", "--fast", "--no-preview", *args],
                          capture_output=True, text=True, timeout=240)


def _looping_demo(out: Path) -> subprocess.Popen[str]:
    """`shelfscout demo --loop` on a 5 s aisle of 3 gaps into `out`, returned once the cart rolls."""
    proc = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--loop", "--no-preview", "--seconds", "5",
                             "--gaps", "3", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("cart rolling until Ctrl-C"):
            break
    return proc


def test_demo_on_a_generated_aisle(tmp_path: Path) -> None:
    r = _demo("--seconds", "8", "--gaps", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["labelled"] and summary["true_gaps"] == 3 and summary["exit_code"] == 0
    assert summary["gaps_alerted"], r.stdout  # the shipped model finds gaps on the scene it was made for
    assert not summary["duplicates"]
    assert "ALERT opened" in r.stdout and "done:" in r.stdout
    snaps = list((tmp_path / "snapshots").glob("*.jpg"))
    assert len(snaps) == summary["alerts_opened"] and (tmp_path / "alerts.jpg").is_file()
    assert all(cv2.imread(str(p)) is not None for p in snaps)


def test_demo_pans_across_a_folder_of_photos(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "labels").mkdir()
    rng = np.random.default_rng(11)
    for i in range(3):
        s = make_shelf_image(rng, 416, 416)
        cv2.imwrite(str(photos / "images" / f"s{i}.jpg"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        (photos / "labels" / f"s{i}.txt").write_text(yolo_lines(s.boxes, 416, 416))
    out = tmp_path / "out"
    r = _demo("--photos", str(photos), "--photos-count", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "panning across 3 photos" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == str(photos) and summary["labelled"]
    assert summary["true_gaps"] > 0 and summary["gaps_alerted"] and not summary["duplicates"]


def test_demo_photos_folder_errors_are_one_line(tmp_path: Path) -> None:
    r = _demo("--photos", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "--photos:" in r.stderr and "no photos" in r.stderr and "Traceback" not in r.stderr


def test_a_looping_demo_rolls_the_aisle_until_ctrl_c_and_alerts_each_gap_once(tmp_path: Path) -> None:
    """`demo --loop` keeps the service (and its preview) up, pass after pass; the aisle's markers tell the cart it
    is the same aisle, so no gap is alerted twice. Ctrl-C ends it cleanly with the summary."""
    import signal
    import time

    proc = _looping_demo(tmp_path)
    try:
        time.sleep(20)  # a 5 s pass at the camera's pace: at least two, with time to load the model
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # it did roll down the aisle again (frames the camera gave; a slow machine processes fewer of them)
    assert summary["frames_read"] >= 2 * summary["pass_frames"], summary
    assert summary["frames"] > 0
    assert summary["gaps_alerted"] and not summary["duplicates"]
    assert summary["alerts_opened"] == len(summary["gaps_alerted"]) + len(summary["false_alarms"]), summary
    assert "done:" in out


def test_a_second_demo_on_the_same_folder_is_refused_and_a_rerun_starts_clean(tmp_path: Path) -> None:
    """A second `shelfscout demo` in the same checkout re-rendered the video under the running one (which then
    read a broken file), lost its outbox, printed a thread's traceback and still exited 0 with 0 alerts. It is
    refused now, in one line, before it touches the folder. And a demo run again on its folder shows that run's
    snapshots only (the contact sheet piled up copies of every earlier run's)."""
    import signal
    import time

    first = _looping_demo(tmp_path)
    try:
        video = (tmp_path / "cart-pass.mp4").read_bytes()
        second = _demo("--seconds", "6", "--out", str(tmp_path))
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"another `shelfscout demo` (pid {first.pid}) is using" in second.stderr and "--out" in second.stderr
        assert "systemctl" not in second.stderr
        assert (tmp_path / "cart-pass.mp4").read_bytes() == video  # untouched
        time.sleep(8)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    r = _demo("--seconds", "8", "--gaps", "3", "--out", str(tmp_path))  # again, on the same folder
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(list((tmp_path / "snapshots").glob("*.jpg"))) == summary["alerts_opened"]


def test_the_demo_keeps_its_preview_port_when_the_last_run_had_a_viewer() -> None:
    """`make demo` run again within a minute of a run someone watched moved the preview to a random port ("port
    8080 is busy"), so the open browser tab was dead: the check bound without SO_REUSEADDR, while the closed
    connections of the last run lingered in TIME_WAIT. The preview server itself could bind the port all along."""
    import socket
    import urllib.request

    from edge.commands.demo import _free_bind
    from edge.embedded_broker import free_port
    from edge.preview import PreviewServer

    bind = f"127.0.0.1:{free_port()}"
    p = PreviewServer(bind).start()
    try:
        p.offer(np.zeros((240, 320, 3), np.uint8), [], [], {})
        urllib.request.urlopen(p.url + "status.json", timeout=5).read()
        viewer = socket.create_connection(("127.0.0.1", p.port))
        viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        viewer.recv(100)
    finally:
        p.stop()  # the run ends with a viewer connected: the server's side of it closes first
    viewer.close()
    assert _free_bind(bind) == bind
    again = PreviewServer(bind).start()
    again.stop()
