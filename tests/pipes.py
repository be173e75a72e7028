"""Ending child processes in tests: a deadline for reading a child's output (a child that stalls is killed, so the
blocked read ends at end of file and the test fails with what the child said, instead of hanging the run), and a
stop that asks first and kills only a child that does not listen."""

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


def stop(proc: subprocess.Popen[Any], seconds: float, sig: int = signal.SIGTERM) -> int:
    """Send `sig` (SIGTERM: what systemd sends) and wait up to `seconds` for PROC to end; kill it if it has not.
    Returns its exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
