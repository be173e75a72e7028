"""The `keygen`, `release` and `publish` subcommands: sign model releases and put them on the fleet's topics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli import CliError


def register(sub: Any) -> None:
    k = sub.add_parser("keygen", help="create an ed25519 signing key pair (PREFIX.key, 0600, and PREFIX.pub)",
                       description="Create an ed25519 key pair for signing bundles and releases. Copy PREFIX.pub "
                                   "into each device's ota.keys_dir; keep PREFIX.key off the devices.")
    k.add_argument("prefix", type=Path, metavar="OUT_PREFIX")
    k.add_argument("--force", action="store_true", help="overwrite existing files")
    k.set_defaults(func=_keygen)

    r = sub.add_parser("release", help="sign a release manifest for a bundle",
                       description="Write a signed release (shelfscout.release/1) announcing BUNDLE at URL: name, "
                                   "version, sha256, size, expiry, rollout share and minimum app version.")
    r.add_argument("bundle", type=Path, metavar="BUNDLE")
    r.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM) from `shelfscout keygen`")
    r.add_argument("--url", required=True,
                   help="where devices download the bundle: https://, http:// or file:// (a trailing / appends "
                        "the bundle's file name)")
    r.add_argument("--expires-in", default="30d", help="validity of the announcement (default 30d; s/m/h/d/w)")
    r.add_argument("--rollout", type=float, default=1.0, help="share of the fleet, 0..1 (default 1.0)")
    r.add_argument("--min-app-version", default=None, help="oldest shelfscout version that may take it")
    r.add_argument("--resign", action="store_true",
                   help="first re-sign the bundle's manifest with --key (rewrites BUNDLE in place)")
    r.add_argument("--keys", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder of public keys the carts trust (their ota.keys_dir): BUNDLE may be signed by one "
                        "of them instead of --key, such as models/keys for the project's own bundles (repeatable)")
    r.add_argument("-o", "--output", type=Path, default=Path("release.json"), help="default release.json")
    r.add_argument("--gate", type=Path, default=None, metavar="DATA",
                   help="first measure BUNDLE against the model the fleet runs (--gate-against) on this labelled "
                        "YOLO folder, and refuse the release when BUNDLE's AP50 is lower across the whole 95 %% "
                        "paired bootstrap interval (needs the [convert] extra)")
    r.add_argument("--gate-against", type=Path, default=None, metavar="BUNDLE",
                   help="the bundle the fleet runs now (default: the built-in default bundle)")
    r.set_defaults(func=_release)

    p = sub.add_parser("publish", help="publish a signed release, retained (QoS 1), to the fleet or one store")
    p.add_argument("release", type=Path, metavar="RELEASE_JSON")
    p.add_argument("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="publish to {prefix}/STORE/model/release")
    where.add_argument("--fleet", action="store_true", help="publish to {prefix}/fleet/model/release")
    p.add_argument("--prefix", default="shelfscout", help="topic prefix (default shelfscout)")
    p.add_argument("--ca-file", "--ca", dest="ca", default=None,
                   help="CA certificate (PEM) to verify an mqtts:// broker (default: the system CAs); the same "
                        "name as the other commands' option and mqtt.ca_file (--ca still works)")
    p.add_argument("--cert-file", default=None,
                   help="client certificate (PEM) for mqtts://; the production broker requires one with "
                        "CN release-publisher (docs/INSTALL.md)")
    p.add_argument("--key-file", default=None, help="the client certificate's private key (PEM, unencrypted)")
    p.add_argument("--username", default=None)
    p.add_argument("--password-file", type=Path, default=None)
    p.add_argument("--clear", action="store_true", help="remove the retained release instead")
    p.set_defaults(func=_publish)


def _keygen(args: argparse.Namespace) -> int:
    from edge.bundle import generate_keypair
    from edge.ota.release import keyid

    prefix: Path = args.prefix
    priv, pub = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for f in (priv, pub):
        if f.exists() and not args.force:
            raise CliError(f"{f} exists; pass --force to overwrite it")
    generate_keypair(priv, pub)
    from edge.bundle import load_private_key

    kid = keyid(load_private_key(priv).public_key())
    print(f"wrote {priv} (private, 0600) and {pub} (public); key id {kid}")
    return 0


def _release(args: argparse.Namespace) -> int:
    from convert.release import make_release, message_bytes, parse_duration
    from edge.bundle import load_public_keys
    from edge.ota.errors import OtaError

    if not 0.0 <= args.rollout <= 1.0:
        raise CliError(f"--rollout must be between 0 and 1, got {args.rollout}")
    if not args.key.exists():
        raise CliError(f"key file {args.key} not found (create one with `shelfscout keygen`)")
    for d in args.keys:
        if not d.is_dir():
            raise CliError(f"--keys {d}: not a folder (a folder of *.pub files, as a cart's ota.keys_dir)")
    if args.gate is not None:
        _gate(args)
    try:
        expires = parse_duration(args.expires_in)
        trusted = load_public_keys(args.keys) if args.keys else None
        build = make_release(args.bundle, args.key, args.url, expires, args.rollout, args.min_app_version,
                             resign=args.resign, trusted=trusted)
    except OtaError as e:
        raise CliError(str(e)) from None
    except ValueError as e:
        if type(e).__name__ == "BundleError":
            raise
        raise CliError(str(e)) from None
    out: Path = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(message_bytes(build.message))
    r = build.release
    print(f"wrote {out}: {r.name} v{r.version}, {r.size} bytes, sha256 {r.sha256[:12]}…, rollout {r.rollout:g}, "
          f"expires {r.not_after}, key {build.message['keyid']}; the bundle is signed by {build.bundle_signed_by}: "
          "carts need that public key in their ota.keys_dir", file=sys.stderr)
    return 0


def _gate(args: argparse.Namespace) -> None:
    """Refuse (CliError, nothing written) a bundle that measures worse than the current one on --gate DATA."""
    from convert.dataset import list_yolo_images
    from convert.gate import gate
    from edge.bundle import BUILTIN_KEYS, DEFAULT_BUNDLE, load_public_keys, read_bundle

    current_path = args.gate_against or DEFAULT_BUNDLE
    try:
        list_yolo_images(args.gate)
        # only measured here; the release's own signature check comes next
        new = read_bundle(args.bundle, None, allow_unsigned=True)
        current = read_bundle(current_path, load_public_keys([BUILTIN_KEYS]), allow_unsigned=True)
        result = gate(new, current, args.gate)
    except ValueError as e:  # a BundleError, a folder that is not YOLO, no images
        raise CliError(f"--gate: {e}") from None
    if not result.passed:
        raise CliError(result.describe())
    print(result.describe(), file=sys.stderr)


def _publish(args: argparse.Namespace) -> int:
    from convert.release import publish_release, release_topic
    from edge.broker_url import BrokerAddress

    try:
        BrokerAddress.parse(args.broker)
    except ValueError as e:
        raise CliError(f"--broker: {e}") from None
    try:
        message = json.loads(args.release.read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"cannot read {args.release}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CliError(f"{args.release} is not JSON: {e}") from None
    if not isinstance(message, dict) or "release" not in message or not message.get("sig"):
        raise CliError(f"{args.release} is not a signed release (run `shelfscout release` first)")
    payload = json.dumps(message, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if not args.clear:
        _refuse_expired(args.release, message)
    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CliError(f"--password-file: cannot read {args.password_file}: {e.strerror or e}") from None
    try:
        topic = release_topic(None if args.fleet else args.store, args.prefix)
        publish_release(payload, args.broker, topic, ca_file=args.ca, cert_file=args.cert_file,
                        key_file=args.key_file, username=args.username, password=password, clear=args.clear)
    except (ConnectionError, ValueError) as e:
        raise CliError(str(e)) from None
    r = message["release"]
    what = "cleared the retained release on" if args.clear else f"published {r.get('name')} v{r.get('version')} to"
    print(f"{what} {topic} (retained, QoS 1)", file=sys.stderr)
    return 0


def _refuse_expired(path: Path, message: dict[str, Any]) -> None:
    """Every cart refuses a release past its `not_after`: publishing one would only hide the current release."""
    from datetime import datetime, timezone

    from edge.ota.errors import OtaError
    from edge.ota.release import Release

    try:
        release = Release.from_dict(message["release"])
    except (OtaError, TypeError) as e:
        raise CliError(f"{path}: not a release a cart can read: {e}") from None
    if release.expires <= datetime.now(timezone.utc):
        raise CliError(f"{path}: {release.name} v{release.version} expired at {release.not_after}; every cart "
                       "would refuse it. Sign it again with `shelfscout release` (--expires-in)")
