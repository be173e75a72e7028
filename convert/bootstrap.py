"""Bootstrap intervals for AP50 over images: how far the figure would move on another sample of the same kind of
photos, for one detector or as the paired difference of two detectors measured on the same images.

A resample draws as many images as the set has, with replacement. Matching is per image, so each detection's
true/false-positive flag does not depend on which other images are drawn: a resample only reweights the detections
(weight = how often their image was drawn) and the ground-truth count. Weighting a detection by k gives exactly the
AP of the set with that image repeated k times (the interpolated precision of the first k-1 copies is that of the
last), so no resample is matched again. The interval is the percentile interval of the resampled AP50s. For two
detectors the same draws are used for both, so the interval of the difference leaves out how hard the photos are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convert.evaluate import ImageDetections, average_precision, match_all

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A figure on the images as given, and its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    level: float
    resamples: int

    def to_dict(self) -> dict[str, float | int]:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "level": self.level, "resamples": self.resamples}


@dataclass(frozen=True)
class Comparison:
    """AP50 of detector A minus detector B on the same images, and the share of resamples in which A is higher."""

    diff: Interval
    share_a_higher: float

    def to_dict(self) -> dict[str, object]:
        return {"ap50_diff": self.diff.to_dict(), "share_a_higher": round(self.share_a_higher, 4)}


@dataclass(frozen=True)
class Matched:
    """One detector's detections over a set, in descending score order, with their match flags."""

    tp: np.ndarray  # (N,) bool
    image: np.ndarray  # (N,) index of the detection's image
    gt_per_image: np.ndarray  # (images,) ground-truth boxes per image

    @staticmethod
    def of(dets: Sequence[ImageDetections], gts: Sequence[np.ndarray], iou_thr: float = 0.5) -> Matched:
        m = match_all(dets, gts, iou_thr)
        tp, image = m.tp, m.image
        counts = np.array([len(np.asarray(g).reshape(-1, 4)) for g in gts], np.float64)
        return Matched(tp, image.astype(np.int64), counts)

    def ap50(self, weights: np.ndarray) -> float:
        """AP of the set with image i counted weights[i] times."""
        n_gt = float(np.dot(weights, self.gt_per_image))
        if n_gt <= 0:
            return 0.0
        w = weights[self.image]
        ctp = np.cumsum(w * self.tp)
        cfp = np.cumsum(w * ~self.tp)
        return average_precision(ctp / n_gt, ctp / np.maximum(ctp + cfp, 1e-12))


def _draws(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) counts: how often each image is drawn in each resample."""
    if images < 1:
        raise ValueError("no images to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(images, np.full(images, 1.0 / images), size=resamples).astype(np.float64)


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return Interval(float(value), float(lo), float(hi), level, len(samples))


def ap50_interval(
    m: Matched, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> Interval:
    """AP50 on the images as given, with its bootstrap interval over images."""
    w = _draws(len(m.gt_per_image), resamples, seed)
    samples = np.array([m.ap50(row) for row in w])
    return _interval(m.ap50(np.ones(len(m.gt_per_image))), samples, level)


def compare_ap50(
    a: Matched, b: Matched, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> Comparison:
    """AP50(a) - AP50(b) on the same images, with the interval of the paired difference."""
    if len(a.gt_per_image) != len(b.gt_per_image) or not np.array_equal(a.gt_per_image, b.gt_per_image):
        raise ValueError("the two detectors were not measured on the same images")
    n = len(a.gt_per_image)
    w = _draws(n, resamples, seed)
    diffs = np.array([a.ap50(row) - b.ap50(row) for row in w])
    ones = np.ones(n)
    return Comparison(_interval(a.ap50(ones) - b.ap50(ones), diffs, level), float(np.mean(diffs > 0)))
