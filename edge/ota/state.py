"""The updater's durable memory in `models_dir/state.json`: highest version, seen/failed releases, probation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.atomic import write_atomic

SCHEMA = "shelfscout.ota-state/1"
MAX_SEEN = 64
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class Probation:
    """A model that was switched in and has not yet proved itself. `starts` counts the service's starts since, in
    the boot `boot_id` (a crash restarts the service in the same boot; a power cut starts a new one), and `boots` the
    new boots since."""

    dir: str
    version: int
    sha256: str
    starts: int = 0
    boot_id: str = ""
    boots: int = 0

    def started(self, boot: str, max_starts: int, max_boots: int) -> tuple[Probation, str | None]:
        """This record after one more service start in boot `boot` ("" when unknown: the same boot), and why the
        model must go when this start reaches `max_starts` in one boot (crashes) or `max_boots` new boots."""
        if boot and self.boot_id and boot != self.boot_id:  # a power cut or a reboot: the count of starts restarts
            after = replace(self, starts=0, boot_id=boot, boots=self.boots + 1)
            return after, f"the device rebooted {after.boots} times" if after.boots >= max_boots else None
        after = replace(self, starts=self.starts + 1, boot_id=boot or self.boot_id)
        return after, f"the service restarted {after.starts} times" if after.starts >= max_starts else None


@dataclass(frozen=True)
class UpdaterMemory:
    """What the updater remembers across restarts (not the `ota` report of model/state: that is payloads.OtaState)."""

    highest_version: int = -1
    highest_sha256: str = ""
    seen: tuple[str, ...] = ()  # digests of verified release announcements (replay detection)
    failed: tuple[str, ...] = ()  # bundle sha256s that failed smoke test or probation on this device
    failed_why: dict[str, str] = field(default_factory=dict)  # sha256 -> "code: message" of that failure
    probation: Probation | None = None
    last: dict[str, Any] = field(default_factory=dict)  # the last `ota` report, restored after a restart

    def with_seen(self, digest: str) -> UpdaterMemory:
        if digest in self.seen:
            return self
        return replace(self, seen=(*self.seen, digest)[-MAX_SEEN:])

    def with_failed(self, sha256: str, why: str = "") -> UpdaterMemory:
        """Marked as failed on this device, with why (kept for the first failure; a refusal repeats it)."""
        if sha256 in self.failed:
            return self
        failed = (*self.failed, sha256)[-MAX_SEEN:]
        reasons = {k: v for k, v in self.failed_why.items() if k in failed}
        if why:
            reasons[sha256] = why
        return replace(self, failed=failed, failed_why=reasons)


def read_boot_id() -> str:
    """The kernel's id of this boot (Linux), "" where there is none: every start then counts as the same boot."""
    try:
        return Path(BOOT_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


class StateStore:
    """Reads and atomically rewrites state.json (temp file, fsync, rename, fsync of the folder)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> UpdaterMemory:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return UpdaterMemory()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            # The file is only ever replaced by rename, so this is outside damage. Refuse to forget the highest
            # version silently: the caller reports it, and a fresh state can only re-accept signed releases.
            raise ValueError(f"{self.path} is unreadable: {e}") from e
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise ValueError(f"{self.path} is not a {SCHEMA} file")
        p = raw.get("probation")
        return UpdaterMemory(
            highest_version=int(raw.get("highest_version", -1)),
            highest_sha256=str(raw.get("highest_sha256", "")),
            seen=tuple(str(s) for s in raw.get("seen", ())),
            failed=tuple(str(s) for s in raw.get("failed", ())),
            failed_why={str(k): str(v) for k, v in (raw.get("failed_why") or {}).items()},
            probation=Probation(str(p["dir"]), int(p["version"]), str(p["sha256"]), int(p.get("starts", 0)),
                                str(p.get("boot_id", "")), int(p.get("boots", 0)))
            if isinstance(p, dict) else None,
            last=dict(raw.get("last") or {}),
        )

    def save(self, state: UpdaterMemory) -> None:
        d = asdict(state)
        d["schema"] = SCHEMA
        write_atomic(self.path, (json.dumps(d, indent=1, sort_keys=True) + "\n").encode())
