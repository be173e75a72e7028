"""`shelfscout markers`: the printed labels are read back by the tracker's own ArUco detector at the size a
mounted camera sees them, and bad ids are refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.commands.markers import a4_pages, marker_label
from edge.motion import MarkerDetector


@pytest.mark.parametrize("marker_px", [28, 40])  # just above the detector's 5 % gate, and the recommended 60 mm
def test_printed_label_is_read_back_at_mount_scale(marker_px: int) -> None:
    """A 60 mm marker at 1.5 mm/px (the mounting guide's camera distance) is 40 px tall in a 480-px frame."""
    label = marker_label(17, size_mm=60, dpi=300)
    side = round(60 / 25.4 * 300) // 6 * 6
    k = marker_px / side
    small = cv2.resize(label, (round(label.shape[1] * k), round(label.shape[0] * k)), interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 110, np.uint8)  # a mid-grey shelf face
    y, x = 200, 300
    frame[y:y + small.shape[0], x:x + small.shape[1]] = small[..., None]
    found = MarkerDetector(every=1).detect(frame)
    assert [m.id for m in found] == [17]
    assert abs(found[0].side - marker_px) < 3


def test_cli_writes_labels_and_pages(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "markers", str(tmp_path), "--ids", "3", "4", "5", "6", "7"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("marker-*.png")) == [f"marker-{i}.png" for i in range(3, 8)]
    pages = sorted(tmp_path.glob("markers-a4-*.png"))
    assert len(pages) == 2  # four 60 mm labels per A4 page
    page = cv2.imread(str(pages[0]), cv2.IMREAD_GRAYSCALE)
    assert page.shape == (3508, 2480)  # A4 at 300 dpi
    found = MarkerDetector(every=1, scale=1.0, min_side=0.01).detect(cv2.cvtColor(
        cv2.resize(page, (620, 877), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2RGB))
    assert sorted(m.id for m in found) == [3, 4, 5, 6]
    # 3 and 4, 5 and 6 are two aisles' ends; 7's partner, 8, is not printed: said, as a note
    assert "note: 7 without the other end's id" in r.stderr


def test_paired_ids_print_without_a_note(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "markers", str(tmp_path), "--ids", "1", "2", "4", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize(("ids", "message"), [
    (["50"], "--ids: 50: marker ids are 1-48"), (["2", "2"], "once"),
    # ArUco has 0 and 49, but no aisle could pair them (no partner id): refused, not a note as before
    (["0", "1", "2"], "--ids: 0: marker ids are 1-48"), (["49"], "--ids: 49: marker ids are 1-48")])
def test_bad_ids_are_one_line_errors(tmp_path: Path, ids: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "markers", str(tmp_path), "--ids", *ids],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_pages_refuse_a_label_larger_than_a4() -> None:
    with pytest.raises(ValueError, match="larger than an A4 page"):
        a4_pages([marker_label(1, size_mm=250, dpi=100)], dpi=100)
