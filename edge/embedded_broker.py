"""Local brokers: amqtt on a loopback port in a background thread (`shelfscout demo` without --broker), a free
port, and waiting until a broker process (mosquitto for the bench and the tests) listens."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: Any, port: int, timeout: float) -> None:
    """Wait until the broker process `proc` (a subprocess.Popen) accepts connections on the loopback `port`;
    RuntimeError when it exits first or does not listen within `timeout` seconds (the caller stops it)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not listen on port {port} within {timeout:g} s") from None
            time.sleep(0.02)


class EmbeddedBroker:
    """amqtt's broker, MQTT 3.1.1, anonymous, bound to 127.0.0.1 only."""

    def __init__(self, port: int = 0):
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        try:
            import amqtt.broker  # noqa: F401
        except ImportError as e:
            raise RuntimeError("the embedded broker needs amqtt (pip install 'shelfscout[demo]'), "
                               "or pass --broker mqtt://HOST:PORT") from e
        self._thread = threading.Thread(target=self._main, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the embedded broker did not start")
        if self._error:
            raise RuntimeError(f"the embedded broker failed: {self._error}")
        return self

    def _main(self) -> None:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):  # amqtt warns about every MQTT 5 probe; the client falls back
            logging.getLogger(name).setLevel(logging.CRITICAL)
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 50}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def boot() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        try:
            loop.run_until_complete(self._broker.shutdown())
        except Exception:  # pragma: no cover - best effort at exit
            log.debug("embedded broker shutdown failed", exc_info=True)
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
