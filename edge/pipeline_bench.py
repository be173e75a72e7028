"""The pipeline benchmark: the service's real threaded pipeline on frames held in memory, publishing to a local broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from edge.pipeline import CorePlan, GapDetector, ModelSlot, Pipeline, tune_process


class MemorySource:
    """A finite FrameSource over frames held in memory, played forth and back until `count` were read (for bench).

    Forth and back, not round: jumping from the last frame to the first is a hard cut that a camera never makes, and
    the tracker answers a cut by looking for ArUco markers on every frame for a while (measured: a third more
    marker detections in a 1,500-frame bench run over 48 distinct frames played round).
    """

    def __init__(self, frames: Sequence[Any], count: int, fps: float | None = None):
        if not frames:
            raise ValueError("MemorySource needs at least one frame")
        self.frames = list(frames)
        self.count = count
        self.fps = fps
        self.finite = True
        self.name = "memory"
        self._i = 0

    def open(self) -> None:
        self._i = 0

    def read(self) -> Any:
        if self._i >= self.count:
            return None
        n = len(self.frames)
        k = self._i % (2 * n - 2) if n > 1 else 0
        self._i += 1
        return self.frames[k if k < n else 2 * n - 2 - k]

    def close(self) -> None:
        pass


def bench_pipeline(
    frames: Sequence[Any], detector: GapDetector, n: int = 300, cores: CorePlan | None = None
) -> dict[str, Any]:
    """The service's real threaded pipeline on in-memory frames, publishing to a local broker.

    Capture thread (lossless hand-off, so no decode and no spinning is counted) → detector → tracker → outbox →
    MQTT. Uses Debian's mosquitto on a free loopback port when installed, else the embedded amqtt broker.
    Returns `pipeline_fps` (frames / wall time from the first frame to the last) and the stage percentiles.
    """
    import contextlib
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from edge.capture import CaptureThread
    from edge.config import Config, MqttConfig, OutboxConfig
    from edge.mqtt import MqttLink
    from edge.outbox import Outbox
    from edge.payloads import ModelRef
    from edge.sink import OutboxSink
    from edge.topics import Topics
    from edge.tracker import GapTracker

    tune_process()  # as the service does
    with contextlib.ExitStack() as stack:  # every part stopped in reverse, whichever step fails
        work = Path(tempfile.mkdtemp(prefix="shelfscout-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        broker, url = _local_broker(work, stack)
        cfg = Config(mqtt=MqttConfig(url=url), outbox=OutboxConfig(path=str(work / "outbox.db")))
        outbox = Outbox(cfg.outbox.path)
        stack.callback(outbox.close)
        topics = Topics.from_config(cfg)
        link = MqttLink(cfg, topics, outbox)
        link.start()
        stack.callback(link.stop)
        if not link.wait_connected(10.0):
            raise RuntimeError(f"the bench's own broker ({broker}, {url}) did not take the connection")
        first = frames[0]
        cam = dataclasses.replace(cfg.camera, source="memory", width=int(first.shape[1]),
                                  height=int(first.shape[0]))
        capture = CaptureThread(lambda: MemorySource(frames, n), cam, lambda s, r: None, lossless=True)
        tracker = GapTracker(cfg.tracking, cfg.device.id, None)
        stack.callback(tracker.close)
        sink = OutboxSink(outbox, topics, lambda _info: ModelRef("bench", 0))
        stack.callback(sink.close)
        pipe = Pipeline(capture, ModelSlot(detector), tracker, sink, cores=cores)
        capture.start()
        stack.callback(capture.stop)
        t0 = time.perf_counter()
        pipe.run(threading.Event())
        elapsed = time.perf_counter() - t0
        link.wait_idle(10.0)
    s = pipe.stats
    return {
        "pipeline_fps": s.frames / elapsed if elapsed > 0 else None,
        "frames": s.frames,
        "dropped": s.dropped,
        "alerts": s.alerts_opened + s.alerts_cleared,
        "broker": broker,
        "stages_ms": s.stage_percentiles(),
        # CPU per frame by stage thread: their sum over the usable cores bounds pipeline_fps from above
        "cpu_ms_per_frame": s.cpu_ms_per_frame(),
    }


def _local_broker(work: Any, stack: Any) -> tuple[str, str]:
    """(name, URL) of a broker on a free loopback port, stopped by `stack`: Debian's mosquitto when installed, else
    the embedded amqtt one."""
    import shutil
    import subprocess
    from pathlib import Path

    from edge.embedded_broker import EmbeddedBroker, free_port, wait_listening

    mosq = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not mosq:
        embedded = EmbeddedBroker().start()
        stack.callback(embedded.stop)
        return "amqtt", embedded.url
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    stack.callback(stop)
    wait_listening(proc, port, 10.0)
    return "mosquitto", f"mqtt://127.0.0.1:{port}"
