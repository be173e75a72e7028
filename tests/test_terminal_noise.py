"""What the CLI writes on the terminal is its own: no LiteRT INFO line among `eval`'s results; real errors still
show (visual audit, L9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import DEFAULT_BUNDLE

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
