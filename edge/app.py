"""The composition root: builds every part of the device service from a Config, runs it, and stops it in reverse."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, Bundle, BundleError, load_public_keys, read_bundle
from edge.clock import clock_problem
from edge.config import Config
from edge.instance_lock import acquire
from edge.payloads import (
    ModelRef,
    OtaState,
    StatsInfo,
    StatusInfo,
    model_state_payload,
    read_cpu_temp_c,
    rfc3339,
    stats_payload,
)
from edge.pipeline import CorePlan, FrameObserver, FrameResult, ModelSlot, Pipeline, tune_process
from edge.types import AlertEvent, Frame, Gap

if TYPE_CHECKING:
    from edge.capture import CaptureThread
    from edge.detector import Detector
    from edge.mqtt import MqttLink
    from edge.ota.updater import Updater
    from edge.outbox import Outbox
    from edge.preview import PreviewServer
    from edge.sink import OutboxSink
    from edge.topics import Topics
    from edge.tracker import GapTracker

T = TypeVar("T")


def _need(part: T | None) -> T:
    """A part that start-up has built by now (a programming error otherwise)."""
    if part is None:
        raise RuntimeError("the service is not started")
    return part

log = logging.getLogger(__name__)


DEV_MODE_NOTE = "DEVELOPMENT MODE: model.dev_allow_unsigned is set"


def model_ref(bundle: Bundle) -> ModelRef:
    return ModelRef(bundle.manifest.name, bundle.manifest.version, bundle.manifest.files.get("model.tflite"))


def trusted_keys(cfg: Config, bad: list[str] | None = None) -> dict[str, Any]:
    """Keys that may sign a model the device runs: the configured keys folder plus the project's built-in key.
    A file there that is not a key is a BundleError, or, with a `bad` list, skipped and said there."""
    return load_public_keys([cfg.ota.keys_dir, BUILTIN_KEYS], bad)


def load_model(cfg: Config, path: str | Path | None = None, bad_keys: list[str] | None = None) -> Bundle:
    """Read and verify the configured bundle (or the built-in default); refuses unsigned ones unless in dev mode.
    With `bad_keys`, key files that are not keys are skipped (and said there) instead of refusing every model."""
    p = Path(path) if path else (Path(cfg.model.bundle) if cfg.model.bundle else DEFAULT_BUNDLE)
    if cfg.model.dev_allow_unsigned:
        log.warning("%s: models run WITHOUT a valid signature", DEV_MODE_NOTE)
    return read_bundle(p, trusted_keys(cfg, bad_keys), allow_unsigned=cfg.model.dev_allow_unsigned)


def state_folders(cfg: Config) -> list[tuple[Path, str]]:
    """The folders one service owns (the outbox's, which also holds the alert places, and the OTA models folder
    when it lies elsewhere), each with what it is called in an error."""
    state = Path(cfg.outbox.path).parent
    folders = [(state, "state folder")]
    models = Path(cfg.ota.models_dir)
    if cfg.ota.enabled and not models.resolve().is_relative_to(state.resolve()):
        folders.append((models, "OTA models folder"))
    return folders


@dataclass
class Parts:
    """The service's parts, filled in by `Service._build` in start-up order (and stopped in reverse)."""

    slot: ModelSlot | None = None
    outbox: Outbox | None = None
    topics: Topics | None = None
    mqtt: MqttLink | None = None
    tracker: GapTracker | None = None
    capture: CaptureThread | None = None
    sink: OutboxSink | None = None
    pipeline: Pipeline | None = None
    preview: PreviewServer | None = None


@dataclass(frozen=True)
class _LastFrame:
    """The newest processed frame, the gaps found in it and the model that ran it (for the snapshot command): one
    record, replaced whole, so a reader on another thread never pairs one frame with another's gaps."""

    frame: Frame
    gaps: list[Gap]
    model: Any  # the slot info of the model that ran the frame


BROKER_OUTAGE_S = 30.0  # a broker away this long makes the local status (systemd, preview) degraded
STATUS_POLL_S = 5.0  # how often the status is worked out again for what changes without an event
PAUSE_DRAIN_S = 5.0  # cmd/pause waits at most this long for the frames already taken to go through

FAILED_STOP_CONNECT_S = 2.0  # a run that failed before the broker answered waits this long to say why, retained
EXIT_QUEUED = 3  # a finite source's run ended (timeout, stop) with messages still queued, kept for the next start
EXIT_LOST = 4  # the service stopped with alerts only in memory (the disk was full and the broker away): lost
EXIT_RELOAD = 5  # stopped by SIGHUP to start again with the configuration as it is now (the unit restarts it)


class Service:
    """The device service. `run()` blocks until stopped (SIGTERM/SIGINT, `stop()`) or a finite source is done."""

    def __init__(self, cfg: Config, *, preview: bool | None = None, drain_timeout_s: float | None = None,
                 on_event: Callable[[AlertEvent], None] | None = None, install_signals: bool = True):
        self.cfg = cfg
        self.preview_enabled = cfg.preview.enabled if preview is None else preview
        self.drain_timeout_s = drain_timeout_s
        self.on_event = on_event
        self.install_signals = install_signals
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.last: _LastFrame | None = None
        self.ota_state = OtaState("idle")
        self.exit_code = 0
        self.stop_reason: str | None = None  # why the run failed, for the retained `offline` (None: "stopped")
        self.preview_url: str | None = None
        self.parts = Parts()
        self.updater: Updater | None = None
        self.model_problem: str | None = None  # why the service runs the built-in model instead of the configured one
        self.key_problem: str | None = None  # key files in the keys folder that are not keys (skipped)
        self.preview_problem: str | None = None  # why the live preview is not there (its port is taken, say)
        self._status_line: str | None = None  # the last STATUS= sent to systemd
        self._status_lock = threading.Lock()
        self._model_state_lock = threading.Lock()  # one model/state worked out and published at a time

    # ---- commands from MQTT ----------------------------------------------------------------------------------
    def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        pipeline: Pipeline = _need(self.parts.pipeline)
        unknown = sorted(set(args) - {"reason"})  # a note for the log is welcome; nothing else is understood
        if unknown:
            raise ValueError(f"{name} takes no arguments (only an optional \"reason\" for the log), got "
                             f"{', '.join(unknown)}" + (": it re-reads the configured or OTA-installed model; "
                                                        "new models come as signed OTA releases"
                                                        if name == "reload" else ""))
        if args.get("reason") is not None:
            log.info("command %s: %s", name, str(args["reason"])[:200])
        if name == "pause":
            # answered once the frames already taken are through: no alert of theirs follows the answer
            drained = pipeline.pause(PAUSE_DRAIN_S)
            if not drained:
                log.warning("cmd/pause: frames taken before the pause were still on their way after %.0f s",
                            PAUSE_DRAIN_S)
            self._refresh_status()
            return {"paused": True}
        if name == "resume":
            pipeline.paused.clear()
            self._refresh_status()
            return {"paused": False}
        if name == "snapshot":
            return self._manual_snapshot()
        if name == "reload":
            loaded: list[Bundle] = []

            def load(ota_path: Path | None) -> None:
                loaded.append(load_model(self.cfg, ota_path))
                self._swap_bundle(loaded[0])

            if self.updater is not None:
                self.updater.reload(load)  # under the updater's lock: no switch or rollback in between
            else:
                load(None)
            return {"model": model_ref(loaded[0]).short()}
        raise ValueError(f"unknown command {name!r}; expected pause, resume, snapshot or reload")

    def _manual_snapshot(self) -> dict[str, Any]:
        import cv2

        from edge.preview import annotate

        last = self.last
        if last is None:
            raise ValueError("no frame has been processed yet")
        frame = last.frame
        model = self.model_of_frame(last.model)
        bgr = annotate(frame.image, last.gaps, [], {"model": f"{model.name} v{model.version}", "frame": frame.index},
                       max_width=self.cfg.mqtt.snapshot_max_px)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise ValueError("could not encode the snapshot")
        jpeg = buf.tobytes()
        topic = _need(self.parts.topics).snapshot(f"manual-{int(time.time() * 1000)}")
        if not _need(self.parts.mqtt).publish_direct(topic, jpeg, qos=1, retain=False):
            raise ValueError("the snapshot was not sent: the broker connection is down")
        # when the picture was taken: with the camera stalled or the cart paused it is the last frame there is
        return {"topic": topic, "bytes": len(jpeg), "frame": frame.index, "gaps": len(last.gaps), "model": model.short(),
                "captured": rfc3339(frame.t_wall), "age_s": round(max(0.0, time.monotonic() - frame.t_mono), 3)}

    # ---- model swaps (reload and OTA) ------------------------------------------------------------------------
    def _detector(self, bundle: Bundle) -> Detector:
        """The configured Detector for `bundle` (the runtime loads the model: ValueError/RuntimeError if it cannot)."""
        from edge.detector import Detector

        return Detector(bundle, threads=self.cfg.model.threads, score_threshold=self.cfg.model.score_threshold)

    def _swap_bundle(self, bundle: Bundle) -> None:
        _need(self.parts.slot).request_swap(self._detector(bundle), bundle)
        self._publish_model_state()

    def swap_to_path(self, path: Path) -> None:
        """The OTA updater's hook: load the verified bundle at `path` and swap it in between two frames."""
        bundle = read_bundle(path, trusted_keys(self.cfg), allow_unsigned=self.cfg.model.dev_allow_unsigned)
        self._swap_bundle(bundle)

    def report_ota(self, state: dict[str, Any]) -> None:
        """The OTA updater's reports: kept and published, retained, on model/state."""
        ota = state.get("ota", state)
        try:
            new = OtaState(str(ota.get("state", "idle")), ota.get("version"), ota.get("error"), time.time(),
                           ota.get("code"))
        except ValueError:
            log.exception("unexpected OTA report %r", state)
            return
        self._publish_model_state(new)

    def current_model(self) -> ModelRef:
        slot: ModelSlot = _need(self.parts.slot)
        bundle = slot.info
        return model_ref(bundle)

    def model_of_frame(self, info: Any) -> ModelRef:
        """The model that ran a frame, from the slot info the pipeline passes along (the running one if unknown)."""
        return model_ref(info) if isinstance(info, Bundle) else self.current_model()

    def _publish_model_state(self, ota: OtaState | None = None) -> None:
        """Publish the retained model/state (with `ota` as the OTA state from now on, when given). Reloads, swaps
        and OTA reports come from different threads: each works its payload out and publishes it under one lock,
        so the one worked out last is the one the broker keeps."""
        with self._model_state_lock:
            if ota is not None:
                self.ota_state = ota
            link = self.parts.mqtt
            if link is None or self.parts.slot is None:
                return
            bundle = _need(self.parts.slot).latest_info
            payload = model_state_payload(model_ref(bundle), self.ota_state, _need(self.parts.topics), time.time())
            link.publish_model_state(payload)
        self._refresh_status()  # the retained status names the model too

    # ---- status and stats -------------------------------------------------------------------------------------
    def _refresh_status(self) -> None:
        """Work out the status and say it everywhere (MQTT, systemd's STATUS=, the preview). Called from several
        threads (capture, sink, OTA reports, stats): one at a time, so an older status never overwrites a newer."""
        with self._status_lock:
            status = self.status()
            link = self.parts.mqtt
            if link is not None:  # published only when it says something new (and on every connect)
                link.set_status(status.state, status.reason)
            outage = self._broker_outage()  # what MQTT cannot say while it is down
            local = self.status(outage) if outage is not None else status
            self._notify_status(local)
            preview = self.parts.preview
            if preview is not None:  # the installer's phone says what MQTT and systemd say
                preview.set_service_status(local.state, local.reason)

    def _broker_outage(self) -> str | None:
        """The broker's absence once it has lasted BROKER_OUTAGE_S (alerts wait on the cart), or None. Said only on
        systemd's STATUS= and the preview: the retained MQTT status would carry it past the reconnect."""
        link = self.parts.mqtt
        outage = link.outage() if link is not None else None
        if link is None or outage is None or time.time() - outage[0] < BROKER_OUTAGE_S:
            return None
        since, error = outage
        sink = self.parts.sink
        waiting = (self.parts.outbox.depth() if self.parts.outbox is not None else 0) + (sink.held if sink else 0)
        return (f"no connection to the MQTT broker {link.address} since "
                f"{time.strftime('%H:%M:%S', time.localtime(since))}" + (f" ({error})" if error else "")
                + f"; {waiting} message(s) kept on the cart for it")

    def _notify_status(self, status: StatusInfo) -> None:
        """The status line `systemctl status` shows (sd_notify STATUS=), sent when it changes."""
        from edge.sdnotify import notify

        model = f"model {status.model.name} v{status.model.version}" if status.model else "no model"
        line = f"{status.state}, {model}" + (f": {status.reason}" if status.reason else "")
        if line != self._status_line:
            self._status_line = line
            notify(f"STATUS={line}")

    def status(self, outage: str | None = None) -> StatusInfo:
        """`degraded` with every trouble while alerts may be held up or wrong; `online` otherwise, with the notes
        that do not hold alerts up (paused by command, no live preview). `outage`: the broker's absence, a trouble
        said first (on the cart only: see `_broker_outage`)."""
        notes = []
        if self.parts.pipeline is not None and self.parts.pipeline.paused.is_set():
            notes.append("paused by command (cmd/resume to continue)")
        if self.preview_problem is not None:
            notes.append(self.preview_problem)
        if self.updater is not None:
            from edge.ota.updater import release_keys_problem

            keys = release_keys_problem(self.cfg.ota.keys_dir)
            if keys is not None:
                notes.append(f"OTA: {keys}")
        unsigned = self.parts.slot is not None and self.parts.slot.latest_info.signed_by is None
        if unsigned or self.cfg.model.dev_allow_unsigned:  # a fleet must see it, not only the cart's journal
            notes.append(("running an UNSIGNED model" if unsigned else "unsigned models would run")
                         + f" ({DEV_MODE_NOTE})")
        reasons = [outage] if outage is not None else []
        capture = self.parts.capture
        if capture is not None and capture.degraded:
            reasons.append(capture.degraded)
        outbox = self.parts.outbox
        if outbox is not None and outbox.quarantine_note is not None:
            reasons.append(outbox.quarantine_note)
        if outbox is not None and outbox.memory_reason is not None:
            reasons.append(f"alerts are kept in memory only, not on disk, until the disk has room: "
                           f"{outbox.memory_reason}")
        sink = self.parts.sink
        if sink is not None and sink.error is not None:
            reasons.append(f"alerts held in memory ({sink.held} messages): {sink.error}")
        if self.model_problem is not None:
            reasons.append(self.model_problem)
        if self.key_problem is not None:
            reasons.append(self.key_problem)
        link = self.parts.mqtt
        if link is not None and link.rejection is not None:  # systemd's STATUS= says what MQTT's status says
            reasons.append(link.rejection)
        unset = clock_problem(time.time())
        if unset is not None:  # alerts still go out, with the times the device has: say they are wrong
            reasons.append(f"{unset}: the times in alerts are wrong until it is set")
        model = model_ref(self.parts.slot.latest_info) if self.parts.slot is not None else None
        if reasons:
            return StatusInfo("degraded", "; ".join(reasons + notes), model)
        return StatusInfo("online", "; ".join(notes) or None, model)

    def stats_info(self) -> StatsInfo:
        pipeline: Pipeline = _need(self.parts.pipeline)
        outbox = _need(self.parts.outbox)
        s = pipeline.stats
        capture = self.parts.capture
        dropped = capture.dropped if capture is not None else s.dropped
        sink = self.parts.sink
        return StatsInfo(
            fps=s.fps.rate(),
            dropped_frames=dropped,
            inference_p50_ms=s.invoke.percentile(50),
            inference_p95_ms=s.invoke.percentile(95),
            outbox_depth=outbox.depth() + (sink.held if sink else 0),  # held: waiting in memory for room on disk
            outbox_dropped=outbox.dropped() + (sink.dropped if sink else 0),
            model=self.current_model(),
            uptime_s=time.monotonic() - self.started,
            cpu_temp_c=read_cpu_temp_c(),
            outbox_quarantined=str(outbox.quarantined) if outbox.quarantined else None,
        )

    def _stats_loop(self) -> None:
        link = _need(self.parts.mqtt)
        topics = _need(self.parts.topics)
        interval = self.cfg.mqtt.stats_interval_s
        next_stats = time.monotonic() + interval
        while not self.stop_event.wait(min(interval, STATUS_POLL_S)):
            try:
                if time.monotonic() >= next_stats:
                    next_stats = max(next_stats + interval, time.monotonic())
                    link.publish_stats(stats_payload(self.stats_info(), topics, time.time()))
                # what changed without telling: the clock, a disk with room again, a broker away for too long
                self._refresh_status()
            except Exception:  # one bad round (an outbox read error, say) must not end stats for the whole run
                log.exception("publishing stats and status failed; trying again in %.0f s",
                              self.cfg.mqtt.stats_interval_s)

    # ---- the run ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        from edge.sdnotify import notify

        if self.install_signals and threading.current_thread() is threading.main_thread():
            # Before start-up, not after it: a stop while the model loads (seconds on a Zero 2 W) must end the run
            # cleanly too. Killed there by the default handler, a run with a model on probation counted as a
            # crash, and the second such stop rolled a good model back and refused it for good.
            self._install_signals()
        with contextlib.ExitStack() as stack:
            try:
                self._build(stack)
                self._loop()
                self._drain()
            except Exception as e:  # the retained `offline` says why, not just "stopped" (the stack unwinds next)
                self.stop_reason = f"stopped by an error: {e}"
                raise
            notify("STOPPING=1")
        lost = sum(p.lost_at_close for p in (self.parts.sink, self.parts.outbox) if p is not None)
        if lost:  # kept in memory on a full disk and never delivered: logged by whichever lost them
            self.exit_code = EXIT_LOST
        return self.exit_code

    def _install_signals(self) -> None:
        """SIGTERM and SIGINT stop the service. SIGHUP (`systemctl reload`, which has no config to re-read in a
        running service) stops it with EXIT_RELOAD, which the unit restarts (RestartForceExitStatus=); a SIGHUP
        ignored by whoever started us (nohup) stays ignored."""

        def stop(signum: int, _frame: object) -> None:
            if signum == signal.SIGHUP:
                self.exit_code = EXIT_RELOAD
            log.info("%s: stopping%s", signal.Signals(signum).name,
                     " to start again with the configuration as it is now" if signum == signal.SIGHUP else "")
            self.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            signal.signal(sig, stop)

    def _build(self, stack: contextlib.ExitStack) -> None:

        from edge.capture import CaptureThread
        from edge.mqtt import MqttLink
        from edge.outbox import Outbox, OutboxDiskFull
        from edge.sdnotify import Watchdog
        from edge.sink import OutboxSink
        from edge.sources import open_source
        from edge.topics import Topics
        from edge.tracker import GapTracker

        cfg = self.cfg
        for folder, what in state_folders(cfg):  # before anything in them is read or written
            stack.callback(acquire(folder, what).release)
        tune_process()
        updater = self._make_updater()
        self.updater = updater
        active = updater.active_bundle_path() if updater is not None else None
        chosen = Path(active) if active else (Path(cfg.model.bundle) if cfg.model.bundle else DEFAULT_BUNDLE)
        bad_keys: list[str] = []  # one broken key file must not refuse every model, the built-in one included
        try:
            bundle = load_model(cfg, chosen, bad_keys)
            detector = self._detector(bundle)
        except (BundleError, ValueError, RuntimeError) as e:
            # a cart with a model it cannot run still runs the signed built-in one, and says so in its status,
            # rather than exit and be restarted until systemd gives up
            if chosen.resolve() == DEFAULT_BUNDLE.resolve():
                raise
            self.model_problem = f"the configured model cannot run ({e}); running the built-in default model"
            log.error("%s", self.model_problem)
            bundle = load_model(cfg, DEFAULT_BUNDLE, [])
            detector = self._detector(bundle)
        if bad_keys:
            self.key_problem = "; ".join(dict.fromkeys(bad_keys)) + " (ignored)"
            log.error("%s", self.key_problem)
        if updater is not None:  # no release older than what runs, even before the first one is accepted
            updater.running_version = bundle.manifest.version
        log.info("model %s v%d on %s (xnnpack=%s, %d threads)", bundle.manifest.name, bundle.manifest.version,
                 detector.runtime.name, detector.runtime.xnnpack, cfg.model.threads)
        slot = ModelSlot(detector, bundle)
        self.parts.slot = slot

        try:
            outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_bytes)
        except OutboxDiskFull as e:  # run on, not durable, rather than not at all (systemd would give up)
            outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_bytes, memory_reason=str(e))
            log.error("%s; the outbox is kept in memory (at most %d bytes) until the disk has room", e,
                      outbox.max_bytes)
        stack.callback(outbox.close)
        self.parts.outbox = outbox
        topics = Topics.from_config(cfg)
        self.parts.topics = topics

        link = MqttLink(cfg, topics, outbox, on_command=self.on_command,
                        on_release=updater.on_release if updater is not None else None, status=self.status)
        self.parts.mqtt = link
        link.start()
        stack.callback(lambda: link.stop(reason=self.stop_reason or "stopped",
                                         connect_wait_s=FAILED_STOP_CONNECT_S if self.stop_reason else 0.0))
        self._publish_model_state()

        if updater is not None:
            updater.start()
            stack.callback(updater.stop)

        state_dir = Path(cfg.outbox.path).parent
        tracker = GapTracker(cfg.tracking, cfg.device.id, state_dir / "places.json")
        stack.callback(tracker.close)
        self.parts.tracker = tracker
        if outbox.quarantined is not None:  # events of open alerts may have waited in it, unsent
            n = tracker.alerts.announce_again()
            if n:
                log.warning("%d open alert(s) will be announced again, with their ids, when next seen: the corrupt "
                            "outbox may have held their events (%d of its messages were salvaged)", n,
                            outbox.salvaged)

        def on_capture_state(state: str, reason: str) -> None:
            self._refresh_status()  # MQTT, systemd's STATUS= and the preview, at once

        capture = CaptureThread(lambda: open_source(cfg.camera, timeout_s=cfg.camera.stall_s), cfg.camera,
                                on_capture_state, stall_s=cfg.camera.stall_s)
        self.parts.capture = capture
        capture.start()
        stack.callback(capture.stop)

        sink = OutboxSink(outbox, topics, self.model_of_frame, cfg.mqtt.snapshot_max_px,
                          main_frame=capture.snapshot_frame, on_event=self.on_event, on_state=self._refresh_status)
        stack.callback(sink.close)  # after the pipeline has stopped, before the outbox closes
        self.parts.sink = sink
        tracker.uncommitted = sink.held_alert_ids  # both run on the post-processing thread
        observers: list[FrameObserver] = [_LastFrameObserver(self)]
        if self.preview_enabled:
            from edge.preview import PreviewServer

            try:
                preview = PreviewServer(cfg.preview.bind, max_fps=cfg.preview.max_fps).start()
            except OSError as e:  # the alerts matter more than the preview: run on without it
                self.preview_problem = f"live preview not started ({e.strerror or e})"
                log.error("%s", self.preview_problem)
                self._refresh_status()
            else:
                stack.callback(preview.stop)
                self.preview_url = preview.url
                self.parts.preview = preview
                log.info("live preview at %s%s", preview.url, _lan_hint(preview))
                observers.append(_PreviewObserver(preview, self))
                self._refresh_status()
        watchdog = Watchdog().start()
        stack.callback(watchdog.stop)
        probation = _ProbationObserver(updater) if updater is not None else None
        if probation is not None:
            observers.append(probation)

        cores = CorePlan.for_process(cfg.model.threads)  # applied, and logged, by the pipeline's inference thread
        def heartbeat() -> None:
            """The watchdog's ping while the pipeline turns, but not while a live camera's read has hung: then
            systemd restarts the service, which opens the camera anew."""
            if not capture.hung:
                watchdog.heartbeat()

        pipeline = Pipeline(capture, slot, tracker, sink, observers, heartbeat=heartbeat, cores=cores,
                            admit=probation.admit if probation is not None else None)
        self.parts.pipeline = pipeline
        stats = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        stats.start()

        def stop_stats() -> None:  # before the outbox and the link close (the stack unwinds in reverse)
            self.stop_event.set()
            stats.join(5)
            try:  # a last sample, so even a short replay reports its figures
                link.publish_stats(stats_payload(self.stats_info(), topics, time.time()))
            except Exception:
                log.exception("final stats not published")

        stack.callback(stop_stats)
        from edge.sdnotify import notify

        notify("READY=1")
        self._notify_status(self.status())

    def _make_updater(self) -> Updater | None:
        if not self.cfg.ota.enabled:
            return None
        try:
            from edge.ota.updater import Updater
        except ImportError:
            log.warning("OTA updater not available in this build")
            return None
        return Updater(self.cfg, report=self.report_ota, swap=self.swap_to_path)

    def _loop(self) -> None:
        _need(self.parts.pipeline).run(self.stop_event)
        capture = _need(self.parts.capture)
        if capture.ended and capture.error:
            log.error("source gave up: %s", capture.error)
            self.stop_reason = f"the camera source gave up: {capture.error}"
            self.exit_code = 1

    def _drain(self) -> None:
        """After a finite source: wait until every committed alert has been acknowledged by the broker. A run that
        already failed (the source gave up: exit 1) keeps its exit code; its queued messages are still logged."""
        if self.stop_event.is_set():
            return
        link = _need(self.parts.mqtt)
        outbox = _need(self.parts.outbox)
        sink = _need(self.parts.sink)
        log.info("source ended; draining %d outbox messages", outbox.depth() + sink.held)
        deadline = None if self.drain_timeout_s is None else time.monotonic() + self.drain_timeout_s
        while not self.stop_event.is_set():
            if not sink.retry():  # held alerts first: the disk may have room again
                self.stop_event.wait(0.5)
            elif link.wait_idle(0.5):
                log.info("outbox drained")
                return
            if deadline is not None and time.monotonic() > deadline:
                log.error("outbox not drained after %.0f s: %d messages stay queued for the next start",
                          self.drain_timeout_s, outbox.depth())  # held ones, if any, are reported at close
                self._queued()
                return
        left = outbox.depth() + sink.held
        if left:  # stopped (SIGTERM, Ctrl-C) before the broker had everything
            log.error("stopped while draining: %d messages stay queued for the next start", left)
            self._queued()

    def _queued(self) -> None:
        """Messages stay queued: exit 3, unless the run had already failed for another reason."""
        if self.exit_code == 0:
            self.exit_code = EXIT_QUEUED


def _lan_hint(preview: PreviewServer) -> str:
    """For a preview bound to every interface: the address a phone on the store network opens."""
    import socket

    if preview.host not in ("0.0.0.0", "", "::"):
        return ""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 9))  # picks the outgoing interface; sends nothing
            ip = s.getsockname()[0]
    except OSError:
        return f" (on every interface: open this device's address, port {preview.port}, from a phone)"
    return f" (on every interface: from a phone on the store network, http://{ip}:{preview.port}/)"


class _LastFrameObserver:
    def __init__(self, service: Service):
        self.service = service

    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
        self.service.last = _LastFrame(frame, gaps, result.model)


class _PreviewObserver:
    """Hands each processed frame to the preview (cheap unless someone watches); the figures twice a second."""

    def __init__(self, preview: PreviewServer, service: Service):
        self.preview = preview
        self.service = service
        self._info: dict[str, Any] = {}
        self._info_at = 0.0
        self._label: tuple[Any, str] = (None, "")  # (slot info, "name vN"): worked out again only after a swap

    def _model_label(self, info: Any) -> str:
        if info is None or self._label[0] is not info:  # None: unknown, the running model's (not kept)
            model = self.service.model_of_frame(info)
            self._label = (info, f"{model.name} v{model.version}")
        return self._label[1]

    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
        s = self.service
        tracker = _need(s.parts.tracker)
        now = time.monotonic()
        if now - self._info_at > 0.5:
            self._info_at = now
            pipeline = _need(s.parts.pipeline)
            self._info = {
                "fps": round(pipeline.stats.fps.rate(), 1),
                "inference_ms": pipeline.stats.invoke.percentile(50),
                "outbox_depth": _need(s.parts.outbox).depth(),
                "alerts_opened": pipeline.stats.alerts_opened,
                "dropped": _need(s.parts.capture).dropped,
                "device": s.cfg.device.id,
                "store": s.cfg.device.store,
            }
        # the model that drew these boxes, also around a swap
        info = {**self._info, "frame": frame.index, "model": self._model_label(result.model),
                "shift_px": None if tracker.last_shift is None else round(float(tracker.last_shift.dx), 1)}
        self.preview.offer(frame.image, gaps, tracker.tracks(), info)  # a few views: /snapshot.jpg shows them too


class _ProbationObserver:
    """Feeds per-frame latency and output sanity (finite outputs, gaps a shelf could have) to the OTA updater's
    probation window, with the version of the model that ran the frame; and, before tracking, keeps the garbage
    frames of a model on probation from the tracker (`admit`)."""

    def __init__(self, updater: Updater):
        from edge.ota.probation import plausible  # made only with an updater: OTA code loads with it

        self.updater = updater
        self.plausible = plausible
        self._judged: tuple[int, bool] | None = None  # (frame index, plausible) from `admit`, for `on_frame`

    def _plausible(self, frame: Frame, gaps: list[Gap]) -> bool:
        if self._judged is not None and self._judged[0] == frame.index:
            return self._judged[1]
        h, w = frame.image.shape[:2]
        self._judged = (frame.index, self.plausible(gaps, w, h))
        return self._judged[1]

    def admit(self, frame: Frame, gaps: list[Gap], model: Any) -> bool:
        return self.updater.admits(self._plausible(frame, gaps), _version(model))

    def on_frame(self, frame: Frame, gaps: list[Gap], result: FrameResult) -> None:
        self.updater.observe_frame(result.invoke_ms, result.outputs_ok, self._plausible(frame, gaps),
                                   _version(result.model))


def _version(model: Any) -> int | None:
    return model.manifest.version if isinstance(model, Bundle) else None


def run_service(cfg: Config, **kwargs: Any) -> int:
    return Service(cfg, **kwargs).run()
