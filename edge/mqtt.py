"""The device's MQTT link: publishes the outbox with QoS 1 until PUBACK, keeps presence, and answers commands.

paho-mqtt 2.x, callback API v2. `connect_async` + `loop_start`, so a missing broker never blocks start-up; a
retained `offline` last will set before connecting and `online` published on every connect; subscriptions made in
`on_connect`, so they come back after a reconnect. MQTT 5 first, falling back to 3.1.1 when the broker refuses it.
A sender thread keeps up to `outbox.inflight` messages unacknowledged and deletes each from the outbox only on a
successful PUBACK; paho re-sends the unacknowledged ones (same bytes, same alert id) after a reconnect, and the
outbox re-sends them after a restart. A message the broker refuses (an MQTT 5 PUBACK with an error, e.g. its ACL)
stays in the outbox, is retried periodically, and makes `status` degraded with the reason until it goes through.
The retained `status` carries the running model: it is published on every connect and whenever it says something
new (another model from the status provider, or `refresh_status()` / `set_status()` with another state or reason),
and the last will is rebuilt with the current model before every (re)connect, since MQTT fixes the will in the
CONNECT packet. Only the sender thread publishes `status`, so an
older status worked out on one thread never lands after a newer one from another.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.broker import BrokerLogin, probe
from edge.config import Config
from edge.device_commands import CommandHandler, run_command
from edge.outbox import Outbox, OutboxError
from edge.payloads import StatusInfo, encode, status_payload
from edge.topics import Topics

log = logging.getLogger(__name__)

# Commands and release announcements are small (a release is at most 64 KiB, edge.ota.release): anything bigger
# that reaches the cart is dropped unread, and MQTT 5 tells the broker not to send it at all.
MAX_INCOMING_BYTES = 64 * 1024

_UNSUPPORTED_PROTOCOL = 132  # CONNACK "Unsupported protocol version" (MQTT 3.1.1 return code 1)
# protocol "auto", before the first successful connect: a broker that leaves a CONNECT unanswered this long after
# TCP connected (amqtt does with an MQTT 5 CONNECT carrying a will) is tried with the other MQTT version.
CONNACK_TIMEOUT_S = 4.0
MODEL_POLL_S = 1.0  # how often the sender thread asks the status provider whether the model changed
MAX_REPLIES_WAITING = 256  # command replies remembered until their PUBACK (to log a refused one)
_REFUSAL_HINTS = {
    133: "the broker rejected the client id (mqtt.client_id)",
    134: "check mqtt.username and the password file",
    135: "the broker does not allow this user (check the password file and the broker's ACL)",
    136: "the broker is unavailable",
    138: "this client is banned by the broker",
}

ReleaseHandler = Callable[[str, bytes], None]


def protocol_name(protocol: int) -> str:
    return "MQTT 5" if protocol == mqtt.MQTTv5 else "MQTT 3.1.1"


@dataclass(frozen=True)
class LinkInfo:
    """Counters for logs, status and tests."""

    connected: bool
    protocol: str
    connects: int
    connect_failures: int
    last_error: str | None
    inflight: int
    rejected: int


class MqttLink:
    """One MQTT connection for the device; see the module docstring. Start with `start()`, end with `stop()`."""

    def __init__(self, cfg: Config, topics: Topics, outbox: Outbox,
                 on_command: CommandHandler | None = None,
                 on_release: ReleaseHandler | None = None,
                 status: Callable[[], StatusInfo] | None = None):
        self.cfg = cfg
        self.topics = topics
        self.outbox = outbox
        self.on_command = on_command
        self.on_release = on_release
        self._status_fn = status
        m = cfg.mqtt
        self._login = BrokerLogin.from_config(m)
        self.address = self._login.address
        self.client_id = m.client_id or f"shelfscout-{cfg.device.store}-{cfg.device.id}"
        self._auto = m.protocol == "auto"
        self._protocol = mqtt.MQTTv311 if m.protocol == "3.1.1" else mqtt.MQTTv5
        self._release_topics = topics.release_topics(cfg.ota) if on_release is not None else ()
        self._max_inflight = cfg.outbox.inflight
        self._window = self._max_inflight  # lowered to the broker's MQTT 5 Receive Maximum, less room for status

        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # the broker acknowledged this connection's subscriptions (SUBACK)
        self._sub_mid: int | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._switch_protocol = False  # set by callbacks, done by the sender thread
        self._protocol_settled = not self._auto  # auto: settled by the first successful connect
        self._connack_seen = False
        self._early_closes = 0
        self._attempt_started: float | None = None  # monotonic time of the current CONNECT attempt
        self._acks: collections.deque[tuple[mqtt.Client, int, bool, str]] = collections.deque()
        self._inflight: dict[int, tuple[int, str]] = {}  # paho mid -> (outbox row id, topic); sender thread only
        # command replies waiting for their PUBACK, so a refused one is logged: (client, mid) -> (command, topic)
        self._replies: dict[tuple[mqtt.Client, int], tuple[str, str]] = {}
        self._replies_lock = threading.Lock()
        self._rejected_rows: set[int] = set()  # refused by the broker (e.g. its ACL); retried every retry_s
        # acknowledged by the broker but not yet deleted from the outbox (the disk was full): deleted on a later pass
        self._delivered: list[int] = []
        self._delete_error: str | None = None
        self._rejection: str | None = None
        self._retry_at: float | None = None
        self._retry_s = max(1.0, cfg.mqtt.reconnect_max_s)
        self._cursor = 0
        self._cursor_reset = True
        self._epoch = outbox.epoch  # the outbox's ids are read in this epoch (see Outbox.move_to_disk)
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._retained_lock = threading.Lock()
        # retained publishes (status, model state) not yet acknowledged on this client: paho mid -> topic; and those
        # of them made before the last (re)connect, which paho sends again after the fresh ones (see _on_connect)
        self._retained_mids: dict[int, str] = {}
        self._stale_mids: set[int] = set()
        self._override: tuple[str, str | None] | None = None
        # what the last published status said (StatusInfo, quarantined file) and on which connection (the count of
        # connects then): said once per connection only
        self._status_said: tuple[StatusInfo, Path | None, int] | None = None
        self._status_due = threading.Event()  # the sender thread is to work the status out and publish it if new
        self._model_check_at = 0.0
        self._work: queue.Queue[tuple[str, bytes, bool, Any] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._connects = 0
        self._failures = 0
        self._failures_before = 0  # _failures when the last connection was made: the attempts logged count from it
        self._rejected = 0
        self._last_error: str | None = None
        self._down_since: float | None = None  # wall time since when no connection has been up (None: connected)
        outbox.add_listener(self._wake.set)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background and return at once; a missing broker is retried with backoff."""
        if self._sender is not None:
            raise RuntimeError("MqttLink already started")
        self._stopping.clear()
        self._down_since = time.time()
        self._start_client()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._worker = threading.Thread(target=self._work_loop, name="mqtt-commands", daemon=True)
        self._sender.start()
        self._worker.start()

    def stop(self, timeout: float = 3.0, reason: str = "stopped", connect_wait_s: float = 0.0) -> None:
        """Publish a retained `offline` with `reason`, disconnect cleanly (so the will is not sent) and stop the
        threads. `connect_wait_s`: how long a connection still being made may take to carry that `offline` (a run
        that failed at once should still say why).

        Messages still waiting for PUBACK stay in the outbox and are sent after the next start.
        """
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout)
            self._sender = None
        client = self._client
        if client is not None:
            if connect_wait_s > 0:
                self._connected.wait(connect_wait_s)
            if self._connected.is_set():
                info = StatusInfo("offline", reason, self._current_status().model)
                msg = client.publish(self.topics.status, self._status_bytes(info), qos=1, retain=True)
                try:
                    msg.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    pass
            client.disconnect()
            client.loop_stop()
            try:
                self._handle_acks()  # PUBACKs that came in while stopping
            except OutboxError as e:
                log.error("%s", e)
            self._client = None
        self._connected.clear()
        if self._worker is not None:
            self._work.put(None)
            self._worker.join(timeout)
            self._worker = None

    # ---- what others call ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        return protocol_name(self._protocol)

    @property
    def _attempt(self) -> int:
        """Connection attempts that failed since the last connection was made (for the log: each outage from 1)."""
        return self._failures - self._failures_before

    def outage(self) -> tuple[float, str | None] | None:
        """Since when (wall time) the link has had no connection, and the last connection error; None while it is
        connected. MQTT cannot carry this news: the service says it on systemd's STATUS= and the preview."""
        since = self._down_since
        if since is None or self._connected.is_set():
            return None
        return since, self._last_error

    def wait_connected(self, timeout: float) -> bool:
        """Connected, and the command and release subscriptions are in place (a command sent from now on arrives)."""
        deadline = time.monotonic() + timeout
        return self._connected.wait(timeout) and self._subscribed.wait(max(0.0, deadline - time.monotonic()))

    def outbox_idle(self) -> bool:
        """True when the outbox is empty and nothing is waiting for a PUBACK (for "exit once drained")."""
        return self.outbox.depth() == 0 and not self._inflight

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox_idle():
                return True
            time.sleep(0.05)
        return self.outbox_idle()

    def info(self) -> LinkInfo:
        return LinkInfo(self.connected, self.protocol, self._connects, self._failures, self._last_error,
                        len(self._inflight), self._rejected)

    def publish_direct(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Publish outside the outbox (status, stats, model state). Returns False when not connected.

        A retained payload is remembered and published again on every connect, so the broker always ends up
        with the latest one even if it was set while the link was down.
        """
        if retain:
            with self._retained_lock:
                self._retained[topic] = (bytes(payload), qos)
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        info = self._publish_retained(client, topic, payload, qos) if retain else \
            client.publish(topic, payload, qos=qos, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _publish_retained(self, client: mqtt.Client, topic: str, payload: bytes, qos: int) -> mqtt.MQTTMessageInfo:
        with self._retained_lock:  # registered before the sender thread can see its PUBACK
            info = client.publish(topic, payload, qos=qos, retain=True)
            if qos > 0:
                self._retained_mids[info.mid] = topic
        return info

    def publish_stats(self, payload: Mapping[str, Any]) -> bool:
        """Publish one `stats` payload (QoS 0, not retained). False when disconnected: stats are not queued."""
        return self.publish_direct(self.topics.stats, encode(payload), qos=0, retain=False)

    def publish_model_state(self, payload: Mapping[str, Any]) -> bool:
        """Publish the retained `model/state` payload now, or on the next connect."""
        return self.publish_direct(self.topics.model_state, encode(payload), qos=1, retain=True)

    @property
    def rejection(self) -> str | None:
        """Why the broker refuses some of the outbox's messages (an ACL), or None: the service reports it too."""
        return self._rejection

    def set_status(self, state: str, reason: str | None = None) -> bool:
        """Set the state (online | degraded) reported on `status` from now on, and have it published when
        connected. False when not connected (it is published on the next connect)."""
        StatusInfo(state, reason)  # validates
        self._override = (state, reason)
        return self.refresh_status()

    def refresh_status(self) -> bool:
        """Have the sender thread re-read the status provider (state, reason and model) and publish the retained
        `status` at once, unless it says what the last one published on this connection said (the broker holds
        that one already). Any thread may call it: the status is worked out when it is published, on one thread.

        Call it after a model swap. Returns False when not connected; the status is then published, fresh, on the
        next connect. The link also notices a model change by itself within about a second (`MODEL_POLL_S`).
        The last will (`offline` with the model) cannot be changed on a live connection (MQTT fixes it in the
        CONNECT packet): it is rebuilt with the current model before every (re)connect attempt.
        """
        if self._client is None or not self._connected.is_set():
            return False
        self._status_due.set()
        self._wake.set()
        return True

    def _say_status(self) -> None:
        """Publish the status when one is due and it says something new on this connection (sender thread)."""
        client = self._client
        if not self._status_due.is_set() or client is None or not self._connected.is_set():
            return
        self._status_due.clear()
        status = self._current_status()
        if (status, self.outbox.quarantined, self._connects) != self._status_said:
            self._publish_status(client, status)

    def _publish_status(self, client: mqtt.Client, status: StatusInfo | None = None) -> bool:
        """Publish `status` (worked out now when not given) retained, and remember what it said (sender thread)."""
        if status is None:
            status = self._current_status()
        info = self._publish_retained(client, self.topics.status, self._status_bytes(status), 1)
        ok = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        self._status_said = (status, self.outbox.quarantined, self._connects) if ok else None
        return ok

    def _check_model_change(self) -> None:
        """Publish a fresh retained status when the status provider reports another model (sender thread)."""
        if self._status_fn is None or not self._connected.is_set():
            return
        now = time.monotonic()
        if now < self._model_check_at:
            return
        self._model_check_at = now + MODEL_POLL_S
        try:
            model = self._status_fn().model
        except Exception:
            log.exception("status callback failed")
            return
        if self._status_said is not None and model != self._status_said[0].model:  # the first is due anyway
            log.info("model changed to %s; publishing status", f"{model.name} v{model.version}" if model else None)
            self.refresh_status()

    # ---- status ----------------------------------------------------------------------------------------------

    def _current_status(self) -> StatusInfo:
        base = StatusInfo("online")
        if self._status_fn is not None:
            try:
                base = self._status_fn()
            except Exception:  # a status callback must never take the link down
                log.exception("status callback failed")
        if self._override is not None:
            base = StatusInfo(self._override[0], self._override[1], base.model)
        # the link's own troubles, said by the service's status too (the same words): here for a link without one
        trouble = self.outbox.quarantine_note or self._rejection
        if trouble is not None and base.state == "online":
            base = StatusInfo("degraded", trouble, base.model)
        return base

    def _status_bytes(self, info: StatusInfo) -> bytes:
        q = self.outbox.quarantined
        return encode(status_payload(info, self.topics, time.time(), str(q) if q else None))

    # ---- the paho client -------------------------------------------------------------------------------------

    def _start_client(self) -> None:
        m = self.cfg.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self._protocol)
        self._login.apply(client)
        self._set_will(client)
        # paho annotates ints but takes seconds as floats
        client.reconnect_delay_set(m.reconnect_min_s, max(m.reconnect_min_s, m.reconnect_max_s))  # type: ignore[arg-type]
        client.max_inflight_messages_set(self._max_inflight + 16)  # room for status, replies and model state
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        log.info("connecting to %s as %s (%s%s)", self.address, self.client_id, protocol_name(self._protocol),
                 ", falls back to 3.1.1" if self._auto and self._protocol == mqtt.MQTTv5 else "")
        props = None
        if self._protocol == mqtt.MQTTv5:  # the broker sends nothing bigger (commands and releases are small)
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = MAX_INCOMING_BYTES + 1024
        client.connect_async(self.address.host, self.address.port, keepalive=m.keepalive_s, properties=props)
        client.loop_start()

    def _rebuild_client(self) -> None:
        """Replace the client with one for the other MQTT version (protocol "auto"); runs on the sender thread."""
        old, self._client = self._client, None
        self._connected.clear()
        if old is not None:
            old.disconnect()
            old.loop_stop()
        self._inflight.clear()  # the old client's in-memory queue is gone: re-send from the outbox
        with self._retained_lock:
            self._retained_mids.clear()
            self._stale_mids.clear()
        self._cursor_reset = True
        self._protocol = mqtt.MQTTv311 if self._protocol == mqtt.MQTTv5 else mqtt.MQTTv5
        self._early_closes = 0
        self._start_client()

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if client is self._client:
            self._attempt_started = time.monotonic()
            self._set_will(client)  # paho sends the will in the CONNECT that follows: carry the current model

    def _set_will(self, client: mqtt.Client) -> None:
        will = StatusInfo("offline", "connection lost", self._current_status().model)
        client.will_set(self.topics.status, self._status_bytes(will), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if client is not self._client:
            return
        self._attempt_started = None
        self._connack_seen = True
        if reason.is_failure:
            self._failures += 1
            if reason.value == _UNSUPPORTED_PROTOCOL and not self._protocol_settled \
                    and self._protocol == mqtt.MQTTv5:
                self._last_error = f"broker {self.address} refused MQTT 5 ({reason})"
                log.warning("%s; falling back to MQTT 3.1.1", self._last_error)
                self._switch_protocol = True
                self._wake.set()
                return
            hint = _REFUSAL_HINTS.get(reason.value, "")
            self._last_error = f"broker {self.address} refused the connection: {reason}" + (f" ({hint})" if hint else "")
            log.warning("%s; retrying (attempt %d)", self._last_error, self._attempt)
            return
        self._connects += 1
        self._failures_before = self._failures
        self._last_error = None
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._window = self._max_inflight if not receive_max else \
            max(1, min(self._max_inflight, receive_max - min(4, receive_max // 2)))
        self._protocol_settled = True
        self._early_closes = 0
        log.info("connected to %s as %s (%s)", self.address, self.client_id, protocol_name(self._protocol))
        # subscribe before saying `online`: the broker handles a client's packets in order, so a backend that sends
        # a command once it sees `online` finds the cart's subscription in place
        self._subscribed.clear()
        # MQTT 5: commands with the retain flag as published, so a retained command is refused even when the cart
        # was already subscribed (brokers clear the flag for live subscribers otherwise); 3.1.1 cannot ask for this
        cmd: Any = SubscribeOptions(qos=1, retainAsPublished=True) if self._protocol == mqtt.MQTTv5 else 1
        subs = [(self.topics.cmd_filter, cmd)] + [(t, 1) for t in self._release_topics]
        self._sub_mid = client.subscribe(subs)[1]
        # Retained publishes still unacknowledged from before are sent again by paho right after this callback
        # (the fresh model state below goes first, the fresh status after them, from the sender thread): once each
        # stale one is acknowledged, its topic's current payload is published again (_handle_acks), so the broker
        # keeps the current status and model state, not ones queued while the connection hung.
        with self._retained_lock:
            self._stale_mids = set(self._retained_mids)
            retained = list(self._retained.items())
        self._status_due.set()  # a new connection (the broker may hold the last will): the sender says it, fresh
        for topic, (payload, qos) in retained:
            self._publish_retained(client, topic, payload, qos)
        self._cursor_reset = True
        self._down_since = None
        self._connected.set()
        self._wake.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if client is not self._client or mid != self._sub_mid:
            return
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.warning("the broker refused %d of this cart's subscriptions (%s): check its ACL for %s/cmd/+ and "
                        "the release topics", len(refused), ", ".join(refused), self.topics.base)
        self._subscribed.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if client is not self._client or self._stopping.is_set():
            return
        self._attempt_started = None
        self._last_error = self._probe()
        self._failures += 1
        log.warning("cannot connect to MQTT broker: %s; retrying (attempt %d)", self._last_error, self._attempt)

    def _probe(self) -> str:
        """Why a connection attempt failed, found by repeating its first steps (paho does not say)."""
        return probe(self.address, self._login.tls)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        if client is not self._client:
            return
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self._down_since = time.time()
        self._attempt_started = None
        answered, self._connack_seen = self._connack_seen, False
        if self._stopping.is_set():
            return
        if was:
            self._last_error = f"connection to {self.address} lost: {reason}"
            log.warning("%s; reconnecting", self._last_error)
        elif not answered:
            # Closed without a CONNACK: some 3.1.1-only brokers (amqtt) drop an MQTT 5 CONNECT that way.
            self._failures += 1
            self._early_closes += 1
            self._last_error = (f"broker {self.address} closed the connection without answering the "
                                f"{protocol_name(self._protocol)} CONNECT ({reason})")
            if not self._protocol_settled and self._early_closes >= 2:
                other = "MQTT 3.1.1" if self._protocol == mqtt.MQTTv5 else "MQTT 5"
                log.warning("%s; trying %s", self._last_error, other)
                self._switch_protocol = True
                self._wake.set()
            else:
                log.warning("%s; retrying (attempt %d)", self._last_error, self._attempt)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        # Runs on paho's network thread while paho holds its message lock: only hand over to the sender thread.
        self._acks.append((client, mid, not reason.is_failure, str(reason)))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        if len(msg.payload) > MAX_INCOMING_BYTES:  # over MQTT 3.1.1 the broker may still send one (a retained bomb)
            log.warning("ignored a %d-byte message on %s: commands and releases are at most %d bytes",
                        len(msg.payload), msg.topic, MAX_INCOMING_BYTES)
            return
        self._work.put((msg.topic, bytes(msg.payload), bool(msg.retain), getattr(msg, "properties", None)))

    # ---- the sender thread -----------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._check_connack_timeout()
                self._check_model_change()
                if self._retry_at is not None and time.monotonic() >= self._retry_at:
                    self._retry_rejected()
                if self._switch_protocol:
                    self._switch_protocol = False
                    self._rebuild_client()
                self._handle_acks()
                if self._connected.is_set():
                    self._say_status()  # before any queued alert: a fresh connection says `online` first
                    self._fill()
            except OutboxError as e:
                log.error("%s", e)
                time.sleep(1.0)
            except Exception:  # the sender must survive anything; the outbox keeps the messages
                log.exception("MQTT sender error")
                time.sleep(1.0)
        try:
            self._handle_acks()
        except Exception:
            log.exception("MQTT sender error while stopping")

    def _check_connack_timeout(self) -> None:
        started, client = self._attempt_started, self._client
        if self._protocol_settled or started is None or client is None or client.socket() is None:
            return
        if time.monotonic() - started < CONNACK_TIMEOUT_S:
            return
        self._attempt_started = None
        self._failures += 1
        other = "MQTT 3.1.1" if self._protocol == mqtt.MQTTv5 else "MQTT 5"
        self._last_error = (f"broker {self.address} did not answer the {protocol_name(self._protocol)} CONNECT "
                            f"within {CONNACK_TIMEOUT_S:g} s")
        log.warning("%s; trying %s", self._last_error, other)
        self._switch_protocol = True

    def _retry_rejected(self) -> None:
        """Send the refused messages again (the broker's ACL may have been fixed), unless they are gone."""
        self._retry_at = None
        self._rejected_rows &= self.outbox.contains(self._rejected_rows)
        if not self._rejected_rows:
            self._set_rejection(None)
        self._cursor_reset = True

    def _set_rejection(self, text: str | None) -> None:
        if text != self._rejection:
            self._rejection = text
            self.refresh_status()

    def _resync_outbox(self) -> None:
        """The outbox moved from memory to disk and renumbered its messages: forget the old ids and send again
        from its start (the messages in flight go twice; their late PUBACKs are ignored)."""
        epoch = self.outbox.epoch
        if epoch == self._epoch:
            return
        log.info("outbox moved to disk: sending its %d message(s) from the start", self.outbox.depth())
        self._epoch = epoch
        self._inflight.clear()
        self._delivered.clear()
        self._rejected_rows.clear()
        self._rejection = None
        self._cursor_reset = True
        self.refresh_status()  # no longer "kept in memory only"

    def _retained_acked(self, client: mqtt.Client, mid: int) -> bool:
        """True when MID was a retained publish; a stale one (see _on_connect) that was its topic's last has the
        topic's current payload published again (sender thread)."""
        with self._retained_lock:
            topic = self._retained_mids.pop(mid, None)
            if topic is None:
                return False
            if mid not in self._stale_mids:
                return True
            self._stale_mids.discard(mid)
            if any(self._retained_mids.get(m) == topic for m in self._stale_mids):
                return True
            current = self._retained.get(topic)
        if not self._connected.is_set():
            return True  # the next connect publishes the current payload anyway
        log.info("%s: a payload published before the reconnect arrived after the current one; publishing the "
                 "current one again", topic)
        if topic == self.topics.status:
            self._publish_status(client)
        elif current is not None:
            self._publish_retained(client, topic, *current)
        return True

    def _handle_acks(self) -> None:
        self._resync_outbox()
        done: list[int] = []
        refused: list[tuple[int, str, str]] = []
        while self._acks:
            client, mid, ok, reason = self._acks.popleft()
            if client is not self._client:
                continue
            entry = self._inflight.pop(mid, None)
            if entry is None and self._retained_acked(client, mid):
                continue
            if entry is None:  # a reply or stats publish
                with self._replies_lock:
                    reply = self._replies.pop((client, mid), None)
                if reply is not None and not ok:
                    log.error("the broker refused the reply to command %s on %s: %s (a broker with the shipped "
                              "ACL lets a cart publish only under %s/; ask for replies there)", reply[0], reply[1],
                              reason, self.topics.base)
                continue
            if ok:
                done.append(entry[0])
            else:
                refused.append((entry[0], entry[1], reason))
        self._delivered.extend(done)
        if self._delivered:
            try:
                self.outbox.ack_many(self._delivered, epoch=self._epoch)
            except OutboxError as e:  # kept, and not sent again, until a later pass can delete them
                if self._delete_error is None:
                    log.error("%s; retrying", e)
                self._delete_error = str(e)
                done = []
            else:
                done, self._delivered = self._delivered, []
                if self._delete_error is not None:
                    log.warning("acknowledged messages are deleted from the outbox again")
                    self._delete_error = None
        if done:
            if self._rejected_rows and self._rejected_rows.intersection(done):
                self._rejected_rows.difference_update(done)
                if not self._rejected_rows:
                    log.info("the broker accepts the previously refused messages again")
                    self._set_rejection(None)
        if refused:
            self._rejected += len(refused)
            for row, topic, reason in refused:
                log.error("broker refused outbox message %d on %s: %s; it stays in the outbox, retried in %g s",
                          row, topic, reason, self._retry_s)
                self._rejected_rows.add(row)
            row, topic, reason = refused[-1]
            self._set_rejection(f"the broker refused {len(self._rejected_rows)} outbox message(s), last on {topic}: "
                                f"{reason} (check the broker's ACL for this device)")
            if self._retry_at is None:
                self._retry_at = time.monotonic() + self._retry_s

    def _fill(self) -> None:
        client = self._client
        if client is None:
            return
        self._resync_outbox()
        if self._cursor_reset:
            self._cursor_reset = False
            self._cursor = 0
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        in_flight = {row for row, _ in self._inflight.values()}
        in_flight.update(self._delivered)  # the broker has them already
        for row in self.outbox.pending(room + len(in_flight), after=self._cursor):
            if row.row_id in in_flight:  # paho still holds it and re-sends it itself after a reconnect
                self._cursor = row.row_id
                continue
            if room <= 0:
                break
            try:
                info = client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            except ValueError as e:  # a row no broker would take (bad topic, oversized): never retry it
                self.outbox.discard(row.row_id, f"cannot be published to {row.topic!r}: {e}", epoch=self._epoch)
                self._cursor = row.row_id
                continue
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.error("cannot publish outbox message %d to %s: %s", row.row_id, row.topic,
                          mqtt.error_string(info.rc))
                break
            # NO_CONN: paho keeps QoS>0 messages and sends them once reconnected, so it is still in flight.
            self._inflight[info.mid] = (row.row_id, row.topic)
            self._cursor = row.row_id
            room -= 1

    # ---- commands and releases -------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            topic, payload, retained, props = item
            try:
                name = self.topics.command_name(topic)
                if name is not None:
                    self._handle_command(topic, name, payload, retained, props)
                elif topic in self._release_topics and self.on_release is not None:
                    self.on_release(topic, payload)
                else:  # `cmd/` with an empty name matches `cmd/+`: a backend must not reach the updater that way
                    log.warning("ignored a message on %s: not a command or release topic of this cart", topic)
            except Exception:
                log.exception("error handling a message on %s", topic)

    def _handle_command(self, topic: str, name: str, payload: bytes, retained: bool, props: Any) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        reply = run_command(name, payload, retained, self.on_command)
        if reply is None:
            return
        client = self._client
        if client is None:
            return
        reply_props = None
        if self._protocol == mqtt.MQTTv5 and correlation is not None:
            reply_props = Properties(PacketTypes.PUBLISH)
            reply_props.CorrelationData = correlation
        target = response_topic or self.topics.cmd_reply(topic)
        if not self.topics.takes_replies(target):
            log.warning("command %s asks for its reply on %s, where this cart publishes its own messages or takes "
                        "commands; answering on %s instead", name, target, self.topics.cmd_reply(topic))
            target = self.topics.cmd_reply(topic)
        if not target.startswith(self.topics.base + "/"):
            log.warning("command %s asks for its reply on %s, outside this cart's topics: a broker with the shipped "
                        "ACL refuses it (use a response topic under %s/, such as %s)", name, target,
                        self.topics.base, self.topics.cmd_reply(topic))
        with self._replies_lock:  # registered before the sender thread can see its PUBACK
            info = client.publish(target, reply, qos=1, retain=False, properties=reply_props)
            self._replies[(client, info.mid)] = (name, target)
            while len(self._replies) > MAX_REPLIES_WAITING:  # never acknowledged (the connection dropped)
                del self._replies[next(iter(self._replies))]
