"""A full disk under the outbox: the service runs on with its outbox in memory, delivers every alert, says
`degraded` and why, and moves the outbox back to disk once there is room, so a power cut after that loses nothing.
Should memory fail too, the sink holds the alerts and commits them once there is room.

The disk is a real one: a small tmpfs mounted over the state folder and filled with a file, so SQLite meets a real
ENOSPC. Mounting needs root (as this project's CI and development machines run); elsewhere these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convert.cartpass import CartPass, make_aisle, render_cart_pass
from edge import outbox as outbox_mod
from edge import sink as sink_mod
from edge.outbox import Outbox, OutboxDiskFull, OutboxError, OutMessage
from edge.payloads import ModelRef
from edge.sink import OutboxSink
from edge.topics import Topics
from edge.types import AlertEvent, Frame, Location
from tests.mosquitto import Mosquitto, free_port
from tests.schema_check import ValidatingSubscriber
from tests.test_e2e import (
    DEVICE,
    STORE,
    alerts_of,
    check_payloads_and_snapshots,
    committed_alerts,
    start_service,
    write_config,
)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's units) mounted at `where`: a real file system that really fills up. Skips the
    test where mounting is not allowed."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):  # CI runs as root: a skip there would leave the full disk untested unnoticed
            pytest.fail(f"cannot mount a tmpfs to fill up: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB disk."""
    with small_disk(tmp_path / "disk", "2m") as where:
        yield where


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a file that takes all the free space of `disk` but about `leave` bytes; returns it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    if leave:
        with open(filler, "r+b") as f:
            f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the service stopped before logging {text!r}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the log: " + log.read_text()[-3000:]
        time.sleep(0.2)


def event(alert_id: str, frame: int) -> AlertEvent:
    return AlertEvent(alert_id, "opened", 0.0, 0.0, 0.0, (0.1, 0.1, 0.3, 0.3), 0.9, 5, frame,
                      Location(None, None, "none"))


def frame(index: int) -> Frame:
    # noise: a snapshot JPEG of some tens of kB, as a real frame gives
    image = np.random.default_rng(index).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return Frame(image, index, time.monotonic(), time.time())


def sink_on(disk: Path) -> tuple[Outbox, OutboxSink, list[str]]:
    """An outbox on `disk`, its sink, and the alert ids the sink reports as committed, in order."""
    outbox = Outbox(disk / "outbox.db")
    seen: list[str] = []
    sink = OutboxSink(outbox, Topics("shelfscout", STORE, DEVICE), lambda _info: ModelRef("m", 1),
                      on_event=lambda ev: seen.append(ev.alert_id))
    return outbox, sink, seen


def test_a_disk_that_fills_up_moves_the_outbox_to_memory_and_back_in_order(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the service runs: the outbox carries on in memory with a copy of what the disk held, so
    every alert is committed at once and can go to the broker; once there is room it is back on disk, in order,
    each message once (the disk's own copies replaced, not doubled)."""
    monkeypatch.setattr(outbox_mod, "DISK_RETRY_S", 0.0)
    outbox, sink, seen = sink_on(tiny_disk)
    try:
        sink.emit(frame(0), [event("a", 0)])
        assert outbox.depth() == 2 and outbox.memory_reason is None and seen == ["a"]  # the alert and its snapshot

        filler = fill(tiny_disk)
        sink.emit(frame(1), [event("b", 1)])
        assert outbox.memory_reason is not None and "full" in outbox.memory_reason  # "database or disk is full"
        sink.emit(frame(2), [])
        sink.emit(frame(3), [event("c", 3), event("d", 3)])
        assert sink.held == 0 and sink.error is None and outbox.depth() == 8 and outbox.epoch == 0  # same ids
        assert seen == ["a", "b", "c", "d"]  # committed (in memory) at once: the link can send them now
        rows = outbox.pending()
        outbox.ack_many([rows[0].row_id, rows[1].row_id], epoch=outbox.epoch)  # the broker has "a"

        filler.unlink()
        sink.emit(frame(4), [])  # any frame tries the disk again
        assert outbox.memory_reason is None and outbox.epoch == 0
        assert [r.row_id for r in outbox.pending()] == [r.row_id for r in rows[2:]]  # ids kept both ways
    finally:
        outbox.close()
    with Outbox(tiny_disk / "outbox.db") as reopened:
        topics = [m.topic.rsplit("/", 2)[-2:] for m in reopened.pending()]
    assert [t[-1] for t in topics if t[0] == "snapshots"] == ["b", "c", "d"]  # in order; "a" delivered, not back


def test_a_stop_while_the_outbox_is_in_memory_loses_only_what_the_disk_never_had(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tiny_disk / "outbox.db")
    outbox.put([msg(0), msg(1)])
    fill(tiny_disk)
    with pytest.raises(OutboxError):
        outbox.put([msg(2)])
    assert outbox.move_to_memory("the disk is full")
    outbox.put([msg(2)])
    outbox.close()  # the disk is still full: 0 and 1 are still on it, 2 was only in memory
    assert outbox.lost_at_close == 1
    assert "1 outbox message(s) lost at stop" in caplog.text


def test_should_memory_fail_too_the_sink_holds_the_alerts_and_commits_them_in_order_once_there_is_room(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort. An in-memory SQLite database does not fail here, so its refusal is forced (a stand-in for
    a process out of memory); the full disk is real."""
    monkeypatch.setattr(sink_mod, "RETRY_S", 0.0)  # retry on every frame instead of once a second
    monkeypatch.setattr(Outbox, "move_to_memory", lambda self, reason: False)
    outbox, sink, seen = sink_on(tiny_disk)
    try:
        sink.emit(frame(0), [event("a", 0)])
        assert outbox.depth() == 2 and sink.error is None and seen == ["a"]  # the alert and its snapshot

        filler = fill(tiny_disk)
        sink.emit(frame(1), [event("b", 1)])
        sink.emit(frame(2), [])
        sink.emit(frame(3), [event("c", 3), event("d", 3)])
        assert sink.error is not None and "full" in sink.error, sink.error  # SQLite's "database or disk is full"
        assert sink.held == 6 and outbox.depth() == 2
        assert sink.held_alert_ids() == {"b", "c", "d"}  # the tracker keeps these places marked for a resend
        assert seen == ["a"]  # nothing is reported as sent before it is stored

        filler.unlink()
        sink.emit(frame(4), [])  # any frame retries
        assert sink.held == 0 and sink.error is None and sink.held_alert_ids() == set()
        topics = [m.topic.rsplit("/", 2)[-2:] for m in outbox.pending()]
        assert [t[-1] for t in topics if t[0] == "snapshots"] == ["a", "b", "c", "d"]  # in order
        assert seen == ["a", "b", "c", "d"]
    finally:
        outbox.close()


def test_held_alerts_are_bounded_in_memory_oldest_dropped_and_counted(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Outbox, "move_to_memory", lambda self, reason: False)  # as above
    outbox = Outbox(tiny_disk / "outbox.db")
    sink = OutboxSink(outbox, Topics("shelfscout", STORE, DEVICE), lambda _info: ModelRef("m", 1), hold_max_bytes=1)
    try:
        fill(tiny_disk)
        for i in range(3):
            sink.emit(frame(i), [event(f"x{i}", i)])
        assert sink.dropped == 4  # two frames' alert + snapshot
        assert sink.held == 2  # the newest frame's stay
    finally:
        outbox.close()


@pytest.fixture(scope="module")
def cart_pass(tmp_path_factory: pytest.TempPathFactory) -> CartPass:
    d = tmp_path_factory.mktemp("pass")
    aisle = make_aisle(np.random.default_rng(11), length_px=1500, n_gaps=4)
    return render_cart_pass(aisle, d / "aisle.mp4", fps=15.0, speed_px_per_frame=10.0, seed=3)


def run_pass(tmp: Path, cart_pass: CartPass, state: Path | None = None,
             while_running: Any = None) -> tuple[int, Path, ValidatingSubscriber]:
    with Mosquitto(tmp / "broker") as broker:
        sub = ValidatingSubscriber(broker.url, [f"shelfscout/{STORE}/{DEVICE}/#"], client_id="backend").start()
        cfg = write_config(tmp, cart_pass.path, broker.url, state=state)
        log = tmp / "service.log"
        proc = start_service(cfg, log)
        try:
            if while_running is not None:
                while_running(proc, log, sub)
            code = proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
        sub.wait_for(lambda: len(alerts_of(sub)) >= log.read_text().count("alert opened"), 10)
        sub.stop()
    return code, log, sub


@pytest.mark.parametrize("room_again", [True, False])
def test_a_full_disk_during_a_cart_pass_loses_no_alert(
    tmp_path: Path, tiny_disk: Path, cart_pass: CartPass, room_again: bool
) -> None:
    """The same recorded pass twice: once with room, once on a disk that fills up after the first alert or so. A
    replay from a file is lossless, so both runs must deliver the same events, frame for frame. The alerts keep
    reaching the broker while the disk is full (the outbox carries on in memory); whether the disk gets room again
    before the end of the pass or not, none is lost."""
    code, _, ref_sub = run_pass(tmp_path / "ref", cart_pass)
    assert code == 0
    reference = sorted((a["event"], a["frame"]) for a in alerts_of(ref_sub))
    assert len(reference) >= 2, "the reference run gave too few alerts to test with"

    filler = fill(tiny_disk, leave=160 * 1024)  # room for the outbox itself and about one alert

    def while_full(proc: subprocess.Popen[bytes], log: Path, sub: ValidatingSubscriber) -> None:
        wait_for_log(proc, log, "the outbox carries on in memory")  # the disk filled up
        assert sub.wait_for(lambda: any("kept in memory only" in (s.get("reason") or "")
                                        for s in sub.json_on("/status") if s["state"] == "degraded"), 15), (
            f"status never said why: {sub.json_on('/status')}")
        committed = {(e, i) for e, i in committed_alerts(log)}
        assert sub.wait_for(lambda: committed <= {(a["event"], a["id"]) for a in alerts_of(sub)}, 15), (
            "alerts committed while the disk is full did not reach the broker")
        assert proc.poll() is None  # still running (or draining), not crashed
        if room_again:
            filler.unlink()

    run = tmp_path / "full"
    run.mkdir()
    code, log, sub = run_pass(run, cart_pass, state=tiny_disk, while_running=while_full)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert ("the outbox is on disk again" in text) == room_again
    assert "lost" not in text
    got = sorted((a["event"], a["frame"]) for a in alerts_of(sub))
    assert got == reference
    check_payloads_and_snapshots(sub)
    statuses = sub.json_on("/status")
    assert statuses[-1]["state"] == "offline"
    print(json.dumps({"reference": reference, "statuses": [s["state"] for s in statuses]}))


def test_a_service_started_on_a_full_disk_runs_with_its_outbox_in_memory(
    tmp_path: Path, tiny_disk: Path, cart_pass: CartPass
) -> None:
    """SQLite cannot open its write-ahead log on a full disk ("disk I/O error"). Rather than exit, and be restarted
    by systemd until its start limit leaves the cart down for good, the service runs with its outbox in memory,
    says so in its status, and delivers the pass's alerts."""
    Outbox(tiny_disk / "outbox.db").close()  # the outbox of an earlier run; then the disk fills up
    fill(tiny_disk)
    code, log, sub = run_pass(tmp_path, cart_pass, state=tiny_disk)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "the disk holding it is full" in text and "the outbox is kept in memory" in text
    assert "Traceback" not in text
    reasons = [s.get("reason") or "" for s in sub.json_on("/status") if s["state"] == "degraded"]
    assert any("alerts are kept in memory only, not on disk" in r for r in reasons), sub.json_on("/status")
    committed = {("opened", int(m)) for m in re.findall(r"alert opened \S+ frame=(\d+)", text)}
    assert len(committed) >= 2
    assert {(a["event"], a["frame"]) for a in alerts_of(sub)} == committed
    check_payloads_and_snapshots(sub)


def msg(n: int) -> OutMessage:
    return OutMessage(f"shelfscout/{STORE}/{DEVICE}/alerts", f'{{"n": {n}}}'.encode())


def test_an_outbox_in_memory_moves_to_disk_once_there_is_room_with_what_the_disk_already_held(
    tiny_disk: Path
) -> None:
    path = tiny_disk / "outbox.db"
    with Outbox(path) as earlier:  # an earlier run's undelivered message
        earlier.put([msg(0)])
    filler = fill(tiny_disk)
    with pytest.raises(OutboxDiskFull):
        Outbox(path)
    outbox = Outbox(path, max_bytes=10_000, memory_reason="the disk is full")
    try:
        outbox.put([msg(1), msg(2)])
        outbox.put([msg(3)])
        stale = [m.row_id for m in outbox.pending()]
        assert outbox.max_bytes == 10_000 and outbox.depth() == 3
        assert not outbox.move_to_disk(force=True)  # still full: it stays in memory and keeps its messages
        assert outbox.memory_reason is not None and outbox.epoch == 0 and outbox.depth() == 3

        filler.unlink()
        assert not outbox.move_to_disk()  # tried a moment ago: not again before DISK_RETRY_S
        assert outbox.move_to_disk(force=True)
        assert outbox.memory_reason is None and outbox.epoch == 1
        assert [m.payload for m in outbox.pending()] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
        outbox.ack_many(stale, epoch=0)  # PUBACKs for ids read before the move name other messages now: ignored
        outbox.discard(stale[0], "test", epoch=0)
        assert outbox.depth() == 4 and outbox.dropped() == 0
        outbox.put([msg(4)])  # and it goes on, on disk

        # A power cut now: what another process finds on the disk, without this one closing anything.
        with Outbox(path) as after_power_cut:
            assert [m.payload for m in after_power_cut.pending()][-2:] == [b'{"n": 3}', b'{"n": 4}']
            assert after_power_cut.depth() == 5
    finally:
        outbox.close()


def test_an_outbox_in_memory_stores_its_messages_on_disk_at_a_clean_stop(tiny_disk: Path) -> None:
    path = tiny_disk / "outbox.db"
    filler = fill(tiny_disk)
    outbox = Outbox(path, memory_reason="the disk is full")
    outbox.put([msg(1)])
    filler.unlink()
    outbox.close()  # not delivered while running: kept for the next start instead of lost
    with Outbox(path) as reopened:
        assert [m.payload for m in reopened.pending()] == [b'{"n": 1}']


def test_a_service_started_on_a_full_disk_is_durable_again_once_the_disk_has_room(
    tmp_path: Path, tiny_disk: Path, cart_pass: CartPass
) -> None:
    """Started on a full disk with no broker to deliver to, the service keeps the pass's alerts in memory. The disk
    gets room: the outbox moves there by itself, no restart. Then the power is cut (SIGKILL): every committed alert,
    and the earlier run's message the disk already held, is on disk for the next start."""
    with Outbox(tiny_disk / "outbox.db") as earlier:
        earlier.put([msg(0)])
    filler = fill(tiny_disk)
    cfg = write_config(tmp_path, cart_pass.path, f"mqtt://127.0.0.1:{free_port()}", state=tiny_disk)  # no broker
    log = tmp_path / "service.log"
    proc = start_service(cfg, log)
    try:
        wait_for_log(proc, log, "source ended; draining")  # every alert of the pass is committed, in memory
        assert "the outbox is kept in memory" in log.read_text()
        committed = committed_alerts(log)
        assert len(committed) >= 2, log.read_text()[-3000:]
        filler.unlink()
        wait_for_log(proc, log, "the outbox is on disk again", timeout=30)
        proc.kill()  # the power cut
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "lost" not in text
    with Outbox(tiny_disk / "outbox.db") as on_disk:
        rows = on_disk.pending(1000)
    assert rows[0].payload == b'{"n": 0}'
    stored = [json.loads(r.payload) for r in rows[1:] if r.topic.endswith("/alerts")]
    assert {(a["event"], a["id"]) for a in stored} == committed
    snapshots = {r.topic.rsplit("/", 1)[1] for r in rows if "/snapshots/" in r.topic}
    assert snapshots == {i for e, i in committed if e == "opened"}


def test_alerts_stored_in_memory_after_every_earlier_one_was_delivered_reach_the_broker_at_once(
    tiny_disk: Path, tmp_path: Path
) -> None:
    """The usual case of a disk filling up: every message so far delivered and acknowledged. The messages stored
    in memory from then on, and those stored on disk again once there is room, must come after every id the sender
    has passed, or it does not see them until a reconnect (it read the first one after a move under id 1)."""
    from edge.config import Config, DeviceConfig, MqttConfig, OutboxConfig
    from edge.mqtt import MqttLink

    broker = Mosquitto(tmp_path / "broker").start()
    cfg = Config(device=DeviceConfig(DEVICE, STORE), mqtt=MqttConfig(url=broker.url),
                 outbox=OutboxConfig(path=str(tiny_disk / "outbox.db")))
    topics = Topics.from_config(cfg)
    sub = ValidatingSubscriber(broker.url, [topics.alerts], client_id="backend").start()
    outbox = Outbox(tiny_disk / "outbox.db")
    link = MqttLink(cfg, topics, outbox)
    try:
        link.start()
        assert link.wait_connected(10)

        def put(n: int) -> None:
            try:
                outbox.put([OutMessage(topics.alerts, json.dumps({"n": n}).encode(), qos=1)])
            except OutboxError as e:  # what the sink does when the disk refuses a write
                assert outbox.move_to_memory(str(e))
                outbox.put([OutMessage(topics.alerts, json.dumps({"n": n}).encode(), qos=1)])

        def received() -> list[int]:
            return [json.loads(m.payload)["n"] for m in sub.on("/alerts")]

        for n in range(3):
            put(n)
        assert link.wait_idle(10) and outbox.depth() == 0
        filler = fill(tiny_disk)
        put(3)
        assert outbox.memory_reason is not None
        assert link.wait_idle(10), "the message stored in memory was not sent while the connection stayed up"
        put(4)
        assert link.wait_idle(10)
        filler.unlink()
        assert outbox.move_to_disk(force=True) and outbox.memory_reason is None
        put(5)
        assert link.wait_idle(10), "the message stored on disk again was not sent while the connection stayed up"
        assert sub.wait_for(lambda: sorted(set(received())) == list(range(6)), 10), received()
    finally:
        link.stop()
        outbox.close()
        sub.stop()
        broker.stop()
