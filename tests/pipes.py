"""A deadline for reading a child process's output: a child that stalls is killed, so the blocked read ends at end
of file and the test fails with what the child said, instead of hanging the run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def killed_after(proc: subprocess.Popen[Any], seconds: float, group: bool = False) -> Iterator[None]:
    """Kills PROC (its process group with `group`) if the block is still running after `seconds`: reads of its
    pipes inside the block then return end of file, and the block fails (with its own error if it raised one)."""
    fired = threading.Event()

    def kill() -> None:
        if proc.poll() is None:
            fired.set()
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if fired.is_set():
        raise AssertionError(f"the child was still running after {seconds:g} s, waiting for its output; killed")
