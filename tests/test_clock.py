"""When the wall clock cannot be trusted: before this release, or (where systemd-timesyncd runs, as on a Pi) not
synchronised since boot, when it reads the saved time of the last shutdown however recent that looks."""

from __future__ import annotations

import time
from pathlib import Path

from edge.clock import EARLIEST, clock_problem


def test_a_clock_before_this_release_is_not_set(tmp_path: Path) -> None:
    said = clock_problem(12.0, tmp_path / "no-timesyncd")
    assert said is not None and "it reads 1970-01-01T00:00:12Z" in said
    assert clock_problem(time.time(), tmp_path / "no-timesyncd") is None  # no timesyncd here: a recent clock may be


def test_where_timesyncd_runs_a_recent_clock_counts_only_once_it_synchronised(tmp_path: Path) -> None:
    """A Pi boots at the time it last shut down (timesyncd's saved clock): recent, and wrong by the downtime. The
    review of this check found it passed that clock; the `synchronized` flag timesyncd writes is what tells."""
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    last_shutdown = EARLIEST + 30 * 86400
    said = clock_problem(last_shutdown, timesync)
    assert said is not None and "not synchronised yet" in said
    (timesync / "synchronized").touch()
    assert clock_problem(last_shutdown, timesync) is None
