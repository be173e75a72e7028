"""The broker options and the MQTT subscription that the backend-side commands (`alerts`, `fleet`) share."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """--broker, --prefix and the login and TLS options."""
    p.add_argument("--broker", default=None,
                   help=f"mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default: {DEFAULT_BROKER}, a broker on this "
                        "machine; said on stderr when used)")
    p.add_argument("--prefix", default="shelfscout", help="topic prefix (default: %(default)s)")
    p.add_argument("--username", help="MQTT username")
    p.add_argument("--password-file", help="file holding the MQTT password")
    p.add_argument("--ca-file", help="CA certificate to verify an mqtts:// broker")
    p.add_argument("--cert-file", help="client certificate (mqtts://)")
    p.add_argument("--key-file", help="client private key (mqtts://)")


class Subscription:
    """A paho client subscribed to `filters` at QoS 1, reconnecting on its own, that hands each message to
    `on_message(topic, payload, retained)` on paho's thread and says on stderr what happens to the connection
    (`shelfscout COMMAND: ...`). Bad options raise CliError (or ConfigError for TLS files) before anything starts."""

    def __init__(self, args: argparse.Namespace, command: str, filters: Sequence[str],
                 on_message: Callable[[str, bytes, bool], None]):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from edge.broker import CLI_TLS_KEYS, tls_context
        from edge.broker_url import BrokerAddress
        from edge.cli import CliError

        self.command = command
        self.filters = list(filters)
        try:
            self.address = BrokerAddress.parse(args.broker or DEFAULT_BROKER)
        except ValueError as e:
            raise CliError(f"--broker: {e}") from None
        password = None
        if args.password_file:
            try:
                password = Path(args.password_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise CliError(f"--password-file: cannot read {args.password_file}: {e.strerror}") from None
        self._tls = None
        if self.address.tls:
            # a ConfigError naming the option and the path (missing, unreadable, not PEM, key not matching)
            self._tls = tls_context(args.ca_file or "", args.cert_file or "", args.key_file or "", CLI_TLS_KEYS)
        elif args.ca_file or args.cert_file or args.key_file:
            raise CliError(f"--ca-file/--cert-file/--key-file need an mqtts:// broker, not {self.address}")
        self._default_broker = args.broker is None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"shelfscout-{command}-{os.getpid()}",
                             protocol=mqtt.MQTTv311)
        if args.username or self.address.username:
            client.username_pw_set(args.username or self.address.username, password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = lambda c, userdata, msg: on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        self._client = client
        self.subscribed = threading.Event()
        self.last_error: str | None = None

    def say(self, text: str) -> None:
        sys.stderr.write(f"shelfscout {self.command}: {text}\n")
        sys.stderr.flush()

    def start(self) -> None:
        if self._default_broker:
            self.say(f"no --broker given; using {self.address}")
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def never_connected(self, waited_s: float) -> str:
        """The line that says why nothing was received in `waited_s` seconds."""
        why = self.last_error or "no answer from the broker"
        return f"could not connect to {self.address} within {waited_s:g} s: {why}"

    def _on_connect(self, c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"{self.address} refused the connection: {reason}"
            self.say(f"{self.last_error}; retrying")
            return
        c.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, c: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.subscribed.set()
        self.say(f"connected to {self.address}, watching {', '.join(self.filters)}")

    def _on_connect_fail(self, c: Any, userdata: Any) -> None:
        from edge.broker import probe

        self.last_error = probe(self.address, self._tls)
        self.say(f"cannot connect to {self.address}: {self.last_error}; retrying")
