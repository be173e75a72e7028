"""The one error type of the OTA updater: a stable machine code, a one-line reason, and whether a retry may help."""

from __future__ import annotations

# Codes whose cause is the environment (network, disk), not the release: a later attempt may succeed.
TRANSIENT_CODES = frozenset({"truncated", "stalled", "http-error", "disk-full", "io-error", "network",
                             "clock-not-set", "smoke-killed"})


class OtaError(ValueError):
    """An update step refused or failed; `code` names the case (e.g. `expired`, `hash-mismatch`)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES
