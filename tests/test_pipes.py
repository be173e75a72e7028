"""The test suite's read deadline: a child that stalls is killed and the read fails instead of hanging."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipes import killed_after


def test_a_child_that_writes_nothing_is_killed_and_the_read_fails() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with pytest.raises(AssertionError, match="still running after 0.5 s"):
        with killed_after(proc, 0.5):
            assert proc.stdout.readline() == ""  # end of file once killed
    assert proc.wait(10) != 0


def test_a_child_that_answers_in_time_is_left_running() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(2)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with killed_after(proc, 30):
        assert proc.stdout.readline().strip() == "ready"
    assert proc.poll() is None
    assert proc.wait(10) == 0
