"""sd_notify and the heartbeat-gated watchdog, against a real unix datagram socket like systemd's."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.sdnotify import Watchdog, notify, watchdog_interval
from tests.mosquitto import Mosquitto
from tests.pipes import stop


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.settimeout(2.0)
    try:
        yield s, path
    finally:
        s.close()


def _drain(s: socket.socket, within: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        s.settimeout(left)
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            return out


def test_notify_sends_ready_and_status_to_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    env = {"NOTIFY_SOCKET": path}
    assert notify("READY=1", env)
    assert notify("STATUS=running model shelfgap v3", env)
    assert s.recv(4096) == b"READY=1"
    assert s.recv(4096) == b"STATUS=running model shelfgap v3"


def test_notify_supports_abstract_sockets() -> None:
    name = f"shelfscout-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2.0)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"READY=1"


def test_notify_is_a_noop_without_a_socket() -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}) is False  # and never raises
    with pytest.raises(ValueError):
        notify("", {})


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0


def test_watchdog_pings_only_while_the_pipeline_beats(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    # WATCHDOG_USEC=200ms -> a ping every 100 ms, as systemd would configure it.
    wd = Watchdog(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert wd.enabled and wd.interval == pytest.approx(0.1)
    wd.start()
    try:
        t_end = time.monotonic() + 0.8
        while time.monotonic() < t_end:  # a live pipeline: a heartbeat per frame at ~50 fps
            wd.heartbeat()
            time.sleep(0.02)
        alive = _drain(s, 0.05)
        assert alive and set(alive) == {"WATCHDOG=1"}
        assert len(alive) >= 3  # ~8 expected; generous for a loaded 2-core machine
        # The pipeline freezes: no heartbeats, so the pings stop and systemd would kill us after WatchdogSec.
        _drain(s, 0.25)  # at most one ping for a beat that landed just before the freeze
        frozen = _drain(s, 0.6)
        assert frozen == []
        assert wd.missed >= 3
        # It thaws: pings resume.
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            wd.heartbeat()
            time.sleep(0.02)
        assert "WATCHDOG=1" in _drain(s, 0.2)
    finally:
        wd.stop()


def test_watchdog_does_nothing_without_systemd() -> None:
    wd = Watchdog(env={})
    assert not wd.enabled
    wd.start()
    wd.heartbeat()
    wd.stop()
    assert wd.pings == 0
    with pytest.raises(ValueError):
        Watchdog(interval=0.0, env={})


def _write_config(tmp_path: Path, broker_url: str, camera: str, mqtt: str = "") -> Path:
    """A service config for these tests: CAMERA lines under [camera], MQTT lines beside the broker URL."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[device]
id = "cart-07"
store = "s042"
[camera]
{camera}
[mqtt]
url = "{broker_url}"
{mqtt}
[outbox]
path = "{tmp_path / 'outbox.db'}"
[ota]
enabled = false
[preview]
enabled = false
""")
    return cfg


@contextlib.contextmanager
def _run_under_notify(tmp_path: Path, cfg: Path, command: tuple[str, ...] = (),
                      **env: str) -> Iterator[tuple[subprocess.Popen[str], socket.socket]]:
    """`shelfscout run -c CFG` (or COMMAND CFG) with a real notify socket as systemd gives it (NOTIFY_SOCKET and
    ENV); the service is stopped (SIGTERM, then SIGKILL) and the socket closed on the way out."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    argv = [*command, str(cfg)] if command else [str(Path(sys.executable).parent / "shelfscout"), "run", "-c", str(cfg)]
    proc = subprocess.Popen(argv,
                            env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, sock
    finally:
        stop(proc, 20)
        sock.close()


def _until(proc: subprocess.Popen[str], sock: socket.socket, timeout_s: float, done: Callable[[str], bool],
           got: list[str] | None = None) -> list[str]:
    """The service's notify messages (after `got`) until one is `done` (or `timeout_s` passes); it must still
    run."""
    got = [] if got is None else got
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not any(done(m) for m in got):
        got += _drain(sock, 0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return got


def _until_degraded(proc: subprocess.Popen[str], sock: socket.socket, timeout_s: float) -> list[str]:
    """The service's notify messages until it says STATUS=degraded (or `timeout_s` passes); it must still run."""
    return _until(proc, sock, timeout_s, lambda m: m.startswith("STATUS=degraded"))


def test_shelfscout_run_talks_to_systemd(tmp_path: Path, broker: Mosquitto) -> None:
    """`shelfscout run` as systemd starts it (Type=notify, WatchdogSec): READY=1 once up, then WATCHDOG=1 while the
    pipeline processes frames, on a real notify socket."""
    from tests.test_hints import write_pan_frames

    frames = write_pan_frames(tmp_path / "frames")  # a cart rolling past: a window sliding along a long shelf
    cfg = _write_config(tmp_path, broker.url, f'source = "{frames}"\nfps = 10.0\nrealtime = true\nloop = true')
    with _run_under_notify(tmp_path, cfg, WATCHDOG_USEC="1000000") as (proc, sock):
        got: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3 and proc.poll() is None:
            got += _drain(sock, 0.5)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert "READY=1" in got, got
        assert any(m.startswith("STATUS=") for m in got), got
        assert got.count("WATCHDOG=1") >= 3, got  # every 0.5 s while frames flow
        assert got.index("READY=1") < got.index("WATCHDOG=1")
    assert proc.returncode == 0, proc.stderr.read()[-3000:] if proc.stderr else ""


def test_the_status_line_follows_the_service_state(tmp_path: Path, broker: Mosquitto) -> None:
    """`systemctl status` shows the last STATUS=: with no camera it must say degraded and why, not the start-up line."""
    cfg = _write_config(tmp_path, broker.url, 'source = "/dev/video97"', "stats_interval_s = 0.5")
    with _run_under_notify(tmp_path, cfg) as (proc, sock):
        got = _until_degraded(proc, sock, 60)
        lines = [m for m in got if m.startswith("STATUS=")]
        assert lines and lines[-1].startswith("STATUS=degraded, model shelfgap-default v"), got
        assert "/dev/video97" in lines[-1]
        assert all(a != b for a, b in zip(lines, lines[1:], strict=False))  # sent on a change


def test_the_status_line_says_when_the_broker_refuses_the_alerts(tmp_path: Path) -> None:
    """A broker whose ACL refuses the cart's alerts (MQTT 5 PUBACK "Not authorized"): `status` on MQTT said
    degraded, but `systemctl status` said online, because only the MQTT link knew. Both say it now, on a real
    mosquitto with an ACL and a rendered cart pass that opens alerts."""
    import numpy as np

    from convert.cartpass import make_aisle, render_cart_pass

    aisle = make_aisle(np.random.default_rng(11), length_px=1500, n_gaps=4)
    video = render_cart_pass(aisle, tmp_path / "aisle.mp4", fps=15.0, speed_px_per_frame=10.0, seed=3).path
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite shelfscout/s042/cart-07/status\ntopic readwrite shelfscout/s042/cart-07/cmd/#\n"
                   "topic readwrite shelfscout/s042/cart-07/stats\ntopic readwrite shelfscout/s042/cart-07/model/#\n")
    with Mosquitto(tmp_path / "broker", extra=f"user root\nacl_file {acl}\n") as b:
        cfg = _write_config(tmp_path, b.url, f'source = "{video}"\nrealtime = true\nloop = true',
                            "stats_interval_s = 0.5")
        with _run_under_notify(tmp_path, cfg) as (proc, sock):
            got = _until_degraded(proc, sock, 90)
    lines = [m for m in got if m.startswith("STATUS=")]
    assert lines and lines[-1].startswith("STATUS=degraded, model shelfgap-default v"), got
    assert "the broker refused" in lines[-1] and "Not authorized" in lines[-1], lines[-1]


def test_the_status_line_says_when_the_broker_has_been_away_and_mqtt_does_not_keep_it(tmp_path: Path) -> None:
    """A broker that cannot be reached: systemd's status (and the preview, which shows the same) said `online`
    while alerts piled up on the cart, since only a refusing broker counted. After BROKER_OUTAGE_S it says
    degraded, when since and how many messages wait; once the broker is back it says online again, and the
    retained MQTT status, published on the reconnect, never carries the outage (it would be stale there)."""
    from edge.app import BROKER_OUTAGE_S
    from tests.mosquitto import first_messages

    with Mosquitto(tmp_path / "broker") as b:
        cfg = _write_config(tmp_path, b.url, 'source = "/dev/video97"', "stats_interval_s = 0.5")
        with _run_under_notify(tmp_path, cfg) as (proc, sock):
            got = _drain(sock, 3.0)
            assert "READY=1" in got, got
            b.stop()
            t0 = time.monotonic()
            _until(proc, sock, BROKER_OUTAGE_S + 30, lambda m: "no connection to the MQTT broker" in m, got)
            waited = time.monotonic() - t0
            down = [m for m in got if "no connection to the MQTT broker" in m]
            b.start()
            back = _until(proc, sock, 60, lambda m: m.startswith("STATUS=") and "no connection" not in m)
            retained = first_messages(b.port, "shelfscout/s042/cart-07/status", timeout=10)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert down and down[0].startswith("STATUS=degraded"), got
    assert waited >= BROKER_OUTAGE_S - 1  # not before the outage has lasted
    assert f"127.0.0.1:{b.port}" in down[0] and "kept on the cart" in down[0], down[0]
    assert "/dev/video97" in down[0]  # the camera's trouble is still said too
    after = [m for m in back if m.startswith("STATUS=")]
    assert after and "no connection" not in after[-1], back
    assert retained and all(b"no connection" not in m and b"degraded" in m for m in retained), retained


# A stand-in for a camera driver without a timeout (a hung V4L2 or libcamera read): after 30 frames its read
# blocks for good. Only the source is replaced; the service, the capture thread and the watchdog are the real ones.
_HANGING_CAMERA = """
import sys, threading, time
import numpy as np
import edge.sources as sources
from tests.test_hints import shelf_images

class HangingCamera:
    name, finite, fps = "/dev/video-hangs", False, 15.0
    def __init__(self):
        self.n, self.image = 0, shelf_images(3)[0][1]
    def open(self):
        pass
    def read(self):
        self.n += 1
        if self.n > 30:
            threading.Event().wait()
        time.sleep(1 / 15)
        return self.image
    def close(self):
        pass

sources.open_source = lambda cfg, timeout_s=None: HangingCamera()
from edge.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_a_camera_read_that_never_returns_stops_the_watchdog_pings(tmp_path: Path, broker: Mosquitto) -> None:
    """A camera whose read hung for good left the cart degraded for good: the pipeline kept pinging the watchdog
    while it waited for frames, so systemd never restarted it, and nothing could reopen the device (its thread is
    stuck in the driver). Once the read has been blocked for edge.capture.HANG_STALLS x stall_s, the pings stop."""
    cfg = _write_config(tmp_path, broker.url, 'source = "/dev/video-hangs"\nstall_s = 0.5')
    repo = str(Path(__file__).resolve().parents[1])
    with _run_under_notify(tmp_path, cfg, (sys.executable, "-c", _HANGING_CAMERA), WATCHDOG_USEC="1000000",
                           PYTHONPATH=repo) as (proc, sock):
        got = _until_degraded(proc, sock, 60)
        assert "READY=1" in got and got.count("WATCHDOG=1") >= 2, got  # pinging while frames flowed
        later: list[str] = []
        quiet_since = time.monotonic()
        deadline = quiet_since + 60
        while time.monotonic() - quiet_since < 4.0 and time.monotonic() < deadline:
            msgs = _drain(sock, 0.5)
            later += msgs
            if "WATCHDOG=1" in msgs:
                quiet_since = time.monotonic()
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - quiet_since >= 4.0, later  # no ping for 4 s: systemd would restart it
    err = proc.stderr.read() if proc.stderr else ""
    assert "no more watchdog pings" in err, err[-3000:]
