"""Writes frames and the model's gaps as a YOLO folder (`images/`, `labels/`, `classes.txt`) to correct in a labelling
tool, so that labelling a store's own recordings for `shelfscout finetune` starts from the model's guesses.

A frame's label file, once there, is never overwritten: a second run over the same recordings adds the frames it
has not written before and keeps every label a person has corrected since. Which recording or photo each file came
from is kept in `sources.json`, so another recording with the same file name (every camera's `IMG_0001.jpg`, a
second `aisle.mp4` from another day) gets names of its own (`_2`) instead of being taken for the first. Each file
is written whole or not at all (temporary file, fsync, rename), so a power cut leaves no half-written label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.atomic import write_atomic
from edge.types import Gap
from edge.yolo import yolo_lines

CLASSES = "gap\n"  # the one class; Label Studio's YOLO import reads its names from classes.txt
JPEG_QUALITY = 95
SOURCES = "sources.json"  # file stem -> the absolute path of the recording or photo it came from
COPY_AS_IS = frozenset({".jpg", ".jpeg", ".png"})  # image files kept byte for byte, the rest become JPEG


def unique_stem(path: Path, frame: int | None, used: set[str]) -> str:
    """The file stem of an image or a video frame (`pass_f000030`), made unique among `used` (and added to it)."""
    base = path.stem if frame is None else f"{path.stem}_f{frame:06d}"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


@dataclass
class PrelabelFolder:
    """A YOLO folder being filled with frames and the model's gaps; counts what it wrote and what it kept."""

    root: Path
    written: int = 0
    gaps: int = 0
    kept: int = 0  # frames whose label file was already there (left as it was)
    _names: set[str] = field(default_factory=set)
    _sources: dict[str, str] = field(default_factory=dict)  # file stem -> the recording or photo it came from

    @classmethod
    def open(cls, root: Path) -> PrelabelFolder:
        """Create `root/images`, `root/labels` and `root/classes.txt` (an existing classes.txt is left alone)."""
        for sub in ("images", "labels"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if not (root / "classes.txt").exists():
            write_atomic(root / "classes.txt", CLASSES.encode())
        sources: dict[str, str] = {}
        try:
            loaded = json.loads((root / SOURCES).read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                sources = {str(k): str(v) for k, v in loaded.items()}
        except (OSError, ValueError):
            pass  # none yet (or unreadable): files already there count as this run's sources' own
        return cls(root, _sources=sources)

    def add(self, path: Path, frame: int | None, img: np.ndarray, gaps: Sequence[Gap]) -> bool:
        """Write the RGB image (then its labels) unless this source's label file exists; True when written."""
        source = str(path.resolve())
        while True:
            stem = unique_stem(path, frame, self._names)
            label = self.root / "labels" / f"{stem}.txt"
            if not label.exists():
                break
            if self._sources.get(stem, source) == source:  # this frame, written (and maybe corrected) before
                self.kept += 1
                return False
            # a file of another recording with the same name: this one takes the next name
        suffix = path.suffix.lower()
        if frame is None and suffix in COPY_AS_IS:
            write_atomic(self.root / "images" / f"{stem}{suffix}", path.read_bytes())
        else:
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise OSError(f"cannot encode {stem} as JPEG")
            write_atomic(self.root / "images" / f"{stem}.jpg", jpg.tobytes())
        h, w = img.shape[:2]
        boxes = np.array([[g.x0, g.y0, g.x1, g.y1] for g in gaps], np.float32)
        self._sources[stem] = source
        write_atomic(self.root / SOURCES, json.dumps(self._sources, indent=0, sort_keys=True).encode())
        write_atomic(label, yolo_lines(boxes, w, h).encode())  # last: a label never points at a missing image
        self.written += 1
        self.gaps += len(gaps)
        return True
