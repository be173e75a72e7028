"""Named fault points for crash tests: `SHELFSCOUT_OTA_FAULT=<name>` makes the process die at that point."""

from __future__ import annotations

import os

ENV = "SHELFSCOUT_OTA_FAULT"
POINTS = (
    "after-download",
    "after-verify",
    "after-extract",
    "after-smoke",
    "after-state",
    "after-previous",
    "after-rename",
    "after-swap",
    "during-probation",
)
SMOKE_CHILD_KILLED = "smoke-child-killed"  # the smoke test's child is SIGKILLed, as the out-of-memory killer does


def fault_point(name: str) -> None:
    """Die at once (like a power cut: no cleanup, no flush) when the environment names this point."""
    if os.environ.get(ENV) == name:
        os._exit(86)


def killed_point(name: str) -> None:
    """Be killed with SIGKILL at once when the environment names this point (the OOM killer's way)."""
    if os.environ.get(ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
