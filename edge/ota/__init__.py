"""Over-the-air model updates that cannot brick a cart: signed releases, safe download, smoke test, atomic switch."""

from edge.ota.errors import OtaError
from edge.ota.release import Release, VerifiedRelease, sign_release, verify_release
from edge.ota.updater import Outcome, Updater

__all__ = ["OtaError", "Outcome", "Release", "Updater", "VerifiedRelease", "sign_release", "verify_release"]
