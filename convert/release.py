"""Release tooling for the ML engineer: key pairs, signed release manifests for a bundle, retained publishing.

No TensorFlow here: a release only reads the bundle, hashes it and signs. The release format and its verification
live in `edge.ota.release`, shared with the device.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.bundle import MANIFEST, SIGNATURE, BundleError, load_private_key, read_bundle, write_tar
from edge.ota.release import Release, format_rfc3339, keyid, sign_release

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 90m or 3600")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def resign_bundle(path: Path, key_path: Path) -> None:
    """Replace the bundle's `manifest.sig` with a signature by `key_path` over the same manifest bytes."""
    key = load_private_key(key_path)
    members = read_bundle(path, None, allow_unsigned=True).members  # hashes must hold before we vouch for it
    contents = {MANIFEST: members[MANIFEST], SIGNATURE: key.sign(members[MANIFEST])}
    contents.update({k: v for k, v in members.items() if k not in (MANIFEST, SIGNATURE)})
    write_tar(path, contents)


@dataclass(frozen=True)
class ReleaseBuild:
    message: dict[str, Any]
    release: Release
    bundle_signed_by: str | None = None  # the public key file the bundle verified with


def make_release(bundle: Path, key_path: Path, url: str, expires_in: timedelta, rollout: float = 1.0,
                 min_app_version: str | None = None, resign: bool = False,
                 now: datetime | None = None, trusted: Mapping[str, Ed25519PublicKey] | None = None
                 ) -> ReleaseBuild:
    """Check that the bundle verifies with the key's public half or one of `trusted` (the public keys the carts
    trust, such as the project's for its own bundles; re-signing first if asked) and sign a release.

    A `url` ending in `/` gets the bundle's file name appended.
    """
    bundle = Path(bundle)
    if bundle.is_dir():
        raise BundleError(f"{bundle} is a folder; a release ships one bundle file (.bundle tar)")
    key = load_private_key(key_path)
    if resign:
        resign_bundle(bundle, key_path)
    pub = {**(trusted or {}), f"{Path(key_path).stem}.pub": key.public_key()}
    try:
        b = read_bundle(bundle, pub)
    except BundleError as e:
        if "signature" not in str(e) and "unsigned" not in str(e):
            raise  # damaged (a hash, the manifest): no key makes it good
        raise BundleError(f"{e} (is it signed by {key_path}? pass --resign to sign it with this key, or --keys "
                          "with the folder of public keys your carts trust, such as models/keys for the "
                          "project's own bundles)") from None
    if url.endswith("/"):
        url += bundle.name
    data = bundle.read_bytes()
    now = now or datetime.now(timezone.utc)
    release = Release(
        name=b.manifest.name,
        version=b.manifest.version,
        url=url,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        not_after=format_rfc3339(now + expires_in),
        rollout=float(rollout),
        min_app_version=min_app_version or b.manifest.min_app_version,
    )
    return ReleaseBuild(sign_release(release, key), release, b.signed_by)


def release_topic(store: str | None, prefix: str = "shelfscout") -> str:
    from edge.topics import release_topic as topic

    return topic(store, prefix)


def publish_release(payload: bytes, broker_url: str, topic: str, *, ca_file: str | None = None,
                    cert_file: str | None = None, key_file: str | None = None,
                    username: str | None = None, password: str | None = None, timeout_s: float = 15.0,
                    clear: bool = False) -> None:
    """Publish (or with `clear`, remove) a retained release with QoS 1 and wait for the broker's PUBACK.

    `mqtts://` verifies the broker with `ca_file` (or the system CAs) and logs in with the client certificate
    `cert_file`/`key_file` when given (the production broker requires one: CN `release-publisher`). MQTT 5 first,
    so a release the broker's ACL refuses is an error rather than silently dropped; MQTT 3.1.1 if the broker
    refuses MQTT 5. File problems raise edge.config.ConfigError naming the option; broker problems
    ConnectionError with the reason.
    """
    from edge.broker import TlsKeys, tls_context
    from edge.broker_url import BrokerAddress

    addr = BrokerAddress.parse(broker_url)
    ctx: ssl.SSLContext | None = None
    if addr.tls:
        ctx = tls_context(ca_file or "", cert_file or "", key_file or "", TlsKeys("--ca", "--cert-file", "--key-file"))
    elif cert_file or key_file or ca_file:
        raise ValueError(f"--ca/--cert-file/--key-file need an mqtts:// broker URL, not {broker_url}")
    try:
        _publish_once(payload, addr, topic, ctx, username or addr.username, password, timeout_s, clear, mqtt5=True)
    except _Mqtt5Refused:
        _publish_once(payload, addr, topic, ctx, username or addr.username, password, timeout_s, clear, mqtt5=False)


class _Mqtt5Refused(Exception):
    pass


def _publish_once(payload: bytes, addr: Any, topic: str, ctx: ssl.SSLContext | None, username: str | None,
                  password: str | None, timeout_s: float, clear: bool, mqtt5: bool) -> None:
    import paho.mqtt.client as mqtt

    from edge.broker import ssl_reason

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="",
                         protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
    if ctx is not None:
        client.tls_set_context(ctx)
    if username:
        client.username_pw_set(username, password)
    connected = threading.Event()
    acked = threading.Event()
    failure: list[str] = []
    refused: list[str] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            failure.append(str(reason))
        connected.set()

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if not connected.is_set():
            failure.append(f"the broker closed the connection before answering ({reason})")
            connected.set()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        acked.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    try:
        client.connect(addr.host, addr.port, keepalive=30)
    except ssl.SSLError as e:
        raise ConnectionError(f"TLS handshake with {addr} failed: {ssl_reason(e)}") from None
    except OSError as e:
        raise ConnectionError(f"cannot reach the broker at {addr}: {e.strerror or e}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise ConnectionError(f"no CONNACK from {addr} within {timeout_s:g} s")
        if failure:
            if mqtt5 and "unsupported protocol" in failure[0].lower():
                raise _Mqtt5Refused(failure[0])
            why = failure[0]
            if ctx is not None and "before answering" in why:
                why += "; does the broker require a client certificate (--cert-file/--key-file)?"
            raise ConnectionError(f"the broker refused the connection: {why}")
        client.publish(topic, b"" if clear else payload, qos=1, retain=True)
        if not acked.wait(timeout_s):
            raise ConnectionError(f"the broker did not acknowledge the release within {timeout_s:g} s")
        if refused:
            raise ConnectionError(f"the broker refused the release on {topic}: {refused[0]} "
                                  "(check the broker's ACL for this identity)")
    finally:
        client.disconnect()
        client.loop_stop()


def message_bytes(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, indent=1, sort_keys=True) + "\n").encode("utf-8")


def key_id_of(key_path: Path) -> str:
    return keyid(load_private_key(key_path).public_key())
