"""One service per state folder: a second `shelfscout run` on a folder in use stops with one line and disturbs
nothing; a killed service leaves no stale lock. Real processes, a real broker, the shipped int8 model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.app import state_folders
from edge.config import Config, OtaConfig, OutboxConfig
from edge.instance_lock import LOCK_NAME, InstanceLockError, acquire, holder_pid
from tests.mosquitto import Mosquitto, first_messages
from tests.pipes import killed_after, stop
from tests.test_e2e import write_config
from tests.test_hints import write_pan_frames

EXE = Path(sys.executable).parent / "shelfscout"
HOLD = ("import sys, time\nfrom edge.instance_lock import acquire\nacquire(sys.argv[1])\nprint('held', flush=True)\n"
        "time.sleep(600)\n")


def hold_in_child(folder: Path) -> subprocess.Popen[str]:
    """Another process holding FOLDER's lock, as a running service would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    with killed_after(proc, 60):
        assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_service_on_a_state_folder_in_use_exits_with_one_line_and_the_first_runs_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path, write_pan_frames(tmp_path / "frames"), broker.url, realtime=True, state=state,
                       camera="fps = 10.0\nloop = true")
    first = subprocess.Popen([str(EXE), "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        status_topic = "shelfscout/s042/cart-07/status"
        deadline = time.monotonic() + 60
        online = False
        while time.monotonic() < deadline and not online and first.poll() is None:
            got = first_messages(broker.port, status_topic, timeout=1.0, retained_only=True)
            online = any(json.loads(m).get("state") == "online" for m in got)
        assert online, "the first service never came online"
        assert holder_pid(state / LOCK_NAME) == first.pid

        second = subprocess.run([str(EXE), "run", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1, second.stderr  # one line, no traceback
        assert f"another shelfscout service (pid {first.pid}) is using the state folder {state}" in err[0]
        assert "systemctl stop shelfscout" in err[0]

        # the first service was not disturbed: it still runs, still holds the lock, is still online and still
        # publishes (had the second connected with the same client id, the broker would have dropped the first)
        assert first.poll() is None
        assert holder_pid(state / LOCK_NAME) == first.pid
        stats = first_messages(broker.port, "shelfscout/s042/cart-07/stats", timeout=10.0)
        assert stats, "the first service stopped publishing stats"
        got = first_messages(broker.port, status_topic, timeout=5.0, retained_only=True)
        assert [json.loads(m)["state"] for m in got] == ["online"]
    finally:
        stop(first, 30)
    assert first.returncode == 0, (first.stderr.read() if first.stderr else "")[-3000:]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL stands in for a power cut or the OOM killer: the kernel frees the lock with the process, so the
    next start needs no clean-up, although the file with the dead process's id is still there."""
    holder = hold_in_child(tmp_path)
    try:
        with pytest.raises(InstanceLockError, match=f"another shelfscout service \\(pid {holder.pid}\\)"):
            acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert holder_pid(tmp_path / LOCK_NAME) == holder.pid  # the stale file is still there ...
    lock = acquire(tmp_path)  # ... and does not matter
    try:
        assert holder_pid(tmp_path / LOCK_NAME) == os.getpid()
        with pytest.raises(InstanceLockError):  # a second descriptor, even in the same process, is refused
            acquire(tmp_path)
    finally:
        lock.release()
    acquire(tmp_path).release()  # released means free again


def test_a_service_sharing_only_the_ota_models_folder_is_refused_before_it_touches_anything(tmp_path: Path) -> None:
    """Two carts' configs with their own outboxes but one OTA models folder would fight over state.json and the
    `current` link: the second stops at start-up, before it creates its outbox or loads a model."""
    models = tmp_path / "models"
    holder = hold_in_child(models)
    try:
        own_state = tmp_path / "own-state"
        cfg = write_config(tmp_path, tmp_path / "no-frames", "mqtt://127.0.0.1:1", state=own_state,
                           ota=f'enabled = true\nmodels_dir = "{models}"\nkeys_dir = "{tmp_path / "keys"}"')
        r = subprocess.run([str(EXE), "run", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert r.returncode == 2
    assert f"(pid {holder.pid}) is using the OTA models folder {models}" in r.stderr
    assert not (own_state / "outbox.db").exists()
    assert "Traceback" not in r.stderr


def test_the_models_folder_is_locked_only_when_it_lies_outside_the_state_folder(tmp_path: Path) -> None:
    inside = Config(outbox=OutboxConfig(path=str(tmp_path / "state" / "outbox.db")),
                    ota=OtaConfig(models_dir=str(tmp_path / "state" / "models")))
    assert state_folders(inside) == [(tmp_path / "state", "state folder")]
    outside = inside.replace(ota=OtaConfig(models_dir=str(tmp_path / "models")))
    assert state_folders(outside) == [(tmp_path / "state", "state folder"),
                                      (tmp_path / "models", "OTA models folder")]
    no_ota = inside.replace(ota=OtaConfig(enabled=False, models_dir=str(tmp_path / "models")))
    assert state_folders(no_ota) == [(tmp_path / "state", "state folder")]


def test_a_state_folder_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    with pytest.raises(InstanceLockError, match="cannot create the lock .*not-a-folder/state.*: Not a directory"):
        acquire(blocker / "state")


def test_the_lock_holds_on_a_full_disk_although_it_cannot_say_who_holds_it(tmp_path: Path) -> None:
    """A service starting on a full disk must not stop at its lock file (it runs on and holds alerts in memory)."""
    from tests.test_disk_full import fill, small_disk

    with small_disk(tmp_path / "disk", "256k") as disk:
        (disk / LOCK_NAME).touch()  # an empty lock file from an earlier run; then the disk fills up
        fill(disk)
        lock = acquire(disk)
        try:
            assert holder_pid(disk / LOCK_NAME) is None  # the pid could not be written ...
            with pytest.raises(InstanceLockError, match=r"another shelfscout service \(another process\)"):
                acquire(disk)  # ... but the folder is locked
        finally:
            lock.release()
