"""What the CLI writes on the terminal is its own: no LiteRT INFO line among `eval`'s results, no raw FFmpeg/OpenCV
lines on each reconnect of a network camera; real errors still show (visual audit, L9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.bundle import DEFAULT_BUNDLE
from tests.mosquitto import Mosquitto
from tests.pipes import stop
from tests.test_e2e import start_service, write_config

REPO = Path(__file__).resolve().parents[1]
XNNPACK_LINE = "Created TensorFlow Lite XNNPACK delegate"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.skipif(not DEFAULT_BUNDLE.exists(), reason="models/shelfgap-default.bundle not built yet")


def test_eval_prints_no_litert_info_line(tmp_path: Path) -> None:
    from convert.synth import write_yolo_dataset

    data = write_yolo_dataset(tmp_path / "set", 2, seed=5)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "eval", str(data)], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "AP50" in r.stdout
    assert XNNPACK_LINE not in r.stderr and XNNPACK_LINE not in r.stdout


def test_what_else_is_written_while_the_interpreter_is_built_still_shows() -> None:
    # The line is dropped by holding file descriptor 2 while LiteRT builds the interpreter: anything else written
    # there then (a runtime's error, another thread's log) is passed on.
    code = ("import logging, os\n"
            "from edge.runtime import XNNPACK_INFO, _without_xnnpack_info\n"
            "logging.basicConfig(format='%(levelname)s %(message)s')\n"
            "with _without_xnnpack_info():\n"
            "    os.write(2, b'ERROR: a real one\\n' + XNNPACK_INFO + b'\\n')\n"
            "    logging.getLogger('x').warning('and a log line')\n"
            "os.write(2, b'after\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=ENV)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["ERROR: a real one", "WARNING and a log line", "after"]


def test_the_model_loads_when_stderr_cannot_be_held(monkeypatch: pytest.MonkeyPatch) -> None:
    # No temporary file (a full or read-only /tmp): the line is left as it is, the model still loads.
    import tempfile

    from edge.bundle import BUILTIN_KEYS, load_public_keys, read_bundle
    from edge.runtime import make_interpreter

    def no_file(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    import edge.runtime

    monkeypatch.setattr(edge.runtime, "_banner_hidden", True)  # as the CLI sets it for every command but `run`
    monkeypatch.setattr(tempfile, "TemporaryFile", no_file)
    bundle = read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))
    _, info = make_interpreter(bundle.model_bytes, 1)
    assert info.name == "ai-edge-litert"


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_a_network_camera_that_refuses_leaves_only_the_services_own_lines(tmp_path: Path,
                                                                          broker: Mosquitto) -> None:
    url = f"http://127.0.0.1:{_refused_port()}/video"
    cfg = write_config(tmp_path, Path("unused"), broker.url)
    cfg.write_text(cfg.read_text().replace('source = "unused"', f'source = "{url}"'))
    log = tmp_path / "service.log"
    proc = start_service(cfg, log)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "cannot connect" not in log.read_text() and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(6)  # the capture reopens it after 0.5, 1, 2.5 and 4 s: several more attempts (said once)
    finally:
        stop(proc, 60)
    text = log.read_text()
    assert "cannot connect (unreachable, refused or not a video stream)" in text, text[-3000:]  # its own line
    for noise in ("[tcp @", "VIDEOIO(FFMPEG)", "[ WARN:"):
        assert noise not in text, f"{noise!r} in the service's stderr:\n{text[-3000:]}"
    # the service leaves fd 2 alone (a crash while it was held would lose its stack dump): the journal keeps the line
    assert XNNPACK_LINE in text


def test_importing_the_sources_leaves_the_process_environment_alone() -> None:
    # the CLI quiets FFmpeg and OpenCV (`quiet_video_logs`); a library user who imports the sources keeps their own
    code = "import os, edge.sources; print(os.environ.get('OPENCV_FFMPEG_LOGLEVEL'))"
    env = {k: v for k, v in ENV.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
