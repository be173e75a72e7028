"""Track detected gaps across frames in shelf coordinates (motion-compensated) and hand confirmed ones to alerts.

`GapTracker` is the pipeline's single entry point: per frame it estimates the cart's shift (edge.motion), resets
odometry at ArUco markers, matches the frame's detections to tracks by IoU in shelf pixels, confirms a track after
`confirm_frames` sightings within its last `window_frames` in-view frames (and a median score of at least
`min_score`, as Frigate gates on the median), ends it when it leaves the view or is missed `lost_frames` times in
view, and lets `edge.alerts.AlertManager` turn confirmed tracks into `opened`/`cleared` events. A frame marked
`interrupted` (after a pause, or a live camera that was away) loses the position: see `GapTracker._lose_position`.

Shelf pixel = frame pixel + (odometry.x, odometry.y); see edge/motion.py for the sign convention.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.alerts import AlertManager, Box, View, iou, offset_box, visible_fraction
from edge.config import TrackingConfig
from edge.motion import Marker, MarkerDetector, Odometry, Shift, ShiftEstimator
from edge.types import AlertEvent, Frame, Gap, Location

log = logging.getLogger(__name__)

EDGE_MARGIN = 0.02  # a detection within this fraction of the width from the left/right edge is cut by it
# A marker counts once it is seen on two looks within `2 * marker_every` frames at the same shelf x (by odometry)
# within the larger of these; after a first sighting markers are looked for on the next MARKER_RECHECK frames.
MARKER_TOLERANCE_PX = 8.0
MARKER_TOLERANCE = 0.3  # of the marker's side
MARKER_RECHECK = 3
MARKER_COVER = 0.5  # a gap box lying this much on a marker seen lately is the marker, not a gap
# A track is confirmed only after this many sightings wholly inside the frame (capped by confirm_frames) whose shelf
# positions agree better than their frame positions: a box that stays put in the frame while the shelf moves past
# (a lens or frame-edge artefact) slides in shelf coordinates and is not a gap.
FULL_SIGHTINGS = 3
STILL_PX = 6.0  # shelf-x spread always accepted (the cart standing still), or this fraction of the box width:
STILL_FRACTION = 0.1
# ... or this fraction of its spread in frame x: odometry drifts little, and something that moves along the shelf
# (a shopper walking slowly past, whose dark clothes the model may take for a gap) moves more. It was 0.5, which
# let slow walkers be confirmed as gaps (6 false alerts in 8 rendered passes with walkers; 2 at 0.2, none lost).
STILL_RATIO = 0.2
# After an interruption up to this long the cart is guessed to have kept its speed over the missed frames; after a
# longer one, to have stood still (a pause to let a customer by, or the cart parked).
DEAD_RECKON_S = 3.0


@dataclass(frozen=True)
class TrackView:
    """A live track for the preview: box in the current frame's pixels."""

    track_id: int
    box: Box
    confirmed: bool
    hits: int
    score: float  # median of the recent scores
    alert_id: str | None  # the open alert this track shows, once confirmed


@dataclass
class Track:
    """One gap followed across frames; `box` is in shelf pixels, smoothed over its sightings."""

    track_id: int
    box: Box
    frame_box: Box  # the last matched detection, frame pixels
    first_seen: float  # wall clock
    scores: deque[float]
    seen: deque[bool]  # one entry per in-view frame, True when matched
    hits: int = 1
    misses: int = 0  # consecutive in-view frames without a match
    confirmed: bool = False
    matched: bool = True  # in the current frame
    full: bool = False  # the last match was wholly inside the frame (not cut by its left/right edge)
    full_boxes: deque[Box] = field(default_factory=deque)  # recent sightings wholly in the frame, shelf pixels
    full_frame_x: deque[float] = field(default_factory=deque)  # ... and their centres' x in frame pixels

    def still(self) -> bool:
        """Its whole sightings stay put on the shelf (spread in shelf x a fifth of that in frame x, or tiny)."""
        if len(self.full_boxes) < 2:
            return True
        shelf_x = [0.5 * (b[0] + b[2]) for b in self.full_boxes]
        spread = max(shelf_x) - min(shelf_x)
        width = statistics.median(b[2] - b[0] for b in self.full_boxes)
        if spread <= max(STILL_PX, STILL_FRACTION * width):
            return True
        return spread <= STILL_RATIO * (max(self.full_frame_x) - min(self.full_frame_x))

    def anchor_box(self) -> Box:
        """The median of its whole sightings, coordinate by coordinate (shelf pixels): where the gap is."""
        if not self.full_boxes:
            return self.box
        return (
            float(statistics.median(b[0] for b in self.full_boxes)),
            float(statistics.median(b[1] for b in self.full_boxes)),
            float(statistics.median(b[2] for b in self.full_boxes)),
            float(statistics.median(b[3] for b in self.full_boxes)),
        )

    @property
    def score(self) -> float:
        return float(statistics.median(self.scores)) if self.scores else 0.0


@dataclass
class _Det:
    frame_box: Box
    shelf_box: Box
    score: float
    used: bool = field(default=False)


class GapTracker:
    """Frames + detections in, `opened`/`cleared` AlertEvents out (snapshot_jpeg left None for the pipeline).

    Keyword options beyond TrackingConfig: `marker_every` (ArUco detection on every k-th frame), `min_score`
    (median score gate for confirmation), `min_response` (phase-correlation peak below which the shift is guessed),
    `in_view` (fraction of a track's box that must be inside the frame for a frame to count for N-of-M and misses),
    `lost_after` (consecutive unmeasured shifts after which the position is uncertain: the scene was cut, e.g. the
    cart turned round). While uncertain, markers are looked for on every frame and nothing is confirmed or cleared,
    until a marker re-anchors the position or `2 * marker_every` measured frames pass without one. After any single
    unmeasured shift (a hard cut such as a replayed video starting over shows up as just one), markers are looked
    for on every frame for `2 * marker_every` frames, so a marker near the new position re-anchors it at once.

    A marker counts (names an aisle, resets odometry) only on its second look within `2 * marker_every` frames at the
    same shelf x; after a first look markers are looked for on the next MARKER_RECHECK frames. A track is confirmed
    only with FULL_SIGHTINGS whole sightings that stay put on the shelf (`Track.still`) and not lying on a marker;
    its place gets the median of those sightings (`Track.anchor_box`), not the smoothed track box.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        device: str,
        state_path: Path | None = None,
        *,
        marker_every: int = 10,
        min_score: float = 0.0,
        min_response: float = 0.2,
        in_view: float = 0.5,
        smoothing: float = 0.5,
        lost_after: int = 3,
    ) -> None:
        if cfg.confirm_frames < 1 or cfg.window_frames < cfg.confirm_frames:
            raise ValueError(
                f"tracking: need 1 <= confirm_frames <= window_frames, got {cfg.confirm_frames} of {cfg.window_frames}"
            )
        if cfg.lost_frames < 1:
            raise ValueError(f"tracking.lost_frames must be >= 1, got {cfg.lost_frames}")
        if not 0.0 < cfg.match_iou <= 1.0:
            raise ValueError(f"tracking.match_iou must be in (0, 1], got {cfg.match_iou}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.cfg = cfg
        self.min_score = min_score
        self.in_view = in_view
        self.smoothing = smoothing
        self.motion = ShiftEstimator(cfg.motion_width, min_response=min_response)
        self.odometry = Odometry()
        self.markers = MarkerDetector(marker_every) if cfg.aruco else None
        self.alerts = AlertManager(cfg, device, state_path)
        # the alert ids whose events the sink still holds uncommitted (the service sets this to the sink's)
        self.uncommitted: Callable[[], Collection[str]] = tuple
        self.last_shift: Shift | None = None
        self._tracks: list[Track] = []
        self._next_id = 1
        self._view: View | None = None
        self.lost_after = lost_after
        self._settle_frames = 2 * marker_every
        self._unmeasured = 0  # consecutive unreliable shifts
        self._settled = 0  # measured frames since the position became uncertain
        self._search = 0  # frames left in which markers are looked for on every frame
        self.uncertain = False
        self._frame_no = 0
        self._marker_seen: dict[int, tuple[float, int]] = {}  # id -> (shelf x, frame number) of its last sighting
        self._marker_boxes: dict[int, Box] = {}  # id -> its box at its last sighting, shelf pixels
        self._looked = False  # markers were looked for in this frame
        self._last_mono: float | None = None  # Frame.t_mono of the previous frame

    # ---- public ------------------------------------------------------------------------------------------------
    def update(self, frame: Frame, gaps: list[Gap]) -> list[AlertEvent]:
        """Advance by one frame with its detections (frame pixels); returns the events this frame caused."""
        self.alerts.begin_frame(self.uncommitted())  # earlier events are committed by now, but for these
        self._frame_no += 1
        if frame.interrupted:
            self._lose_position(frame)
        self._last_mono = frame.t_mono
        img = frame.image
        h, w = img.shape[:2]
        shift = self.motion.update(img, frame.dropped_before + 1)  # before the detections: no copies of img
        self.last_shift = shift
        self.odometry.advance(shift)
        if shift.reliable:
            self._unmeasured = 0
            self._settled += 1
            if self.uncertain and self._settled >= self._settle_frames:
                self.uncertain = False  # no marker in sight: carry on from the odometry as it is
        else:
            self._unmeasured += 1
            self._search = self._settle_frames
            if self._unmeasured >= self.lost_after:
                self.uncertain, self._settled = True, 0
                self.odometry.y = 0.0  # the camera's height on the cart is fixed: the best guess after a cut
        self._looked = False
        if self.markers is not None:
            if self.uncertain or self._search > 0:
                self._search -= 1
                found: list[Marker] | None = self.markers.detect(img)
            else:
                found = self.markers.maybe_detect(img)
            self._looked = found is not None
            for m in found or []:
                x_now = self.odometry.x + m.cx
                self._note_marker_box(m)
                prev = self._marker_seen.get(m.id)
                self._marker_seen[m.id] = (x_now, self._frame_no)
                if (
                    prev is None
                    or self._frame_no - prev[1] > self._settle_frames
                    or abs(prev[0] - x_now) > max(MARKER_TOLERANCE_PX, MARKER_TOLERANCE * m.side)
                ):
                    # one sighting is not enough (shelf texture can decode as a marker): look again next frames
                    self._search = max(self._search, MARKER_RECHECK)
                    continue
                x_marker = self.alerts.on_marker(m.id, x_now, self.odometry.path)
                self._marker_seen[m.id] = (x_marker, self._frame_no)
                delta = self.odometry.set_x(x_marker - m.cx)
                self.uncertain = False
                if delta:
                    self._marker_boxes = {k: offset_box(b, delta, 0.0) for k, b in self._marker_boxes.items()}
                    for t in self._tracks:  # tracks follow what is in view, so they move with the reset
                        t.box = offset_box(t.box, delta, 0.0)
                        t.full_boxes = deque(
                            (offset_box(b, delta, 0.0) for b in t.full_boxes), maxlen=t.full_boxes.maxlen
                        )
        view = View(
            frame_index=frame.index,
            t_wall=frame.t_wall,
            width=w,
            height=h,
            aisle=self.alerts.aisle,
            ox=self.odometry.x,
            oy=self.odometry.y,
            path=self.odometry.path,
            reliable=shift.reliable and not self.uncertain,
        )
        self._view = view
        dets = [_Det(fb, view.to_shelf(fb), score) for fb, score in _merge_fragments(gaps)]

        events: list[AlertEvent] = []
        ended = self._associate(dets, view)
        for t in ended:
            self.alerts.track_ended(t.track_id)
        for t in self._tracks:
            if not t.matched:
                continue
            if not t.confirmed:
                if (
                    view.reliable
                    and t.full
                    and sum(t.seen) >= self.cfg.confirm_frames
                    and len(t.full_boxes) >= min(FULL_SIGHTINGS, self.cfg.confirm_frames)
                    and t.score >= self.min_score
                    and t.still()
                    and not self._on_marker(t.anchor_box(), img)
                ):
                    t.confirmed = True
                    ev = self.alerts.confirm(
                        t.track_id,
                        t.anchor_box(),
                        t.frame_box,
                        list(t.scores),
                        t.hits,
                        t.first_seen,
                        view,
                        list(t.full_frame_x),
                    )
                    if ev is not None:
                        events.append(ev)
            else:
                sighting = t.full_boxes[-1] if t.full and t.full_boxes else None
                self.alerts.seen(t.track_id, sighting, list(t.scores), view)
        events.extend(self.alerts.check_clear([d.shelf_box for d in dets], view))
        self.alerts.flush()
        return events

    def tracks(self) -> list[TrackView]:
        """Live tracks with boxes in the current frame's pixels (for the preview)."""
        view = self._view
        if view is None:
            return []
        return [
            TrackView(
                track_id=t.track_id,
                box=view.to_frame(t.box),
                confirmed=t.confirmed,
                hits=t.hits,
                score=t.score,
                alert_id=self.alerts.alert_id_for(t.track_id),
            )
            for t in self._tracks
        ]

    @property
    def position(self) -> Location:
        """Where the cart is now (the centre of the view): its aisle, from markers, and the offset along it."""
        width = self._view.width if self._view is not None else 0
        return self.alerts.location_of(self.odometry.x + 0.5 * width, self.alerts.aisle)

    def close(self) -> None:
        """Persist the open alerts (they are also written whenever they change). At a clean stop the last frame's
        events have been committed, except any the sink still holds: those places stay marked for a resend."""
        self.alerts.begin_frame(self.uncommitted())
        self.alerts.save()

    def _lose_position(self, frame: Frame) -> None:
        """The view was interrupted (a pause, the camera away): the cart may be anywhere. Live tracks end, and the
        position is uncertain (nothing confirmed or cleared) until a marker or `2 * marker_every` measured frames.
        Across a short interruption the best guess is the cart's last speed over the frames it missed (as for
        dropped frames); after a longer one, that it stood still. The open places stay open but are not cleared until
        a marker or a new sighting places them again (`AlertManager.position_lost`), so a wrong guess can at worst
        open a gap again, never clear one that is still empty."""
        away = frame.t_mono - self._last_mono if self._last_mono is not None else math.inf
        log.info("the view was interrupted for %.1f s: position unknown; open alerts are kept, none is cleared until "
                 "a marker or a new sighting places it again", away)
        for t in self._tracks:
            self.alerts.track_ended(t.track_id)
        self._tracks = []
        if away > DEAD_RECKON_S:
            self.motion.reset()
        self._marker_seen.clear()
        self._marker_boxes.clear()
        self.uncertain, self._settled, self._unmeasured = True, 0, 0
        self._search = self._settle_frames
        self.odometry.y = 0.0
        self.alerts.position_lost(self.odometry.path, aisle_known=away <= DEAD_RECKON_S)

    def _note_marker_box(self, m: Marker) -> None:
        half = 0.5 * m.side
        x, y = self.odometry.x + m.cx, self.odometry.y + m.cy
        self._marker_boxes[m.id] = (x - half, y - half, x + half, y + half)

    def _on_marker(self, box: Box, img: np.ndarray) -> bool:
        """Most of `box` (shelf pixels) covers a marker seen lately: the black square is not an empty shelf.

        Markers are looked for in this frame first unless that was done already (a confirmation is rare)."""
        if self.markers is not None and not self._looked:
            self._looked = True
            for m in self.markers.detect(img):
                self._note_marker_box(m)
        area = (box[2] - box[0]) * (box[3] - box[1])
        for mb in self._marker_boxes.values():
            iw = min(box[2], mb[2]) - max(box[0], mb[0])
            ih = min(box[3], mb[3]) - max(box[1], mb[1])
            if iw > 0 and ih > 0 and iw * ih >= MARKER_COVER * area:
                return True
        return False

    # ---- association -------------------------------------------------------------------------------------------
    def _associate(self, dets: list[_Det], view: View) -> list[Track]:
        """Match detections to tracks, update/create/end tracks; returns the tracks that ended."""
        w, h = view.width, view.height
        for t in self._tracks:
            t.matched = False
        pairs = []
        for ti, t in enumerate(self._tracks):
            for di, d in enumerate(dets):
                v = iou(t.box, d.shelf_box)
                if v >= self.cfg.match_iou:
                    pairs.append((v, ti, di))
        pairs.sort(reverse=True)
        for _v, ti, di in pairs:
            t, d = self._tracks[ti], dets[di]
            if t.matched or d.used:
                continue
            self._hit(t, d, w)
        # A detection whose centre lies in an unmatched track's box is that track (e.g. after a poor shift guess).
        for d in dets:
            if d.used:
                continue
            for t in self._tracks:
                if not t.matched and _centre_in(d.shelf_box, t.box):
                    self._hit(t, d, w)
                    break
        self._merge_duplicates(w)
        ended: list[Track] = []
        alive: list[Track] = []
        for t in self._tracks:
            if t.matched:
                alive.append(t)
                continue
            frac = visible_fraction(view.to_frame(t.box), w, h)
            if frac <= 0.0:
                ended.append(t)  # left the field of view
                continue
            if frac >= self.in_view:
                t.seen.append(False)
                t.misses += 1
                if t.misses >= self.cfg.lost_frames:
                    ended.append(t)
                    continue
            alive.append(t)
        for d in dets:
            if d.used or any(_centre_in(d.shelf_box, t.box) for t in alive if t.matched):
                continue  # a duplicate box on a gap that is already tracked
            t = Track(
                track_id=self._next_id,
                box=d.shelf_box,
                frame_box=d.frame_box,
                first_seen=view.t_wall,
                scores=deque([d.score], maxlen=self.cfg.window_frames),
                seen=deque([True], maxlen=self.cfg.window_frames),
                full_boxes=deque(maxlen=self.cfg.window_frames),
                full_frame_x=deque(maxlen=self.cfg.window_frames),
            )
            _note_full(t, d, w)
            self._next_id += 1
            d.used = True
            alive.append(t)
        self._tracks = alive
        return ended

    def _merge_duplicates(self, frame_w: int) -> None:
        """Fold an unconfirmed track into an older one on the same gap (their boxes are fragments of one gap).

        Detectors often report one gap as two fragments for a while; both become tracks, and once they sit on top
        of each other they are one gap. A confirmed track is never folded: it may already stand for an alert.
        """
        keep: list[Track] = []
        for u in sorted(self._tracks, key=lambda t: t.track_id):
            host = None
            if not u.confirmed:
                host = next((t for t in keep if _fragments(u.box, t.box)), None)
            if host is None:
                keep.append(u)
            elif u.matched and not host.matched:
                self._hit(host, _Det(u.frame_box, u.box, u.scores[-1]), frame_w)
        self._tracks = keep

    def _hit(self, t: Track, d: _Det, frame_w: int) -> None:
        a = self.smoothing
        x0, y0, x1, y1 = (a * n + (1.0 - a) * o for n, o in zip(d.shelf_box, t.box, strict=True))
        # A side cut by the frame's edge says only "at least this far": keep the track's wider extent there.
        margin = EDGE_MARGIN * frame_w
        if d.frame_box[0] <= margin:
            x0 = min(d.shelf_box[0], t.box[0])
        if d.frame_box[2] >= frame_w - margin:
            x1 = max(d.shelf_box[2], t.box[2])
        t.box = (x0, y0, x1, y1)
        t.frame_box = d.frame_box
        t.scores.append(d.score)
        t.seen.append(True)
        t.hits += 1
        t.misses = 0
        t.matched = True
        _note_full(t, d, frame_w)
        d.used = True


def _note_full(t: Track, d: _Det, frame_w: int) -> None:
    t.full = _full(d.frame_box, frame_w)
    if t.full:
        t.full_boxes.append(d.shelf_box)
        t.full_frame_x.append(0.5 * (d.frame_box[0] + d.frame_box[2]))


def _fragments(a: Box, b: Box) -> bool:
    """Two boxes are parts of one gap: they overlap, and along one axis by at least half the smaller extent.

    Detectors split a tall gap into stacked halves or a wide one into side-by-side pieces; gaps on different shelf
    levels are kept apart by the shelf board between them, and neighbours on one level by the products between."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return False
    return ix >= 0.5 * min(a[2] - a[0], b[2] - b[0]) or iy >= 0.5 * min(a[3] - a[1], b[3] - b[1])


def _merge_fragments(gaps: list[Gap]) -> list[tuple[Box, float]]:
    """One box per gap: fragments of one gap (see `_fragments`) are merged into their union, with the max score.

    Degenerate or non-finite boxes are dropped."""
    boxes: list[Box] = []
    scores: list[float] = []
    for g in gaps:
        if g.x1 > g.x0 and g.y1 > g.y0 and math.isfinite(g.x0 + g.y0 + g.x1 + g.y1):
            boxes.append((float(g.x0), float(g.y0), float(g.x1), float(g.y1)))
            scores.append(float(g.score))
    n = len(boxes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if _fragments(boxes[i], boxes[j]):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        bs = [boxes[i] for i in members]
        union = (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs))
        out.append((union, max(scores[i] for i in members)))
    return out


def _centre_in(box: Box, container: Box) -> bool:
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    return container[0] <= cx <= container[2] and container[1] <= cy <= container[3]


def _full(frame_box: Box, frame_w: int) -> bool:
    """The box is not cut by the frame's left/right edge (or is so wide that it could never be whole)."""
    margin = EDGE_MARGIN * frame_w
    return (frame_box[0] > margin and frame_box[2] < frame_w - margin) or (
        frame_box[2] - frame_box[0] > 0.8 * frame_w
    )
