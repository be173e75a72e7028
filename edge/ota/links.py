"""The `current` and `previous` symlinks in models_dir: read them, and replace them atomically."""

from __future__ import annotations

import os
from pathlib import Path

from edge.atomic import fsync_dir

CURRENT = "current"
PREVIOUS = "previous"


def target(models_dir: Path, link: str) -> Path | None:
    """The folder a link points at (inside models_dir), or None when the link is missing or dangling."""
    p = models_dir / link
    if not p.is_symlink():
        return None
    dest = models_dir / os.readlink(p)
    return dest if dest.is_dir() else None


def set_link(models_dir: Path, link: str, dest: Path | None) -> None:
    """Point `link` at `dest` (a folder in models_dir) by renaming a fresh temp link over it; None removes it."""
    p = models_dir / link
    if dest is None:
        try:
            p.unlink()
        except FileNotFoundError:
            return
        fsync_dir(models_dir)
        return
    if dest.parent.resolve() != models_dir.resolve():
        raise ValueError(f"{dest} is not a folder in {models_dir}")
    tmp = models_dir / f".{link}.tmp"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(dest.name, tmp)  # relative, so the folder can move as a whole
    os.replace(tmp, p)
    fsync_dir(models_dir)
