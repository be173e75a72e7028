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
    assert "per gap: luma / sides" in text and "per gap: inner luma std" in text
    assert out.stat().st_size > 0
    assert main(["--real", str(folder), "--n", "2", "--dress", "1", "--out", str(out)]) == 0
    assert main(["--real", str(tmp_path / "missing"), "--n", "2", "--out", str(out)]) == 2


def _flatten_gaps(img: np.ndarray, boxes: np.ndarray, brighten: float = 1.0) -> np.ndarray:
    out = img.astype(np.float32)
    for x0, y0, x1, y1 in boxes.astype(int):
        reg = out[y0:y1, x0:x1]
        reg[:] = reg.reshape(-1, 3).mean(0) * brighten
    return np.clip(out, 0, 255).astype(np.uint8)


def test_per_gap_rows_tell_plain_gaps_and_lighter_gaps_apart() -> None:
    items = [(s.image, s.boxes) for s in (make_shelf_image(sample_rng(4, i), dress_p=1.0) for i in range(20))]
    a = [image_stats(img, b) for img, b in items]
    same = [image_stats(s.image, s.boxes) for s in (make_shelf_image(sample_rng(5, i), dress_p=1.0) for i in range(20))]
    flat = [image_stats(_flatten_gaps(img, b), b) for img, b in items]
    light = [image_stats(_flatten_gaps(img, b, 1.8), b) for img, b in items]
    near, far_flat, far_light = _rows(compare(a, same)), _rows(compare(a, flat)), _rows(compare(a, light))
    # painting each gap with its own mean removes all inside variation and keeps its brightness
    assert all(v == 0.0 for st in flat for v in st.gap_inner_std)
    assert far_flat["per gap: inner luma std"] > 2 * near["per gap: inner luma std"]
    assert far_flat["per gap: luma / sides"] < 0.5 * far_light["per gap: luma / sides"]
    assert far_light["per gap: luma / sides"] > 3 * near["per gap: luma / sides"]
