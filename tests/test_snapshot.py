"""render_snapshot: a decodable JPEG of the right size with the gap marked, the caller's frame untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.sink import snapshot_label
from edge.snapshot import render_snapshot
from edge.types import AlertEvent, Location
from tests.test_tracker_scene import Camera, make_aisle


def _decode(jpeg: bytes) -> np.ndarray:
    assert jpeg[:3] == b"\xff\xd8\xff" and jpeg[-2:] == b"\xff\xd9"
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _is_red(bgr: np.ndarray) -> np.ndarray:
    b, g, r = (bgr[..., i].astype(int) for i in range(3))
    return (r > 170) & (g < 90) & (b < 90)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    aisle = make_aisle(length=1600, gaps=((700, 110, 1),), marker_ids=())
    return Camera(aisle, seed=0).frame(400.0, 0.0)[0].image


def test_snapshot_is_a_downscaled_jpeg_with_the_box_drawn(frame: np.ndarray) -> None:
    big = cv2.resize(frame, (1280, 960), interpolation=cv2.INTER_LINEAR)  # a main-stream sized frame
    before = big.copy()
    box = (600.0, 248.0, 820.0, 456.0)  # the gap (x 700..810 at offset 400, level 1), scaled x2
    jpeg = render_snapshot(big, box, max_px=640, label="gap 0.87")
    assert np.array_equal(big, before)
    img = _decode(jpeg)
    assert img.shape == (480, 640, 3)
    red = _is_red(img)
    # the box outline at half scale: red along its left edge, none in its interior or far away
    assert red[130:220, 298:303].mean() > 0.8
    assert red[150:210, 330:390].mean() < 0.05
    assert red[400:, :200].mean() < 0.01
    # the label above the box is white text on a red band
    band = img[95:122, 300:360]
    assert _is_red(band).mean() > 0.3 and (band.min(axis=2) > 200).mean() > 0.02


def test_colours_are_converted_from_rgb(frame: np.ndarray) -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 0] = 255  # pure red in RGB
    img = _decode(render_snapshot(rgb, None, max_px=640))
    assert img.shape == (100, 200, 3)  # never upscaled
    assert img[50, 100, 2] > 240 and img[50, 100, 0] < 15  # red in BGR


def test_box_outside_the_frame_is_clipped_and_quality_changes_size(frame: np.ndarray) -> None:
    jpeg = render_snapshot(frame, (-50.0, -20.0, 700.0, 500.0), max_px=320)
    img = _decode(jpeg)
    assert img.shape == (240, 320, 3)
    assert _is_red(img)[:, :2].mean() > 0.8  # the clipped left edge runs along the border
    assert len(render_snapshot(frame, None, quality=40)) < len(render_snapshot(frame, None, quality=95))


def test_bad_input_is_a_value_error(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="RGB"):
        render_snapshot(frame[..., 0], None)
    with pytest.raises(ValueError, match="max_px"):
        render_snapshot(frame, None, max_px=4)
    with pytest.raises(ValueError, match="finite"):
        render_snapshot(frame, (0.0, 0.0, float("nan"), 10.0))
    with pytest.raises(ValueError, match="quality"):
        render_snapshot(frame, None, quality=0)


def test_an_alert_snapshot_names_the_spot_a_gap_as_the_preview_and_the_report_do() -> None:
    # The snapshot said "empty 0.83" where the preview says "gap 0.83" and the report "missed gap".
    def event(kind: str) -> AlertEvent:
        return AlertEvent("cart-07-1-3", kind, 0.0, 0.0, 0.0, (0.1, 0.1, 0.3, 0.3), 0.834, 5, 12,
                          Location(None, None, "none"))

    assert snapshot_label(event("opened")) == "gap 0.83"
    assert snapshot_label(event("cleared")) == "restocked"
