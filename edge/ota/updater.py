"""The device's OTA updater: takes signed releases from MQTT or polling and walks each through the safe steps.

Steps (each reported on `model/state`): verify the release → decide (expiry, downgrade/replay, app version,
rollout) → download to staging → check the tar headers → verify the bundle (signature, hashes, name/version vs the
release) → extract the verified bytes → smoke test in a child process → persist the new highest version → point
`previous` at the old folder and rename a fresh `current` link over the old one → hot-swap → probation.
A failed probation, a load failure, two service starts in one boot or three boots during probation roll back to
`previous` (a power cut is not a crash).
At start-up `active_bundle_path()` verifies what `current` points at and falls back to `previous`, then to the
built-in default model; it never returns a bundle that did not verify.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import edge
from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, Bundle, BundleError, load_public_keys, read_bundle
from edge.config import Config, ota_managed
from edge.ota import links
from edge.ota.download import FileOpener, default_opener, fetch
from edge.ota.errors import OtaError
from edge.ota.extract import check_tar, extract_verified
from edge.ota.faults import fault_point
from edge.ota.policy import decide
from edge.ota.probation import ProbationWindow
from edge.ota.release import MAX_MESSAGE_BYTES, VerifiedRelease, format_rfc3339, verify_release
from edge.ota.smoke import DetectorFactory, check_bundle, run_smoke
from edge.ota.state import Probation, StateStore, UpdaterMemory, read_boot_id

log = logging.getLogger(__name__)

MAX_PROBATION_STARTS = 2  # the service started this often in one boot with an unproven model: it crashes, roll back
# the device booted this often with an unproven model and never ran its probation frames: it takes the device down
MAX_PROBATION_BOOTS = 3
RETRY_MIN_S = 30.0
# refusals an operator can fix without a new release (the cart's keys, the file at the release's URL): the same
# announcement, published again, is tried again
FIXABLE_WITHOUT_A_NEW_RELEASE = frozenset({"no-keys", "bad-key-file", "unknown-key", "bad-signature", "hash-mismatch",
                                           "too-long"})
OUTCOME_STATES = frozenset({"active", "rolled_back", "rejected", "failed", "skipped"})  # kept across restarts
ROLLBACK_RETRY_S = 5.0  # a rollback that failed (a full disk) is tried again this often
SMOKE_CODES = frozenset({"wrong-io", "golden-mismatch", "constant-output", "nan-output", "load-failed",
                         "smoke-crash", "smoke-hang", "bad-bundle"})

Report = Callable[[dict[str, Any]], None]
Swap = Callable[[Path], None]


@dataclass(frozen=True)
class Outcome:
    """What one `apply_release` did: the final reported state and, on failure, the error code."""

    state: str  # probation | active | skipped | deferred | rejected | failed | rolled_back
    version: int | None = None
    code: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ActiveModel:
    path: Path
    name: str
    version: int
    sha256: str  # sha256 of the manifest bytes (identifies the bundle folder) or of the bundle file


@dataclass(frozen=True)
class _Later:
    """A release kept to be applied later: its payload and the version it announced (read once, when verified)."""

    payload: bytes
    version: int | None


@dataclass(frozen=True)
class _Retry:
    """A release that failed for a transient cause, tried again at `due` (monotonic); `backoff` doubles each time."""

    release: _Later
    due: float
    backoff: float


def release_keys_problem(keys_dir: str | Path) -> str | None:
    """Why every model release would be refused with the keys in `keys_dir` (none there, or the folder cannot be
    read), or None. Files there that are not keys are said on their own (`bad-key-file`)."""
    try:
        keys = load_public_keys([keys_dir], [])
    except OSError as e:
        return f"{keys_dir}: {e.strerror or e}; every model release is refused"
    if not keys:
        return f"no release key (*.pub) in {keys_dir}: every model release is refused until the fleet's key is there"
    return None


class Updater:
    """OTA updates for one device. Thread model: one worker thread runs downloads and checks; `observe_frame`
    runs on the pipeline thread; switching and rollback are serialised by a lock."""

    def __init__(self, cfg: Config, report: Report, swap: Swap, detector_factory: DetectorFactory | None = None,
                 *, smoke_timeout_s: float = 60.0, opener: FileOpener = default_opener,
                 app_version: str = edge.__version__, clock: Callable[[], float] = time.time,
                 retry_min_s: float = RETRY_MIN_S, boot_id: Callable[[], str] = read_boot_id):
        self.cfg = cfg
        self.report = report
        self.swap = swap
        self.detector_factory = detector_factory  # set: smoke-test in this process (no crash containment)
        self.smoke_timeout_s = smoke_timeout_s
        self.opener = opener
        self.app_version = app_version
        self.clock = clock
        self.retry_min_s = retry_min_s  # first retry after a transient failure; doubles up to poll_interval_s
        self.boot_id = boot_id  # tells a crash (a restart in the same boot) from a power cut during probation
        self.models_dir = Path(cfg.ota.models_dir)
        self.keys_dir = Path(cfg.ota.keys_dir)
        self.staging = self.models_dir / "staging"
        self.store = StateStore(self.models_dir / "state.json")
        self._lock = threading.RLock()  # switch, rollback, probation bookkeeping
        self._apply_lock = threading.Lock()  # one update at a time
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window: ProbationWindow | None = None
        self._window_version: int | None = None  # the version on probation: frames of another model are not its
        # the version on probation (or judged and about to be rolled back) whose implausible frames the tracker must
        # not see, so a garbage model cannot confirm a false alert before its verdict; None once it passed
        self._held_version: int | None = None
        # the version a probation verdict just failed: its frames still in flight, and those it runs until the swap
        # back lands, are not the running model's baseline for the next window
        self._failed_version: int | None = None
        self._recent: deque[bool] = deque(maxlen=max(20, cfg.ota.probation_frames))  # plausible frames, running model
        self._deferred: _Later | None = None  # the newest release announced during a probation
        self._pending_rollback: OtaError | None = None  # decided on the pipeline thread, done on the worker
        self._rollback_at = 0.0  # monotonic time before which a failed rollback is not tried again
        self._retry: _Retry | None = None
        self._handled: dict[str, str] = {}  # payload digest -> outcome state, to ignore repeats
        self._active: ActiveModel | None = None
        self.running_version: int | None = None  # the model the service runs (set by it, and by every switch here)
        self._ota: dict[str, Any] = {"state": "idle", "version": None, "error": None, "code": None, "ts": None}

    # ---- public API ----------------------------------------------------------------------------------------------
    @property
    def in_probation(self) -> bool:
        return self._window is not None

    def on_release(self, topic: str, payload: bytes) -> None:
        """MQTT callback for a (retained) release message: queued for the worker thread, never blocks."""
        if not payload:
            return  # a cleared retained message
        log.info("release announced on %s (%d bytes)", topic, len(payload))
        self._queue.put(bytes(payload))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        err, self._pending_rollback = self._pending_rollback, None
        if err is not None:
            self._rollback(err)
        with self._lock:
            # A clean stop during probation is not a crash: undo this run's count of service starts.
            try:
                st = self.store.load()
            except ValueError:
                return
            p = st.probation
            if p is not None and p.starts > 0 and self._window is not None:
                self.store.save(replace(st, probation=replace(p, starts=p.starts - 1)))

    @property
    def current_path(self) -> Path | None:
        """The verified bundle folder running now, as last switched or checked (no start-up side effects)."""
        a = self._active
        return None if a is None else a.path

    def reload(self, load: Callable[[Path | None], None]) -> None:
        """`load(path)` with the model folder running now, while no switch or rollback can run (the `reload`
        command), so it never reloads a model a rollback has just replaced. ValueError during probation: the model
        on probation is judged first."""
        with self._lock:
            if self._window is not None:
                raise ValueError("a new model is on probation; reload once it is active or rolled back "
                                 "(model/state says which)")
            load(self.current_path)

    def admits(self, is_plausible: bool, model_version: int | None) -> bool:
        """Pipeline hook, before tracking: False for an implausible frame (see `probation.plausible`) of the model on
        probation, or judged and not yet replaced, when the model before did not give such frames: its gaps never
        reach the tracker, so they cannot become alerts in the frames the verdict takes."""
        held = self._held_version
        return is_plausible or held is None or model_version != held

    def observe_frame(self, latency_ms: float, outputs_ok: bool, is_plausible: bool = True,
                      model_version: int | None = None) -> None:
        """Pipeline hook, once per frame: feeds the probation window of a freshly switched model. `model_version`:
        the version of the model that ran the frame (None: unknown), so frames still in flight from the model before
        the switch are not counted for the new one; outside probation the running model's plausible frames are
        recorded as the next window's baseline."""
        if self._window is None:
            if model_version is None or model_version != self._failed_version:
                self._recent.append(is_plausible)
            return
        if model_version is not None and self._window_version is not None and model_version != self._window_version:
            return  # still the model before the switch (the window opens before the swap, under the lock)
        with self._lock:
            w = self._window
            if w is None:
                return
            w.add(latency_ms, outputs_ok, is_plausible)
            fault_point("during-probation")
            if not w.done:
                return
            verdict = w.verdict()
            if verdict is None:
                self._commit()
                return
            err = OtaError(*verdict)
            self._failed_version = self._window_version
            if self._thread is not None and self._thread.is_alive():
                # Loading the old model takes a while: do it on the worker thread, not between two frames here.
                self._window = None
                self._pending_rollback = err
                self._queue.put(b"")
            else:
                self._rollback(err)

    def active_bundle_path(self) -> Path:
        """Start-up check: the verified bundle to run (current → previous → configured → built-in default)."""
        with self._lock:
            try:
                self.models_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                err = OtaError("io-error", f"cannot use ota.models_dir {self.models_dir}: {e.strerror}")
                log.error("%s; running the configured or built-in model", err)
                self._emit("failed", None, err)
                return self._builtin_path()
            self._cleanup_temporaries()
            state = self._load_state()
            if state.last and self._ota.get("state") == "idle":
                self._ota = dict(state.last)  # the last outcome before this start (a rollback's reason, ...)
                try:
                    self.report({"model": None, "ota": dict(self._ota)})
                except Exception:
                    log.exception("OTA report callback failed")
            cur = links.target(self.models_dir, links.CURRENT)
            p = state.probation
            if p is not None:
                if cur is None or cur.name != p.dir:
                    self.store.save(replace(state, probation=None))  # the switch never happened
                else:
                    after, crashed = p.started(self.boot_id(), MAX_PROBATION_STARTS, MAX_PROBATION_BOOTS)
                    if crashed is not None:
                        log.error("model v%d was on probation: %s; rolling back", p.version, crashed)
                        self._rollback(OtaError("probation-crash", f"{crashed} while v{p.version} was on probation"),
                                       swap=False)
                        cur = links.target(self.models_dir, links.CURRENT)
                    else:
                        if after.boots > p.boots:
                            log.warning("model v%d stays on probation after a reboot", p.version)
                        self.store.save(replace(state, probation=after))
            if cur is not None:
                bad: list[str] = []
                keys = self._keys_or_empty(bad)
                try:
                    bundle = read_bundle(cur, keys)
                except BundleError as e:
                    if bad or not keys:
                        # the keys, not the model, may be what is wrong (an operator's bad copy of a new key): keep
                        # the links as they are and run the built-in model until the key files are fixed
                        why = "; ".join(bad) or f"no trusted keys in {self.keys_dir}"
                        log.error("the active model %s cannot be verified (%s): %s; running the built-in model this "
                                  "start and keeping %s for when the key files are fixed", cur, e, why, cur.name)
                        self._emit("failed", None, OtaError("bad-key-file" if bad else "no-keys", why))
                        self.running_version = None
                        return self._builtin_path()
                    log.error("the active model %s fails verification: %s", cur, e)
                    cur = self._fall_back(cur, str(e))
                else:
                    self._set_active(cur, bundle)
                    self._gc()
                    st = self.store.load()
                    if st.probation is not None and st.probation.dir == cur.name:
                        self._window = self._new_window(bundle)
                        self._emit("probation", bundle.manifest.version)
                    return cur
            if cur is not None:
                return cur
            return self._builtin_path()

    def apply_release(self, payload: bytes) -> Outcome:
        """Run one release through every step, synchronously. Never raises for a bad release: reports it."""
        t0 = time.monotonic()
        with self._apply_lock:
            version: int | None = None
            dest: Path | None = None
            vr: VerifiedRelease | None = None
            try:
                vr = verify_release(payload, self._keys())
                version = vr.release.version
                state = self._load_state()
                now = datetime.fromtimestamp(self.clock(), timezone.utc)
                running = self._running_sha(vr.release.sha256)
                d = decide(vr, state, self.cfg.device.id, self.app_version, now, running, self.running_version)
                if not d.apply:
                    log.info("release %s v%d not applied: %s", vr.release.name, version, d.reason)
                    if d.code is not None and d.report:  # outside the rollout: say so, or it looks unheard of
                        self._emit("skipped", version, OtaError(d.code, d.reason))
                    return Outcome("skipped", version, d.code, d.reason, time.monotonic() - t0)
                with self._lock:  # against the frame thread's verdict, which queues what waits
                    if self._window is not None or self._pending_rollback is not None:
                        # one model on probation at a time: the newest release that would apply goes next
                        waiting = self._deferred.version if self._deferred is not None else None
                        if waiting is not None and waiting >= version:
                            return Outcome("skipped", version, "superseded",
                                           f"v{waiting} waits already", time.monotonic() - t0)
                        self._deferred = _Later(payload, version)
                        log.info("release v%d waits until the model on probation passes or is rolled back",
                                 version)
                        self._emit("deferred", version)
                        return Outcome("deferred", version, seconds=time.monotonic() - t0)
                self.store.save(state.with_seen(vr.digest))
                dest = self._download_and_unpack(vr)
                self._emit("smoke_testing", version)
                if self.detector_factory is not None:
                    res = check_bundle(dest, [self.keys_dir], self.detector_factory)
                    if not res.ok:
                        raise OtaError(res.code, res.detail)
                else:
                    run_smoke(dest, self.keys_dir, self.smoke_timeout_s)
                fault_point("after-smoke")
                state_name = self._switch_in(dest, vr)
                code = self._ota.get("code") if state_name == "rolled_back" else None
                return Outcome(state_name, version, code, self._ota.get("error") if code else None,
                               seconds=time.monotonic() - t0)
            except OtaError as e:
                return self._fail(e, version, dest, vr, t0)
            except OSError as e:  # the models folder's disk: full, or failing
                code = "disk-full" if e.errno == errno.ENOSPC else "io-error"
                return self._fail(OtaError(code, f"{e.strerror or e} ({getattr(e, 'filename', '') or 'models'})"),
                                  version, dest, vr, t0)
            except Exception as e:  # a bug must not kill the worker: report it, keep the running model
                log.exception("OTA update failed unexpectedly")
                return self._fail(OtaError("internal", f"{type(e).__name__}: {e}"), version, dest, vr, t0)

    # ---- steps ---------------------------------------------------------------------------------------------------
    def _download_and_unpack(self, vr: VerifiedRelease) -> Path:
        r = vr.release
        if r.size > self.cfg.ota.max_bundle_bytes:
            raise OtaError("too-large", f"bundle is {r.size} bytes, ota.max_bundle_bytes is "
                                        f"{self.cfg.ota.max_bundle_bytes}")
        self._emit("downloading", r.version)
        self.staging.mkdir(parents=True, exist_ok=True)
        stem = f"{r.sha256[:12]}.bundle"
        for old in self.staging.iterdir():  # one download at a time: drop other releases' leftovers
            if not old.name.startswith(stem):
                _remove(old)
        dl = fetch(r.url, self.staging / (stem + ".part"), r.size, r.sha256, self.cfg.ota.stall_timeout_s,
                   self.opener)
        log.info("downloaded v%d: %d bytes in %.2f s (resumed from %d)", r.version, dl.size, dl.seconds,
                 dl.resumed_from)
        fault_point("after-download")
        self._emit("verifying", r.version)
        check_tar(dl.path, self.cfg.ota.max_bundle_bytes)
        bundle = self._verify_bundle(dl.path, vr)
        fault_point("after-verify")
        dest = self.models_dir / f"v{r.version}-{r.sha256[:12]}"
        if dest == links.target(self.models_dir, links.CURRENT):
            raise OtaError("conflict", f"{dest.name} is already the current model")
        extract_verified(bundle, dest)
        _remove(dl.path)
        fault_point("after-extract")
        return dest

    def _verify_bundle(self, path: Path, vr: VerifiedRelease) -> Bundle:
        r = vr.release
        try:
            bundle = read_bundle(path, self._keys())
        except BundleError as e:
            msg = str(e)
            if "is unsigned" in msg:
                raise OtaError("unsigned-bundle", msg) from None
            if "does not verify with any trusted key" in msg:
                raise OtaError("bundle-unknown-key", msg) from None
            raise OtaError("bad-bundle", msg) from None
        m = bundle.manifest
        if m.name != r.name or m.version != r.version:
            raise OtaError("mismatch", f"the release announces {r.name} v{r.version}, the bundle is {m.name} "
                                       f"v{m.version}")
        if m.min_app_version and self._app_too_old(m.min_app_version):
            raise OtaError("app-too-old", f"bundle needs shelfscout >= {m.min_app_version}, this is "
                                          f"{self.app_version}")
        return bundle

    def _switch_in(self, dest: Path, vr: VerifiedRelease) -> str:
        r = vr.release
        with self._lock:
            self._emit("switching", r.version)
            bundle = read_bundle(dest, self._keys())
            old = links.target(self.models_dir, links.CURRENT)
            state = self._load_state()
            probation = (Probation(dest.name, r.version, r.sha256, boot_id=self.boot_id())
                         if self.cfg.ota.probation_frames > 0 else None)
            self.store.save(replace(state, highest_version=max(state.highest_version, r.version),
                                    highest_sha256=r.sha256, probation=probation))
            fault_point("after-state")
            if old is not None and old != dest:
                links.set_link(self.models_dir, links.PREVIOUS, old)
            fault_point("after-previous")
            links.set_link(self.models_dir, links.CURRENT, dest)
            fault_point("after-rename")
            if probation is not None:
                # before the swap: the new model's first frames are judged (and held back when garbage) too
                self._window = self._new_window(bundle)
            try:
                self.swap(dest)
            except Exception as e:
                log.error("the new model failed to load: %s", e)
                self._rollback(OtaError("load-failed", f"hot-swap of v{r.version} failed: {e}"))
                return "rolled_back"
            fault_point("after-swap")
            self._set_active(dest, bundle, release_sha=r.sha256)
            self._gc()
            if probation is None:
                self._emit("active", r.version)
                return "active"
            self._emit("probation", r.version)
            return "probation"

    def _commit(self) -> None:
        state = self._load_state()
        version = state.probation.version if state.probation else None
        self.store.save(replace(state, probation=None))
        self._window = None
        self._held_version = None
        log.info("model v%s passed probation", version)
        self._emit("active", version)
        self._release_deferred()

    def _release_deferred(self) -> None:
        """The probation is over: the release that waited for it goes to the worker."""
        if self._deferred is not None:
            self._queue.put(self._deferred.payload)
            self._deferred = None

    def _rollback(self, err: OtaError, swap: bool = True) -> None:
        """Back to `previous` (or the built-in model), mark the failed bundle, report `rolled_back`."""
        with self._lock:
            state = self._load_state()
            failed_dir = links.target(self.models_dir, links.CURRENT)
            p = state.probation
            version = p.version if p else None
            if p is not None:
                state = state.with_failed(p.sha256, str(err))
            self.store.save(replace(state, probation=None))
            prev = links.target(self.models_dir, links.PREVIOUS)
            if prev is not None:
                try:
                    read_bundle(prev, self._keys_or_empty())
                except BundleError as e:
                    log.error("previous model %s fails verification too: %s", prev, e)
                    prev = None
            links.set_link(self.models_dir, links.CURRENT, prev)
            links.set_link(self.models_dir, links.PREVIOUS, None)
            self._window = None
            target: Path | None = prev
            if target is None:
                try:
                    target = self._builtin_path()
                except BundleError as e:
                    log.critical("no model to roll back to: %s", e)
            if swap and target is not None:
                try:
                    self.swap(target)
                except Exception as e:  # the old model loaded before; report loudly, keep going
                    log.error("swapping back to %s failed: %s", target, e)
            try:
                if target is None:
                    raise BundleError("no model")
                self._set_active(target, read_bundle(target, self._keys_for(target)))
            except BundleError:
                self._active = None
            if failed_dir is not None and failed_dir != prev:
                shutil.rmtree(failed_dir, ignore_errors=True)
            log.error("rolled back to %s: %s", target, err)
            self._emit("rolled_back", version, err)
            self._release_deferred()

    def _fall_back(self, rotten: Path, why: str) -> Path | None:
        prev = links.target(self.models_dir, links.PREVIOUS)
        err = OtaError("rotten-current", f"{rotten.name} failed verification at start-up: {why}")
        if prev is not None and prev != rotten:
            try:
                bundle = read_bundle(prev, self._keys_or_empty())
            except BundleError as e:
                log.error("previous model %s fails verification too: %s", prev, e)
            else:
                links.set_link(self.models_dir, links.CURRENT, prev)
                links.set_link(self.models_dir, links.PREVIOUS, None)
                self._set_active(prev, bundle)
                self._emit("rolled_back", bundle.manifest.version, err)
                return prev
        links.set_link(self.models_dir, links.CURRENT, None)
        self.running_version = None  # the service goes back to its configured or built-in model
        self._emit("rolled_back", None, err)
        return None

    def _fail(self, e: OtaError, version: int | None, dest: Path | None, vr: VerifiedRelease | None,
              t0: float) -> Outcome:
        """Report a refused or failed release. Only a verified release's own fields name files here: what an
        unverified message says (its sha256, say) is never used as a path."""
        release_sha = vr.release.sha256 if vr is not None else None
        if e.code in SMOKE_CODES and dest is not None and release_sha is not None:
            try:
                self.store.save(self._load_state().with_failed(release_sha, str(e)))
            except (OSError, ValueError):
                pass
        if dest is not None and dest != links.target(self.models_dir, links.CURRENT):
            shutil.rmtree(dest, ignore_errors=True)
        if release_sha is not None and (not e.transient or e.code in ("disk-full", "io-error")):
            # a refused download is never used again, and a full disk needs the room: only an interrupted
            # download is kept, to resume
            for name in (f"{release_sha[:12]}.bundle", f"{release_sha[:12]}.bundle.part"):
                _remove(self.staging / name)
        state = "failed" if e.transient or e.code == "internal" else "rejected"
        log.warning("OTA %s (v%s): %s", state, version, e)
        self._emit(state, version, e)
        return Outcome(state, version, e.code, str(e), time.monotonic() - t0)

    # ---- background worker ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        poll = bool(self.cfg.ota.poll_url)
        next_poll = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            due = [next_poll] if poll else []
            if self._retry is not None:
                due.append(self._retry.due)
            wait = max(0.0, min(due) - now) if due else 1.0
            try:
                item = self._queue.get(timeout=min(wait, 1.0))
            except queue.Empty:
                item = None
            if self._stop.is_set():
                break
            try:  # nothing a message or a disk does may end the worker: no update would ever be handled again
                err, self._pending_rollback = self._pending_rollback, None
                if err is not None and time.monotonic() < self._rollback_at:
                    self._pending_rollback = err  # tried again shortly; releases wait meanwhile
                elif err is not None:
                    self._try_rollback(err)
                if item:
                    self._handle(item)
                if self._retry is not None and time.monotonic() >= self._retry.due:
                    payload, backoff = self._retry.release.payload, self._retry.backoff
                    self._retry = None
                    self._handle(payload, backoff)
                if poll and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.cfg.ota.poll_interval_s
                    self._poll()
            except Exception:
                log.exception("OTA worker: a step failed unexpectedly; carrying on with the next message")

    def _try_rollback(self, err: OtaError) -> None:
        """Roll back on the worker thread. A rollback that fails (a full disk as the state is saved) is not dropped:
        the model that failed probation must not stay, so it is tried again every ROLLBACK_RETRY_S, said on
        model/state, and releases wait until it is done."""
        try:
            self._rollback(err)
        except Exception as e:
            self._pending_rollback = err
            self._rollback_at = time.monotonic() + ROLLBACK_RETRY_S
            log.exception("OTA: rolling back failed; trying again in %.0f s", ROLLBACK_RETRY_S)
            self._emit("failed", self._window_version, OtaError("rollback-failed", f"rolling back after {err} "
                                                                                   f"failed ({e}); trying again"))

    def _handle(self, payload: bytes, backoff: float = 0.0) -> None:
        import hashlib

        digest = hashlib.sha256(payload).hexdigest()
        if self._handled.get(digest) in ("rejected", "active", "probation", "rolled_back", "skipped"):
            return  # the same announcement again (retained redelivery, the next poll): nothing new to do
        out = self.apply_release(payload)
        # Fixed by the operator without a new release: the keys, or the file served at the release's URL (a
        # half-uploaded or stale copy fails the hash; once it is fixed, the same announcement must work).
        if out.code not in FIXABLE_WITHOUT_A_NEW_RELEASE:
            self._handled[digest] = out.state
        while len(self._handled) > 256:
            self._handled.pop(next(iter(self._handled)))
        if out.state in ("probation", "active") and self._retry is not None:
            pending = self._retry.release.version
            if pending is None or out.version is None or pending <= out.version:
                self._retry = None  # superseded: retrying it now would only be refused as a replay
        if out.state == "failed":
            floor = self.retry_min_s
            backoff = min(max(floor, backoff * 2), max(floor, self.cfg.ota.poll_interval_s))
            self._retry = _Retry(_Later(payload, _release_version(payload)), time.monotonic() + backoff, backoff)

    def _poll(self) -> None:
        url = self.cfg.ota.poll_url
        try:
            if url.startswith("file://"):
                path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
                with open(path, "rb") as f:
                    payload = f.read(MAX_MESSAGE_BYTES + 1)
            elif url.startswith(("https://", "http://")):
                with urllib.request.urlopen(url, timeout=self.cfg.ota.stall_timeout_s) as resp:  # noqa: S310
                    payload = resp.read(MAX_MESSAGE_BYTES + 1)
            else:
                raise OtaError("malformed", f"ota.poll_url {url!r} must be file://, http:// or https://")
        except FileNotFoundError:
            return  # nothing published yet
        except OtaError as e:
            self._emit("failed", None, e)
            return
        except OSError as e:
            log.warning("polling %s failed: %s", url, e)
            return
        if payload:
            self._handle(payload)

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _keys(self) -> dict[str, Any]:
        try:
            keys = load_public_keys([self.keys_dir])
        except BundleError as e:
            raise OtaError("bad-key-file", str(e)) from None
        if not keys:
            raise OtaError("no-keys", f"no trusted keys in {self.keys_dir}; refusing every release")
        return keys

    def _keys_or_empty(self, bad: list[str] | None = None) -> dict[str, Any]:
        """The trusted keys that can be read (a file that is not a key is skipped and, with `bad`, said there)."""
        found: list[str] = []
        try:
            keys = load_public_keys([self.keys_dir], found)
        except OSError as e:
            found.append(f"{self.keys_dir}: {e.strerror or e}")
            keys = {}
        for line in found:
            log.error("OTA: %s", line)
        if bad is not None:
            bad.extend(found)
        return keys

    def _keys_for(self, path: Path) -> dict[str, Any]:
        if path.resolve() == DEFAULT_BUNDLE.resolve():
            return load_public_keys([BUILTIN_KEYS])
        return self._keys_or_empty()

    def _builtin_path(self) -> Path:
        """The configured bundle when it is not OTA-managed, else the built-in default, verified."""
        configured = self.cfg.model.bundle
        if configured and not ota_managed(self.cfg, configured):
            return Path(configured)  # the service verifies it with its own rules
        read_bundle(DEFAULT_BUNDLE, load_public_keys([BUILTIN_KEYS]))  # BundleError: nothing valid to run
        return DEFAULT_BUNDLE

    def _load_state(self) -> UpdaterMemory:
        try:
            return self.store.load()
        except ValueError as e:
            # Damaged outside our control: rebuild the floor from the model we run, so no downgrade gets in.
            log.error("%s; rebuilding OTA state from the installed model", e)
            cur = links.target(self.models_dir, links.CURRENT)
            version = -1
            if cur is not None:
                try:
                    version = read_bundle(cur, self._keys_or_empty()).manifest.version
                except BundleError:
                    pass
            st = UpdaterMemory(highest_version=version)
            self.store.save(st)
            return st

    def _new_window(self, bundle: Bundle) -> ProbationWindow:
        recent = list(self._recent)
        self._recent.clear()
        self._window_version = bundle.manifest.version
        baseline = (len(recent) - sum(recent)) / len(recent) if len(recent) >= 10 else None
        w = ProbationWindow(self.cfg.ota.probation_frames, bundle.manifest.latency_budget_ms,
                            baseline_implausible=baseline)
        self._held_version = bundle.manifest.version if w.counts_implausible else None
        return w

    def _set_active(self, path: Path, bundle: Bundle, release_sha: str | None = None) -> None:
        sha = release_sha or path.name.split("-", 1)[-1]
        self._active = ActiveModel(path, bundle.manifest.name, bundle.manifest.version, sha)
        self.running_version = bundle.manifest.version

    def _running_sha(self, release_sha: str) -> str | None:
        """`release_sha` if that bundle is the one running now (its folder is named v{version}-{sha12})."""
        a = self._active
        if a is None or a.path.parent != self.models_dir:
            return None
        sha12 = a.path.name.split("-", 1)[-1]
        return release_sha if len(sha12) == 12 and release_sha.startswith(sha12) else None

    def _app_too_old(self, need: str) -> bool:
        from edge.ota.policy import parse_app_version

        return parse_app_version(self.app_version) < parse_app_version(need)

    def _cleanup_temporaries(self) -> None:
        for p in self.models_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                _remove(p)
        if self.staging.is_dir():
            for p in self.staging.iterdir():
                if not p.name.endswith((".bundle", ".bundle.part")):
                    _remove(p)

    def _gc(self) -> None:
        """Remove model folders that neither `current`, `previous` nor probation refer to."""
        keep = {t.name for t in (links.target(self.models_dir, links.CURRENT),
                                 links.target(self.models_dir, links.PREVIOUS)) if t is not None}
        for p in self.models_dir.iterdir():
            if p.is_dir() and not p.is_symlink() and p.name.startswith("v") and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def _emit(self, state: str, version: int | None, err: OtaError | None = None) -> None:
        self._ota = {"state": state, "version": version, "error": str(err) if err else None,
                     "code": err.code if err else None, "ts": format_rfc3339(datetime.now(timezone.utc))}
        if state in OUTCOME_STATES:  # what an operator looks for after a restart too (why it rolled back)
            try:
                self.store.save(replace(self.store.load(), last=dict(self._ota)))
            except (OSError, ValueError) as e:
                log.warning("cannot keep the OTA outcome in %s: %s", self.store.path, e)
        a = self._active
        model = None if a is None else {"name": a.name, "version": a.version, "path": str(a.path)}
        try:
            self.report({"model": model, "ota": dict(self._ota)})
        except Exception:  # reporting must never break an update
            log.exception("OTA report callback failed")


def _release_field(payload: bytes, key: str) -> Any:
    """A field of a release message as it says (not verified), or None."""
    import json

    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        return json.loads(payload)["release"][key]
    except Exception:  # noqa: BLE001 - a hostile message (nested 100,000 deep: RecursionError) is just unreadable
        return None


def _release_version(payload: bytes) -> int | None:
    v = _release_field(payload, "version")
    return v if isinstance(v, int) else None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
