"""The one whole-file writer behind bundles, the OTA state, the alert state, saved snapshots and prelabel folders."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edge.atomic import write_atomic


def test_a_write_that_fails_half_way_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b'{"highest_version": 6}\n')

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new bytes are written but never made durable
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b'{"highest_version": 7}\n')
    assert target.read_bytes() == b'{"highest_version": 6}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_stray_temporary_of_a_power_cut_is_replaced_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "labels" / "frame_000010.txt"
    write_atomic(target, b"0 0.5 0.5 0.1 0.1\n")  # also makes the folder
    stray = target.with_name(f".{target.name}.tmp")
    stray.write_bytes(b"0 0.25 0.")  # what a power cut between write and rename leaves behind
    assert target.read_bytes() == b"0 0.5 0.5 0.1 0.1\n"  # the reader still sees the whole old file

    write_atomic(target, b"0 0.25 0.5 0.2 0.1\n")
    assert target.read_bytes() == b"0 0.25 0.5 0.2 0.1\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["frame_000010.txt"]
