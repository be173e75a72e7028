"""edge.resize.Resizer gives cv2.INTER_AREA's pixels (within 1 grey level, from rounding twice) for the frame
sizes it speeds up, and exactly cv2's pixels for every other size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from convert.synth import make_shelf_image
from edge.resize import Resizer


@pytest.mark.parametrize(
    ("src", "dst", "separable"),
    [
        ((640, 480), (320, 320), True),  # a 4:3 camera frame into the default model input
        ((640, 360), (320, 320), True),  # 16:9
        ((1280, 960), (640, 640), True),
        ((640, 480), (320, 240), False),  # integer ratios: OpenCV's own fast path
        ((416, 416), (320, 320), False),  # width not halved
        ((640, 600), (320, 320), False),  # height ratio 15/8: a phase spans three rows
    ],
)
def test_area_resize_matches_opencv(src: tuple[int, int], dst: tuple[int, int], separable: bool) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
    shelf = np.ascontiguousarray(make_shelf_image(rng, src[0], src[1]).image)
    r = Resizer(*src, *dst)
    assert r.separable == separable
    for img in (noise, shelf):
        out = np.full((dst[1], dst[0], 3), 7, np.uint8)
        r(img, out)
        ref = cv2.resize(img, dst, interpolation=cv2.INTER_AREA)
        diff = np.abs(out.astype(np.int16) - ref)
        assert int(diff.max()) <= (1 if separable else 0)
        assert float(diff.mean()) < 0.3


def test_writes_into_the_given_buffer_without_allocating_per_frame() -> None:
    import tracemalloc

    r = Resizer(640, 480, 320, 320)
    img = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = np.empty((320, 320, 3), np.uint8)
    r(img, out)  # warm up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            r(img, out)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 320 * 320 * 3 // 4, f"{peak} bytes allocated per call"
    np.testing.assert_allclose(out, cv2.resize(img, (320, 320), interpolation=cv2.INTER_AREA), atol=1)
