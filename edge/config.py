"""Typed, strict service configuration: TOML file plus `SHELFSCOUT_SECTION__KEY` overrides, no I/O beyond reading it.

Every error names the offending key (`mqtt.url: ...`) and the reason. Unknown keys are errors, with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.broker_url import BrokerAddress, redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/shelfscout/config.toml")
ENV_PREFIX = "SHELFSCOUT_"


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the key. `errors` lists every problem found."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


@dataclass(frozen=True)
class DeviceConfig:
    id: str = "cart-01"
    store: str = "store-01"


@dataclass(frozen=True)
class CameraConfig:
    source: str = "picamera2"  # picamera2, /dev/videoN, an index, rtsp://, http://, a video file or image folder
    width: int = 640
    height: int = 480
    fps: float = 15.0
    realtime: bool = False  # pace files and folders at `fps` instead of as fast as possible
    loop: bool = False  # loop a file or folder forever
    reopen_min_s: float = 0.5
    reopen_max_s: float = 10.0
    reopen_attempts: int = 0  # 0 = forever (live cameras); finite sources end after their last frame
    # no frame for this long: degraded (a read that returns an error is retried; a stream that goes silent is
    # reopened); a live camera's read blocked 4 x this long has hung for good: the watchdog restarts the service
    stall_s: float = 5.0
    # degrees the picture is turned clockwise to stand upright: 180 for a camera mounted upside down, 90 or 270 for
    # one on its side (width and height stay the size the camera delivers)
    rotate: int = 0


def default_threads() -> int:
    """Interpreter threads when the config does not say: the usable cores less one, at most 4.

    The pipeline's prepare and post-processing stages run on their own threads beside the interpreter; with every
    core given to the interpreter they preempt its workers and the whole loop slows down (on 2 cores, 2 interpreter
    threads: pipeline no faster than with 1, see `shelfscout bench`). 3 on a Pi 4/5 or Zero 2 W, 1 on a 2-core box.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # what systemd's CPUAffinity or a container leaves us
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 2
    return max(1, min(4, cores - 1))


@dataclass(frozen=True)
class ModelConfig:
    bundle: str = ""  # empty: the bundled default model
    threads: int = field(default_factory=default_threads)
    score_threshold: float | None = None  # None: the bundle's own threshold
    dev_allow_unsigned: bool = False  # DEVELOPMENT ONLY: run models without a valid signature


@dataclass(frozen=True)
class TrackingConfig:
    confirm_frames: int = 5  # N: a gap is confirmed after N sightings ...
    window_frames: int = 7  # ... within the last M frames of its track
    lost_frames: int = 4  # a track that is not seen for this many frames while in view has ended
    match_iou: float = 0.2  # minimum IoU, in shelf coordinates, to match a detection to a track
    motion_width: int = 160  # width of the grey frame used for phase correlation
    meters_per_pixel: float = 0.0015  # odometry scale at the shelf face, for `location.offset_m`
    place_radius_m: float = 0.25  # a gap within this distance of an open alert's place is the same gap
    aruco: bool = True  # reset odometry and name the aisle at ArUco markers
    clear_frames: int = 5  # a place with an open alert seen filled this many frames is `cleared`


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "shelfscout"
    client_id: str = ""  # empty: shelfscout-{store}-{device}
    protocol: str = "auto"  # auto (MQTT 5, falling back to 3.1.1), 5 or 3.1.1
    username: str = ""
    password_file: str = ""  # or the systemd credential `mqtt-password` ($CREDENTIALS_DIRECTORY)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 10.0  # the longest wait between attempts: a broker back is used within 10 s
    stats_interval_s: float = 30.0
    snapshot_max_px: int = 640


@dataclass(frozen=True)
class OutboxConfig:
    path: str = "/var/lib/shelfscout/outbox.db"
    max_messages: int = 20000
    max_bytes: int = 256 * 1024 * 1024
    inflight: int = 20  # unacknowledged publishes at once


@dataclass(frozen=True)
class OtaConfig:
    enabled: bool = True
    keys_dir: str = "/etc/shelfscout/keys"
    models_dir: str = "/var/lib/shelfscout/models"
    release_topics: tuple[str, ...] = ("{prefix}/fleet/model/release", "{prefix}/{store}/model/release")
    poll_url: str = ""  # file:// or https:// URL of a release manifest to poll, besides MQTT
    poll_interval_s: float = 300.0
    stall_timeout_s: float = 30.0
    max_bundle_bytes: int = 64 * 1024 * 1024
    probation_frames: int = 50


@dataclass(frozen=True)
class PreviewConfig:
    enabled: bool = True
    bind: str = "127.0.0.1:8080"  # never all interfaces unless asked for
    max_fps: float = 10.0


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(v), type(v).__name__
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array, got {_type_name(value)}")
        (inner,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_type_name(value)} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_type_name(value)} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_type_name(value)} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_type_name(value)} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str, errors: list[str]) -> Any:
    """Build the dataclass from a table; problems are appended to `errors` and the key keeps its default."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            home = [f"{n}.{k}" for n in names if not prefix and dataclasses.is_dataclass(hints[n])
                    and k in {f.name for f in dataclasses.fields(hints[n])}]
            hint = (f" (did you mean '{prefix}{close[0]}'?)" if close else
                    f" (it belongs in a table: {home[0]}, under [{home[0].split('.')[0]}])" if home else
                    f" (known: {', '.join(names)})")
            errors.append(f"{key}: unknown key{hint}")
            continue
        tp = hints[k]
        try:
            if dataclasses.is_dataclass(tp):
                if not isinstance(v, dict):
                    raise ConfigError(f"{key}: expected a table [{key}], got {_type_name(v)}")
                kwargs[k] = _build(typing.cast(type, tp), v, f"{key}.", errors)
            else:
                kwargs[k] = _coerce(key, v, tp)
        except ConfigError as e:
            errors.append(str(e))
    return cls(**kwargs)


MAX_FRAME_SIDE = 4096  # camera.width and camera.height: the largest a cart's camera frames can usefully be


def _validate(cfg: Config, errors: list[str]) -> None:
    def need(cond: bool, key: str, why: str) -> None:
        if not cond:
            errors.append(f"{key}: {why}")

    for key, val in (("device.id", cfg.device.id), ("device.store", cfg.device.store)):
        need(bool(val), key, "must not be empty")
        need(not any(c in val for c in "/+#") and val.strip() == val, key,
             f"{val!r} must not contain '/', '+', '#' or surrounding spaces (it is part of MQTT topics)")
    need(cfg.device.store != "fleet", "device.store", "'fleet' is reserved: {prefix}/fleet/model/release is the "
                                                      "fleet's release topic")
    need(cfg.device.id != "model", "device.id", "'model' is reserved: {prefix}/STORE/model/release is the store's "
                                                "release topic")
    try:
        tls = BrokerAddress.parse(cfg.mqtt.url).tls
    except ValueError as e:
        errors.append(f"mqtt.url: {e}")
        tls = True  # no second complaint about the TLS files of a URL that is wrong anyway
    why = topic_prefix_problem(cfg.mqtt.topic_prefix)
    need(why is None, "mqtt.topic_prefix", f"{cfg.mqtt.topic_prefix!r} {why}")
    for key in ("ca_file", "cert_file", "key_file"):
        need(tls or not getattr(cfg.mqtt, key), f"mqtt.{key}",
             f"is set but mqtt.url {redact_url(cfg.mqtt.url)!r} is plain MQTT, which would not use it: write mqtts://")
    need(cfg.mqtt.protocol in ("auto", "5", "3.1.1"), "mqtt.protocol", "must be 'auto', '5' or '3.1.1'")
    need(cfg.mqtt.keepalive_s >= 5, "mqtt.keepalive_s", "must be at least 5")
    need(cfg.mqtt.stats_interval_s > 0, "mqtt.stats_interval_s", "must be positive")
    need(cfg.model.threads >= 1, "model.threads", "must be at least 1")
    st = cfg.model.score_threshold
    need(st is None or 0.0 < st < 1.0, "model.score_threshold", "must be between 0 and 1")
    for key in ("width", "height"):  # a typo'd 100000 made every frame 100000 x 75000 pixels
        need(0 < getattr(cfg.camera, key) <= MAX_FRAME_SIDE, f"camera.{key}",
             f"must be from 1 to {MAX_FRAME_SIDE} (pixels)")
    need(cfg.camera.fps > 0, "camera.fps", "must be positive")
    need(bool(cfg.camera.source), "camera.source", "must not be empty")
    c = cfg.camera
    need(0.0 < c.reopen_min_s <= c.reopen_max_s, "camera.reopen_min_s",
         f"must be above 0 and at most camera.reopen_max_s ({c.reopen_max_s:g})")
    need(c.reopen_attempts >= 0, "camera.reopen_attempts", "must be 0 (forever) or more")
    need(c.stall_s > 0, "camera.stall_s", "must be positive")
    need(c.rotate in (0, 90, 180, 270), "camera.rotate",
         "must be 0, 90, 180 or 270 (degrees clockwise that make the picture upright)")
    need(cfg.mqtt.reconnect_min_s > 0, "mqtt.reconnect_min_s", "must be positive")
    need(16 <= cfg.mqtt.snapshot_max_px <= 2560, "mqtt.snapshot_max_px",
         "must be from 16 to 2560 (pixels): a bigger JPEG can pass the shipped broker's 4 MB packet limit, and the "
         "broker would drop the cart's connection at every resend")
    t = cfg.tracking
    need(1 <= t.confirm_frames <= t.window_frames, "tracking.confirm_frames",
         f"must be between 1 and tracking.window_frames ({t.window_frames})")
    need(t.lost_frames >= 1, "tracking.lost_frames", "must be at least 1")
    need(t.clear_frames >= 1, "tracking.clear_frames", "must be at least 1")
    need(0.0 < t.meters_per_pixel < math.inf, "tracking.meters_per_pixel", "must be positive")
    need(0.0 < t.place_radius_m < math.inf, "tracking.place_radius_m", "must be positive")
    need(0.0 < t.match_iou < 1.0, "tracking.match_iou", "must be between 0 and 1")
    need(t.motion_width >= 32, "tracking.motion_width", "must be at least 32")
    o = cfg.ota
    need(o.poll_interval_s >= 1, "ota.poll_interval_s", "must be at least 1 (second)")
    need(o.stall_timeout_s > 0, "ota.stall_timeout_s", "must be positive")
    need(o.max_bundle_bytes > 0, "ota.max_bundle_bytes", "must be positive")
    need(o.probation_frames >= 0, "ota.probation_frames", "must be 0 (no probation) or more")
    for template in o.release_topics:
        try:
            filled = template.format(prefix="p", store="s", device="d")
        except (KeyError, IndexError, ValueError, AttributeError):  # {aisle}, {0}, "{", {prefix.x}
            filled = ""
        need(bool(filled) and not set("+#") & set(filled) and "//" not in filled, "ota.release_topics",
             f"{template!r} must be a topic with no wildcards, using only {{prefix}}, {{store}} and {{device}}")
    need(cfg.preview.max_fps > 0, "preview.max_fps", "must be positive")
    need(cfg.outbox.max_messages > 0, "outbox.max_messages", "must be positive")
    need(cfg.outbox.max_bytes > 0, "outbox.max_bytes", "must be positive")
    need(cfg.outbox.inflight >= 1, "outbox.inflight", "must be at least 1")
    host, sep, port = cfg.preview.bind.rpartition(":")
    need(bool(sep) and port.isdigit() and bool(host) and int(port or 0) <= 65535, "preview.bind",
         f"{cfg.preview.bind!r} must be HOST:PORT with a port from 0 to 65535")


def _error_key(line: str) -> str:
    """The `section.key` an error line is about."""
    return line.split(":", 1)[0].split("[", 1)[0]


def _is_text(section: str, key: str) -> bool:
    """Whether `section.key` holds a string (so an override such as store 42 is the text "42")."""
    hints = typing.get_type_hints(Config)
    table = hints.get(section)
    if table is None or not dataclasses.is_dataclass(table):
        return False
    tp = typing.get_type_hints(typing.cast(type, table)).get(key)
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The overrides by section and key, and which variable set each `section.key`. A value is read as TOML
    (`true`, `15`, `[1, 2]`, `"text"`); for a key that holds text, anything that is not a quoted TOML string is the
    text as written (`SHELFSCOUT_DEVICE__STORE=42` is store "42")."""
    out: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string such as mqtt://host:1883
        if _is_text(section, key) and not isinstance(value, str):
            value = raw
        out.setdefault(section, {})[key] = value
        origin[f"{section}.{key}"] = name
        origin.setdefault(section, name)
    return out, origin


def parse(text: str, env: Mapping[str, str] | None = None, origin: str = "config") -> Config:
    """Parse TOML text plus environment overrides into a validated `Config`.

    Raises ConfigError naming the first problem; its `errors` list has one line for every problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML: {e}") from e
    overrides, set_by = _env_overrides(os.environ if env is None else env)
    for section, values in overrides.items():
        data.setdefault(section, {})
        if isinstance(data[section], dict):
            data[section].update(values)
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    # a key _build refused kept its default, so the values can be checked too; a refused key is not named twice
    refused = {_error_key(line) for line in errors}
    checked: list[str] = []
    _validate(cfg, checked)
    errors += [line for line in checked if _error_key(line) not in refused]
    if errors:
        lines = []
        for line in errors:
            key = _error_key(line)
            var = set_by.get(key)
            lines.append(f"{var} (environment): {line}" if var else line)
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more, lines)
    return typing.cast(Config, cfg)


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file (default `/etc/shelfscout/config.toml`)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8 text") from None
    cfg = parse(text, env, origin=str(p))
    # Relative paths in the file are relative to the file, so a config travels with its video.
    base = p.resolve().parent
    return _resolve_paths(cfg, base)


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def rel(v: str) -> str:
        if not v or "://" in v or v.startswith("/") or v == "picamera2" or v.isdigit():
            return v
        return str(base / v)

    return cfg.replace(
        camera=dataclasses.replace(cfg.camera, source=rel(cfg.camera.source)),
        model=dataclasses.replace(cfg.model, bundle=rel(cfg.model.bundle)),
        outbox=dataclasses.replace(cfg.outbox, path=rel(cfg.outbox.path)),
        mqtt=dataclasses.replace(cfg.mqtt, password_file=rel(cfg.mqtt.password_file), ca_file=rel(cfg.mqtt.ca_file),
                                 cert_file=rel(cfg.mqtt.cert_file), key_file=rel(cfg.mqtt.key_file)),
        ota=dataclasses.replace(cfg.ota, keys_dir=rel(cfg.ota.keys_dir), models_dir=rel(cfg.ota.models_dir)),
    )


def topic_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot begin the device's MQTT topics, or None: it is one or more levels, without wildcards."""
    if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        return "must be non-empty, without '+', '#' or a slash at either end"
    return None


# Where the installer keeps the password; systemd hands it to the service as the credential `mqtt-password`.
CREDENTIALS_DIR = Path("/etc/shelfscout/credentials")


def read_password(cfg: MqttConfig, env: Mapping[str, str] | None = None,
                  installed: Path = CREDENTIALS_DIR) -> str | None:
    """The MQTT password: from `password_file`, else from systemd's credential `mqtt-password`, else (outside
    systemd: `config check --live`, a run by hand) from the installer's `mqtt-password` file when this user can
    read it, as systemd does for the service, else None."""
    env = os.environ if env is None else env
    candidates = []
    if cfg.password_file:
        candidates.append(Path(cfg.password_file))
    elif env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(env["CREDENTIALS_DIRECTORY"]) / "mqtt-password")
    elif (installed / "mqtt-password").is_file():
        if not os.access(installed / "mqtt-password", os.R_OK):
            return None  # root's (0600): systemd reads it for the service; a check by hand needs sudo
        candidates.append(installed / "mqtt-password")
    for c in candidates:
        try:
            return c.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"mqtt.password_file: cannot read {c}: {e.strerror}") from None
    return None


def ota_managed(cfg: Config, bundle: str | Path) -> bool:
    """Whether a bundle path lies in `ota.models_dir` (the updater's `current` link, say): what OTA installs there
    replaces it, and until the first update the built-in model runs."""
    return Path(bundle).resolve().is_relative_to(Path(cfg.ota.models_dir).resolve())
