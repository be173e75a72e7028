"""Score the alerts of a replayed cart pass against its ground truth: which true gap each `opened` alert names."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from convert.cartpass import CartPass
from edge.config import Config


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


@dataclass
class PassTally:
    """Scores of several passes added up, for a benchmark row."""

    passes: int = 0
    gaps: int = 0
    alerted: int = 0
    duplicates: int = 0
    false_alarms: int = 0

    def add(self, s: PassScore) -> None:
        self.passes += 1
        self.gaps += len(s.true_gaps)
        self.alerted += len(s.found)
        self.duplicates += len(s.duplicates)
        self.false_alarms += len(s.false_alarms)

    def row(self, threshold: float) -> dict[str, Any]:
        return {
            "threshold": threshold,
            "gaps": self.gaps,
            "alerted": self.alerted,
            "duplicates": self.duplicates,
            "false_alarms": self.false_alarms,
            "recall": round(self.alerted / max(1, self.gaps), 3),
            "false_alarms_per_pass": round(self.false_alarms / max(1, self.passes), 2),
        }

    def line(self, threshold: float, gap_word: str = "gaps", fa_words: str = "false alarms") -> str:
        r = self.row(threshold)
        return (f"threshold {threshold:.2f}: {self.alerted}/{self.gaps} {gap_word} alerted (recall {r['recall']:.2f}), "
                f"{self.duplicates} duplicated, {self.false_alarms} {fa_words} ({r['false_alarms_per_pass']} per pass)")


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


def detect_pass(det: Any, frames: Sequence[np.ndarray]) -> list[list[Any]]:
    """The gaps `det` (an edge.detector.Detector) finds in each RGB frame of a pass, at its score threshold."""
    out = []
    for im in frames:
        det.preprocess(im)
        det.invoke()
        out.append(det.decode(im.shape[1], im.shape[0]))
    return out


def labelled_pass(cp: CartPass) -> list[list[Any]]:
    """Each frame's labelled gaps as detections of score 1: what a perfect model would hand the tracker. The alerts
    they give are the most a pass can score; with one alert per place, neighbouring labelled gaps share one."""
    from edge.types import Gap

    return [[Gap(*g.box, 1.0) for g in t.gaps] for t in cp.truth]


def track_pass(
    frames: Sequence[np.ndarray], gaps: Sequence[Sequence[Any]], tracking: Any, events: list[Any] | None = None
) -> list[dict[str, Any]]:
    """A fresh GapTracker over a pass's frames and each frame's gaps, serially; returns the alert payloads.

    `events`, when given, collects the raw AlertEvents (for dumping frames)."""
    from edge.payloads import ModelRef, alert_payload
    from edge.topics import Topics
    from edge.tracker import GapTracker
    from edge.types import Frame

    tracker = GapTracker(tracking, "bench", None)
    topics = Topics("shelfscout", "bench", "bench")
    alerts = []
    for i, (im, found) in enumerate(zip(frames, gaps, strict=True)):
        for ev in tracker.update(Frame(im, i, time.monotonic(), time.time()), list(found)):
            alerts.append(alert_payload(ev, topics, ModelRef("m", 0)))
            if events is not None:
                events.append(ev)
    return alerts


def add_keys_argument(ap: argparse.ArgumentParser) -> None:
    """The benches' `--keys DIR`: trust a locally signed bundle, such as one `shelfscout finetune` wrote."""
    ap.add_argument("--keys", default=None, metavar="DIR",
                    help="folder of trusted *.pub keys besides the built-in ones (e.g. for a fine-tuned bundle)")


def bench_config(keys: str | None) -> Config:
    """The service's default config, trusting the keys in `keys` (when given) besides the built-in ones."""
    cfg = Config()
    return cfg.replace(ota=replace(cfg.ota, keys_dir=keys)) if keys else cfg


def sweep_thresholds(
    bundle: Any,
    passes: Sequence[tuple[CartPass, Sequence[np.ndarray]]],
    names: Sequence[str],
    thresholds: Sequence[float],
    tracking: Any,
    dump: Path | None = None,
) -> Iterator[tuple[float, PassTally]]:
    """For each score threshold, the bundle's model + a fresh tracker over every (pass, RGB frames), scored and
    added up; with `dump`, each false alarm's frame is written there as `t{threshold}-{name}-{alert id}.jpg`.

    The model runs once per frame, at the lowest threshold: the gaps at a higher one are those scoring at least
    that (the decoder keeps the highest-scoring peaks and boxes, so a higher threshold only drops from its end)."""
    from edge.detector import Detector

    if not thresholds:
        return
    det = Detector(bundle, score_threshold=min(thresholds))
    found = [detect_pass(det, frames) for _, frames in passes]
    for thr in thresholds:
        tally = PassTally()
        for (cp, frames), gaps, name in zip(passes, found, names, strict=True):
            events: list[Any] = []
            kept = [[g for g in frame_gaps if g.score >= thr] for frame_gaps in gaps]
            s = score_pass(cp, track_pass(frames, kept, tracking, events))
            tally.add(s)
            if dump is not None:
                dump_alert_frames(dump, f"t{thr:.2f}-{name}", frames, events, s.false_alarms)
        yield thr, tally


def dump_alert_frames(out: Path, tag: str, frames: Sequence[np.ndarray], events: Iterable[Any],
                      ids: Iterable[str]) -> None:
    """The frame of each `opened` alert in `ids`, its box in red and its score, as `out/{tag}-{alert id}.jpg`."""
    import cv2

    wanted = set(ids)
    out.mkdir(parents=True, exist_ok=True)
    for ev in events:
        if ev.event != "opened" or ev.alert_id not in wanted:
            continue
        im = cv2.cvtColor(frames[ev.frame_index], cv2.COLOR_RGB2BGR)
        h, w = im.shape[:2]
        x0, y0, x1, y1 = ev.bbox_norm
        cv2.rectangle(im, (round(x0 * w), round(y0 * h)), (round(x1 * w), round(y1 * h)), (0, 0, 255), 2)
        cv2.putText(im, f"{ev.confidence:.2f}", (round(x0 * w), max(12, round(y0 * h) - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
        cv2.imwrite(str(out / f"{tag}-{ev.alert_id}.jpg"), im)
