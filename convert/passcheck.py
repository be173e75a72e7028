"""Score the alerts of a replayed cart pass against its ground truth: which true gap each `opened` alert names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from convert.cartpass import CartPass


@dataclass
class PassScore:
    """How a pass's `opened` alerts map onto its true gaps."""

    true_gaps: list[int]
    matched: dict[int, list[str]] = field(default_factory=dict)  # gap id -> alert ids that named it
    false_alarms: list[str] = field(default_factory=list)  # alert ids that named no true gap

    @property
    def found(self) -> list[int]:
        return sorted(self.matched)

    @property
    def duplicates(self) -> dict[int, list[str]]:
        return {g: ids for g, ids in self.matched.items() if len(ids) > 1}

    @property
    def recall(self) -> float:
        return len(self.matched) / len(self.true_gaps) if self.true_gaps else 1.0

    def summary(self) -> str:
        return (f"{len(self.found)}/{len(self.true_gaps)} true gaps alerted, {len(self.duplicates)} duplicated, "
                f"{len(self.false_alarms)} false alarms")


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_alert(cp: CartPass, alert: Mapping[str, Any], min_iou: float = 0.2) -> int | None:
    """The true gap an alert payload's `bbox` covers in its `frame`, or None."""
    frame = int(alert["frame"])
    if not 0 <= frame < len(cp.truth):
        return None
    w, h = cp.frame_size
    x0, y0, x1, y1 = alert["bbox"]
    box = (x0 * w, y0 * h, x1 * w, y1 * h)
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    best, best_score = None, 0.0
    for g in cp.truth[frame].gaps:
        score = _iou(box, g.box)
        inside = g.box[0] <= cx <= g.box[2] and g.box[1] <= cy <= g.box[3]
        if (score >= min_iou or inside) and score >= best_score:
            best, best_score = g.gap_id, score
    return best


def score_pass(cp: CartPass, alerts: Iterable[Mapping[str, Any]]) -> PassScore:
    """Score the distinct `opened` alerts (deduplicated by id) of one pass."""
    seen: set[str] = set()
    result = PassScore(true_gaps=sorted(g.gap_id for g in cp.gaps))
    for a in alerts:
        if a.get("event") != "opened" or a["id"] in seen:
            continue
        seen.add(a["id"])
        gap = match_alert(cp, a)
        if gap is None:
            result.false_alarms.append(a["id"])
        else:
            result.matched.setdefault(gap, []).append(a["id"])
    return result
