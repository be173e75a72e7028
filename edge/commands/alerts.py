"""`shelfscout alerts --broker URL`: a live subscriber view of alerts, status and stats that can save snapshots."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge.atomic import write_atomic
from edge.commands.subscriber import Subscription, add_broker_args
from edge.payloads import decode
from edge.topics import parse_topic, subscriber_filters


def register(sub: Any) -> None:
    p = sub.add_parser(
        "alerts", help="watch alerts, status and stats from a broker; save snapshots",
        description="Subscribe to shelfscout devices and print one compact line per alert, status, stats and "
                    "model-state message (JSON Lines with --json). Alerts resent after a reconnect are shown once "
                    "(deduplicated on event_id).")
    add_broker_args(p)
    p.add_argument("--store", help="only this store (default: all)")
    p.add_argument("--device", help="only this device (default: all)")
    p.add_argument("--save-snapshots", metavar="DIR", help="write each snapshot to DIR/<alert_id>.jpg")
    p.add_argument("--json", action="store_true", help="print JSON Lines, one object per message")
    p.add_argument("--count", type=int, metavar="N", help="exit 0 after N distinct alert events")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds: exit 1 if the broker was never reached (with the reason) or if "
                        "--count was given and not reached, else 0")
    p.set_defaults(func=run)


@dataclass
class ViewerOptions:
    """What `AlertViewer` subscribes to and how it prints."""

    prefix: str = "shelfscout"
    store: str | None = None
    device: str | None = None
    save_dir: Path | None = None
    as_json: bool = False
    count: int | None = None
    snapshot_grace_s: float = 5.0  # after --count is reached, wait this long for the last snapshots


@dataclass
class ViewerState:
    alerts: int = 0
    duplicates: int = 0
    invalid: int = 0
    seen: set[str] = field(default_factory=set)
    cleared_sha: dict[str, str] = field(default_factory=dict)  # snapshot sha256 -> alert id, for cleared events
    awaiting: set[str] = field(default_factory=set)  # sha256 of announced snapshots not saved yet
    saved: set[str] = field(default_factory=set)
    count_reached_at: float | None = None


class AlertViewer:
    """Formats and deduplicates the messages of a subscription; `handle(topic, payload, retained)` per message."""

    def __init__(self, opts: ViewerOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.opts = opts
        self.out = out
        self.err = err
        self.state = ViewerState()
        self._lock = threading.Lock()
        self.done = threading.Event()
        if opts.save_dir is not None:
            opts.save_dir.mkdir(parents=True, exist_ok=True)

    def filters(self) -> list[str]:
        return subscriber_filters(self.opts.prefix, self.opts.store, self.opts.device)

    def _emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        with self._lock:
            parts = parse_topic(topic, self.opts.prefix)
            if parts is None:
                return
            who = f"{parts.store}/{parts.device}"
            if parts.kind == "snapshots":
                self._snapshot(who, parts.arg or "", topic, payload)
            else:
                try:
                    data = decode(payload)
                except ValueError as e:
                    self.state.invalid += 1
                    self.err.write(f"shelfscout alerts: ignoring a malformed message on {topic}: {e}\n")
                    return
                if parts.kind == "alerts":
                    self._alert(who, topic, data)
                else:
                    self._other(who, parts.kind, topic, data, retained)
            self._check_done()

    def _check_done(self) -> None:
        count = self.opts.count
        if count is None or self.state.alerts < count:
            return
        now = time.monotonic()
        if self.state.count_reached_at is None:
            self.state.count_reached_at = now
        if not self.state.awaiting or self.opts.save_dir is None \
                or now - self.state.count_reached_at >= self.opts.snapshot_grace_s:
            self.done.set()

    def tick(self) -> None:
        """Called periodically: ends the snapshot grace period."""
        with self._lock:
            self._check_done()

    def _alert(self, who: str, topic: str, p: dict[str, Any]) -> None:
        key = str(p.get("event_id") or f"{p.get('id')}:{p.get('event')}")
        if key in self.state.seen:
            self.state.duplicates += 1
            return
        self.state.seen.add(key)
        self.state.alerts += 1
        snap = p.get("snapshot") if isinstance(p.get("snapshot"), dict) else None
        if snap and self.opts.save_dir is not None:
            sha = str(snap.get("sha256"))
            if p.get("event") == "cleared":
                self.state.cleared_sha[sha] = str(p.get("id"))
            if sha not in self.state.saved:
                self.state.awaiting.add(sha)
        if self.opts.as_json:
            self._emit(json.dumps({"kind": "alert", "topic": topic, "payload": p}, sort_keys=True))
            return
        loc = p.get("location") or {}
        where = []
        if loc.get("aisle"):
            where.append(f"aisle {loc['aisle']}")
        if loc.get("offset_m") is not None:
            where.append(f"{loc['offset_m']:.2f} m")
        bbox = ",".join(f"{v:.2f}" for v in p.get("bbox") or [])
        model = p.get("model") or {}
        self._emit(f"{p.get('ts', '?')} {who} ALERT {str(p.get('event', '?')).upper():7} {p.get('id')} "
                   f"{' '.join(where) or 'location unknown'} conf {p.get('confidence', 0):.2f} "
                   f"frames {p.get('frames')} frame #{p.get('frame')} bbox [{bbox}] "
                   f"model {model.get('name')}/{model.get('version')}"
                   + (f" snapshot {snap.get('bytes')} B" if snap else "")
                   + (f" (duplicate of {p['duplicate_of']}, which stays open)" if p.get("duplicate_of") else ""))

    def _snapshot(self, who: str, alert_id: str, topic: str, payload: bytes) -> None:
        sha = hashlib.sha256(payload).hexdigest()
        saved: str | None = None
        if self.opts.save_dir is not None and sha not in self.state.saved:
            name = f"{alert_id}.cleared.jpg" if self.state.cleared_sha.get(sha) == alert_id else f"{alert_id}.jpg"
            path = self.opts.save_dir / name
            write_atomic(path, payload)
            saved = str(path)
            self.state.saved.add(sha)
            self.state.awaiting.discard(sha)
        elif sha in self.state.saved:
            return  # a resent snapshot
        if self.opts.as_json:
            self._emit(json.dumps({"kind": "snapshot", "topic": topic, "alert_id": alert_id, "bytes": len(payload),
                                   "sha256": sha, "saved": saved}, sort_keys=True))
        else:
            self._emit(f"{'':24} {who} SNAPSHOT {alert_id} {len(payload)} B" + (f" -> {saved}" if saved else ""))

    def _other(self, who: str, kind: str, topic: str, p: dict[str, Any], retained: bool) -> None:
        if self.opts.as_json:
            self._emit(json.dumps({"kind": kind.replace("/", "_"), "topic": topic, "retained": retained,
                                   "payload": p}, sort_keys=True))
            return
        ts = p.get("ts", "?")
        model = p.get("model") or {}
        mname = f"{model.get('name')}/{model.get('version')}" if model else "no model"
        tag = " (retained)" if retained else ""
        if kind == "status":
            reason = f" ({p['reason']})" if p.get("reason") else ""
            self._emit(f"{ts} {who} STATUS  {p.get('state')}{reason} v{p.get('version')} {mname}{tag}")
        elif kind == "stats":
            inf = p.get("inference_ms") or {}

            def ms(v: Any) -> str:
                return "-" if v is None else f"{v:.1f}"

            temp = "-" if p.get("cpu_temp_c") is None else f"{p['cpu_temp_c']:.1f}C"
            self._emit(f"{ts} {who} STATS   fps {p.get('fps')} dropped {p.get('dropped_frames')} "
                       f"infer p50 {ms(inf.get('p50'))} p95 {ms(inf.get('p95'))} ms outbox {p.get('outbox_depth')} "
                       f"(dropped {p.get('outbox_dropped')}) temp {temp} up {p.get('uptime_s')} s {mname}")
        elif kind == "model/state":
            ota = p.get("ota") or {}
            err = f" error: {ota['error']}" if ota.get("error") else ""
            self._emit(f"{ts} {who} MODEL   {mname} ota {ota.get('state')}"
                       + (f" v{ota['version']}" if ota.get("version") is not None else "") + err + tag)


def run(args: argparse.Namespace) -> int:
    """Subscribe and print until --count/--timeout/Ctrl-C. A closed stdout (`| head`) ends it quietly with 0."""
    from edge.cli import CliError

    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise CliError("--timeout must be positive")
    opts = ViewerOptions(prefix=args.prefix, store=args.store, device=args.device,
                         save_dir=Path(args.save_snapshots) if args.save_snapshots else None,
                         as_json=args.json, count=args.count)
    try:
        viewer = AlertViewer(opts)
        filters = viewer.filters()
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    pipe_closed = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if pipe_closed.is_set():
            return
        try:
            viewer.handle(topic, payload, retained)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            pipe_closed.set()
            viewer.done.set()
        except OSError as e:
            sub.say(str(e))

    sub = Subscription(args, "alerts", filters, on_message)
    sub.start()
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while not viewer.done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            viewer.done.wait(0.1)
            viewer.tick()
    finally:
        sub.stop()
    if pipe_closed.is_set():
        # Python's recipe for SIGPIPE: point stdout at devnull so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    if not sub.subscribed.is_set():
        sub.say(sub.never_connected(args.timeout))
        return 1
    if args.count is not None and viewer.state.alerts < args.count:
        sub.say(f"timed out after {args.timeout:g} s with {viewer.state.alerts} of {args.count} alert events")
        return 1
    return 0
