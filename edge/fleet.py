"""What a fleet's retained `status` and `model/state` messages (and any `stats` seen) say about each cart, as rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.payloads import decode
from edge.topics import parse_topic

# problems first: a cart that is away, one that works with trouble, one that never said how it is, then the rest
STATE_ORDER = {"offline": 0, "degraded": 1, None: 2, "online": 3}
OTA_PROBLEMS = ("failed", "rejected", "rolled_back")


@dataclass
class Cart:
    """One cart as its last messages describe it (None: not said yet)."""

    store: str
    device: str
    state: str | None = None  # online | degraded | offline, from the retained `status`
    reason: str | None = None
    software: str | None = None  # the shelfscout version the cart runs
    status_ts: float | None = None  # when that status was made (a last will's: when its connection began)
    model: str | None = None  # "name vN", from `model/state` (else `status`)
    ota_state: str | None = None
    ota_version: int | None = None  # the release the OTA state is about
    ota_error: str | None = None
    fps: float | None = None  # from a `stats` message, when one came while listening
    outbox_depth: int | None = None
    cpu_temp_c: float | None = None

    @property
    def name(self) -> str:
        return f"{self.store}/{self.device}"

    @property
    def ota_problem(self) -> bool:
        return self.ota_state in OTA_PROBLEMS

    def ota_text(self) -> str:
        if self.ota_state is None:
            return "-"
        text = self.ota_state + (f" v{self.ota_version}" if self.ota_version is not None else "")
        return text + (f": {self.ota_error}" if self.ota_error and self.ota_problem else "")


class Fleet:
    """Collects the carts' messages under `prefix`; `handle(topic, payload)` per message (any thread's, one at a
    time). Messages that are not JSON objects are counted in `invalid` and otherwise ignored."""

    def __init__(self, prefix: str = "shelfscout"):
        self.prefix = prefix
        self.carts: dict[tuple[str, str], Cart] = {}
        self.invalid = 0

    def handle(self, topic: str, payload: bytes) -> None:
        parts = parse_topic(topic, self.prefix)
        if parts is None or parts.kind not in ("status", "model/state", "stats"):
            return
        if not payload:  # a retained message cleared while listening (`mosquitto_pub -r -n`): a retired cart
            if parts.kind == "status":
                self.carts.pop((parts.store, parts.device), None)
            return
        try:
            data = decode(payload)
        except ValueError:
            self.invalid += 1
            return
        cart = self.carts.setdefault((parts.store, parts.device), Cart(parts.store, parts.device))
        if parts.kind == "status":
            cart.state, cart.reason = _text(data.get("state")), _text(data.get("reason"))
            cart.software, cart.status_ts = _text(data.get("version")), _time(data.get("ts"))
            cart.model = cart.model or _model(data.get("model"))
        elif parts.kind == "model/state":
            cart.model = _model(data.get("model")) or cart.model
            got = data.get("ota")
            ota: dict[str, Any] = got if isinstance(got, dict) else {}
            cart.ota_state, cart.ota_error = _text(ota.get("state")), _text(ota.get("error"))
            version = ota.get("version")
            cart.ota_version = version if isinstance(version, int) else None
        else:
            fps, depth, temp = data.get("fps"), data.get("outbox_depth"), data.get("cpu_temp_c")
            cart.fps = float(fps) if isinstance(fps, (int, float)) else None
            cart.outbox_depth = depth if isinstance(depth, int) else None
            cart.cpu_temp_c = float(temp) if isinstance(temp, (int, float)) else None

    def rows(self) -> list[Cart]:
        """Every cart, problems first (offline, degraded, no status, then online), by store and device."""
        return sorted(self.carts.values(), key=lambda c: (STATE_ORDER.get(c.state, 2), not c.ota_problem,
                                                          c.store, c.device))

    def summary(self) -> str:
        carts = list(self.carts.values())
        if not carts:
            return "no carts (no retained status under this prefix)"
        states = Counter(c.state or "no status" for c in carts)
        models = Counter(c.model or "no model" for c in carts)
        text = f"{len(carts)} cart(s): " + ", ".join(
            f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: STATE_ORDER.get(kv[0], 2)))
        text += "; models: " + ", ".join(f"{m} on {n}" for m, n in models.most_common())
        failed = sum(c.ota_problem for c in carts)
        return text + (f"; {failed} with a failed or rolled-back update" if failed else "")

    def healthy(self) -> bool:
        """Every cart online and no update failed (what `shelfscout fleet` exits 0 on)."""
        return bool(self.carts) and all(c.state == "online" and not c.ota_problem for c in self.carts.values())


def render(carts: list[Cart], now: float, stats: bool = False) -> str:
    """A plain-text table, one line per cart; `stats` adds the last stats' columns."""
    head = ["CART", "STATE", "FOR", "MODEL", "OTA"] + (["FPS", "OUTBOX", "TEMP"] if stats else []) + ["REASON"]
    lines = [head]
    for c in carts:
        row = [c.name, c.state or "?", _age(now - c.status_ts) if c.status_ts is not None else "-",
               c.model or "-", c.ota_text()]
        if stats:
            row += ["-" if c.fps is None else f"{c.fps:.1f}", "-" if c.outbox_depth is None else str(c.outbox_depth),
                    "-" if c.cpu_temp_c is None else f"{c.cpu_temp_c:.0f}C"]
        lines.append(row + [c.reason or ""])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
                     for r in lines).rstrip() + "\n"


def _age(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _time(v: Any) -> float | None:
    if not isinstance(v, str):
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _model(v: Any) -> str | None:
    if isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("version"), int):
        return f"{v['name']} v{v['version']}"
    return None
