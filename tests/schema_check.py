"""Validate payloads against the repository's JSON Schemas (tests and tools only: jsonschema is a dev dependency)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from edge.payloads import KINDS, schema_path


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object type that lists its properties (not on the
    partial `properties` of an if/then/else). The shipped schemas
    let consumers meet fields added within a version (asyncapi's versioning rule); what this project publishes must
    have no field they do not list, so a misspelt or undocumented field fails the tests."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def _validator(kind: str, shipped: bool = False) -> Any:
    import jsonschema

    schema = json.loads(schema_path(kind).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema if shipped else strict(schema), format_checker=cls.FORMAT_CHECKER)


def validate(kind: str, payload: Any, shipped: bool = False) -> Any:
    """Raise jsonschema.ValidationError unless `payload` (a dict, or JSON bytes/str) is a valid `kind` payload: with
    no field the schema does not list (`strict`), or, with `shipped`, as a consumer's validator sees it.

    Returns the decoded payload, so a test can write `p = validate("alert", msg.payload)`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown payload kind {kind!r}")
    if isinstance(payload, (bytes, bytearray)):
        payload = json.loads(bytes(payload).decode("utf-8"))
    elif isinstance(payload, str):
        payload = json.loads(payload)
    _validator(kind, shipped).validate(payload)
    return payload


def kind_of_topic(topic: str) -> str | None:
    """The payload kind published on a device topic (None for snapshots, which are JPEG bytes)."""
    if topic.endswith("/alerts"):
        return "alert"
    if topic.endswith("/status"):
        return "status"
    if topic.endswith("/stats"):
        return "stats"
    if topic.endswith("/model/state"):
        return "model_state"
    if topic.endswith("/model/release"):
        return "release"
    if "/cmd/" in topic and topic.endswith("/reply"):
        return "command_reply"
    return None


class ValidatingSubscriber:
    """A real paho subscriber for tests: records every message and validates each JSON payload on receipt.

    `persistent=True` keeps a broker-side session (MQTT 5 session expiry), so messages published while it is
    disconnected are queued for it, as for a real backend.
    """

    def __init__(self, url: str, filters: list[str], client_id: str = "test-sub", persistent: bool = False,
                 protocol: Any = None, username: str | None = None, password: str | None = None,
                 tls: Any = None):
        import threading
        from urllib.parse import urlsplit

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._mqtt = mqtt
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", int(parts.port or 1883)
        self.filters = filters
        self.persistent = persistent
        self.messages: list[Any] = []
        self.invalid: list[tuple[str, str]] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.protocol: Any = mqtt.MQTTv5 if protocol is None else protocol
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=self.protocol,
                                  clean_session=None if self.protocol == mqtt.MQTTv5 else not persistent)
        if username:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._props = None
        if self.protocol == mqtt.MQTTv5 and persistent:
            self._props = Properties(PacketTypes.CONNECT)
            self._props.SessionExpiryInterval = 3600

    def start(self, timeout: float = 10.0) -> ValidatingSubscriber:
        kw: dict[str, Any] = {}
        if self.protocol == self._mqtt.MQTTv5:
            kw["clean_start"] = not self.persistent
            kw["properties"] = self._props
        self.client.connect_async(self.host, self.port, keepalive=10, **kw)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError("test subscriber could not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.connected.set()  # only once the broker has the subscription: nothing published after this is missed

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        kind = kind_of_topic(msg.topic)
        if kind == "release" and not msg.payload:
            kind = None  # an empty retained payload withdraws a release
        if kind is not None:
            try:
                validate(kind, msg.payload)
            except Exception as e:  # recorded, and asserted on by the tests
                self.invalid.append((msg.topic, str(e)[:500]))
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def on(self, suffix: str) -> list[Any]:
        with self.cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def containing(self, part: str) -> list[Any]:
        with self.cond:
            return [m for m in self.messages if part in m.topic]

    def json_on(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(suffix)]

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        import time

        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
        return True
