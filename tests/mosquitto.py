"""A real Mosquitto broker that a test starts on a free loopback port, restarts, and stops."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from edge.embedded_broker import free_port, wait_listening

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"




class Mosquitto:
    """One mosquitto process with its own config file in `workdir`.

    `extra` is appended to the generated config (listeners, TLS, ACLs). By default the broker allows
    anonymous clients on `127.0.0.1:port`. Pass `listener_block` to replace the default listener entirely.
    """

    def __init__(self, workdir: Path, extra: str = "", listener_block: str | None = None, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.listener_block = listener_block
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        listener = self.listener_block
        if listener is None:
            listener = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot write under the test's tmp dir.
        given = f"{self.extra}\n{self.listener_block or ''}"
        user = "user root\n" if os.geteuid() == 0 and "\nuser " not in f"\n{given}" else ""
        self.conf.write_text(
            user +
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type all\n"
            "per_listener_settings false\n"
            f"{listener}\n{self.extra}\n"
        )

    def listener_ports(self) -> list[int]:
        """The ports of the config's `listener` lines (written by start()), the main port first."""
        found = [int(m) for m in re.findall(r"^listener\s+(\d+)", self.conf.read_text(), flags=re.MULTILINE)]
        return [self.port, *(p for p in found if p != self.port)]

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if not Path(MOSQUITTO).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self._write_conf()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            for port in self.listener_ports():  # a second listener may open a moment after the first
                wait_listening(self.proc, port, timeout)
        except RuntimeError as e:
            exited = self.proc.poll() is not None
            err = self.proc.stderr.read().decode() if exited and self.proc.stderr else ""
            log = self.log.read_text() if self.log.exists() else ""
            self.stop()
            raise RuntimeError(f"mosquitto: {e}: {err}\n{log}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def first_messages(port: int, topic: str, timeout: float = 5.0, tls_context: object | None = None,
                   retained_only: bool = False) -> list[bytes]:
    """Subscribe to `topic` on 127.0.0.1:`port` (TLS with `tls_context` when given), wait up to `timeout` s for the
    first message after the broker acknowledged the subscription, and return what arrived by then (only messages
    with the retain flag when `retained_only`). No SUBACK within `timeout` is an AssertionError, so an empty answer
    means the topic had nothing (the broker sends retained messages right after the SUBACK), not a slow subscribe."""
    import threading

    import paho.mqtt.client as mqtt

    got: list[bytes] = []
    ev = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if tls_context is not None:
        c.tls_set_context(tls_context)  # type: ignore[arg-type]

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain or not retained_only:
            got.append(bytes(msg.payload))
        ev.set()

    subscribed = threading.Event()
    c.on_message = on_message
    c.on_connect = lambda client, u, f, rc, p=None: client.subscribe(topic, qos=1)
    c.on_subscribe = lambda client, u, mid, rc, p=None: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not subscribed.wait(max(timeout, 10.0)):
            raise AssertionError(f"the broker on port {port} never acknowledged a subscription to {topic}")
        ev.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    return got
