"""Builders for the JSON payloads of the MQTT API v1 (alert, status, stats, model state, command reply).

Each payload has a JSON Schema in `edge/schemas/<kind>.json`; `schema_path(kind)` finds it. The signed model
release (`release`) is built by `edge.ota.release.sign_release`, not here, but its schema is listed too.
Timestamps are RFC 3339 UTC with a `Z`. Payloads are serialised with `encode()` (compact, UTF-8, keys sorted) so
a resend is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge import __version__
from edge.outbox import OutMessage
from edge.topics import Topics
from edge.types import AlertEvent

ALERT_SCHEMA = "shelfscout.alert/1"
STATUS_SCHEMA = "shelfscout.status/1"
STATS_SCHEMA = "shelfscout.stats/1"
MODEL_STATE_SCHEMA = "shelfscout.model_state/1"
COMMAND_REPLY_SCHEMA = "shelfscout.command_reply/1"

KINDS = ("alert", "status", "stats", "model_state", "command_reply", "release")
STATES = ("online", "offline", "degraded")
EVENTS = ("opened", "cleared")
# The OTA states the updater is expected to report; the schema only asks for a lower-case word, so the
# updater can add a step without a schema change.
OTA_STATES = ("idle", "downloading", "verifying", "smoke_testing", "switching", "probation", "active",
              "rolled_back", "failed", "rejected", "skipped", "deferred")

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
THERMAL_DIR = Path("/sys/class/thermal")


def schema_path(kind: str) -> Path:
    """The JSON Schema file of a payload kind (one of KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown payload kind {kind!r}; expected one of {', '.join(KINDS)}")
    return SCHEMA_DIR / f"{kind}.json"


def _utc(ts: float) -> datetime:
    if not math.isfinite(ts):
        raise ValueError(f"timestamp {ts!r} is not finite")
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def rfc3339(ts: float) -> str:
    """Wall-clock seconds as RFC 3339 UTC with millisecond precision and a `Z`."""
    return _utc(ts).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(ts: float) -> int:
    """Wall-clock seconds as the whole milliseconds `rfc3339(ts)` writes (for ids that carry a time)."""
    d = _utc(ts)
    return int(d.replace(microsecond=0).timestamp()) * 1000 + d.microsecond // 1000


def decode(payload: bytes) -> dict[str, Any]:
    """A received JSON payload as an object, or ValueError saying why it is not one (for subscribers)."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def encode(payload: Mapping[str, Any]) -> bytes:
    """The wire form of a payload: compact UTF-8 JSON with sorted keys (deterministic, so resends are identical)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class ModelRef:
    """The running model as payloads name it. `sha256` is the model file's hash (model/state only)."""

    name: str
    version: int
    sha256: str | None = None

    def short(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class StatusInfo:
    """The service's state for the retained `status` topic."""

    state: str  # online | offline | degraded
    reason: str | None = None
    model: ModelRef | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"status state {self.state!r} must be one of {', '.join(STATES)}")


@dataclass(frozen=True)
class StatsInfo:
    """One `stats` sample. Latencies in milliseconds; None where nothing has been measured yet."""

    fps: float
    dropped_frames: int
    inference_p50_ms: float | None
    inference_p95_ms: float | None
    outbox_depth: int
    outbox_dropped: int
    model: ModelRef | None
    uptime_s: float
    cpu_temp_c: float | None = None
    outbox_quarantined: str | None = None


@dataclass(frozen=True)
class OtaState:
    """The OTA updater's last reported step, for `model/state`."""

    state: str  # a lower-case word, usually one of OTA_STATES
    version: int | None = None  # the release being handled, if any
    error: str | None = None  # the last failure, kept until a later release succeeds
    ts: float | None = None  # wall clock of the step
    code: str | None = None  # the failure's stable machine code (`hash-mismatch`, `expired`, ...)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.state):
            raise ValueError(f"OTA state {self.state!r} must be a lower-case word such as {OTA_STATES[0]!r}")


def _finite(x: float | None, digits: int = 3) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def event_id(alert_id: str, event: str) -> str:
    """The one dedupe key of an alert event: the alert id and the event, `"{id}:{event}"`."""
    return f"{alert_id}:{event}"


def alert_payload(event: AlertEvent, topics: Topics, model: ModelRef) -> dict[str, Any]:
    """The `shelfscout.alert/1` payload of one opened or cleared event.

    `id` is the alert's id, the same for its `opened` and `cleared` events and across resends; `event_id`
    (`"{id}:{event}"`) is the single key a subscriber dedupes on.
    """
    if event.event not in EVENTS:
        raise ValueError(f"alert event {event.event!r} must be 'opened' or 'cleared'")
    if len(event.bbox_norm) != 4:
        raise ValueError("bbox_norm must have 4 values")
    bbox = [min(1.0, max(0.0, round(float(v), 5))) for v in event.bbox_norm]
    snap: dict[str, Any] | None = None
    if event.snapshot_jpeg:
        snap = {"topic": topics.snapshot(event.alert_id), "bytes": len(event.snapshot_jpeg),
                "sha256": hashlib.sha256(event.snapshot_jpeg).hexdigest()}
    loc = event.location
    extra = {} if event.duplicate_of is None else {"duplicate_of": event.duplicate_of}
    return {
        **extra,
        "schema": ALERT_SCHEMA,
        "id": event.alert_id,
        "event_id": event_id(event.alert_id, event.event),
        "event": event.event,
        "store": topics.store,
        "device": topics.device,
        "ts": rfc3339(event.ts),
        "first_seen": rfc3339(event.first_seen),
        "last_seen": rfc3339(event.last_seen),
        "location": {"aisle": loc.aisle, "offset_m": _finite(loc.offset_m), "source": loc.source},
        "bbox": bbox,
        "confidence": min(1.0, max(0.0, round(float(event.confidence), 4))),
        "frames": int(event.frames),
        "frame": int(event.frame_index),
        "model": model.short(),
        "snapshot": snap,
    }


def alert_messages(event: AlertEvent, topics: Topics, model: ModelRef) -> list[OutMessage]:
    """The outbox messages of one alert event: the alert (QoS 1), then its JPEG snapshot if it has one.

    Put them with one `Outbox.put` call so both are committed in the same transaction.
    """
    msgs = [OutMessage(topics.alerts, encode(alert_payload(event, topics, model)), qos=1, retain=False)]
    if event.snapshot_jpeg:
        msgs.append(OutMessage(topics.snapshot(event.alert_id), bytes(event.snapshot_jpeg), qos=1, retain=False))
    return msgs


def status_payload(info: StatusInfo, topics: Topics, ts: float, outbox_quarantined: str | None = None
                   ) -> dict[str, Any]:
    """The retained `status` payload (also the last will, with state `offline`)."""
    return {
        "schema": STATUS_SCHEMA,
        "state": info.state,
        "store": topics.store,
        "device": topics.device,
        "version": __version__,
        "model": info.model.short() if info.model else None,
        "reason": info.reason,
        "outbox_quarantined": outbox_quarantined,
        "ts": rfc3339(ts),
    }


def stats_payload(info: StatsInfo, topics: Topics, ts: float) -> dict[str, Any]:
    """The periodic `stats` payload."""
    return {
        "schema": STATS_SCHEMA,
        "store": topics.store,
        "device": topics.device,
        "ts": rfc3339(ts),
        "fps": _finite(info.fps, 2) or 0.0,
        "dropped_frames": int(info.dropped_frames),
        "inference_ms": {"p50": _finite(info.inference_p50_ms), "p95": _finite(info.inference_p95_ms)},
        "outbox_depth": int(info.outbox_depth),
        "outbox_dropped": int(info.outbox_dropped),
        "outbox_quarantined": info.outbox_quarantined,
        "model": info.model.short() if info.model else None,
        "cpu_temp_c": _finite(info.cpu_temp_c, 1),
        "uptime_s": _finite(info.uptime_s, 1) or 0.0,
    }


def model_state_payload(model: ModelRef | None, ota: OtaState, topics: Topics, ts: float) -> dict[str, Any]:
    """The retained `model/state` payload: the running model and the OTA updater's state and last error."""
    return {
        "schema": MODEL_STATE_SCHEMA,
        "store": topics.store,
        "device": topics.device,
        "ts": rfc3339(ts),
        "model": None if model is None else {"name": model.name, "version": model.version, "sha256": model.sha256},
        "ota": {"state": ota.state, "version": ota.version, "error": ota.error, "code": ota.code,
                "ts": None if ota.ts is None else rfc3339(ota.ts)},
    }


def command_reply_payload(command: str, ts: float, result: Mapping[str, Any] | None = None,
                          error: str | None = None) -> dict[str, Any]:
    """The answer to a `cmd/{name}` request: `ok` with the handler's result, or `ok: false` with the error."""
    return {
        "schema": COMMAND_REPLY_SCHEMA,
        "command": command,
        "ok": error is None,
        "result": None if error is not None else dict(result or {}),
        "error": error,
        "ts": rfc3339(ts),
    }


def read_cpu_temp_c(thermal_dir: Path = THERMAL_DIR) -> float | None:
    """The CPU temperature in °C from Linux thermal zones (the CPU zone if named, else the first), or None."""
    try:
        zones = sorted(thermal_dir.glob("thermal_zone*"))
    except OSError:
        return None
    readings: list[tuple[int, float]] = []
    for z in zones:
        try:
            milli = int((z / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = (z / "type").read_text().strip().lower()
        except OSError:
            kind = ""
        rank = 0 if ("cpu" in kind or "x86_pkg" in kind or "soc" in kind) else 1
        readings.append((rank, milli / 1000.0))
    if not readings:
        return None
    readings.sort(key=lambda r: r[0])
    return readings[0][1]
