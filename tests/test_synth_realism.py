"""The realism report: its statistics read YOLO folders and tell alike data sets from different ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.realism import RealismReport, compare, image_stats, load_real, main, montage
from convert.synth import make_shelf_image, sample_rng, write_yolo_dataset


def _rows(rep: RealismReport) -> dict[str, float]:
    return {r.metric: r.distance for r in rep.rows}


def _halve_width(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2] = (boxes[:, 0] + boxes[:, 2]) / 2
    return out


def test_same_generator_is_close_and_a_shifted_one_is_not(tmp_path: Path) -> None:
    folder = write_yolo_dataset(tmp_path / "a", 24, seed=1)
    real = load_real(folder)
    assert len(real) == 24 and real[0][0].shape == (416, 416, 3)
    a = [image_stats(img, boxes) for img, boxes in real]
    same = [image_stats(s.image, s.boxes) for s in (make_shelf_image(sample_rng(2, i)) for i in range(24))]
    # the same images, darkened and with every box halved in width: a data set that is clearly different
    shifted = [image_stats((img * 0.5).astype(np.uint8), _halve_width(boxes)) for img, boxes in real]
    near, far = _rows(compare(a, same)), _rows(compare(a, shifted))
    assert near["box width px median"] < 0.35
    assert far["box width px median"] > 0.4
    assert far["non-gap luma mean"] > 3 * near["non-gap luma mean"]
    assert near["luma histogram (all px)"] < far["luma histogram (all px)"]
    grid = montage(real, real, n=3, tile=64)
    assert grid.shape == (2 * 64 + 6, 3 * 64, 3)


def test_cli_prints_a_table_and_writes_the_montage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_yolo_dataset(tmp_path / "real", 6, seed=3, width=128, height=128)
    out = tmp_path / "m.png"
    assert main(["--real", str(folder), "--n", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "boxes/image mean" in text and "gap/non-gap luma ratio" in text
    assert out.stat().st_size > 0
    assert main(["--real", str(tmp_path / "missing"), "--n", "2", "--out", str(out)]) == 2
