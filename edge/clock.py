"""Whether the wall clock can be right: a Pi has no real-time clock and boots at 1970, or at the time it last shut
down (systemd-timesyncd's saved clock), until NTP sets it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

# Before this shelfscout was made: a clock that reads earlier has not been set since the device booted.
EARLIEST = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
# systemd-timesyncd's state folder: it creates `synchronized` there once NTP has set the clock since boot
TIMESYNC = Path("/run/systemd/timesync")


def clock_problem(now: float, timesync: Path = TIMESYNC) -> str | None:
    """Why the wall-clock time `now` (seconds) cannot be trusted, or None when it may be. Where timesyncd runs (a
    Raspberry Pi OS cart), a clock it has not synchronised since boot is the time the device last shut down, however
    recent that looks; elsewhere only a clock before this release is known to be wrong."""
    if now < EARLIEST:
        shown = datetime.fromtimestamp(max(now, 0.0), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"the clock is not set (it reads {shown}, before this shelfscout was made; NTP has not set it yet)"
    if timesync.is_dir() and not (timesync / "synchronized").exists():
        return ("the clock is not synchronised yet (systemd-timesyncd has not reached an NTP server since boot: it "
                "reads the time the device last shut down)")
    return None
