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


def fault_point(name: str) -> None:
    """Die at once (like a power cut: no cleanup, no flush) when the environment names this point."""
    if os.environ.get(ENV) == name:
        os._exit(86)
