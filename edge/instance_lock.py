"""One service per state folder: an exclusive `flock` on FOLDER/shelfscout.lock, held for the service's life.

Two services on one folder would share an outbox (every alert sent twice), fight over the OTA state and, with the
same MQTT client id, make the broker drop each one whenever the other reconnects. The kernel releases a `flock`
when its process dies, however it dies (SIGKILL, power cut, OOM), so a crash never leaves a stale lock behind; the
file itself stays and only says which process last held it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "shelfscout.lock"


class InstanceLockError(RuntimeError):
    """The state folder is in use by another process, or the lock file cannot be made: one line for the operator."""


@dataclass
class InstanceLock:
    """A held lock; `release` (or the process's exit) frees it."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def holder_pid(path: Path) -> int | None:
    """The process id the last holder wrote into the lock file, if it is readable."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire(folder: Path | str, what: str = "state folder") -> InstanceLock:
    """Take FOLDER's lock (creating the folder) or raise InstanceLockError naming the process that holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InstanceLockError(f"cannot create the lock {path} in the {what}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InstanceLockError(f"cannot lock {path}: {e.strerror}") from None
        pid = holder_pid(path)
        who = f"pid {pid}" if pid is not None else "another process"
        raise InstanceLockError(
            f"another shelfscout service ({who}) is using the {what} {folder} (lock {path}); stop it first "
            "(systemctl stop shelfscout) or give this one its own outbox.path and ota.models_dir"
        ) from None
    try:  # who holds it, for the next one's error message; the lock itself is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:  # a full disk: the lock holds all the same
        pass
    return InstanceLock(path, fd)
