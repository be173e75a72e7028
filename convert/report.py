"""Renders an evaluation as one self-contained HTML page (metrics table, PR curve, annotated examples), phone-readable.

Images are embedded as base64 JPEG/PNG; the PR curve is drawn with OpenCV (no matplotlib).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from convert.bootstrap import Comparison, Interval
from convert.calibration import MIN_SCORE, ScoreBin, ScoreBins
from convert.evaluate import EvalResult, ImageMatch, PRPoint
from edge.snapshot import draw_tag

HIT = (40, 200, 60)  # RGB
MISS = (255, 200, 0)
FALSE_ALARM = (230, 40, 40)


@dataclass(frozen=True)
class Example:
    """One evaluated image for the report."""

    name: str
    image: np.ndarray  # RGB
    gt: np.ndarray  # (M, 4) boxes in image pixels
    match: ImageMatch


@dataclass(frozen=True)
class Against:
    """A second model measured on the same images, for the report: its figures and the paired AP50 difference."""

    desc: str  # e.g. "shelfgap-default v6"
    result: EvalResult
    comparison: Comparison  # this report's model minus this one
    matches: Sequence[ImageMatch] = ()  # per image, in the report's image order, at this model's own threshold


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


SERIES_COLOURS = ((30, 90, 200), (230, 120, 20), (40, 160, 60), (150, 60, 180))  # RGB, one per curve

CHART_SCALE = 2  # the page's charts: 960 px shown at most 480 CSS px wide, sharp on a phone's 2-3x screen
# Font scales of a chart at scale 1, in a 480-px chart: shown 366 CSS px wide on a 390-px phone, a tick label's
# digits are about 9 CSS px tall (at 0.4 they were 6-7). The report draws its charts at scale 2, for sharp text.
TICK_FONT = 0.55
TITLE_FONT = 0.6
LEGEND_FONT = 0.55
LEGEND_STEP = 22  # layout px between legend lines
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (0, 0, 0)
GREY = (80, 80, 80)
GRID = (230, 230, 230)
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Axis:
    """A chart's value axis: where a value falls along it (0 at the start, 1 at the end), and its ticks, each a
    grid line, with a label unless it is empty."""

    to_unit: Callable[[float], float]
    ticks: tuple[tuple[float, str], ...]

    @staticmethod
    def linear(top: float) -> Axis:
        """0 to `top`, a grid line every tenth, every other one labelled."""
        def label(v: float) -> str:
            return f"{v:.1f}" if top <= 2 else f"{v:g}"

        return Axis(lambda v: v / top,
                    tuple((k / 10 * top, label(k / 10 * top) if k % 2 == 0 else "") for k in range(11)))

    @staticmethod
    def log(low: float, high: float) -> Axis:
        """From the largest of 1, 2 or 5 times a power of ten at or under `low` to the smallest at or over `high`,
        a labelled grid line at each of them; values under the start sit at the axis' start."""
        steps = [m * 10.0**e for e in range(-4, 5) for m in (1, 2, 5)]
        lo = max((t for t in steps if t <= low * 1.0001), default=steps[0])
        hi = min((t for t in steps if t >= max(high, lo * 2) * 0.9999), default=steps[-1])
        span = np.log10(hi / lo)
        return Axis(lambda v: float(np.log10(max(v, lo) / lo) / span),
                    tuple((t, f"{t:g}") for t in steps if lo <= t <= hi))


def _put(img: np.ndarray, text: str, org: tuple[int, int], font: float, colour: tuple[int, int, int],
         scale: int) -> None:
    """Text at `org` (baseline left), `font` the scale-1 size: strokes thicken with the chart's scale."""
    cv2.putText(img, text, org, FONT, font * scale, colour, max(1, round(scale * 1.2)), cv2.LINE_AA)


def _width(text: str, font: float, scale: int) -> int:
    return cv2.getTextSize(text, FONT, font * scale, max(1, round(scale * 1.2)))[0][0]


def _fit(text: str, font: float, room: int, scale: int) -> float:
    """`font`, made smaller if `text` would be wider than `room` pixels."""
    return font * min(1.0, room / max(_width(text, font, scale), 1))


def draw_pr_curve(curve: Sequence[PRPoint], threshold: float, size: int = 480, scale: int = 1) -> np.ndarray:
    """An RGB image of the precision/recall curve, with the operating point at `threshold` marked."""
    return draw_pr_curves([("", curve, threshold)], size, scale)


def _chart(size: int, x_axis: Axis, x_label: str, y_label: str,
           scale: int = 1) -> tuple[np.ndarray, Callable[[float, float], tuple[int, int]]]:
    """A white chart of size x size layout pixels, drawn `scale` times larger, with a grid, x along `x_axis` and
    y from 0 to 1, and its point mapper (to the drawn pixels)."""
    pad = 48
    img = np.full((size * scale, size * scale, 3), 255, np.uint8)
    x0, y0, x1, y1 = pad * scale, pad // 2 * scale, (size - pad // 2) * scale, (size - pad) * scale
    span_x, span_y = x1 - x0, y1 - y0

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(x0 + x_axis.to_unit(x) * span_x)), int(round(y1 - y * span_y))

    for k in range(11):
        y = pt(0, k / 10)[1]
        cv2.line(img, (x0, y), (x1, y), GRID, scale)
        if k % 2 == 0:
            _put(img, f"{k / 10:.1f}", (4 * scale, y + 5 * scale), TICK_FONT, GREY, scale)
    end = -1  # where the last tick label drawn ends: one that would overprint it is left out
    for v, label in x_axis.ticks:
        x = pt(v, 0)[0]
        cv2.line(img, (x, y0), (x, y1), GRID, scale)
        start = x - _width(label, TICK_FONT, scale) // 2
        if label and start > end + 6 * scale:
            _put(img, label, (start, y1 + 19 * scale), TICK_FONT, GREY, scale)
            end = start + _width(label, TICK_FONT, scale)
    cv2.rectangle(img, (x0, y0), (x1, y1), INK, scale)
    font = _fit(x_label, TITLE_FONT, span_x, scale)
    _put(img, x_label, (x0 + (span_x - _width(x_label, font, scale)) // 2, (size - 7) * scale), font, INK, scale)
    _put(img, y_label, (4 * scale, y0 - 6 * scale if y0 > 14 * scale else 14 * scale), TITLE_FONT, INK, scale)
    return img, pt


def _legend(img: np.ndarray, labels: Sequence[str], x: int, bottom: int, scale: int = 1) -> None:
    """One line per labelled series, in its colour, above `bottom` from `x` (drawn pixels)."""
    room = img.shape[1] - x - 48 * scale  # the text starts 40 px right of x and keeps 8 px from the edge
    font = min((_fit(label, LEGEND_FONT, room, scale) for label in labels if label), default=LEGEND_FONT)
    step = LEGEND_STEP * scale
    for i, label in enumerate(labels):
        if label:
            ly = bottom - 12 * scale - step * (len(labels) - 1 - i)
            cv2.line(img, (x + 10 * scale, ly - 5 * scale), (x + 34 * scale, ly - 5 * scale),
                     SERIES_COLOURS[i % len(SERIES_COLOURS)], 3 * scale)
            _put(img, label, (x + 40 * scale, ly), font, INK, scale)


def draw_pr_curves(series: Sequence[tuple[str, Sequence[PRPoint], float]], size: int = 480,
                   scale: int = 1) -> np.ndarray:
    """An RGB image of several precision/recall curves (label, curve, threshold), each with its operating point
    circled and, when labelled, a legend entry; `size` in layout pixels, drawn `scale` times larger."""
    img, pt = _chart(size, Axis.linear(1.0), "recall", "precision", scale)
    for i, (_, curve, threshold) in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        if curve:
            pts = np.array([pt(c.recall, c.precision) for c in curve], np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2 * scale, cv2.LINE_AA)
            above = [c for c in curve if c.score >= threshold]
            if above:
                op = above[-1]
                cv2.circle(img, pt(op.recall, op.precision), 6 * scale, FALSE_ALARM if len(series) == 1 else colour,
                           2 * scale, cv2.LINE_AA)
    _legend(img, [label for label, _, _ in series], pt(0, 0)[0], pt(0, 0)[1], scale)
    return img


@dataclass(frozen=True)
class AlertPoint:
    """One score threshold's alert-level figures over a set of passes."""

    threshold: float
    recall: float  # share of the labelled gaps alerted
    false_alarms_per_pass: float  # alerts on no labelled gap


def draw_alert_tradeoff(series: Sequence[tuple[str, Sequence[AlertPoint], float]], size: int = 480,
                        ceiling: float | None = None, scale: int = 1, log_x: bool = False,
                        budget: float | None = None) -> np.ndarray:
    """An RGB chart of labelled gaps alerted against alerts on no labelled gap per pass, one line per model
    (label, points, its own threshold), the model's own threshold circled; `ceiling`, the most any model can
    alert, as a dashed line. `log_x`: a log axis, for rates over several decades (0.2 to 30 a pass: on a linear
    one the region of one false alert a pass is a sliver at its start). `budget`: a dashed line at that many false
    alerts per pass, and each model's point with the most gaps alerted within it labelled with its threshold and
    share, as is its own threshold's; the labels are set where they overlap no other."""
    rates = [p.false_alarms_per_pass for _, pts, _ in series for p in pts]
    if log_x:
        positive = [r for r in rates if r > 0]
        axis = Axis.log(min(positive, default=0.1), max(positive, default=1.0))
    else:
        top = max(rates, default=1.0)
        axis = Axis.linear(max(1.0, float(np.ceil(top * 1.1 / 5.0) * 5.0)))  # room for the last point's label
    img, pt = _chart(size, axis, "alerts on no labelled gap, per pass", "labelled gaps alerted", scale)
    left, bottom = pt(0, 0)
    right = img.shape[1] - 24 * scale
    if ceiling is not None:
        y = pt(0, ceiling)[1]
        _dashed(img, (left, y), (right, y), scale)
        _put(img, "a perfect model (labelled boxes as detections)", (left + 8 * scale, y - 8 * scale),
             _fit("a perfect model (labelled boxes as detections)", TICK_FONT, right - left - 16 * scale, scale),
             GREY, scale)
    if budget is not None:
        x = pt(budget, 0)[0]
        _dashed(img, (x, pt(0, 1)[1]), (x, bottom), scale)
    taken: list[Box] = []
    for i, (_, points, own) in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        pts = sorted(points, key=lambda p: p.threshold)
        if not pts:
            continue
        line = np.array([pt(p.false_alarms_per_pass, p.recall) for p in pts], np.int32)
        cv2.polylines(img, [line.reshape(-1, 1, 2)], False, colour, 2 * scale, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, pt(p.false_alarms_per_pass, p.recall), 3 * scale, colour, -1, cv2.LINE_AA)
        own_point, *others = cited_points(pts, own, budget)
        cv2.circle(img, pt(own_point.false_alarms_per_pass, own_point.recall), 7 * scale, colour, 2 * scale,
                   cv2.LINE_AA)
        for p in (own_point, *others):
            _point_label(img, f"{p.threshold:.2f}: {p.recall:.0%}", pt(p.false_alarms_per_pass, p.recall), colour,
                         taken, scale)
    labels = [label for label, _, _ in series]
    if log_x:  # top left: the corner no model reaches (many gaps, few false alerts)
        _legend(img, labels, left, pt(0, 1)[1] + (LEGEND_STEP * len(labels) + 8) * scale, scale)
    else:
        _legend(img, labels, left + (right - left) * 45 // 100, bottom, scale)
    return img


def _dashed(img: np.ndarray, a: tuple[int, int], b: tuple[int, int], scale: int) -> None:
    """A grey dashed line from a to b, horizontal or vertical: dashes 6 layout px long every 12."""
    (xa, ya), (xb, yb) = a, b
    length = max(abs(xb - xa), abs(yb - ya))

    def at(k: int) -> tuple[int, int]:
        return (xa + k, ya) if ya == yb else (xa, ya + k)

    for d in range(0, length, 12 * scale):
        cv2.line(img, at(d), at(min(d + 6 * scale, length)), (90, 90, 90), scale)


def cited_points(points: Sequence[AlertPoint], own: float, budget: float | None) -> list[AlertPoint]:
    """The points a trade-off chart labels for one model: the one at (or nearest) its own threshold, then, with a
    `budget`, the one alerting the most gaps at no more than `budget` false alerts per pass, if another."""
    near = min(points, key=lambda p: abs(p.threshold - own))
    within = [p for p in points if budget is not None and p.false_alarms_per_pass <= budget]
    best = max(within, key=lambda p: (p.recall, -p.false_alarms_per_pass), default=near)
    return [near] if best == near else [near, best]


def label_spot(at: tuple[int, int], size: tuple[int, int], taken: Sequence[Box], bounds: tuple[int, int],
               gap: int) -> tuple[tuple[int, int], Box]:
    """Where a label `size` = (width, height) goes beside the point `at`, `gap` away: up-right, down-right,
    up-left or down-left, the first place that overlaps no box in `taken` and stays inside `bounds` = (width,
    height); up-right when none does. Its top-left corner and box."""
    (x, y), (w, h) = at, size
    corners = [(x + gap, y - gap - h), (x + gap, y + gap), (x - gap - w, y - gap - h), (x - gap - w, y + gap)]
    boxes = [(cx, cy, cx + w, cy + h) for cx, cy in corners]

    def free(b: Box) -> bool:
        inside = b[0] >= 0 and b[1] >= 0 and b[2] <= bounds[0] and b[3] <= bounds[1]
        return inside and not any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)

    k = next((k for k, b in enumerate(boxes) if free(b)), 0)
    return corners[k], boxes[k]


def _point_label(img: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int],
                 taken: list[Box], scale: int) -> None:
    """`text` in `colour` on white beside the point `at`, where it overlaps no label in `taken` (then added)."""
    weight = max(1, round(scale * 1.2))
    (tw, th), base = cv2.getTextSize(text, FONT, TICK_FONT * scale, weight)
    pad = 2 * scale
    (lx, ly), box = label_spot(at, (tw + 2 * pad, th + base + 2 * pad), taken, (img.shape[1], img.shape[0]),
                               7 * scale)
    cv2.rectangle(img, box[:2], (box[2] - 1, box[3] - 1), (255, 255, 255), cv2.FILLED)
    cv2.putText(img, text, (lx + pad, ly + pad + th), FONT, TICK_FONT * scale, colour, weight, cv2.LINE_AA)
    taken.append(box)


def bin_name(b: ScoreBin) -> str:
    """A bin's range as the chart and the table both write it: "12-18", or "40+" for the open last one."""
    return f"{b.low:g}+" if np.isinf(b.high) else f"{b.low:g}-{b.high:g}"


def draw_score_bins(bins: ScoreBins, width: int = 480, height: int = 220, scale: int = 1) -> np.ndarray:
    """An RGB bar chart of one score table: per bin, the mean score (grey outline) and the share of detections
    that are labelled gaps (filled; red where it is under half the mean score); under each bar its range and, in
    grey, how many detections it holds. `width` and `height` in layout pixels, drawn `scale` times larger."""
    img = np.full((height * scale, width * scale, 3), 255, np.uint8)
    x0, y0, x1, y1 = 36 * scale, 12 * scale, (width - 8) * scale, (height - 40) * scale
    for k in range(0, 11, 2):
        y = int(round(y1 - k / 10 * (y1 - y0)))
        cv2.line(img, (x0, y), (x1, y), GRID, scale)
        _put(img, f"{k / 10:.1f}", (2 * scale, y + 5 * scale), _fit("0.0", TICK_FONT, 32 * scale, scale), GREY,
             scale)
    n = max(1, len(bins.bins))
    slot = (x1 - x0) / n
    names = [bin_name(b) for b in bins.bins]
    font = min((_fit(name, TICK_FONT, int(slot) - 4 * scale, scale) for name in names), default=TICK_FONT)
    for i, (b, name) in enumerate(zip(bins.bins, names, strict=True)):
        a = int(round(x0 + i * slot + slot * 0.15))
        c = int(round(x0 + (i + 1) * slot - slot * 0.15))
        if b.detections:
            ys = int(round(y1 - b.share_gaps * (y1 - y0)))
            cv2.rectangle(img, (a, ys), (c, y1), FALSE_ALARM if b.overconfident else SERIES_COLOURS[0], -1)
            ym = int(round(y1 - b.mean_score * (y1 - y0)))
            cv2.rectangle(img, (a - 2 * scale, ym), (c + 2 * scale, y1), (90, 90, 90), 2 * scale)
        mid = int(round(x0 + (i + 0.5) * slot))
        _put(img, name, (mid - _width(name, font, scale) // 2, y1 + 17 * scale), font, INK, scale)
        count = str(b.detections)
        _put(img, count, (mid - _width(count, font, scale) // 2, y1 + 35 * scale), font, (110, 110, 110), scale)
    cv2.line(img, (x0, y1), (x1, y1), INK, scale)
    return img


def annotate(ex: Example, max_side: int = 560) -> np.ndarray:
    """The image with hits in green, misses (ground truth not found) in amber and false alarms in red, each
    detection's score on a tag of its colour."""
    img = ex.image.copy()
    s = min(1.0, max_side / max(img.shape[:2]))
    if s < 1.0:
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)

    def box(b: np.ndarray, colour: tuple[int, int, int], thick: int) -> None:
        x0, y0, x1, y1 = (int(round(v * s)) for v in b)
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick)

    for b, hit in zip(ex.gt, ex.match.gt_hit, strict=True):
        if not hit:
            box(b, MISS, 2)
    for b, tp in zip(ex.match.det_boxes, ex.match.det_tp, strict=True):
        box(b, HIT if tp else FALSE_ALARM, 2)
    font = max(0.5, max(img.shape[:2]) / 1000)  # digits ~12 px tall at 560 px: ~8 CSS px on a 390-px phone
    for b, tp, sc in zip(ex.match.det_boxes, ex.match.det_tp, ex.match.det_scores, strict=True):
        # each score on a tag of its box's colour, over every box line: readable on any shelf
        draw_tag(img, f"{sc:.2f}", (int(round(b[0] * s)), int(round(b[1] * s))), HIT if tp else FALSE_ALARM, font,
                 ink=(0, 0, 0) if tp else (255, 255, 255))
    return img


def pick_examples(examples: Sequence[Example], n: int) -> list[Example]:
    """The worst images (most misses + false alarms) first, then a few clean ones for contrast."""
    ranked = sorted(examples, key=lambda e: (-errors(e.match), e.name))
    worst = [e for e in ranked if errors(e.match) > 0][: max(n - n // 4, 1)]
    clean = [e for e in examples if errors(e.match) == 0 and len(e.gt)][: n - len(worst)]
    return worst + clean


def errors(m: ImageMatch) -> int:
    """Misses plus false alarms of one image."""
    return int((~m.gt_hit).sum() + (~m.det_tp).sum())


def pick_differences(
    examples: Sequence[Example], other: Sequence[ImageMatch], n: int
) -> tuple[list[tuple[Example, ImageMatch]], list[tuple[Example, ImageMatch]]]:
    """The images where this model makes the most fewer errors than the other (gains) and the most more (losses),
    each at most n, largest difference first; images where both make as many are left out."""
    if len(examples) != len(other):
        raise ValueError(f"{len(examples)} examples but {len(other)} matches of the other model")
    diff = [(errors(o) - errors(e.match), e.name, k) for k, (e, o) in enumerate(zip(examples, other, strict=True))]
    gains = sorted((d for d in diff if d[0] > 0), key=lambda d: (-d[0], d[1]))[:n]
    losses = sorted((d for d in diff if d[0] < 0), key=lambda d: (d[0], d[1]))[:n]
    return ([(examples[k], other[k]) for _, _, k in gains], [(examples[k], other[k]) for _, _, k in losses])


def _figure(ex: Example, cap: str) -> str:
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(annotate(ex), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return ""
    return (f'<figure><img src="data:image/jpeg;base64,{_b64(jpg.tobytes())}" alt="{html.escape(cap)}">'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>")


def _caption(name: str, m: ImageMatch) -> str:
    hits, fa, miss = int(m.det_tp.sum()), int((~m.det_tp).sum()), int((~m.gt_hit).sum())
    return f"{name}: {hits} hit, {miss} missed, {fa} false alarm"


def _differences_html(examples: Sequence[Example], against: Against, model_label: str, n: int = 4) -> str:
    if not against.matches:
        return ""
    gains, losses = pick_differences(examples, against.matches, n)
    parts = [f"<h2>Where the two differ</h2><p>Each pair: {html.escape(model_label)} on the left, "
             f"{html.escape(against.desc)} on the right, each at its own threshold.</p>"]
    for title, pairs in ((f"Fewer errors with {model_label}", gains), (f"More errors with {model_label}", losses)):
        parts.append(f"<h3>{html.escape(title)} ({len(pairs)})</h3>")
        for ex, om in pairs:
            other = Example(ex.name, ex.image, ex.gt, om)
            parts.append('<div class="pair">' + _figure(ex, _caption(f"{ex.name}, {model_label}", ex.match))
                         + _figure(other, _caption(f"{ex.name}, {against.desc}", om)) + "</div>")
    return "".join(parts)


def _score_bins_html(bins: Sequence[ScoreBins]) -> str:
    """Tables of detections by box height and by place in the frame: where a score says more than the labels do."""
    if not bins:
        return ""
    parts = [f"<h2>Where the scores mislead</h2><p>Detections scoring at least {MIN_SCORE:g}, binned (the number under each "
             "bar). Grey outline: their mean score; filled bar: the share that are labelled gaps. Where that share is "
             "below half the mean score (red), this model is over-confident: fine-tuning on frames like these, or a "
             "region of interest, pays most there.</p>"]
    for b in bins:
        ok, png = cv2.imencode(".png", cv2.cvtColor(draw_score_bins(b, scale=CHART_SCALE), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("could not encode a score chart")
        parts.append(f'<img src="data:image/png;base64,{_b64(png.tobytes())}" alt="{html.escape(b.measure)}" '
                     'style="width:100%;max-width:480px">')
        over = ' class="over"'
        rows = "".join(
            f"<tr><td>{bin_name(x)}</td><td>{x.detections}</td><td>{x.mean_score:.2f}</td>"
            f"<td{over if x.overconfident else ''}>{x.share_gaps:.2f}</td></tr>"
            for x in b.bins)
        parts.append(f"<table><caption>{html.escape(b.measure)}</caption><tr><th>range</th><th>detections</th>"
                     f"<th>mean score</th><th>share that are gaps</th></tr>{rows}</table>")
    return "".join(parts)


def render_html(
    result: EvalResult, examples: Sequence[Example], title: str, model_desc: str, n_examples: int = 16,
    ap_interval: Interval | None = None, against: Against | None = None, model_label: str = "this model",
    score_bins: Sequence[ScoreBins] = (),
) -> str:
    """The whole report as one HTML string; `ap_interval`, when given, is shown next to the AP; `against` adds the
    other model's AP, the paired difference and its PR curve beside this one's (labelled `model_label`);
    `score_bins` adds the tables of `convert.calibration`."""
    if against is None:
        curve = draw_pr_curve(result.pr_curve, result.threshold, scale=CHART_SCALE)
    else:
        curve = draw_pr_curves([(model_label, result.pr_curve, result.threshold),
                                (against.desc, against.result.pr_curve, against.result.threshold)], scale=CHART_SCALE)
    ok, png = cv2.imencode(".png", cv2.cvtColor(curve, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the PR curve")
    rows = [
        ("images", result.images), ("ground-truth gaps", result.ground_truth),
        (f"detections (score ≥ {result.threshold:.2f})", result.detections),
        ("true positives", result.tp), ("false alarms", result.fp), ("misses", result.fn),
        ("precision", f"{result.precision:.3f}"), ("recall", f"{result.recall:.3f}"), ("F1", f"{result.f1:.3f}"),
        (f"AP at IoU {result.iou:.2f}", f"{result.ap50:.3f}" + (
            f" ({ap_interval.level:.0%} interval over the images {ap_interval.low:.3f}-{ap_interval.high:.3f})"
            if ap_interval is not None else "")),
        ("best F1 (threshold)", f"{result.best_f1:.3f} ({result.best_f1_threshold:.2f})"),
    ]
    if against is not None:
        d, o = against.comparison.diff, against.result
        rows += [
            (f"{against.desc}: AP at IoU {o.iou:.2f}", f"{o.ap50:.3f}"),
            (f"{against.desc}: P / R / F1 at {o.threshold:.2f}", f"{o.precision:.3f} / {o.recall:.3f} / {o.f1:.3f}"),
            (f"AP difference, {model_label} minus {against.desc}",
             f"{d.value:+.3f} ({d.level:.0%} paired interval {d.low:+.3f} to {d.high:+.3f}; higher in "
             f"{against.comparison.share_a_higher:.0%} of {d.resamples} resamples)"),
        ]
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    figs = [_figure(ex, _caption(ex.name, ex.match)) for ex in pick_examples(examples, n_examples)]
    differences = _differences_html(examples, against, model_label) if against is not None else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0 auto;padding:12px;max-width:980px;color:#222}}
table{{border-collapse:collapse;margin:8px 0}} th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
img{{max-width:100%;height:auto}} figure{{margin:10px 0}} figcaption{{font-size:14px;color:#555}}
.key span{{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:4px;color:#fff}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}}
.over{{color:#b00;font-weight:600}}
.pair{{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:8px;border-top:1px solid #ddd}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(model_desc)}</p>
<table>{table}</table>
<h2>Precision / recall</h2>
<img src="data:image/png;base64,{_b64(png.tobytes())}" alt="precision-recall curve" style="width:100%;max-width:480px">
<p>{"The circle marks the bundle's threshold" if against is None else "Each circle marks that bundle's threshold"} ({result.threshold:.2f}{"" if against is None else f" and {against.result.threshold:.2f}"}).{"" if against is None else " The paired interval covers which images were drawn: if it includes 0, these images do not tell the two models apart."}</p>
<h2>Examples</h2>
<p class="key"><span style="background:rgb{HIT}">hit</span><span style="background:rgb{MISS};color:#222">missed gap</span><span style="background:rgb{FALSE_ALARM}">false alarm</span></p>
<div class="grid">{''.join(figs)}</div>
{differences}
{_score_bins_html(score_bins)}
</body></html>
"""


def write_report(
    out_dir: Path, result: EvalResult, examples: Sequence[Example], title: str, model_desc: str,
    ap_interval: Interval | None = None, against: Against | None = None, model_label: str = "this model",
    score_bins: Sequence[ScoreBins] = (),
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    page = render_html(result, examples, title, model_desc, ap_interval=ap_interval, against=against,
                       model_label=model_label, score_bins=score_bins)
    path.write_text(page, encoding="utf-8")
    return path
