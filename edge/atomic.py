"""Whole-file writes that survive a power cut: a temporary file in the same folder, fsync, rename, fsync the folder.

A reader sees the old file or the new one, never half of either. The temporary name is fixed per target
(`.NAME.tmp`), so a write cut short leaves at most one stray file, which the next write to the same target
replaces; a write that fails with an error removes it. Each file has one writer (the service's alert state, the OTA
updater's state, one `detect --prelabel` run): two processes writing the same file at once would share the
temporary.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside folder `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` (creating its folder if needed) by `data`, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
