"""The alert sink: renders each event's snapshot and commits alert + snapshot to the outbox in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edge.outbox import Outbox
from edge.payloads import ModelRef, alert_messages
from edge.snapshot import render_snapshot
from edge.sources import MainFrame
from edge.topics import Topics
from edge.types import AlertEvent, Frame

log = logging.getLogger(__name__)


class OutboxSink:
    """Turns tracker events into durable outbox messages; nothing is published before it is committed."""

    def __init__(self, outbox: Outbox, topics: Topics, model: Callable[[], ModelRef], snapshot_max_px: int = 640,
                 main_frame: Callable[[int], MainFrame | None] | None = None,
                 on_event: Callable[[AlertEvent], None] | None = None):
        self.outbox = outbox
        self.topics = topics
        self.model = model
        self.snapshot_max_px = snapshot_max_px
        self.main_frame = main_frame
        self.on_event = on_event

    def emit(self, frame: Frame, events: Sequence[AlertEvent]) -> None:
        msgs = []
        for ev in events:
            if ev.snapshot_jpeg is None:
                ev.snapshot_jpeg = self._snapshot(frame, ev)
            msgs.extend(alert_messages(ev, self.topics, self.model()))
        self.outbox.put(msgs)  # one durable transaction for the whole frame's events
        for ev in events:
            log.info("alert %s %s frame=%d bbox=%s", ev.event, ev.alert_id, ev.frame_index,
                     [round(v, 3) for v in ev.bbox_norm])
            if self.on_event is not None:
                self.on_event(ev)

    def _snapshot(self, frame: Frame, ev: AlertEvent) -> bytes:
        image = frame.image
        if self.main_frame is not None:  # picamera2: the full-resolution main stream of the same frame
            main = self.main_frame(frame.index)
            if main is not None:
                image = main.image
        h, w = image.shape[:2]
        x0, y0, x1, y1 = ev.bbox_norm
        box = (x0 * w, y0 * h, x1 * w, y1 * h)
        label = f"empty {ev.confidence:.2f}" if ev.event == "opened" else "restocked"
        return render_snapshot(image, box, max_px=self.snapshot_max_px, label=label)
