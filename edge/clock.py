"""Whether the wall clock can be right: a Pi has no real-time clock and boots at 1970 (or at the time it shut down)
until NTP sets it."""

from __future__ import annotations

from datetime import datetime, timezone

# Before this shelfscout was made: a clock that reads earlier has not been set since the device booted.
EARLIEST = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()


def clock_problem(now: float) -> str | None:
    """Why the wall-clock time `now` (seconds) cannot be right, or None when it may be."""
    if now >= EARLIEST:
        return None
    shown = datetime.fromtimestamp(max(now, 0.0), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"the clock is not set (it reads {shown}, before this shelfscout was made; NTP has not set it yet)"
