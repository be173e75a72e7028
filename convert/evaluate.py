"""Detection metrics in pure numpy: greedy IoU-0.5 matching, precision/recall/F1 at a threshold, AP50 and the PR curve.

Matching: all detections of the data set are taken in descending score order; each is a true positive when its
best-overlapping still-unmatched ground-truth box of the same image has IoU >= the IoU threshold, which that box is
then matched to; otherwise it is a false positive. AP is the all-point interpolated area under the precision/recall
curve (VOC 2010+ style): precision is made monotone from the right and summed over each recall step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections: boxes (N, 4) x0, y0, x1, y1 and scores (N,)."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class PRPoint:
    score: float
    precision: float
    recall: float


@dataclass(frozen=True)
class ImageMatch:
    """Per image, for the report: which detections (above the threshold) hit, and which ground truths were missed."""

    det_tp: np.ndarray  # (N,) bool, for the detections at or above the threshold, in score order
    det_boxes: np.ndarray
    det_scores: np.ndarray
    gt_hit: np.ndarray  # (M,) bool


@dataclass(frozen=True)
class EvalResult:
    """Metrics of a detector on a labelled set."""

    threshold: float
    iou: float
    images: int
    ground_truth: int
    detections: int  # at or above the threshold
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap50: float
    best_f1: float
    best_f1_threshold: float
    pr_curve: list[PRPoint] = field(default_factory=list)

    def to_dict(self, curve_points: int = 50) -> dict[str, Any]:
        d = asdict(self)
        d["pr_curve"] = [asdict(p) for p in thin_curve(self.pr_curve, curve_points)]
        return d


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), x0, y0, x1, y1."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class Matches:
    """Every detection of a set, in descending score order, matched greedily to the labelled gaps."""

    scores: np.ndarray  # (N,) float
    tp: np.ndarray  # (N,) bool: matched a labelled gap not matched by a higher-scoring detection
    image: np.ndarray  # (N,) int: the image it belongs to
    local: np.ndarray  # (N,) int: its index in that image's detections
    gt_hit: list[np.ndarray]  # per image, (M,) bool: labelled gaps some detection matched


def match_all(dets: Sequence[ImageDetections], gts: Sequence[np.ndarray], iou_thr: float) -> Matches:
    """Global greedy matching of every detection (highest score first) to the labelled gaps of its image."""
    if len(dets) != len(gts):
        raise ValueError(f"{len(dets)} detection lists for {len(gts)} images")
    scores, img, local = [], [], []
    for i, d in enumerate(dets):
        s = np.asarray(d.scores, np.float64).reshape(-1)
        if len(s) != len(np.asarray(d.boxes).reshape(-1, 4)):
            raise ValueError(f"image {i}: {len(s)} scores for {len(d.boxes)} boxes")
        scores.append(s)
        img.append(np.full(len(s), i))
        local.append(np.arange(len(s)))
    all_s = np.concatenate(scores) if scores else np.zeros(0)
    all_i = np.concatenate(img) if img else np.zeros(0, int)
    all_l = np.concatenate(local) if local else np.zeros(0, int)
    order = np.argsort(-all_s, kind="stable")
    all_s, all_i, all_l = all_s[order], all_i[order], all_l[order]
    ious = [iou_matrix(np.asarray(d.boxes).reshape(-1, 4), np.asarray(g).reshape(-1, 4)) for d, g in zip(dets, gts, strict=True)]
    hit = [np.zeros(len(np.asarray(g).reshape(-1, 4)), bool) for g in gts]
    tp = np.zeros(len(all_s), bool)
    for k, (i, j) in enumerate(zip(all_i, all_l, strict=True)):
        row = ious[i][j] if ious[i].shape[1] else np.zeros(0)
        if row.size == 0:
            continue
        cand = np.where(hit[i], -1.0, row)
        best = int(np.argmax(cand))
        if cand[best] >= iou_thr:
            hit[i][best] = True
            tp[k] = True
    return Matches(all_s, tp, all_i, all_l, hit)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP from a PR curve ordered by descending score."""
    if recall.size == 0:
        return 0.0
    mrec = np.concatenate([[0.0], recall, [recall[-1]]])
    mpre = np.maximum.accumulate(np.concatenate([[1.0], precision, [0.0]])[::-1])[::-1]  # monotone from the right
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate(
    dets: Sequence[ImageDetections], gts: Sequence[np.ndarray], threshold: float, iou_thr: float = 0.5
) -> EvalResult:
    """Precision, recall and F1 of the detections scoring >= `threshold`, and AP over all detections."""
    m = match_all(dets, gts, iou_thr)
    scores, tp = m.scores, m.tp
    n_gt = int(sum(len(np.asarray(g).reshape(-1, 4)) for g in gts))
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / n_gt if n_gt else np.zeros(len(tp))
    precision = ctp / np.maximum(ctp + cfp, 1)
    ap = average_precision(recall, precision) if n_gt else 0.0
    above = int(np.sum(scores >= threshold))
    t = int(ctp[above - 1]) if above else 0
    f = above - t
    p = t / above if above else 0.0
    r = t / n_gt if n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    best_f1, best_thr = _best_f(scores, precision, recall, 1.0, threshold)
    curve = [PRPoint(float(s), float(pp), float(rr)) for s, pp, rr in zip(scores, precision, recall, strict=True)]
    return EvalResult(
        threshold=float(threshold),
        iou=float(iou_thr),
        images=len(gts),
        ground_truth=n_gt,
        detections=above,
        tp=t,
        fp=f,
        fn=n_gt - t,
        precision=float(p),
        recall=float(r),
        f1=float(f1),
        ap50=float(ap),
        best_f1=best_f1,
        best_f1_threshold=best_thr,
        pr_curve=curve,
    )


def check_beta(beta: float, name: str = "beta") -> float:
    """`beta` if it is a usable F-beta weight (positive and finite; NaN would pick an arbitrary threshold), else a
    ValueError naming `name` (the parameter, field or flag the caller took it from)."""
    if not (beta > 0 and np.isfinite(beta)):
        raise ValueError(f"{name} must be a positive number, got {beta}")
    return beta


def best_fbeta(result: EvalResult, beta: float) -> tuple[float, float]:
    """The highest F-beta over all thresholds of `result`'s PR curve, and the threshold (a detection score) giving it.

    beta < 1 weighs precision more than recall (F0.5: precision counts twice), beta 1 is `best_f1`.
    """
    check_beta(beta)
    c = result.pr_curve
    return _best_f(np.array([p.score for p in c]), np.array([p.precision for p in c]),
                   np.array([p.recall for p in c]), beta, result.threshold)


def _best_f(
    scores: np.ndarray, precision: np.ndarray, recall: np.ndarray, beta: float, default_threshold: float
) -> tuple[float, float]:
    """F-beta at every distinct score (the last detection of each run of equal scores): the best and its score."""
    if not len(scores):
        return 0.0, default_threshold
    last = np.nonzero(np.append(scores[1:] != scores[:-1], True))[0]
    b2 = beta * beta
    p, r = precision[last], recall[last]
    f = (1 + b2) * p * r / np.maximum(b2 * p + r, 1e-12)
    k = int(np.argmax(f))
    return float(f[k]), float(scores[last[k]])


def match_images(
    dets: Sequence[ImageDetections], gts: Sequence[np.ndarray], threshold: float, iou_thr: float = 0.5
) -> list[ImageMatch]:
    """Per-image hits, false alarms and misses of the detections at or above `threshold` (for reports)."""
    kept = []
    for d in dets:
        s = np.asarray(d.scores).reshape(-1)
        m = s >= threshold
        kept.append(ImageDetections(np.asarray(d.boxes).reshape(-1, 4)[m], s[m]))
    matches = match_all(kept, gts, iou_thr)
    tp, img, local, hit = matches.tp, matches.image, matches.local, matches.gt_hit
    out = []
    for i, d in enumerate(kept):
        sel = img == i
        order = local[sel]
        out.append(ImageMatch(tp[sel], d.boxes[order], d.scores[order], hit[i]))
    return out


def thin_curve(curve: Sequence[PRPoint], n: int) -> list[PRPoint]:
    """At most n points of a PR curve, evenly spread over its length, keeping the last."""
    if len(curve) <= n:
        return list(curve)
    idx = np.unique(np.linspace(0, len(curve) - 1, n).round().astype(int))
    return [curve[i] for i in idx]


def detect_with_bundle(
    bundle: Any, images: Sequence[np.ndarray], threads: int = 2, min_score: float = 0.05
) -> list[ImageDetections]:
    """Run a bundle's int8 model through the device Detector on RGB images; low threshold, for AP."""
    from edge.detector import Detector

    det = Detector(bundle, threads=threads, score_threshold=min_score)
    out = []
    for im in images:
        gaps = det.detect(im)
        out.append(
            ImageDetections(
                np.array([g.box for g in gaps], np.float32).reshape(-1, 4), np.array([g.score for g in gaps], np.float32)
            )
        )
    return out
