"""Signed release manifests (`shelfscout.release/1`): build, sign, parse and verify them.

A release announces one bundle: where to get it (`url`), exactly what it is (`sha256`, `size`), until when the
announcement may be trusted (`not_after`), who should take it (`rollout`, `min_app_version`). The published message
is `{"release": {...}, "sig": base64(ed25519(canonical_json(release))), "keyid": "<16 hex>"}`. The canonical JSON
is `json.dumps(release, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` in UTF-8, and `keyid` is the
first 16 hex digits of the sha256 of the raw 32-byte public key (as in TUF, a key is named by its own hash).

Why not python-tuf: TUF protects a *repository* of many targets with four roles (root, targets, snapshot,
timestamp), each with its own metadata file, expiry, threshold signatures, and a fixed HTTP layout the client
walks. A cart takes one model at a time from a retained MQTT message, the ML engineer has one signing key, and the
device must stay light. So the trust chain here is one signed release that pins the bundle by sha256 and size,
and a signed bundle manifest. The TUF attacks that apply are covered and tested (tests/test_ota_release.py):
rollback/replay of an older release (highest version persisted with fsync), freeze (`not_after`),
mix-and-match (the release pins the bundle's sha256 and the bundle's name/version must match the release),
endless data (the download stops at the signed size; messages are bounded), arbitrary software (two signatures,
keys only from the configured folder, no keys → refuse), key rotation (every `*.pub` in `ota.keys_dir` is
trusted; removing a file revokes that key). Not covered: threshold signatures and a signed root of keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.ota.errors import OtaError

SCHEMA = "shelfscout.release/1"
MAX_MESSAGE_BYTES = 64 * 1024
URL_SCHEMES = ("https://", "http://", "file://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_APP_VERSION = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class Release:
    """One model release, as signed."""

    name: str
    version: int
    url: str
    sha256: str
    size: int
    not_after: str  # RFC 3339, UTC
    rollout: float = 1.0  # share of the fleet, 0..1, chosen by a hash of the device id
    min_app_version: str | None = None
    schema: str = SCHEMA

    def canonical_bytes(self) -> bytes:
        return canonical_json(asdict(self))

    @property
    def expires(self) -> datetime:
        return parse_rfc3339(self.not_after)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Release:
        """Validate and build; raises OtaError(`malformed`, ...) naming the bad field."""

        def bad(field: str, why: str) -> OtaError:
            return OtaError("malformed", f"release.{field}: {why}")

        if not isinstance(d, Mapping):
            raise OtaError("malformed", "release is not a JSON object")
        if d.get("schema") != SCHEMA:
            raise bad("schema", f"is {d.get('schema')!r}, expected {SCHEMA!r}")
        known = {"name", "version", "url", "sha256", "size", "not_after", "rollout", "min_app_version", "schema"}
        extra = set(d) - known
        if extra:
            raise bad(sorted(extra)[0], "unknown field")
        name = d.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise bad("name", "must be a non-empty string without '/'")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise bad("version", "must be a non-negative integer")
        url = d.get("url")
        if not isinstance(url, str) or not url.startswith(URL_SCHEMES):
            raise bad("url", f"must start with one of {', '.join(URL_SCHEMES)}")
        sha = d.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise bad("sha256", "must be 64 lowercase hex digits")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise bad("size", "must be a positive integer")
        not_after = d.get("not_after")
        if not isinstance(not_after, str):
            raise bad("not_after", "must be an RFC 3339 time")
        try:
            parse_rfc3339(not_after)
        except ValueError as e:
            raise bad("not_after", str(e)) from None
        rollout = d.get("rollout", 1.0)
        if isinstance(rollout, bool) or not isinstance(rollout, (int, float)) or not 0.0 <= rollout <= 1.0:
            raise bad("rollout", "must be a number between 0 and 1")
        mav = d.get("min_app_version")
        if mav is not None and (not isinstance(mav, str) or not _APP_VERSION.match(mav)):
            raise bad("min_app_version", "must be a dotted version such as 0.2.0")
        return Release(name=name, version=version, url=url, sha256=sha, size=size, not_after=not_after,
                       rollout=float(rollout), min_app_version=mav)


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature verified with a trusted key."""

    release: Release
    keyid: str
    key_name: str  # the *.pub file that verified it
    digest: str  # sha256 of the canonical signed bytes: names this exact announcement (replay detection)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time with an explicit offset (`Z` or `+hh:mm`), as an aware datetime."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return t


def format_rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def keyid(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_release(release: Release, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The message to publish: the release, its signature and the signing key's id."""
    Release.from_dict(asdict(release))  # refuse to sign something the device would refuse to parse
    sig = private_key.sign(release.canonical_bytes())
    return {"release": asdict(release), "sig": base64.b64encode(sig).decode("ascii"),
            "keyid": keyid(private_key.public_key())}


def verify_release(payload: bytes, keys: Mapping[str, Ed25519PublicKey]) -> VerifiedRelease:
    """Parse a published release message and check its signature against the trusted keys.

    Raises OtaError with code `no-keys`, `too-large`, `malformed`, `unsigned-release`, `unknown-key` or
    `bad-signature`.
    """
    if not keys:
        raise OtaError("no-keys", "no trusted keys are configured (ota.keys_dir is empty); refusing every release")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise OtaError("too-large", f"release message is {len(payload)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OtaError("malformed", f"release message is not UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("release"), dict):
        raise OtaError("malformed", "release message has no 'release' object")
    release = Release.from_dict(msg["release"])
    sig_b64 = msg.get("sig")
    if not sig_b64:
        raise OtaError("unsigned-release", f"release {_shown(release.name)} v{release.version} carries no signature")
    try:
        sig = base64.b64decode(str(sig_b64), validate=True)
    except (binascii.Error, ValueError):
        raise OtaError("bad-signature", "release signature is not base64") from None
    signed = release.canonical_bytes()
    claim = f"release {_shown(release.name)} v{release.version} (as it claims; not verified)"
    by_id = {keyid(k): (name, k) for name, k in keys.items()}
    kid = msg.get("keyid")
    if kid is not None:
        if kid not in by_id:
            raise OtaError("unknown-key", f"{claim} is signed by key {_shown(kid)}, which is not trusted "
                                          f"(trusted: {', '.join(sorted(by_id))})")
        candidates = [(kid, *by_id[kid])]
    else:
        candidates = [(i, n, k) for i, (n, k) in by_id.items()]
    for kid_, name, key in candidates:
        try:
            key.verify(sig, signed)
        except InvalidSignature:
            continue
        return VerifiedRelease(release, kid_, name, hashlib.sha256(signed + sig).hexdigest())
    if kid is None:
        raise OtaError("unknown-key", f"{claim}: its signature does not verify with any trusted key")
    raise OtaError("bad-signature", f"{claim}: its signature does not verify with key {_shown(kid)} (tampered?)")


def _shown(value: object) -> str:
    """An unverified field as messages show it: quoted, control characters escaped, at most 64 characters (what an
    attacker writes goes into logs and model/state)."""
    text = str(value)
    return repr(text[:64] + ("..." if len(text) > 64 else ""))
