"""The SQLite outbox: durable across SIGKILL, bounded with counted drop-oldest, corrupt files quarantined."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxError, OutMessage

ROOT = Path(__file__).resolve().parents[1]

# A writer that commits alert+snapshot pairs as fast as it can and prints each sequence number once `put` returned.
WRITER = r"""
import hashlib, json, os, sys
from edge.outbox import Outbox, OutboxError, OutMessage
ob = Outbox(sys.argv[1], max_messages=10**6, max_bytes=10**9)
i = 0
while True:
    snap = os.urandom(2000 + (i * 37) % 3000)
    alert = json.dumps({"seq": i, "sha256": hashlib.sha256(snap).hexdigest(), "pad": "x" * (i % 500)}).encode()
    ob.put([OutMessage("t/alerts", alert), OutMessage(f"t/snapshots/{i}", snap)])
    print(i, flush=True)
    i += 1
"""


def _pairs(ob: Outbox) -> dict[int, tuple[dict[str, object], bytes]]:
    rows = ob.pending(10**7)
    alerts = {}
    snaps = {}
    for r in rows:
        if r.topic == "t/alerts":
            p = json.loads(r.payload)  # a half-written row would not parse
            alerts[int(p["seq"])] = p
        else:
            snaps[int(r.topic.rsplit("/", 1)[1])] = r.payload
    assert alerts.keys() == snaps.keys(), "an alert was committed without its snapshot or the other way round"
    return {k: (alerts[k], snaps[k]) for k in alerts}


@pytest.mark.parametrize("delay", [0.6, 1.3])
def test_sigkill_mid_stream_loses_no_committed_message(tmp_path: Path, delay: float) -> None:
    db = tmp_path / "outbox.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    committed: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            committed.append(int(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while len(committed) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(5)
    assert len(committed) >= 20, "the writer did not get going"
    with Outbox(db) as ob:
        assert ob.quarantined is None
        pairs = _pairs(ob)
        missing = set(committed) - pairs.keys()
        assert not missing, f"{len(missing)} committed pairs are gone, e.g. {sorted(missing)[:5]}"
        # At most the put in progress may have committed without being reported; nothing else appears.
        assert set(pairs) <= set(range(max(committed) + 2))
        for alert, snap in pairs.values():
            assert alert["sha256"] == hashlib.sha256(snap).hexdigest()
        assert ob.depth() == 2 * len(pairs)
    print(f"SIGKILL after {len(committed)} reported commits: {len(pairs)} pairs on disk")


def test_put_is_one_transaction_and_ack_deletes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ids = ob.put([OutMessage("a/alerts", b"{}"), OutMessage("a/snapshots/1", b"\xff\xd8")])
        assert ids == sorted(ids) and ob.depth() == 2
        # A failing statement inside put rolls the whole batch back.
        ob.max_messages = 10
        conn = sqlite3.connect(tmp_path / "o.db")
        conn.execute("CREATE TRIGGER no_big BEFORE INSERT ON messages WHEN length(NEW.payload) > 100 "
                     "BEGIN SELECT RAISE(ABORT, 'too big'); END")
        conn.commit()
        conn.close()
        with pytest.raises(Exception, match="too big"):
            ob.put([OutMessage("a/alerts", b"{}"), OutMessage("a/snapshots/2", b"x" * 200)])
        assert [r.row_id for r in ob.pending(10)] == ids
        assert ob.pending(10, after=ids[0])[0].row_id == ids[1]
        ob.ack(ids[0])
        ob.ack(ids[0])  # acking twice is harmless
        assert [r.row_id for r in ob.pending(10)] == [ids[1]] and ob.depth() == 1
        ob.ack_many([ids[1], 999])
        assert ob.depth() == 0 and ob.size_bytes() == 0


def test_bound_drops_oldest_first_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_messages=5, max_bytes=10**6) as ob:
        for i in range(8):
            ob.put([OutMessage("a/alerts", json.dumps({"seq": i}).encode())])
        assert [json.loads(r.payload)["seq"] for r in ob.pending(100)] == [3, 4, 5, 6, 7]
        assert ob.dropped() == 3
    with Outbox(path, max_messages=100, max_bytes=2000) as ob:  # reopen with a byte bound
        assert ob.dropped() == 3 and ob.depth() == 5
        for i in range(8, 20):
            ob.put([OutMessage("a/snapshots/x", bytes([i]) * 300)])
        assert ob.size_bytes() <= 2000
        kept = ob.pending(100)
        assert [r.payload[0] for r in kept] == list(range(20 - len(kept), 20))  # the newest survive, in order
        assert ob.dropped() == 3 + (5 + 12 - len(kept))
    with Outbox(path) as ob:
        assert ob.dropped() == 3 + (5 + 12 - len(kept))


def test_the_bound_drops_whole_puts_so_no_picture_is_left_without_its_alert(tmp_path: Path) -> None:
    """An alert and its snapshot are put together; when the bound bites they go together, on disk, after a reopen
    and in memory, and the newest puts are kept whole."""
    path = tmp_path / "o.db"
    pic = b"\xff\xd8" + b"p" * 3000

    def pair(i: int) -> list[OutMessage]:
        return [OutMessage("a/alerts", json.dumps({"id": i}).encode()), OutMessage(f"a/snapshots/{i}", pic)]

    def kept(ob: Outbox) -> list[str]:
        return [r.topic.rsplit("/", 1)[1] if "snapshots" in r.topic else str(json.loads(r.payload)["id"])
                for r in ob.pending(1000)]

    with Outbox(path, max_messages=7, max_bytes=10**6) as ob:
        for i in range(6):
            ob.put(pair(i))
        assert kept(ob) == ["3", "3", "4", "4", "5", "5"] and ob.dropped() == 6  # 7 would split a pair
    with Outbox(path, max_messages=100, max_bytes=4 * len(pic)) as ob:  # reopened, with a byte bound
        ob.put(pair(6))
        assert kept(ob) == ["4", "4", "5", "5", "6", "6"]
        ob.put([OutMessage("a/alerts", b'{"id": 7}')] + pair(8)[1:])  # several messages in one put
        assert kept(ob) == ["5", "5", "6", "6", "7", "8"]
        assert ob.dropped() == 10
    # the newest put is never dropped, even when it alone is over the bound (a frame with many alerts)
    with Outbox(tmp_path / "small.db", max_messages=3, max_bytes=10**6) as ob:
        ob.put(pair(20)[:1])
        ob.put(pair(21) + pair(22))
        assert kept(ob) == ["21", "21", "22", "22"] and ob.dropped() == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "page", "cut in half"])
def test_corrupt_database_is_quarantined_and_a_fresh_one_works(tmp_path: Path, damage: str) -> None:
    """What SQLite can still read of the corrupt file is salvaged into the fresh one, in order, and nothing else."""
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        for i in range(300):
            ob.put([OutMessage("a/alerts", json.dumps({"seq": i, "pad": "y" * 400}).encode())])
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not an sqlite database, just some bytes " * 200)
        Path(f"{path}-wal").write_bytes(b"not a wal either" * 100)
        Path(f"{path}-shm").write_bytes(b"\0" * 32768)
    elif damage == "truncated":
        path.write_bytes(data[:100])
    elif damage == "cut in half":  # a file system that lost the file's end
        path.write_bytes(data[:len(data) // 2])
    else:  # overwrite b-tree pages in the middle: the header is fine, the integrity check is not
        mid = len(data) // 2
        path.write_bytes(data[:mid] + os.urandom(8192) + data[mid + 8192:])
    ob = Outbox(path)
    try:
        assert ob.quarantined is not None and ob.quarantined.exists(), "corruption was not detected"
        assert ob.quarantined.name.startswith("outbox.db.corrupt-")
        assert ob.quarantine_reason
        if damage == "garbage":  # its -wal and -shm files go with it
            assert Path(f"{ob.quarantined}-wal").exists() and Path(f"{ob.quarantined}-shm").exists()
        assert ob.depth() == ob.salvaged
        seqs = [json.loads(r.payload)["seq"] for r in ob.pending(1000)]
        assert seqs == sorted(set(seqs)) and set(seqs) <= set(range(300))  # originals only, oldest first
        if damage in ("garbage", "truncated"):
            assert ob.salvaged == 0
        if damage == "cut in half":
            assert ob.salvaged > 50, ob.salvaged  # most of the first half
        ob.put([OutMessage("a/alerts", b"{}")])
        assert len(ob.pending(1000)) == ob.salvaged + 1
    finally:
        ob.close()
    again = Outbox(path)  # the fresh database is healthy: no second quarantine, nothing lost
    try:
        assert again.quarantined is None and again.depth() == ob.salvaged + 1
    finally:
        again.close()


@pytest.mark.parametrize("wal_damage", ["none", "torn last frame", "flipped byte in the last frame"])
def test_an_outbox_file_empty_after_a_power_cut_gives_back_what_its_log_committed(tmp_path: Path,
                                                                                  wal_damage: str) -> None:
    """Killed right after its commits (no close, no checkpoint: the messages are in outbox.db-wal), and the file
    system brings the database file back empty, as ext4 can a new file's first page. SQLite takes an empty file
    for a new database and resets the log, and every queued alert was gone without a word. The outbox now sets
    the file aside with its log and salvages the committed transactions from the log; a frame the power cut tore
    (cut short, or failing its checksum) ends what is read, and what it held is not taken for a message."""
    path = tmp_path / "outbox.db"
    code = ("import json, os, sys\nfrom edge.outbox import Outbox, OutMessage\nob = Outbox(sys.argv[1])\n"
            "for i in range(40):\n"
            "    ob.put([OutMessage('a/alerts', json.dumps({'seq': i}).encode()), "
            "OutMessage('a/snapshots/%d' % i, bytes(3000))])\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 100_000, "the messages were expected in the log, not yet in the file"
    path.write_bytes(b"")
    damaged = _damage_log(wal.read_bytes(), wal_damage)
    wal.write_bytes(damaged)
    ob = Outbox(path)
    try:
        assert ob.quarantined is not None and "empty" in (ob.quarantine_reason or "")
        assert Path(f"{ob.quarantined}-wal").read_bytes() == damaged  # set aside with the file, as it was
        alerts = [json.loads(r.payload)["seq"] for r in ob.pending(1000) if r.topic == "a/alerts"]
        if wal_damage == "none":
            assert alerts == list(range(40)) and ob.salvaged == 80
        else:  # the last put's commit frame is damaged: everything before it, whole puts only
            assert alerts == list(range(39)) and ob.salvaged == 78
        assert len(ob.pending(1000)) == ob.salvaged
    finally:
        ob.close()


def _damage_log(log_bytes: bytes, wal_damage: str) -> bytes:
    """The write-ahead log as the power cut left it: whole, its last frame cut short, or one byte of it flipped."""
    if wal_damage == "torn last frame":
        return log_bytes[:-1000]
    if wal_damage == "flipped byte in the last frame":
        return log_bytes[:-500] + bytes([log_bytes[-500] ^ 0xFF]) + log_bytes[-499:]
    return log_bytes


def test_concurrent_writers_and_acker(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        def writer(k: int) -> None:
            for i in range(100):
                ob.put([OutMessage(f"w/{k}", f"{k}:{i}".encode())])

        acked = 0

        def acker() -> None:
            nonlocal acked
            deadline = time.monotonic() + 20
            while acked < 400 and time.monotonic() < deadline:
                rows = ob.pending(50)
                ob.ack_many(r.row_id for r in rows)
                acked += len(rows)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)] + [threading.Thread(target=acker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert acked == 400 and ob.depth() == 0


def test_a_locked_database_is_an_error_not_a_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        ob.put([OutMessage("a/alerts", b"{}")])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutboxError, match="locked"):
            Outbox(path, busy_timeout_s=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    with Outbox(path) as ob:
        assert ob.quarantined is None and ob.depth() == 1


# Commits N transactions, then writes N whole files with `write_atomic`, naming each step on stdout.
SYNCER = r"""
import sys
from pathlib import Path
from edge.atomic import write_atomic
from edge.outbox import Outbox, OutMessage
n = int(sys.argv[2])
ob = Outbox(sys.argv[1] + "/outbox.db")
print("opened", flush=True)
for i in range(n):
    ob.put([OutMessage("t/alerts", b"%d" % i)])
print("committed", flush=True)
for i in range(n):
    write_atomic(Path(sys.argv[1]) / "places.json", b'{"n": %d}' % i)
print("written", flush=True)
"""


def test_every_commit_and_every_state_file_write_reaches_the_disk_before_it_returns(tmp_path: Path) -> None:
    """What a power cut needs that a SIGKILL does not show: the kernel's page cache survives a killed process, not
    a power cut, so the SIGKILL tests above pass with SQLite's fsyncs turned off. Here the system calls themselves
    are counted (strace): each outbox commit syncs the WAL, and each atomic file write syncs the file and its
    folder, before returning. Turning `synchronous=FULL` off, or the fsyncs of `write_atomic`, fails this."""
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (Debian package `strace`; `make system-deps` installs it)")
        pytest.skip("strace is missing (Debian package `strace`)")
    n = 12
    trace = tmp_path / "trace"
    r = subprocess.run([strace, "-f", "-qq", "-e", "trace=fsync,fdatasync,write", "-e", "signal=none",
                        "-o", str(trace), sys.executable, "-c", SYNCER, str(tmp_path), str(n)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if " " in line]

    def syncs_between(start: str, end: str) -> int:
        marks = [i for i, c in enumerate(calls) if c.startswith("write(1,") and (start in c or end in c)]
        assert len(marks) == 2, marks
        return sum(c.startswith(("fsync(", "fdatasync(")) for c in calls[marks[0]:marks[1]])

    assert syncs_between("opened", "committed") >= n  # at least one per commit (SQLite syncs the WAL)
    assert syncs_between("committed", "written") >= 2 * n  # the file and its folder, per write


def test_a_write_ahead_log_claiming_billions_of_pages_salvages_nothing_and_asks_for_no_memory(tmp_path: Path) -> None:
    """A log of a few hundred bytes with good checksums whose commit frame claims a database of 4 billion pages (or
    holds a page numbered 50 million) made the salvage ask for 2 TiB (or 25 GB) (MemoryError out of the outbox's constructor: the service stopped). What the file and the log
    hold bounds it now."""
    import resource
    import struct

    from edge.outbox import _wal_checksum

    page = 512
    head = struct.pack(">IIIIII", 0x377F0682, 3007000, page, 0, 0x11111111, 0x22222222)
    s0, s1 = _wal_checksum(head, 0, 0, False)
    head += struct.pack(">II", s0, s1)
    body = bytes(page)
    frames = b""
    for number in (1, 50_000_000):  # a page numbered 50 million sized the image too (the review found it)
        frame = struct.pack(">II", number, 0xFFFFFFFF) + head[16:24]
        s0, s1 = _wal_checksum(frame[:8] + body, s0, s1, False)
        frames += frame + struct.pack(">II", s0, s1) + body
    path = tmp_path / "outbox.db"
    path.write_bytes(b"")
    Path(f"{path}-wal").write_bytes(head + frames)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Outbox(path) as ob:
        assert ob.quarantined is not None and ob.salvaged == 0 and ob.depth() == 0
        ob.put([OutMessage("a/alerts", b"{}")])  # and it works
        assert ob.depth() == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: no big allocation
