"""Whether a verified release applies to this device: expiry, downgrade/replay, minimum app version, rollout."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from edge.clock import clock_problem
from edge.ota.errors import OtaError
from edge.ota.release import VerifiedRelease
from edge.ota.state import UpdaterMemory


@dataclass(frozen=True)
class Decision:
    """`apply` is False for a release that is fine but not for us now (already running, outside the rollout)."""

    apply: bool
    reason: str
    code: str | None = None  # the skip's machine code: `outside-rollout`, `replay`
    report: bool = True  # a coded skip goes on `model/state`; a replay does not (see `decide`)


def rollout_bucket(device_id: str, release_name: str) -> float:
    """This device's stable place in [0, 1) for a model line: sha256(device_id + name), first 8 bytes."""
    h = hashlib.sha256((device_id + release_name).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def parse_app_version(text: str) -> tuple[int, ...]:
    """`0.1.0` → (0, 1, 0); a suffix after the numbers (`0.2.0rc1`, `0.2.0+local`) is ignored."""
    parts: list[int] = []
    for p in text.split("."):
        digits = ""
        for c in p:
            if not c.isdigit():
                break
            digits += c
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(p):
            break
    if not parts:
        raise ValueError(f"{text!r} is not a version")
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def decide(vr: VerifiedRelease, state: UpdaterMemory, device_id: str, app_version: str, now: datetime,
           active_sha256: str | None, running_version: int | None = None) -> Decision:
    """Apply, skip (already running, a replay, outside the rollout), or refuse (OtaError: `clock-not-set`,
    `expired`, `downgrade`, `conflict`, `failed-before`, `app-too-old`). `running_version`: the model running now, which a release must not be older than even when no
    release was ever accepted (a cart on its built-in model)."""
    r = vr.release
    if active_sha256 == r.sha256:
        return Decision(False, f"{r.name} v{r.version} is already running")
    unset = clock_problem(now.timestamp())
    if unset is not None:  # a release past its expiry would pass for fresh: wait for NTP (retried)
        raise OtaError("clock-not-set", f"release {r.name} v{r.version} cannot be checked for expiry: {unset}")
    if now >= r.expires:
        raise OtaError("expired", f"release {r.name} v{r.version} expired at {r.not_after}")
    if r.sha256 in state.failed:
        why = state.failed_why.get(r.sha256)
        raise OtaError("failed-before", f"release {r.name} v{r.version} ({r.sha256[:12]}) failed on this device "
                                        f"before{f' ({why})' if why else ''}; publish a new version")
    if r.version < state.highest_version:
        if vr.digest in state.seen:
            # an announcement this cart took before and has since moved past, still retained on one of its release
            # topics (the fleet's older release beside the store's newer one): refused, but not news for
            # `model/state`, which would otherwise say so after every restart of a healthy cart
            return Decision(False, f"release {r.name} v{r.version} was seen before and v{state.highest_version} "
                                   "is newer; refusing the replayed announcement", "replay", report=False)
        raise OtaError("downgrade", f"release v{r.version} is older than v{state.highest_version}, the highest "
                                    "accepted on this device")
    if running_version is not None and r.version < running_version:
        raise OtaError("downgrade", f"release v{r.version} is older than v{running_version}, the model this device "
                                    "runs")
    if r.version == state.highest_version and state.highest_sha256 and r.sha256 != state.highest_sha256:
        raise OtaError("conflict", f"release v{r.version} names bundle {r.sha256[:12]}, but v{r.version} was "
                                   f"already accepted as {state.highest_sha256[:12]}; versions never get reused")
    if r.min_app_version is not None and parse_app_version(app_version) < parse_app_version(r.min_app_version):
        raise OtaError("app-too-old", f"release needs shelfscout >= {r.min_app_version}, this is {app_version}")
    bucket = rollout_bucket(device_id, r.name)
    if bucket >= r.rollout:
        return Decision(False, f"outside the rollout ({bucket:.3f} >= {r.rollout:g})", "outside-rollout")
    return Decision(True, "applies")
