"""Turn confirmed gap tracks into `opened`/`cleared` events, exactly once per physical place, persisted across restarts.

A *place* is an open alert: its aisle (named by an ArUco marker, or None for pure odometry) and its box in shelf
pixels of that aisle's coordinate frame. A confirmed track near an open place is that place again (no new
`opened`); an open place that is fully in view with no gap detected near it for `clear_frames` consecutive frames,
each seen from a view at least CLEAR_STEP along the shelf from the last one counted, is `cleared` (counting starts
once no live track shows the place, so a gap tracked in this pass needs `lost_frames` + `clear_frames` missed
frames: a detector's short dropouts do not clear it, nor does a cart standing still in front of it).

Open places and known marker positions live in a small JSON file written atomically, before the event is
returned; a place stays marked `opening`/`clearing` until the next frame, so an event lost to a crash in between
is sent again, with the same id, after the restart (see `AlertManager.begin_frame`).

"Near" is the meaning of `place_radius_m`: the boxes overlap vertically by at least a fifth of the smaller height
(the same shelf level; levels are kept apart by their boards), and the horizontal distance between the two boxes
(0 when they overlap) is at most `place_radius_m`. So a gap is one alert per place, not per facing: a gap a
detector splits in two, a gap found again after its track was lost, or seen again on a later pass through odometry
drift, are all the same alert. A newly confirmed gap links to an open place only within the drift odometry may
have had since the last marker fix (plus TIGHT_RADIUS of the radius), so distinct gaps close together stay apart.

A place is anchored: its box is the box it was confirmed with, refined only by sightings that overlap it, so a
track that slides (a detector artefact fixed in the frame) cannot drag it elsewhere. It counts as seen filled only
where it is wholly in view, odometry is trusted to within half its width, and it sits where in the frame the
detector has seen it before (`Place.seen_fx`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.atomic import write_atomic
from edge.config import TrackingConfig
from edge.payloads import epoch_ms
from edge.types import AlertEvent, Location

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
STATE_VERSION = 1
OPEN, OPENING, CLEARING = "open", "opening", "clearing"
# Boxes on one shelf level overlap vertically; levels are kept apart by the board between them. A detector may box
# only part of a gap (its top or bottom half), so a small overlap is enough.
SAME_LEVEL_OVERLAP = 0.2
# How far odometry may have drifted: this fraction of the distance travelled since the last marker fix (and of the
# place's distance from its aisle's naming marker, for the drift when it was recorded). A confirmed gap links to an
# open place within TIGHT_RADIUS * place_radius_m plus that drift (never more than place_radius_m), so two distinct
# gaps a hand apart stay two alerts while the position is known well.
DRIFT_RATE = 0.02
TIGHT_RADIUS = 0.4
# A place's box is its confirmed box, refined by the median of its next MAX_SAMPLES whole sightings that overlap
# it (IoU >= ANCHOR_IOU), then settled: a track that slides off its gap cannot drag the place along.
ANCHOR_IOU = 0.3
MAX_SAMPLES = 15
# Some detector false positives appear only where the place sits in the frame (near an edge, say). A place counts
# as seen filled only while its centre is within its sighting range (fraction of the frame width where it was seen
# whole), widened by this much: where the detector has shown it can see this gap.
SEEN_RANGE_MARGIN = 0.05
# Frames count towards clearing a place only from views this far apart along the shelf (fraction of the frame
# width; 8 px at 640): a cart standing in front of a gap the detector finds in some frames and not in others saw
# one view many times, and cleared and opened the same empty spot again and again.
CLEAR_STEP = 0.0125


def offset_box(box: Box, dx: float, dy: float) -> Box:
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def iou(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def visible_fraction(box: Box, width: int, height: int) -> float:
    """Fraction of `box` (frame pixels) inside a width x height frame."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 0.0
    iw = min(box[2], width) - max(box[0], 0.0)
    ih = min(box[3], height) - max(box[1], 0.0)
    if iw <= 0 or ih <= 0:
        return 0.0
    return (iw * ih) / area


def normalise_box(box: Box, width: int, height: int) -> Box:
    """`box` in frame pixels -> clipped to the frame and normalised to [0, 1]."""
    x0 = min(max(box[0] / width, 0.0), 1.0)
    y0 = min(max(box[1] / height, 0.0), 1.0)
    x1 = min(max(box[2] / width, 0.0), 1.0)
    y1 = min(max(box[3] / height, 0.0), 1.0)
    return (x0, y0, max(x0, x1), max(y0, y1))


@dataclass(frozen=True)
class View:
    """What the alert manager needs to know about the current frame and the cart's position."""

    frame_index: int
    t_wall: float
    width: int
    height: int
    aisle: str | None
    ox: float  # shelf pixel = frame pixel + (ox, oy)
    oy: float
    path: float  # total distance travelled, pixels (Odometry.path)
    reliable: bool  # the shift into this frame was measured, not guessed

    def to_frame(self, shelf_box: Box) -> Box:
        return offset_box(shelf_box, -self.ox, -self.oy)

    def to_shelf(self, frame_box: Box) -> Box:
        return offset_box(frame_box, self.ox, self.oy)


@dataclass(frozen=True)
class MarkerPlace:
    """A marker's aisle and the shelf x of its centre in that aisle's coordinate frame."""

    aisle: str
    x: float


@dataclass
class Place:
    """One open alert at one physical place."""

    alert_id: str
    aisle: str | None
    box: Box  # shelf pixels in the aisle's frame
    first_seen: float  # wall clock
    last_seen: float
    confidence: float
    frames: int
    state: str = OPEN  # OPEN, OPENING or CLEARING (see AlertManager.begin_frame)
    seen_path: float | None = None  # Odometry.path when last seen in this run (None: not seen since start-up)
    tracks: set[int] = field(default_factory=set)  # the live tracks currently showing this place
    clear_count: int = 0
    clear_ox: float = 0.0  # View.ox of the last frame counted in clear_count
    anchor: Box | None = None  # the box when it was confirmed (or loaded); refinements must overlap it
    samples: list[Box] = field(default_factory=list)  # recent whole sightings overlapping the anchor
    seen_fx: tuple[float, float] | None = None  # range of its whole sightings' centres, fraction of frame width
    # recorded before the tracker lost its position (a pause, the camera away): its box may no longer be where
    # odometry says, so it is not cleared until a marker of its aisle or a new sighting places it again (this run only)
    stale: bool = False
    duplicate_of: str | None = None  # being cleared as this alert's duplicate (kept across a crash for the resend)

    def saw_at(self, fx: float) -> None:
        """It was seen whole with its centre at `fx` (fraction of the frame width)."""
        lo, hi = self.seen_fx if self.seen_fx is not None else (fx, fx)
        self.seen_fx = (min(lo, fx), max(hi, fx))

    def __post_init__(self) -> None:
        if self.anchor is None:
            self.anchor = self.box

    def refine(self, sighting: Box) -> bool:
        """Fold a whole sighting (shelf pixels) into the box when it overlaps the anchor; False when it does not."""
        anchor = self.anchor if self.anchor is not None else self.box
        if iou(sighting, anchor) < ANCHOR_IOU:
            return False
        if len(self.samples) >= MAX_SAMPLES:
            return True  # settled: the same box on every later pass, and no per-frame cost
        self.samples.append(sighting)
        boxes = [anchor, *self.samples]
        self.box = (
            float(statistics.median(b[0] for b in boxes)),
            float(statistics.median(b[1] for b in boxes)),
            float(statistics.median(b[2] for b in boxes)),
            float(statistics.median(b[3] for b in boxes)),
        )
        return True

    def to_json(self) -> dict[str, object]:
        return {
            "alert_id": self.alert_id,
            "aisle": self.aisle,
            "box": [round(v, 2) for v in self.box],
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "confidence": round(self.confidence, 4),
            "frames": self.frames,
            "state": self.state,
            **({"seen_fx": [round(v, 3) for v in self.seen_fx]} if self.seen_fx is not None else {}),
            **({"duplicate_of": self.duplicate_of} if self.duplicate_of is not None else {}),
        }

    @staticmethod
    def from_json(d: dict[str, object]) -> Place:
        box = d["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"place box must be 4 numbers, got {box!r}")
        b = [float(v) for v in box]
        if not all(math.isfinite(v) for v in b) or b[0] >= b[2] or b[1] >= b[3]:
            raise ValueError(f"place box must be x0 < x1, y0 < y1, all finite, got {box!r}")
        aisle = d.get("aisle")
        state = str(d.get("state", OPEN))
        if state not in (OPEN, OPENING, CLEARING):
            raise ValueError(f"unknown place state {state!r}")
        return Place(
            alert_id=str(d["alert_id"]),
            aisle=None if aisle is None else str(aisle),
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            first_seen=float(d["first_seen"]),  # type: ignore[arg-type]
            last_seen=float(d["last_seen"]),  # type: ignore[arg-type]
            confidence=float(d["confidence"]),  # type: ignore[arg-type]
            frames=int(d["frames"]),  # type: ignore[call-overload]
            state=state,
            seen_fx=_range(d.get("seen_fx")),
            duplicate_of=None if d.get("duplicate_of") is None else str(d["duplicate_of"]),
        )


class AlertManager:
    """Owns the open places and the marker registry; emits `opened`/`cleared` AlertEvents.

    The tracker calls, per frame: `on_marker` for each marker seen (returns the shelf x the marker must be at),
    `confirm` once when a track becomes confirmed, `seen` for each confirmed track matched in this frame,
    `track_ended` when a track ends, and `check_clear` with all of the frame's detections (shelf pixels).
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        device: str,
        state_path: Path | None = None,
    ) -> None:
        if cfg.meters_per_pixel <= 0:
            raise ValueError(f"tracking.meters_per_pixel must be > 0, got {cfg.meters_per_pixel}")
        if cfg.clear_frames < 1:
            raise ValueError(f"tracking.clear_frames must be >= 1, got {cfg.clear_frames}")
        self.cfg = cfg
        self.device = device
        self._id_prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", device) or "device"
        self.state_path = state_path
        self.radius_px = cfg.place_radius_m / cfg.meters_per_pixel
        self.aisle: str | None = None
        self.places: list[Place] = []
        self.markers: dict[int, MarkerPlace] = {}
        self._seq = 0
        self._dirty = False
        self._write_failed = False
        self._by_track: dict[int, Place] = {}
        self._pending: list[Place] = []  # places whose event was returned during the previous frame
        # places found, once a marker placed them, to be another open alert again (opened after a restart before
        # the first marker): each is `cleared` as a duplicate of the older alert's id in the next frame
        self._duplicates: list[tuple[Place, str]] = []
        self._fix_path = 0.0  # Odometry.path at the last marker fix (or start-up)
        if state_path is not None:
            self._load(state_path)

    # ---- persistence -------------------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning(
                "tracking state %s cannot be read (%s); starting without the open alerts in it", path, e
            )
            return
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)  # UnicodeDecodeError is a ValueError
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(
                    f"unsupported state version {data.get('version') if isinstance(data, dict) else data!r}"
                )
            places = [Place.from_json(p) for p in data.get("places", [])]
            markers = {
                int(k): MarkerPlace(str(v["aisle"]), float(v["x"]))
                for k, v in data.get("markers", {}).items()
            }
            seq = int(data.get("seq", 0))
            if seq < 0:
                raise ValueError(f"seq must not be negative, got {seq}")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
            bad = path.with_name(path.name + ".corrupt")
            log.warning("tracking state %s is unreadable (%s); moved to %s, starting empty", path, e, bad)
            try:
                os.replace(path, bad)
            except OSError as e2:
                log.warning("could not move %s aside: %s", path, e2)
            return
        for p in places:
            # recorded by an earlier run, whose odometry started wherever the cart stood then: after a power cut
            # mid-aisle its box may be anywhere in this run's frame. Kept open, not cleared, until a marker of its
            # aisle or a new sighting places it again, as after a pause (`position_lost`)
            p.stale = True
        self.places, self.markers, self._seq = places, markers, seq

    def save(self) -> None:
        """Write the state file now (no-op without a state path). A failed write (disk full, read-only) is logged
        and retried on the next change: alerts keep flowing, only their persistence across a restart is at risk."""
        self._dirty = False
        if self.state_path is None:
            return
        try:
            self._write(self.state_path)
        except OSError as e:
            if not self._write_failed:
                log.warning(
                    "cannot write tracking state %s: %s (open alerts may reopen after a restart)",
                    self.state_path,
                    e,
                )
            self._write_failed = True
            self._dirty = True
            return
        if self._write_failed:
            log.info("tracking state %s written again", self.state_path)
        self._write_failed = False

    def _write(self, path: Path) -> None:
        state = {
            "version": STATE_VERSION,
            "device": self.device,
            "seq": self._seq,
            "markers": {str(k): {"aisle": v.aisle, "x": round(v.x, 2)} for k, v in sorted(self.markers.items())},
            "places": [p.to_json() for p in self.places],
        }
        write_atomic(path, json.dumps(state, separators=(",", ":")).encode())  # whole or not at all

    def flush(self) -> None:
        """Write the state file if anything changed since the last write."""
        if self._dirty:
            self.save()

    def begin_frame(self, uncommitted: Collection[str] = ()) -> None:
        """Call before each frame: the previous frames' events have been handed on and committed to the outbox,
        except those of the alert ids in `uncommitted` (held in memory while the outbox cannot store).

        The state file is written before an event is returned, with the place marked `opening` / `clearing`; only
        once its event is committed is it marked `open` / dropped. A service killed in between finds the mark on
        restart and sends that event again with the same alert id (at least once, deduplicated by id) instead of
        losing it.
        """
        kept: list[Place] = []
        for p in self._pending:
            if p.alert_id in uncommitted:
                kept.append(p)
                continue
            if p.state == OPENING:
                p.state = OPEN
            elif p.state == CLEARING and p in self.places:
                self.places.remove(p)
            self._dirty = True
        self._pending = kept

    def announce_again(self) -> int:
        """Mark every open place `opening`, as if its event might never have been committed: each is announced
        again, with its id, when it is next confirmed (the outbox holding the events was lost). Returns how many."""
        n = 0
        for p in self.places:
            if p.state == OPEN:
                p.state, n = OPENING, n + 1
        if n:
            self.save()
        return n

    def position_lost(self, path: float, aisle_known: bool = True) -> None:
        """The tracker no longer knows where the cart is (it was paused, the camera was away): every open place is
        `stale`, neither cleared nor refined until a marker of its aisle fixes the position or a confirmed gap links
        to it within `place_radius_m` (and places it anew). `path` is Odometry.path now: the drift of places
        recorded from here on is counted from it.

        `aisle_known` False (away too long to guess how far the cart went): the aisle is unknown too, as after a
        restart. Places opened from here on are this run's, unplaced (`source: odometry`, no aisle), until a marker
        places them; one that is then an open alert's gap again is cleared as its duplicate (`_adopt`). Before, they
        took the old aisle and an offset off by however far the cart was pushed meanwhile, said to be from a marker,
        and a gap opened again so was never found to be a duplicate."""
        for p in self.places:
            p.stale = True
            p.clear_count = 0
        self._fix_path = path
        if not aisle_known:
            self.aisle = None

    # ---- markers -----------------------------------------------------------------------------------------------
    def on_marker(self, marker_id: int, x_now: float, path: float | None = None) -> float:
        """A marker whose centre is at shelf x `x_now` by odometry: returns the shelf x it must be at. `path` is
        Odometry.path now (the drift allowance restarts from it).

        A known marker restores its aisle and position. An unknown one joins the current aisle at `x_now` as its
        other end when it is the partner of the aisle's only marker (`other_end`: ids 1 and 2, 3 and 4, ...);
        otherwise it names a new aisle "aruco-<id>", also at `x_now`. So a cart that missed an aisle's far end (the
        marker hidden or blurred) starts the next aisle at its first marker instead of taking that for this aisle's
        far end and placing the next aisle's gaps in this one's frame. Places recorded in this run before any marker
        was seen (aisle None) join that new aisle.

        A known marker that is the partner of the current aisle's only marker, while its own aisle has no other
        marker either, joins the two: they are one aisle whose ends were each seen on a different pass (entered
        from the far end once, with the near end missed). The current aisle's places and marker move into the
        known aisle's frame, and a place that is then one of its open alerts again is cleared as that one's
        duplicate, as places recorded before any marker are.
        """
        if path is not None:
            self._fix_path = path
        known = self.markers.get(marker_id)
        if known is not None:
            unplaced: list[Place] = []
            if self.aisle is None:
                # gaps opened in this run before any marker (powered up mid-aisle) are in this run's frame: they
                # move with odometry to the marker's known place, into its aisle
                unplaced = self._adopt(known.aisle, known.x - x_now)
            elif self._ends(self.aisle) == [other_end(marker_id)] and self._ends(known.aisle) == [marker_id]:
                unplaced = self._join(self.aisle, known.aisle, known.x - x_now)
            self.aisle = known.aisle
            for p in self.places:
                if p.aisle == known.aisle and not any(p is u for u in unplaced):
                    p.stale = False  # the caller moves odometry to the marker: the aisle's boxes hold again
            return known.x
        if self.aisle is not None and self._ends(self.aisle) == [other_end(marker_id)]:
            self.markers[marker_id] = MarkerPlace(self.aisle, x_now)
        else:
            name = f"aruco-{marker_id}"
            if self.aisle is None:
                self._adopt(name, 0.0)
            self.markers[marker_id] = MarkerPlace(name, x_now)
            self.aisle = name
        self._dirty = True
        return x_now

    def _ends(self, aisle: str) -> list[int]:
        """The ids of the markers known in `aisle`."""
        return [k for k, m in self.markers.items() if m.aisle == aisle]

    def _join(self, source: str, aisle: str, dx: float) -> list[Place]:
        """Aisle `source` is `aisle` seen from its other end: its markers and places move by `dx` shelf pixels
        into `aisle`'s frame and name (see `on_marker`). Returns what `_adopt` does."""
        log.info("aisle %s is aisle %s seen from its other end: joined, its places and marker move into %s",
                 source, aisle, aisle)
        for k in self._ends(source):
            self.markers[k] = MarkerPlace(aisle, self.markers[k].x + dx)
        self._dirty = True
        return self._adopt(aisle, dx, source)

    def _adopt(self, aisle: str, dx: float, source: str | None = None) -> list[Place]:
        """The places of aisle `source` join `aisle`, moved by `dx` shelf pixels into its frame; with `source`
        None, those recorded in this run before any marker (aisle None, seen since start-up). One that is then
        where an open alert of the aisle already is (the same gap, opened again after a restart or from the other
        end) is that alert's duplicate: it hands its tracks over and is cleared as such. Returns the adopted places
        still `stale` (their position was lost after they were seen: they stay unplaced until a sighting places
        them)."""
        adopted = [p for p in self.places if p.aisle == source and (source is not None or p.seen_path is not None)]
        before = [q for q in self.places if q.aisle == aisle and q.state != CLEARING]
        for p in adopted:
            p.aisle = aisle
            if dx:
                p.box = offset_box(p.box, dx, 0.0)
                p.anchor = offset_box(p.anchor, dx, 0.0) if p.anchor is not None else p.box
                p.samples = [offset_box(b, dx, 0.0) for b in p.samples]
            self._dirty = True
        # one to one, nearest pairs first, within the tight radius this run used to keep gaps apart: two gaps a
        # hand apart are two alerts, and must not both be taken for one old alert's duplicates
        reach = TIGHT_RADIUS * self.radius_px
        pairs = sorted((d, i, j) for i, p in enumerate(adopted) if not p.stale for j, q in enumerate(before)
                       if (d := self._near(p.box, q)) is not None and d <= reach)
        taken_p: set[int] = set()
        taken_q: set[int] = set()
        for _, i, j in pairs:
            if i not in taken_p and j not in taken_q:
                taken_p.add(i)
                taken_q.add(j)
                self._merge(adopted[i], before[j])
        return [p for p in adopted if p.stale]

    def _merge(self, dup: Place, keep: Place) -> None:
        """`dup` is `keep`'s gap, opened again: `keep` takes over its tracks and sightings, `dup` is cleared."""
        for t in dup.tracks:
            self._by_track[t] = keep
        keep.tracks |= dup.tracks
        dup.tracks = set()
        keep.last_seen = max(keep.last_seen, dup.last_seen)
        keep.frames += dup.frames
        keep.seen_path = dup.seen_path
        dup.state = CLEARING
        dup.duplicate_of = keep.alert_id
        self._duplicates.append((dup, keep.alert_id))
        log.info("alert %s is %s's gap again (opened before a marker placed it): cleared as its duplicate",
                 dup.alert_id, keep.alert_id)

    # ---- matching ----------------------------------------------------------------------------------------------
    def _near(self, box: Box, place: Place) -> float | None:
        """Horizontal distance from `box` to `place` when it counts as the same place, else None."""
        h = min(box[3] - box[1], place.box[3] - place.box[1])
        v_overlap = min(box[3], place.box[3]) - max(box[1], place.box[1])
        if h <= 0 or v_overlap < SAME_LEVEL_OVERLAP * h:
            return None
        d = max(0.0, max(box[0], place.box[0]) - min(box[2], place.box[2]))
        return d if d <= self.radius_px else None

    def drift_px(self, view: View) -> float:
        """How far odometry may be off now: a fraction of the distance travelled since the last marker fix."""
        return DRIFT_RATE * max(0.0, view.path - self._fix_path)

    def _link_radius(self, place: Place, view: View) -> float:
        if place.stale or (place.aisle is None and place.seen_path is None):
            return self.radius_px  # recorded before the position was lost, or in an earlier run without markers
        origin = 0.0
        if place.aisle is not None:
            m = self.markers.get(_aisle_marker(place.aisle))
            origin = m.x if m is not None else origin
        recorded = DRIFT_RATE * abs(0.5 * (place.box[0] + place.box[2]) - origin)
        return min(self.radius_px, TIGHT_RADIUS * self.radius_px + self.drift_px(view) + recorded)

    def _find(self, box: Box, view: View) -> Place | None:
        best: tuple[float, float, Place] | None = None
        for p in self.places:
            if p.aisle != view.aisle or p.state == CLEARING:
                continue
            d = self._near(box, p)
            if d is None or d > self._link_radius(p, view):
                continue
            cdist = abs(0.5 * (box[0] + box[2] - p.box[0] - p.box[2]))
            if best is None or (d, cdist) < (best[0], best[1]):
                best = (d, cdist, p)
        return None if best is None else best[2]

    def location_of(self, x: float, aisle: str | None) -> Location:
        """Shelf x in `aisle` as a Location: metres from the aisle's naming marker ("aruco-<id>"), or without
        markers from where the cart was when the service started."""
        mpp = self.cfg.meters_per_pixel
        if aisle is None:
            return Location(aisle=None, offset_m=round(float(x) * mpp, 3), source="odometry")
        origin = self.markers.get(_aisle_marker(aisle))
        x0 = origin.x if origin is not None else 0.0
        return Location(aisle=aisle, offset_m=round(float(x - x0) * mpp, 3), source="aruco")

    def _location(self, place: Place) -> Location:
        return self.location_of(0.5 * (place.box[0] + place.box[2]), place.aisle)

    # ---- per-frame calls from the tracker ----------------------------------------------------------------------
    def confirm(
        self,
        track_id: int,
        shelf_box: Box,
        frame_box: Box,
        scores: Sequence[float],
        hits: int,
        first_seen: float,
        view: View,
        frame_xs: Sequence[float] = (),
    ) -> AlertEvent | None:
        """A track just became confirmed: link it to its open place, or open a new one (returns the `opened`).
        `frame_xs` are the frame-x centres (pixels) of the track's whole sightings."""
        confidence = float(statistics.median(scores)) if scores else 0.0
        place = self._find(shelf_box, view)
        if place is not None:
            if place.stale:  # seen again where odometry now says: that is where it is from here on
                place.box = place.anchor = shelf_box
                place.samples, place.seen_fx, place.stale = [], None, False
            self._link(track_id, place)
            for x in frame_xs:
                place.saw_at(x / view.width)
            self._touch(place, confidence, hits, view)
            if view.reliable and place.aisle == view.aisle:
                place.refine(shelf_box)
            if place.state == OPENING and place not in self._pending:
                # written before a restart, maybe never committed: announce it again, same id
                self._pending.append(place)
                return self._event(place, "opened", frame_box, view)
            return None
        first_seen = min(first_seen, view.t_wall)
        self._seq += 1
        alert_id = f"{self._id_prefix}-{epoch_ms(first_seen)}-{self._seq}"  # the ms the event's first_seen says
        place = Place(
            alert_id=alert_id,
            aisle=view.aisle,
            box=shelf_box,
            first_seen=first_seen,
            last_seen=view.t_wall,
            confidence=confidence,
            frames=hits,
            state=OPENING,
            seen_path=view.path,
        )
        for x in frame_xs:
            place.saw_at(x / view.width)
        self.places.append(place)
        self._pending.append(place)
        self._link(track_id, place)
        self._dirty = True
        return self._event(place, "opened", frame_box, view)

    def _event(self, place: Place, kind: str, frame_box: Box, view: View,
               duplicate_of: str | None = None) -> AlertEvent:
        return AlertEvent(
            alert_id=place.alert_id,
            event=kind,
            first_seen=place.first_seen,
            last_seen=place.last_seen,
            ts=view.t_wall,
            bbox_norm=normalise_box(frame_box, view.width, view.height),
            confidence=place.confidence,
            frames=place.frames,
            frame_index=view.frame_index,
            location=self._location(place),
            duplicate_of=duplicate_of,
        )

    def _link(self, track_id: int, place: Place) -> None:
        old = self._by_track.get(track_id)
        if old is not None and old is not place:
            old.tracks.discard(track_id)
        place.tracks.add(track_id)
        self._by_track[track_id] = place

    def _touch(self, place: Place, confidence: float, sightings: int, view: View) -> None:
        place.last_seen = max(place.last_seen, view.t_wall)  # a clock stepped back (NTP after boot) never undoes it
        place.seen_path = view.path
        place.confidence = confidence
        place.frames += sightings
        place.clear_count = 0

    def seen(self, track_id: int, sighting: Box | None, scores: Sequence[float], view: View) -> None:
        """A confirmed track was matched in this frame; `sighting` is its detection (shelf pixels) when wholly
        inside the frame, else None. A whole sighting that no longer overlaps the place (the track slid off it)
        unlinks the track: it no longer vouches for the place."""
        place = self._by_track.get(track_id)
        if place is None:
            return
        if sighting is not None and view.reliable and place.aisle == view.aisle:
            if place.refine(sighting):
                place.saw_at((0.5 * (sighting[0] + sighting[2]) - view.ox) / view.width)
            elif self._near(sighting, place) is None:
                place.tracks.discard(track_id)
                del self._by_track[track_id]
                return
        confidence = float(statistics.median(scores)) if scores else place.confidence
        self._touch(place, confidence, 1, view)

    def track_ended(self, track_id: int) -> None:
        place = self._by_track.pop(track_id, None)
        if place is not None:
            place.tracks.discard(track_id)
            self._dirty = True  # last_seen, frames and box changed while it was tracked

    def alert_id_for(self, track_id: int) -> str | None:
        place = self._by_track.get(track_id)
        return None if place is None else place.alert_id

    def check_clear(self, detections: Sequence[Box], view: View) -> list[AlertEvent]:
        """Count, for each open place wholly in view, frames with no detection near it; emit `cleared`s (and those
        of duplicates a marker has revealed)."""
        events: list[AlertEvent] = []
        for dup, keep_id in self._duplicates:
            self._pending.append(dup)
            events.append(self._event(dup, "cleared", view.to_frame(dup.box), view, duplicate_of=keep_id))
        self._duplicates = []
        for place in list(self.places):
            if place.aisle != view.aisle:
                continue
            fb = view.to_frame(place.box)
            frac = visible_fraction(fb, view.width, view.height)
            if frac <= 0.0:
                place.clear_count = 0
                continue
            if frac < 0.999 or not view.reliable:
                continue  # at the edge, or unsure where we are: no evidence either way
            drift = self.drift_px(view)
            if drift > 0.5 * (place.box[2] - place.box[0]) or fb[0] < drift or fb[2] > view.width - drift:
                continue  # odometry may be off by more than the place: it may not be where we look
            if place.seen_fx is not None:
                fx = 0.5 * (fb[0] + fb[2]) / view.width
                if not place.seen_fx[0] - SEEN_RANGE_MARGIN <= fx <= place.seen_fx[1] + SEEN_RANGE_MARGIN:
                    continue  # not where the detector has ever seen this gap: no evidence either way
            if place.state == CLEARING:
                if place not in self._pending:  # cleared before a restart, maybe never committed: again
                    self._pending.append(place)
                    events.append(self._event(place, "cleared", fb, view, duplicate_of=place.duplicate_of))
                continue
            if place.stale:
                place.clear_count = 0
                continue  # recorded before the position was lost: it may not be where we look
            if place.tracks:
                # its gap is being followed: a few missed detections are not a filled shelf
                place.clear_count = 0
                continue
            if any(self._near(d, place) is not None for d in detections):
                place.clear_count = 0
                continue
            if place.clear_count and abs(view.ox - place.clear_ox) < CLEAR_STEP * view.width:
                continue  # the cart stands: the same view again is no new evidence that the shelf is filled
            place.clear_ox = view.ox
            place.clear_count += 1
            if place.clear_count < self.cfg.clear_frames:
                continue
            place.state = CLEARING
            self._pending.append(place)
            self._dirty = True
            events.append(self._event(place, "cleared", fb, view))
        return events

    def open_alerts(self) -> list[Place]:
        """The open alerts (places being cleared are left out)."""
        return [p for p in self.places if p.state != CLEARING]


def _no_constant(name: str) -> float:
    """json.loads takes NaN and Infinity by default; no place or marker of a cart can be at either."""
    raise ValueError(f"{name} is not a position")


def other_end(marker_id: int) -> int:
    """The id of the marker at the other end of `marker_id`'s aisle: an aisle's ends carry an odd id and the next
    even one (1 and 2, 3 and 4, ...; docs/INSTALL.md). Id 0 has no partner (-1)."""
    return marker_id + 1 if marker_id % 2 else marker_id - 1


def _aisle_marker(aisle: str) -> int:
    """The id of the marker that names `aisle` ("aruco-<id>"); -1 for another name."""
    tail = aisle.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _range(v: object) -> tuple[float, float] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"seen_fx must be 2 numbers, got {v!r}")
    return (float(v[0]), float(v[1]))
