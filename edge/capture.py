"""The capture thread: reads a `FrameSource` on its own thread and hands the newest frame to the pipeline.

Live mode (cameras, streams, real-time replays) keeps one slot: a frame nobody took before the next one arrived is
dropped and counted, so a slow model never makes frames queue up. Lossless mode (a file or folder replayed as fast
as possible) hands every frame over and the reader waits for the consumer, so a recorded cart pass always gives
the same alerts.

A source that fails is closed and reopened with exponential backoff (`camera.reopen_min_s` .. `reopen_max_s`);
`on_state("degraded", "camera: <reason>")` is called when it fails and `on_state("ok", "")` once frames flow again.
A live source that gives no frame for `stall_s` is reported degraded even while its read is still blocked, and
after HANG_STALLS x `stall_s` it is `hung`: the service then lets systemd's watchdog restart it.
The first frame a live source gives after it was reopened or stalled is marked `interrupted`: the cart may have
moved any distance unseen (the tracker then knows its position is lost).

Finite sources: a video that stops early (read error before its frame count: the file was truncated, replaced or
the disk hiccuped) is reopened and resumes at the next frame index (CAP_PROP_POS_FRAMES), so indices stay
contiguous. If the reopened file fails again at that same index, that is where the readable file ends and the
source ends there. A finite source that cannot be reopened after `camera.reopen_attempts` tries (5 when the config
says 0 = forever, which only makes sense for live cameras) ends with `error` set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge.config import CameraConfig
from edge.sources import FrameSource, MainFrame, Seekable, SnapshotSource, SourceError
from edge.types import Frame

log = logging.getLogger(__name__)

# A live source's read blocked for this many `stall_s` (20 s by default) is hung for good: a driver without a
# timeout. Its thread cannot be taken back; a new process opens the device anew (systemd's watchdog restarts it).
HANG_STALLS = 4

FINITE_DEFAULT_ATTEMPTS = 5


def _reason(e: BaseException) -> str:
    """The status reason for a failure: always "camera: ...", e.g. "camera: /dev/video3: no such device"."""
    msg = str(e) or type(e).__name__
    return f"camera: {msg.removeprefix('camera ')}"


@dataclass(frozen=True)
class _Live:
    """The source being read, and the global frame index of its first read."""

    source: FrameSource
    base: int


class CaptureThread:
    """Owns one source at a time (built by `source_factory`) and publishes `edge.types.Frame`s.

    `lossless=None` chooses: lossless for a finite source that is not paced in real time, newest-only otherwise.
    """

    def __init__(self, source_factory: Callable[[], FrameSource], cfg: CameraConfig,
                 on_state: Callable[[str, str], None], *, lossless: bool | None = None, stall_s: float = 5.0,
                 name: str = "capture"):
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        self._factory = source_factory
        self._cfg = cfg
        self._on_state = on_state
        self._lossless_opt = lossless
        self.lossless = bool(lossless)
        self.stall_s = stall_s
        self._name = name
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._pending_drops = 0
        self._pending_interrupt = False  # a frame marked `interrupted` was overwritten before it was taken
        self._dropped = 0
        self._frames = 0
        self._ended = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        # the source being read and the global index of its first read: one record, replaced whole, so the sink's
        # thread (snapshot_frame) never pairs a reopened source with the index base of the one before
        self._live: _Live | None = None
        self._first: FrameSource | None = None  # a finite source opened by start()
        self._state_lock = threading.Lock()
        self._degraded_reason = ""
        self._read_since: float | None = None  # monotonic start of the read in progress
        self._hung_read: float | None = None  # the _read_since of a read `_watch` found hung (see `hung`)
        self.error: str | None = None  # why a finite source gave up
        self.source_name = ""
        self.fps: float | None = None
        self.finite = False

    # ---- consumer side -------------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """True once a finite source has ended (or given up) and its last frame has been taken."""
        with self._cond:
            return self._ended and self._slot is None

    @property
    def dropped(self) -> int:
        """Frames read from the source that nobody took before a newer one replaced them."""
        with self._cond:
            return self._dropped

    @property
    def frames(self) -> int:
        """Frames read from the source so far."""
        with self._cond:
            return self._frames

    @property
    def hung(self) -> bool:
        """A live source's read (or open) in progress has been blocked for HANG_STALLS x `stall_s`: a driver
        without a timeout, which only a new process gets the device back from (the service stops its watchdog
        pings). False again should the read return after all."""
        since = self._read_since
        return since is not None and since == self._hung_read

    @property
    def degraded(self) -> str:
        """The current degraded reason, or "" while frames flow."""
        with self._state_lock:
            return self._degraded_reason

    def latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken, waiting up to `timeout` s; None on timeout or once the source ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot is None:
                if self._ended or self._stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._pending_drops = 0
            self._pending_interrupt = False
            self._cond.notify_all()
            return frame

    def snapshot_frame(self, index: int | None = None) -> MainFrame | None:
        """The current source's full-resolution frame (picamera2 main stream) with its global index.

        None when the source has no such stream, or when `index` is given and the held frame is another one.
        """
        live = self._live
        if live is None or not isinstance(live.source, SnapshotSource):
            return None
        src, base = live.source, live.base
        if index is not None and index < base:
            return None  # a frame of a source that has since been reopened
        try:
            main = src.snapshot_frame(None if index is None else index - base)
        except Exception as e:
            log.warning("%s: snapshot frame unavailable: %s", self.source_name, e)
            return None
        if main is None:
            return None
        return MainFrame(index=base + main.index, image=main.image)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start reading. A finite source is opened here, so a missing or unreadable file raises SourceError."""
        if self._thread is not None:
            raise RuntimeError("capture thread already started")
        src = self._factory()
        self.source_name, self.finite, self.fps = src.name, src.finite, src.fps
        if self._lossless_opt is None:
            self.lossless = src.finite and not self._cfg.realtime
        if src.finite:
            src.open()
            self._first = src
            self.fps = src.fps
        self._thread = threading.Thread(target=self._run, args=(src,), name=self._name, daemon=True)
        self._thread.start()
        if not src.finite:
            self._watchdog = threading.Thread(target=self._watch, name=f"{self._name}-watchdog", daemon=True)
            self._watchdog.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, close the source and join the threads (a read blocked in a driver has `timeout` s)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in (self._thread, self._watchdog):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)
                if t.is_alive():
                    log.warning("%s: thread %s did not stop within %.1f s", self.source_name, t.name, timeout)

    def __enter__(self) -> CaptureThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- producer side -------------------------------------------------------------------------------------
    def _set_state(self, degraded_reason: str) -> None:
        with self._state_lock:
            if degraded_reason == self._degraded_reason:
                return
            self._degraded_reason = degraded_reason
        if degraded_reason:
            log.warning("%s", degraded_reason)
        else:
            log.info("camera %s: frames flowing again", self.source_name)
        try:
            self._on_state("degraded" if degraded_reason else "ok", degraded_reason)
        except Exception:
            log.exception("camera state callback failed")

    def _publish(self, frame: Frame) -> bool:
        """Hand a frame over; False when stopping. Lossless waits for the consumer, live overwrites."""
        with self._cond:
            if self.lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return False
            elif self._slot is not None:
                self._pending_drops += 1
                self._dropped += 1
                self._pending_interrupt = self._pending_interrupt or self._slot.interrupted
            self._frames += 1
            if self._pending_drops or self._pending_interrupt:
                frame = replace(frame, dropped_before=self._pending_drops,
                                interrupted=frame.interrupted or self._pending_interrupt)
            self._slot = frame
            self._cond.notify_all()
            return True

    def _finish(self, error: str | None = None) -> None:
        with self._cond:
            self.error = error
            self._ended = True
            self._cond.notify_all()

    def _after_failure(self, e: BaseException, failures: int, max_attempts: int, backoff: float) -> float | None:
        """Report a failed open or read as degraded, then give up (None) after `max_attempts`, or wait `backoff`
        and return the next, doubled backoff. None also when stopped while waiting."""
        self._set_state(_reason(e))
        if max_attempts and failures >= max_attempts:
            self._finish(f"{e} (gave up after {failures} attempts)")
            return None
        if not self._sleep(backoff):
            return None
        return min(backoff * 2, self._cfg.reopen_max_s)

    def _sleep(self, seconds: float) -> bool:
        """Back off; False when stopping."""
        return not self._stop.wait(seconds)

    def _run(self, first: FrameSource) -> None:
        try:
            self._loop(first)
        except Exception as e:  # never die silently: a bug here must show up as a degraded camera
            log.exception("capture thread crashed")
            self._set_state(_reason(e))
            self._finish(f"capture thread crashed: {e}")
        finally:
            live, self._live = self._live, None
            if live is not None:
                live.source.close()

    def _loop(self, first: FrameSource) -> None:
        cfg = self._cfg
        backoff = cfg.reopen_min_s
        failures = 0
        next_index = 0  # global index of the next frame to read
        failed_at: int | None = None  # finite source: the index where reading last failed
        lost_view = False  # a live source failed after delivering frames: the next frame starts after a gap
        src: FrameSource | None = first if self._first is not None else None
        pending_open: FrameSource | None = first if src is None else None
        max_attempts = cfg.reopen_attempts or (FINITE_DEFAULT_ATTEMPTS if first.finite else 0)
        if src is not None:
            self._live = _Live(src, 0)
        while not self._stop.is_set():
            if src is None:
                try:
                    cand = pending_open if pending_open is not None else self._factory()
                    pending_open = None
                    self._read_since = time.monotonic()
                    try:
                        cand.open()
                        try:
                            if cand.finite and next_index > 0:
                                self._resume(cand, next_index)
                        except BaseException:
                            cand.close()
                            raise
                    finally:
                        self._read_since = None
                    src = cand
                except Exception as e:
                    self._log_unexpected(e)
                    failures += 1
                    next_backoff = self._after_failure(e, failures, max_attempts, backoff)
                    if next_backoff is None:
                        return
                    backoff = next_backoff
                    continue
                self._live = _Live(src, next_index)
                self.fps = src.fps
            try:
                read_from = self._read_since = time.monotonic()
                try:
                    image = src.read()
                finally:
                    self._read_since = None
                if time.monotonic() - read_from > self.stall_s:
                    lost_view = next_index > 0  # a stalled camera: whatever passed meanwhile was never seen
            except Exception as e:
                self._log_unexpected(e)
                self._live = None
                src.close()
                src = None
                lost_view = next_index > 0
                if first.finite and failed_at == next_index:
                    # Reopened and failed again at the same frame: the readable part of the file ends here.
                    log.warning("%s; ending the replay at frame %d", e, next_index)
                    self._set_state("")
                    self._finish(None)
                    return
                failed_at = next_index
                failures += 1
                next_backoff = self._after_failure(e, failures, max_attempts, backoff)
                if next_backoff is None:
                    return
                backoff = next_backoff
                continue
            if image is None:
                if src.finite:
                    self._set_state("")
                    self._finish(None)
                    return
                # A live source must not end; treat it as a failure.
                self._live = None
                src.close()
                src = None
                lost_view = next_index > 0
                failures += 1
                self._set_state(f"camera: {first.name}: the stream ended")
                if not self._sleep(backoff):
                    return
                backoff = min(backoff * 2, cfg.reopen_max_s)
                continue
            failures = 0
            failed_at = None
            backoff = cfg.reopen_min_s
            if self._degraded_reason:
                self._set_state("")
            # a replayed file resumes at the frame it failed on; a live camera has missed what passed meanwhile
            frame = Frame(image=image, index=next_index, t_mono=time.monotonic(), t_wall=time.time(),
                          interrupted=lost_view and not src.finite)
            lost_view = False
            next_index += 1
            if not self._publish(frame):
                return

    @staticmethod
    def _resume(src: FrameSource, index: int) -> None:
        if not isinstance(src, Seekable):
            raise SourceError(f"{src.name}: cannot resume at frame {index}")
        src.seek(index)

    def _log_unexpected(self, e: Exception) -> None:
        """SourceErrors are expected (one line, in the status); anything else gets its traceback logged."""
        if not isinstance(e, SourceError):
            log.error("camera %s: unexpected error", self.source_name, exc_info=e)

    def _watch(self) -> None:
        """Report a live source whose read has been blocked longer than `stall_s` (a driver without a timeout)."""
        period = min(1.0, self.stall_s / 4)
        while not self._stop.wait(period):
            since = self._read_since
            if since is not None and time.monotonic() - since > self.stall_s and not self._degraded_reason:
                self._set_state(f"camera: {self.source_name}: no frame for {self.stall_s:g} s")
            if since is not None and time.monotonic() - since > HANG_STALLS * self.stall_s and \
                    self._hung_read != since:
                self._hung_read = since
                log.error("camera %s: a read has been blocked for %.0f s; no more watchdog pings, so that systemd "
                          "restarts the service and the camera is opened anew", self.source_name,
                          time.monotonic() - since)
