"""A durable, bounded on-disk queue (SQLite, WAL, fsync on commit) of MQTT messages waiting for their PUBACK.

An alert and its snapshot are written in one transaction before the first publish attempt and deleted only when
the broker acknowledges them. When the bound is hit the oldest messages are dropped and counted (persistently).
A database that is not a database or fails its integrity check is moved aside at start-up and replaced by a
fresh one; `quarantined` tells the caller where it went, so the service reports it instead of crash-looping.
An outbox that could not be opened on disk (a full disk), or whose disk refuses writes later, runs in memory,
bounded (`move_to_memory`), and moves itself to disk (`move_to_disk`) once the disk has room again; `epoch` counts
the moves that renumber the messages (those of an outbox that started in memory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_OVERHEAD = 64  # bytes counted per row on top of topic and payload, so many tiny messages are bounded too
MEMORY_MAX_BYTES = 32 * 1024 * 1024  # the bound of an outbox kept in memory (it takes the smaller of this and its own)
DISK_RETRY_S = 5.0  # an outbox in memory tries the disk again at most this often
_MIN_FREE = 1 << 20  # free bytes a disk needs, on top of the messages, before an outbox in memory moves there


class OutboxError(RuntimeError):
    """The outbox could not store or read messages (disk full, I/O error, closed)."""


class OutboxDiskFull(OutboxError):
    """The outbox cannot be opened because the disk holding it is full."""


@dataclass(frozen=True)
class OutMessage:
    """A message to publish durably."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if not self.topic or any(c in self.topic for c in "+#"):
            raise ValueError(f"cannot publish to topic {self.topic!r}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos!r}")
        if not isinstance(self.payload, (bytes, bytearray)):
            raise ValueError("payload must be bytes")


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored: `row_id` increases with insertion order and is what `ack` takes."""

    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # wall clock when it was committed


def _quarantine(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm", "-journal"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    return target


def _is_corruption(e: sqlite3.Error) -> bool:
    """Corruption (not a database, malformed image) as opposed to a busy, locked or unreadable file."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(e).lower()
    return "not a database" in msg or "malformed" in msg


def _check(path: Path, busy_timeout_s: float) -> str | None:
    """None if `path` is a healthy outbox database (or does not exist yet), else why it is corrupt.

    Errors that are not corruption (locked by another process, unreadable) raise OutboxError instead: moving a
    healthy database aside because it was busy would lose its messages.
    """
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except OSError as e:
        raise OutboxError(f"outbox {path}: cannot read: {e.strerror}") from e
    if header and header != b"SQLite format 3\x00":
        return "not an SQLite database (bad file header)"  # decided before SQLite touches its -wal/-shm files
    wal = Path(f"{path}-wal")
    if not header and wal.exists() and wal.stat().st_size > _WAL_HEADER:
        # a power cut before the new file's first page reached the disk: SQLite would take the empty file for a
        # new database and reset the log that holds every message committed since
        return f"the database file is empty but its write-ahead log holds {wal.stat().st_size} bytes"
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                return "integrity check failed: " + "; ".join(str(r[0]) for r in rows[:3])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "messages" in tables:
                cols = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
                missing = {"id", "topic", "payload", "qos", "retain", "created", "size"} - cols
                if missing:
                    return f"messages table lacks columns {sorted(missing)}"
        finally:
            conn.close()
    except sqlite3.Error as e:
        if _is_corruption(e):
            return str(e)
        raise _cannot_open(path, e) from e
    return None


_COLUMNS = "topic, payload, qos, retain, created, size"


def _rows(conn: sqlite3.Connection, ids: bool = False) -> list[Any]:
    """Every message row, oldest first (with its id first when `ids`)."""
    return conn.execute(f"SELECT {'id, ' if ids else ''}{_COLUMNS} FROM messages ORDER BY id").fetchall()


def _insert(conn: sqlite3.Connection, rows: Sequence[Any], ids: bool = False) -> None:
    """Insert rows as `_rows` gives them: under their own ids when `ids`, else under new ones."""
    cols = f"{'id, ' if ids else ''}{_COLUMNS}"
    conn.executemany(f"INSERT INTO messages({cols}) VALUES ({', '.join('?' * (7 if ids else 6))})", rows)


def _last_id(conn: sqlite3.Connection) -> int:
    """The highest message id the database ever gave (AUTOINCREMENT keeps it after the message is deleted)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    top = conn.execute("SELECT MAX(id) FROM messages").fetchone()
    return max(int(row[0]) if row else 0, int(top[0] or 0) if top else 0)


def _continue_ids(conn: sqlite3.Connection, last: int) -> None:
    """Make the next message id in `conn` come after `last`."""
    if conn.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'messages'", (last,)).rowcount == 0:
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('messages', ?)", (last,))


_WAL_HEADER, _WAL_FRAME_HEADER = 32, 24


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_pages(wal: Path) -> tuple[int, dict[int, bytes], int]:
    """(page size, {page number: content}, pages in the database) of the transactions committed in a
    write-ahead log, its checksums checked; (0, {}, 0) when it holds none."""
    try:
        data = wal.read_bytes()
    except OSError:
        return 0, {}, 0
    if len(data) < _WAL_HEADER or int.from_bytes(data[:4], "big") not in (0x377F0682, 0x377F0683):
        return 0, {}, 0
    big = bool(data[3] & 1)
    page = int.from_bytes(data[8:12], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return 0, {}, 0
    s0, s1 = _wal_checksum(data[:24], 0, 0, big)
    if (s0, s1) != (int.from_bytes(data[24:28], "big"), int.from_bytes(data[28:32], "big")):
        return 0, {}, 0
    salt = data[16:24]
    committed: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    db_pages = 0
    at = _WAL_HEADER
    while at + _WAL_FRAME_HEADER + page <= len(data):
        head = data[at:at + _WAL_FRAME_HEADER]
        body = data[at + _WAL_FRAME_HEADER:at + _WAL_FRAME_HEADER + page]
        if head[8:16] != salt:
            break  # a frame of an earlier generation of the log: the end of this one
        s0, s1 = _wal_checksum(head[:8] + body, s0, s1, big)
        if (s0, s1) != (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")):
            break  # torn by the power cut: what follows was never committed
        number = int.from_bytes(head[:4], "big")
        if number == 0:
            break  # pages count from 1: not a frame SQLite wrote
        pending[number] = body
        size = int.from_bytes(head[4:8], "big")
        if size:  # a commit frame: the transaction is whole
            committed.update(pending)
            pending.clear()
            db_pages = size
        at += _WAL_FRAME_HEADER + page
    return page, committed, db_pages


def _image(corrupt: Path) -> bytearray:
    """The quarantined database as it was last committed: its file, with the committed pages of its
    write-ahead log (moved aside with it) laid over it."""
    try:
        data = bytearray(corrupt.read_bytes())
    except OSError:
        data = bytearray()
    page, pages, db_pages = _wal_pages(Path(f"{corrupt}-wal"))
    if not pages or (len(data) >= 100 and int.from_bytes(data[16:18], "big") not in (page, page % 65536)):
        return data
    # about as many pages as the file and the log hold (and room for 1024 missing ones between them, read as empty
    # pages where the row-by-row copy stops): a log that claims a page number of billions, or 4 billion pages, is
    # not a reason to ask for terabytes
    db_pages = min(db_pages, len(data) // page + len(pages) + 1024)
    pages = {n: body for n, body in pages.items() if n <= db_pages}
    out = bytearray(max(len(data), db_pages * page))
    out[:len(data)] = data
    for n, body in pages.items():
        if n <= db_pages:
            out[(n - 1) * page:n * page] = body
    return out[:db_pages * page]


def _salvage(corrupt: Path, fresh: sqlite3.Connection) -> int:
    """Copy the messages SQLite can still read from a quarantined database (a truncated file often keeps most
    of them, and its write-ahead log the last ones) into the fresh one, oldest first; returns how many. Best
    effort: a file that is no database gives 0."""
    rows: list[Any] = []
    try:
        data = _image(corrupt)
    except MemoryError:
        log.error("could not salvage the corrupt outbox %s: it does not fit in memory", corrupt)
        return 0
    if data[:16] != b"SQLite format 3\x00" or len(data) < 100:
        return 0
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page
    pages = len(data) // page if page >= 512 else 0
    if not pages:
        return 0
    # a file cut short still says how many pages it had, and SQLite then refuses all of it: say what is left
    data[28:32] = pages.to_bytes(4, "big")
    data[18:20] = b"\x01\x01"  # read it as a rollback-journal database: a copy in memory has no WAL
    try:
        src = sqlite3.connect(":memory:")
        if not hasattr(src, "deserialize"):  # Python 3.10
            src.close()
            return 0
        try:
            src.deserialize(bytes(data[:pages * page]))
            cur = src.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY id")  # row by row, to the unreadable one
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.Error:
                    break  # the readable part ends here
                if row is None:
                    break
                rows.append(row)
        finally:
            src.close()
    except sqlite3.Error:
        pass
    good = [r for r in rows if isinstance(r[0], str) and isinstance(r[1], bytes) and r[2] in (0, 1, 2)]
    if not good:
        return 0
    try:
        fresh.execute("BEGIN IMMEDIATE")
        _insert(fresh, good)
        fresh.execute("COMMIT")
    except sqlite3.Error as e:
        with contextlib.suppress(sqlite3.Error):
            fresh.execute("ROLLBACK")
        log.error("could not salvage the corrupt outbox's messages: %s", e)
        return 0
    log.warning("salvaged %d message(s) from the corrupt outbox %s", len(good), corrupt)
    return len(good)


def _cannot_open(path: Path, e: Exception) -> OutboxError:
    """The error for an outbox SQLite cannot open, saying so when its disk is full (SQLite says "disk I/O error")."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return OutboxDiskFull(f"outbox {path}: cannot open: {e} (the disk holding it is full: {free} bytes free)")
    return OutboxError(f"outbox {path}: cannot open: {e}")


class Outbox:
    """The durable message queue. Thread-safe: one SQLite connection guarded by a lock."""

    def __init__(self, path: Path | str, max_messages: int = 20000, max_bytes: int = 256 * 1024 * 1024,
                 busy_timeout_s: float = 30.0, memory_reason: str | None = None):
        """`memory_reason`: keep the messages in memory instead of at `path`, for that reason (not durable, bounded
        by MEMORY_MAX_BYTES too), until `move_to_disk` succeeds."""
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.max_messages = max_messages
        self._max_bytes = max_bytes
        self.quarantined: Path | None = None
        self.quarantine_reason: str | None = None
        self.salvaged = 0  # messages read back from a quarantined database into the fresh one
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.memory_reason = memory_reason
        self.epoch = 0  # renumbering moves to disk: message ids taken before one do not name the same messages
        self._disk_copied = False  # in memory with a copy of what the database on disk still holds
        self._copied_upto = 0  # ...the copies being the rows with ids up to this one
        self.lost_at_close = 0  # messages that were only in memory when the outbox closed
        self._disk_retry_at = 0.0
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open(memory=True) if memory_reason is not None else self._open_file()
        row = self._db().execute("SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(created), 0) "
                                 "FROM messages").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])
        self._last_created = float(row[2])  # each put's rows share one `created`, unique to that put

    @property
    def max_bytes(self) -> int:
        """The bound on stored bytes (smaller while the messages are kept in memory)."""
        return self._max_bytes if self.memory_reason is None else min(self._max_bytes, MEMORY_MAX_BYTES)

    def _open_file(self) -> sqlite3.Connection:
        """A connection to the database at `path`, after moving a corrupt one aside (and saying so in
        `quarantined`); OutboxError (OutboxDiskFull on a full disk) when it cannot be opened."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reason = _check(self.path, self.busy_timeout_s)
        if reason is not None:
            self.quarantined = _quarantine(self.path)
            self.quarantine_reason = reason
            log.error("outbox %s is corrupt (%s); moved it to %s and started a fresh one",
                      self.path, reason, self.quarantined)
        try:
            conn = self._open(memory=False)
            if reason is not None and self.quarantined is not None:
                self.salvaged = _salvage(self.quarantined, conn)
            return conn
        except sqlite3.Error as e:
            if not _is_corruption(e):
                raise _cannot_open(self.path, e) from e
            # Corruption that only shows once the WAL is replayed: quarantine and start again, once.
            self.quarantined = _quarantine(self.path)
            self.quarantine_reason = str(e)
            log.error("outbox %s is corrupt (%s); moved it to %s and started a fresh one",
                      self.path, e, self.quarantined)
            try:
                conn = self._open(memory=False)
            except sqlite3.Error as e2:
                raise _cannot_open(self.path, e2) from e2
            self.salvaged = _salvage(self.quarantined, conn)
            return conn

    def _open(self, memory: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:" if memory else str(self.path), timeout=self.busy_timeout_s,
                               isolation_level=None, check_same_thread=False)
        try:
            if not memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("outbox %s: SQLite refused WAL mode (got %s)", self.path, mode)
                conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit: survives power loss
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dropped', 0)")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds the lock): committed on success, rolled back and raised as
        OutboxError("outbox PATH: cannot WHAT: ...") on any SQLite error."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise OutboxError(f"outbox {self.path}: cannot {what}: {e}") from e

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (quickly, from the writer's thread) after each committed `put`."""
        self._listeners.append(callback)

    def put(self, msgs: Sequence[OutMessage]) -> list[int]:
        """Commit `msgs` durably in one transaction (all or none); returns their row ids.

        If the bound is exceeded, the oldest puts are deleted whole (an alert with its snapshot) in the same
        transaction, and their messages counted.
        """
        if not msgs:
            return []
        with self._lock:
            now = self._last_created = max(time.time(), self._last_created + 1e-6)
            with self._transaction(f"store {len(msgs)} message(s)") as db:
                ids: list[int] = []
                added = 0
                for m in msgs:
                    size = len(m.topic.encode()) + len(m.payload) + _OVERHEAD
                    cur = db.execute(
                        "INSERT INTO messages(topic, payload, qos, retain, created, size) VALUES (?, ?, ?, ?, ?, ?)",
                        (m.topic, bytes(m.payload), m.qos, int(m.retain), now, size))
                    ids.append(int(cur.lastrowid or 0))
                    added += size
                count, total, dropped = self._trim(db, self._count + len(msgs), self._bytes + added,
                                                   self.max_bytes)
            self._count, self._bytes = count, total
        self._committed(dropped)
        return ids

    def _committed(self, dropped: int) -> None:
        """After a commit that added messages: say what the bound dropped, and wake the listeners."""
        if dropped:
            log.warning("outbox full (%d messages, %d bytes max): dropped the %d oldest message(s)",
                        self.max_messages, self.max_bytes, dropped)
        for cb in list(self._listeners):
            cb()

    def _trim(self, db: sqlite3.Connection, count: int, total: int, max_bytes: int) -> tuple[int, int, int]:
        """Delete the oldest puts, each whole (the messages that share its `created`: an alert and its snapshot go
        together, so no picture arrives without its alert, nor an alert naming a picture that never comes), until
        `count` and `total` bytes are within the bound; counts the messages as dropped (inside the caller's
        transaction). Returns the new count and bytes, and how many were dropped. The newest put is never dropped:
        one bigger than the bound alone (a frame with many alerts in a small bound) is kept whole, over it."""
        dropped = 0
        while count > self.max_messages or total > max_bytes:
            put: list[tuple[int, int]] = []  # (id, size) of the oldest put's messages: consecutive ids
            first: float | None = None
            newer = False
            rows = db.execute("SELECT id, created, size FROM messages ORDER BY id")
            for row_id, created, size in rows:
                if first is not None and created != first:
                    newer = True
                    break  # rows are read one by one: only this put's (and one more) are touched
                first = created
                put.append((int(row_id), int(size)))
            rows.close()
            if not newer:
                break  # the oldest put is the newest: keep it
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i, _ in put])
            count, total, dropped = count - len(put), total - sum(z for _, z in put), dropped + len(put)
        if dropped:
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
        return count, total, dropped

    def pending(self, limit: int = 100, after: int = 0) -> list[StoredMessage]:
        """Up to `limit` unacknowledged messages with row id > `after`, oldest first."""
        with self._lock:
            try:
                rows = self._db().execute(
                    "SELECT id, topic, payload, qos, retain, created FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after, max(0, limit))).fetchall()
            except sqlite3.Error as e:
                raise OutboxError(f"outbox {self.path}: cannot read: {e}") from e
        return [StoredMessage(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4]), float(r[5])) for r in rows]

    def ack(self, row_id: int) -> None:
        """The broker has the message: delete it. Unknown ids (already dropped or acked) are ignored."""
        self.ack_many((row_id,))

    def ack_many(self, row_ids: Iterable[int], epoch: int | None = None) -> None:
        """Delete these acknowledged messages; ignored when `epoch` (when the ids were read) is not the current
        one: the messages were moved to disk since, under new ids, and are sent again."""
        ids = list(row_ids)
        if not ids:
            return
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            with self._transaction("delete acknowledged messages") as db:
                removed, freed = 0, 0
                for i in ids:
                    row = db.execute("DELETE FROM messages WHERE id = ? RETURNING size", (i,)).fetchone()
                    if row is not None:
                        removed, freed = removed + 1, freed + int(row[0])
            self._count -= removed
            self._bytes -= freed

    def discard(self, row_id: int, reason: str, epoch: int | None = None) -> None:
        """Delete a message that can never be published (counted as dropped, and logged); `epoch` as in
        `ack_many`."""
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            with self._transaction(f"discard message {row_id}") as db:
                row = db.execute("DELETE FROM messages WHERE id = ? RETURNING size", (row_id,)).fetchone()
                if row is not None:
                    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped'")
            if row is not None:
                self._count -= 1
                self._bytes -= int(row[0])
        if row is not None:
            log.error("outbox message %d discarded: %s", row_id, reason)

    def contains(self, row_ids: Iterable[int]) -> set[int]:
        """Which of `row_ids` are still stored (not acknowledged, dropped or discarded)."""
        ids = list(row_ids)
        if not ids:
            return set()
        with self._lock:
            db = self._db()
            found: set[int] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(int(r[0]) for r in db.execute(f"SELECT id FROM messages WHERE id IN ({marks})", chunk))
        return found

    @property
    def quarantine_note(self) -> str | None:
        """What a status says while the database found corrupt at start-up lies moved aside, or None."""
        if self.quarantined is None:
            return None
        return f"outbox database was corrupt at start-up ({self.quarantine_reason}); moved to {self.quarantined}"

    def depth(self) -> int:
        """Messages waiting for their PUBACK."""
        with self._lock:
            return self._count

    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def dropped(self) -> int:
        """Messages dropped because of the bound, since the database was created (survives restarts)."""
        with self._lock:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def move_to_memory(self, reason: str) -> bool:
        """The disk refuses writes (it is full, or failing): keep going in memory, bounded, with a copy of every
        message the database holds (reading still works), so alerts keep flowing to the broker; `move_to_disk` brings
        them back once there is room. The messages keep their ids both ways, so `epoch` stays. False if the database
        cannot even be read (the caller then keeps its messages itself)."""
        with self._lock:
            if self.memory_reason is not None:
                return True
            disk = self._db()
            try:
                rows = _rows(disk, ids=True)
                lost = disk.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
                memory = self._open(memory=True)
            except sqlite3.Error as e:
                log.error("outbox %s cannot move to memory either: %s", self.path, e)
                return False
            # the same ids: a sender's messages in flight and its place in the queue stay valid (no new epoch).
            # New messages must also come after every id the disk ever gave, delivered ones included: a sender
            # reads from its place onwards, so a new message under a lower id would wait for a reconnect.
            memory.execute("BEGIN")
            _insert(memory, rows, ids=True)
            _continue_ids(memory, _last_id(disk))
            memory.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (int(lost[0]) if lost else 0,))
            count, total, dropped = self._trim(memory, len(rows), sum(int(r[6]) for r in rows),
                                               min(self._max_bytes, MEMORY_MAX_BYTES))
            memory.execute("COMMIT")
            with contextlib.suppress(sqlite3.Error):
                disk.close()
            self._conn = memory
            self._count, self._bytes = count, total
            self.memory_reason = reason
            self._disk_copied = True
            self._copied_upto = int(rows[-1][0]) if rows else 0
            self._disk_retry_at = time.monotonic() + DISK_RETRY_S
        log.error("%s; the outbox carries on in memory (at most %d bytes) with its %d message(s), and moves back "
                  "to disk once there is room", reason, self.max_bytes, count)
        if dropped:
            log.warning("outbox in memory: dropped the %d oldest message(s) to stay within %d bytes", dropped,
                        self.max_bytes)
        return True

    def move_to_disk(self, force: bool = False) -> bool:
        """An outbox kept in memory: once the disk has room, move every message (and the dropped count) to the
        database at `path` in one transaction and keep going there; True when the outbox is on disk.

        Tries at most once every DISK_RETRY_S unless `force`. After `move_to_memory` the messages replace the
        database's own (which they started as a copy of), ids and all. An outbox that started in memory puts its
        messages after any the database already held (an earlier run's, sent from now on too) under new ids, and
        `epoch` goes up, so a sender that read ids before
        drops them and reads again (the messages it had in flight are sent twice: at least once, as after a
        reconnect)."""
        if self.memory_reason is None:
            return True
        now = time.monotonic()
        if not force and now < self._disk_retry_at:
            return False
        self._disk_retry_at = now + DISK_RETRY_S
        with self._lock:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                return False
            if free < self._bytes + _MIN_FREE:
                return False
            memory = self._db()
            rows: list[Any] = []
            try:
                disk = self._open_file()
            except (OutboxError, OSError) as e:
                log.debug("outbox stays in memory: %s", e)
                return False
            try:
                disk.execute("BEGIN IMMEDIATE")
                if self._disk_copied:  # memory started as a copy of the disk's rows and count: it replaces them,
                    disk.execute("DELETE FROM messages")  # ids and all
                    disk.execute("UPDATE meta SET value = 0 WHERE key = 'dropped'")
                # else after what the disk already held (an earlier run's), under new ids
                rows = _rows(memory, ids=self._disk_copied)
                _insert(disk, rows, ids=self._disk_copied)
                if self._disk_copied:  # as in `move_to_memory`: new ids come after every id memory gave
                    _continue_ids(disk, _last_id(memory))
                lost = memory.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
                disk.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (int(lost[0]),))
                row = disk.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
                count, total, dropped = self._trim(disk, int(row[0]), int(row[1]), self._max_bytes)
                disk.execute("COMMIT")
            except sqlite3.Error as e:
                disk.close()  # closing rolls the transaction back
                log.warning("outbox stays in memory: cannot move %d message(s) to %s: %s", len(rows), self.path, e)
                return False
            memory.close()
            self._conn = disk
            self._count, self._bytes = count, total
            self.memory_reason = None
            if not self._disk_copied:
                self.epoch += 1
            self._disk_copied = False
        log.warning("the outbox is on disk again at %s: moved %d message(s) there from memory (%d queued in all)",
                    self.path, len(rows), count)
        self._committed(dropped)
        return True

    def close(self) -> None:
        """Close the database; an outbox still in memory tries the disk first, and says what it loses."""
        if self.memory_reason is not None and self._conn is not None and not self.move_to_disk(force=True):
            with self._lock:  # the copies of what the disk still holds are not lost: they are sent at the next start
                after = self._copied_upto if self._disk_copied else 0
                lost = int(self._db().execute("SELECT COUNT(*) FROM messages WHERE id > ?", (after,)).fetchone()[0])
            if lost:
                self.lost_at_close = lost
                log.error("%d outbox message(s) lost at stop: they were kept in memory (%s)", lost,
                          self.memory_reason)
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
