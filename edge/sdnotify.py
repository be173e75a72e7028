"""Tells systemd about the service's state (READY, STATUS, WATCHDOG) over $NOTIFY_SOCKET, and nothing without it."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):  # an abstract socket: a leading NUL byte instead of '@'
        return "\0" + path[1:]
    if not path.startswith("/"):
        return None  # vsock:// and the like are not for us
    return path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message such as "READY=1" or "STATUS=...". Returns False when there is no socket.

    Never raises on a socket error: a lost notification must not take the pipeline down.
    """
    if not state or "\0" in state:
        raise ValueError("notify: the state must be non-empty text without NUL bytes")
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when systemd does not watch us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process
    return int(usec) / 1e6 / 2.0


class Watchdog:
    """Pings WATCHDOG=1 every `interval` seconds, but only if the pipeline called `heartbeat()` since the last ping.

    So a frozen pipeline stops the pings and systemd kills and restarts the service. Without $WATCHDOG_USEC (and no
    explicit interval) `start()` does nothing.
    """

    def __init__(self, interval: float | None = None, env: Mapping[str, str] | None = None):
        self._env = dict(os.environ if env is None else env)
        self.interval = interval if interval is not None else watchdog_interval(self._env)
        if self.interval is not None and self.interval <= 0:
            raise ValueError("Watchdog: interval must be positive")
        self._beat = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.missed = 0

    @property
    def enabled(self) -> bool:
        return self.interval is not None and _address(self._env) is not None

    def heartbeat(self) -> None:
        """Called once per processed frame: cheap (sets an event)."""
        self._beat.set()

    def start(self) -> Watchdog:
        if not self.enabled or self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(self.interval,), name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        next_t = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            next_t += interval
            if self._beat.is_set():
                self._beat.clear()
                if notify("WATCHDOG=1", self._env):
                    self.pings += 1
            else:
                self.missed += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
