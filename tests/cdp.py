"""A headless Chromium driven over the DevTools protocol on a pipe: a page that stays open while a test changes
the server under it, and JavaScript evaluated in it (no package beyond the standard library)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page at `url`. `eval(js)` returns the expression's value."""

    def __init__(self, url: str, tmp: Path, size: tuple[int, int] = (412, 915)):
        assert CHROMIUM is not None
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4; the ends are moved there in the child.
        # (from numbers above 100 first, so that neither move overwrites the other's source)
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 100)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 100)

        def child_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS")}
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-pipe", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp,
            preexec_fn=child_fds, pass_fds=(3, 4, high_r, high_w))
        for fd in (to_child_r, from_child_w, high_r, high_w):
            os.close(fd)
        self._w = os.fdopen(to_child_w, "wb", buffering=0)
        self._r = os.fdopen(from_child_r, "rb", buffering=0)
        self._buf = b""
        self._id = 0
        self._session = self._attach()

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        self._w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = self._r.read(65536)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _attach(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pages = [t for t in self._send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                got = self._send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})
                return str(got["sessionId"])
            time.sleep(0.1)
        raise RuntimeError("chromium opened no page")

    def eval(self, js: str) -> Any:
        got = self._send("Runtime.evaluate", {"expression": js, "returnByValue": True}, self._session)
        return got.get("result", {}).get("value")

    def wait_for(self, js: str, timeout: float) -> Any:
        """Evaluate `js` until it is truthy (returned) or `timeout` passes (the last value returned)."""
        deadline = time.monotonic() + timeout
        value = self.eval(js)
        while not value and time.monotonic() < deadline:
            time.sleep(0.2)
            value = self.eval(js)
        return value

    def close(self) -> None:
        try:
            self._w.close()
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._r.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
