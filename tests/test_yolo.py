"""The one YOLO label reader and writer (generated data sets, prelabel folders, every folder eval and finetune read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.yolo import read_yolo_labels, yolo_lines


def test_yolo_labels_to_pixels(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("0 0.5 0.25 0.2 0.1\n\n0 0.05 0.1 0.2 0.2\n")
    b = read_yolo_labels(p, 400, 200)
    np.testing.assert_allclose(b, [[160, 40, 240, 60], [0, 0, 60, 40]], atol=1e-4)  # the second is clipped at 0
    assert read_yolo_labels(tmp_path / "missing.txt", 10, 10).shape == (0, 4)


def test_written_labels_read_back_as_the_boxes_clipped_to_the_image(tmp_path: Path) -> None:
    boxes = np.array([[160, 40, 240, 60],  # inside
                      [-20, 150, 30, 230],  # over the left and bottom edges: clipped to (0, 150, 30, 200)
                      [410, 10, 450, 30]],  # wholly outside: left out
                     np.float32)
    text = yolo_lines(boxes, 400, 200)
    assert text.splitlines()[0] == "0 0.500000 0.250000 0.200000 0.100000"
    p = tmp_path / "b.txt"
    p.write_text(text)
    np.testing.assert_allclose(read_yolo_labels(p, 400, 200), [[160, 40, 240, 60], [0, 150, 30, 200]], atol=1e-3)
    assert yolo_lines(np.zeros((0, 4), np.float32), 400, 200) == ""


def test_a_short_line_names_its_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"c\.txt:2: expected 'class cx cy w h'"):
        read_yolo_labels(p, 100, 100)
