"""Where a model's scores overstate or understate how often its detections are gaps: by box height and by place.

A score is only useful for ranking if a detection scored 0.6 is a gap about as often wherever it is. A model trained
on generated shelves and measured on real photos is not: on ESD its detections near the top of the frame (signs,
wall, ceiling) and its very small and very large boxes are gaps far less often than their scores say
(models/NOTES.md). These tables show that for any model on any labelled folder, so an ML engineer sees where a
fine-tuning or a region of interest would pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convert.evaluate import ImageDetections, match_all

# box height in model-input pixels: ESD's gaps are mostly 12-40 px tall at 320 (models/NOTES.md)
HEIGHT_EDGES = (0.0, 12.0, 18.0, 26.0, 40.0, float("inf"))
# centre of the box, as a share of the frame's height from the top
PLACE_EDGES = (0.0, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)
MIN_SCORE = 0.3  # detections below it are left out: they are not what a cart alerts on


@dataclass(frozen=True)
class ScoreBin:
    """The detections whose measure lies in [low, high): how many, their mean score, and the share that are gaps."""

    low: float
    high: float
    detections: int
    mean_score: float
    share_gaps: float  # matched to a labelled gap at the IoU threshold (greedy, as for AP)

    @property
    def overconfident(self) -> bool:
        """Fewer than half as many of these detections are gaps as their mean score says."""
        return self.detections > 0 and self.share_gaps < 0.5 * self.mean_score


@dataclass(frozen=True)
class ScoreBins:
    measure: str
    bins: list[ScoreBin]


def score_bins(
    dets: Sequence[ImageDetections],
    gts: Sequence[np.ndarray],
    frame_heights: Sequence[int],
    input_height: int,
    min_score: float = MIN_SCORE,
    iou_thr: float = 0.5,
    letterbox_in: tuple[Sequence[int], int] | None = None,
) -> list[ScoreBins]:
    """Bins of the detections scoring >= `min_score`, by box height at the model's input and by vertical place.
    The frames are squashed to the input, unless `letterbox_in` = (each frame's width, the input's width): then a
    frame keeps its aspect ratio in the input (a letterboxing bundle)."""
    if not (len(dets) == len(gts) == len(frame_heights)):
        raise ValueError(f"{len(dets)} detection lists, {len(gts)} label lists and {len(frame_heights)} heights")
    if letterbox_in is None:
        to_input = [input_height / max(fh, 1) for fh in frame_heights]
    else:
        from edge.resize import Letterbox

        widths, input_width = letterbox_in
        to_input = [Letterbox.fit(fw, fh, input_width, input_height).h / max(fh, 1)
                    for fw, fh in zip(widths, frame_heights, strict=True)]
    kept: list[ImageDetections] = []
    heights: list[np.ndarray] = []
    places: list[np.ndarray] = []
    for d, fh, k in zip(dets, frame_heights, to_input, strict=True):
        s = np.asarray(d.scores, np.float64).reshape(-1)
        m = s >= min_score
        b = np.asarray(d.boxes, np.float64).reshape(-1, 4)[m]
        kept.append(ImageDetections(b, s[m]))
        heights.append((b[:, 3] - b[:, 1]) * k)
        places.append(np.clip(0.5 * (b[:, 1] + b[:, 3]) / max(fh, 1), 0.0, 1.0))
    matches = match_all(kept, gts, iou_thr)
    scores, tp, img, local = matches.scores, matches.tp, matches.image, matches.local
    # match_all lists the detections in score order by (image, index in image): find each one's measures
    at = np.concatenate([[0], np.cumsum([len(k.scores) for k in kept])])[img.astype(int)] + local.astype(int)
    height = np.concatenate(heights)[at] if heights else np.zeros(0)
    place = np.concatenate(places)[at] if places else np.zeros(0)
    return [
        ScoreBins(f"box height in model-input pixels (input {input_height} px high)", _bins(height, scores, tp, HEIGHT_EDGES)),
        ScoreBins("box centre, share of the frame's height from the top", _bins(place, scores, tp, PLACE_EDGES)),
    ]


def _bins(v: np.ndarray, scores: np.ndarray, tp: np.ndarray, edges: Sequence[float]) -> list[ScoreBin]:
    out = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = k == len(edges) - 2
        sel = (v >= lo) & ((v <= hi) if last else (v < hi))
        n = int(sel.sum())
        out.append(ScoreBin(float(lo), float(hi), n, float(scores[sel].mean()) if n else 0.0,
                            float(tp[sel].mean()) if n else 0.0))
    return out
