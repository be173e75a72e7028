"""The alert sink: renders each event's snapshot and commits alert + snapshot to the outbox in one transaction.

When the outbox cannot store (the disk is full, an I/O error), it moves to memory (`Outbox.move_to_memory`) and
the alerts keep flowing to the broker. Should even that fail, the sink holds the frame's messages in memory, in
order, and commits them once it can again, retrying at most once a second; the service runs on, `degraded`. The
tracker keeps the places of held events marked `opening` / `clearing` (`held_alert_ids`), so when its state file can
still be written, a service killed before the disk had room announces them again after the restart; held messages
still in memory at a clean stop are logged as lost. The sink is also what moves an outbox that had to start in
memory back to disk (`Outbox.move_to_disk`, tried every few seconds while frames come).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from edge.outbox import Outbox, OutboxError, OutMessage
from edge.payloads import ModelRef, alert_messages
from edge.snapshot import render_snapshot
from edge.sources import SNAPSHOT_HELD, MainFrame
from edge.topics import Topics
from edge.types import AlertEvent, Frame

log = logging.getLogger(__name__)

RETRY_S = 1.0  # at most one commit attempt per second while the outbox cannot store
_NONE: frozenset[str] = frozenset()
HOLD_MAX_BYTES = 32 * 1024 * 1024  # memory for held messages; beyond it the oldest frame's are dropped, counted


@dataclass(frozen=True)
class _Held:
    """One frame's events and their messages, to be committed in one transaction."""

    events: tuple[AlertEvent, ...]
    msgs: tuple[OutMessage, ...]
    size: int


class OutboxSink:
    """Turns tracker events into durable outbox messages; nothing is published before it is committed."""

    def __init__(self, outbox: Outbox, topics: Topics, model: Callable[[Any], ModelRef], snapshot_max_px: int = 640,
                 main_frame: Callable[[int | None], MainFrame | None] | None = None,
                 on_event: Callable[[AlertEvent], None] | None = None, hold_max_bytes: int = HOLD_MAX_BYTES,
                 on_state: Callable[[], None] | None = None):
        self.outbox = outbox
        self.topics = topics
        self.model = model  # the model an event names, from the slot info of the model that ran its frame
        self.snapshot_max_px = snapshot_max_px
        self.main_frame = main_frame
        self.on_event = on_event
        self.on_state = on_state  # the outbox moved between disk and memory, or holding started or ended
        self._said_small = False  # a snapshot fell back to the inference image (said once)
        self._unsettled: frozenset[str] = _NONE  # the events of an `emit` that has not got as far as holding them
        self.hold_max_bytes = hold_max_bytes
        self._held: deque[_Held] = deque()
        self._held_bytes = 0
        self._held_msgs = 0  # a count, not a walk over the deque: the stats thread reads it while frames append
        self._retry_at = 0.0
        self.error: str | None = None  # why the outbox cannot store, while it cannot
        self.dropped = 0  # messages dropped from memory because too many were held
        self.lost_at_close = 0

    @property
    def held(self) -> int:
        """Messages waiting in memory for the outbox."""
        return self._held_msgs

    def held_alert_ids(self) -> Collection[str]:
        """The alerts whose events wait in memory, or whose `emit` failed before they were held: their places stay
        marked `opening` / `clearing` until stored. Asked on every frame, so nothing is built while nothing is held."""
        if not self._held and not self._unsettled:
            return _NONE
        return frozenset(ev.alert_id for h in self._held for ev in h.events) | self._unsettled

    def emit(self, frame: Frame, events: Sequence[AlertEvent], info: Any = None) -> None:
        """Commit this frame's events (after any held ones); called for every frame, so held ones are retried.
        `info`: the slot info of the model that ran the frame (with a pipeline of stages, the slot may hold the
        next model by the time a frame's events come here)."""
        if events:
            # should anything below raise (the service then stops), these events were never stored: their places
            # must stay marked for a resend when the tracker saves them at close
            self._unsettled = frozenset(ev.alert_id for ev in events)
            msgs: list[OutMessage] = []
            for ev in events:
                # a duplicate's cleared is no restock to show: the gap is elsewhere, usually out of this frame
                if ev.snapshot_jpeg is None and ev.duplicate_of is None:
                    ev.snapshot_jpeg = self._snapshot_or_none(frame, ev)
                msgs.extend(alert_messages(ev, self.topics, self.model(info)))
            size = sum(len(m.payload) + len(m.topic) for m in msgs)
            self._held.append(_Held(tuple(events), tuple(msgs), size))
            self._unsettled = _NONE
            self._held_bytes += size
            self._held_msgs += len(msgs)
            self._bound()
            self.retry(force=self.error is None)
        elif self._held or self.outbox.memory_reason is not None:
            self.retry()

    def retry(self, force: bool = False) -> bool:
        """Commit held messages, oldest first, each frame's in one transaction; True once none are held."""
        if self.outbox.memory_reason is not None and self.outbox.move_to_disk():  # rate-limited by the outbox
            self._state_changed()
        if not self._held:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        while self._held:
            h = self._held[0]
            try:
                self.outbox.put(h.msgs)
            except OutboxError as e:
                if self.outbox.memory_reason is None and self.outbox.move_to_memory(str(e)):
                    self._state_changed()
                    continue  # the outbox carries on in memory: the alerts keep flowing to the broker
                self._retry_at = time.monotonic() + RETRY_S
                started, self.error = self.error is None, str(e)
                if started:
                    log.error("%s; holding the alerts in memory and retrying every %.0f s", e, RETRY_S)
                    self._state_changed()
                return False
            self._held.popleft()
            self._held_bytes -= h.size
            self._held_msgs -= len(h.msgs)
            for ev in h.events:
                log.info("alert %s %s frame=%d bbox=%s", ev.event, ev.alert_id, ev.frame_index,
                         [round(v, 3) for v in ev.bbox_norm])
                if self.on_event is not None:
                    self.on_event(ev)
        if self.error is not None:
            log.warning("the outbox stores again: every held alert is committed")
            self.error = None
            self._state_changed()
        return True

    def _state_changed(self) -> None:
        if self.on_state is not None:
            try:
                self.on_state()
            except Exception:  # a status report must never stop the alerts
                log.exception("outbox state callback failed")

    def close(self) -> None:
        """A last try at stopping; whatever is still held is lost, and said so."""
        if not self.retry(force=True):
            self.lost_at_close = self.held
            log.error("%d alert message(s) lost at stop: the outbox could not store them (%s)", self.held, self.error)

    def _bound(self) -> None:
        while self._held_bytes > self.hold_max_bytes and len(self._held) > 1:
            h = self._held.popleft()
            self._held_bytes -= h.size
            self._held_msgs -= len(h.msgs)
            self.dropped += len(h.msgs)
            log.error("too many alerts held in memory (%d bytes max): dropped %d message(s) of frame %d",
                      self.hold_max_bytes, len(h.msgs), h.events[0].frame_index)

    def _snapshot_or_none(self, frame: Frame, ev: AlertEvent) -> bytes | None:
        """The event's snapshot, or None if it cannot be made: the alert matters more than its picture."""
        try:
            return self._snapshot(frame, ev)
        except Exception:
            log.exception("alert %s: no snapshot could be made; the alert goes out without one", ev.alert_id)
            return None

    def _snapshot(self, frame: Frame, ev: AlertEvent) -> bytes:
        image = frame.image
        if self.main_frame is not None:  # picamera2: the full-resolution main stream of the same frame
            main = self.main_frame(frame.index)
            if main is not None:
                image = main.image
            elif not self._said_small and self.main_frame(None) is not None:
                # the source has a main stream (picamera2), but no longer this frame's: a file or a webcam has none
                self._said_small = True
                log.warning("the snapshot of frame %d is the inference image: its full-resolution frame is no "
                            "longer held (the pipeline runs more than %d frames behind the camera)", frame.index,
                            SNAPSHOT_HELD)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = ev.bbox_norm
        box = (x0 * w, y0 * h, x1 * w, y1 * h)
        return render_snapshot(image, box, max_px=self.snapshot_max_px, label=snapshot_label(ev))


def snapshot_label(ev: AlertEvent) -> str:
    """What an event's snapshot writes over its box: "gap 0.83", the word the preview and the report use too."""
    return f"gap {ev.confidence:.2f}" if ev.event == "opened" else "restocked"
