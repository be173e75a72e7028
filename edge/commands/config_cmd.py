"""`shelfscout config check FILE`: validate a config file, and what it names on this machine, and print the result."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from edge.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="check a config file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate FILE; print one line per error naming the key",
                        description="Validate FILE: every key and value, then what the service reads at start-up "
                                    "on this machine (the model bundle and its signature, the TLS and password "
                                    "files). On the cart it is meant for, ok means `shelfscout run` gets past "
                                    "its configuration.")
    c.add_argument("file", help="the TOML config file")
    c.add_argument("--json", action="store_true", help="print the effective config as JSON")
    c.add_argument("--syntax-only", action="store_true",
                   help="check the file alone, not the files it names (for a config written for another machine)")
    c.add_argument("--live", action="store_true",
                   help="also read one frame from the camera and connect to the broker (then disconnect; nothing "
                        "is published). Stop the service first if it holds the camera")
    c.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="with --live: how long to wait for a frame and for the broker (default 10)")
    c.set_defaults(func=check)


def machine_problems(cfg: Config) -> list[str]:
    """What `shelfscout run` would refuse at start-up on this machine, one line each, naming the key."""
    from pathlib import Path

    from edge.app import load_model
    from edge.broker import BrokerLogin
    from edge.bundle import DEFAULT_BUNDLE, BundleError
    from edge.config import ConfigError, ota_managed

    problems: list[str] = []
    try:
        BrokerLogin.from_config(cfg.mqtt)  # what MqttLink reads at start-up: the URL, password and TLS files
    except (ConfigError, ValueError) as e:
        problems.append(str(e))
    bad_keys: list[str] = []
    bundle = Path(cfg.model.bundle) if cfg.model.bundle else None
    if bundle is not None and cfg.ota.enabled and not bundle.exists() and ota_managed(cfg, bundle):
        bundle = DEFAULT_BUNDLE  # OTA-managed (ota.models_dir/current) and not installed yet: the built-in runs
    try:
        load_model(cfg, bundle, bad_keys)
    except (BundleError, ConfigError) as e:
        problems.append(f"model.bundle: {e}")
    problems += [f"ota.keys_dir: {line} (the service skips it, and refuses model updates until it is fixed)"
                 for line in dict.fromkeys(bad_keys)]
    problems += certificate_name_problems(cfg)
    problems += service_user_problems(cfg)
    problems += source_problems(cfg)
    return problems


def source_problems(cfg: Config) -> list[str]:
    """A video file or image folder that is not there (`run` stops at once), or a source it cannot read at all.
    Cameras and streams are left to `--live`: one that is unplugged or away now is waited for by the service."""
    from edge.sources import OpenCVSource, SourceError, open_source

    try:
        src = open_source(cfg.camera)
    except SourceError as e:
        return [str(e)]
    if isinstance(src, OpenCVSource) and src.kind == "file" and not Path(src.name).exists():
        return [f"camera.source: no such video file or image folder: {src.name}"]
    return []


def ota_key_warning(cfg: Config) -> str | None:
    """With OTA on, a keys folder without a release key: every model release is refused (not a start-up error:
    the cart runs, and says it in its status)."""
    from edge.ota.updater import release_keys_problem

    return release_keys_problem(cfg.ota.keys_dir) if cfg.ota.enabled else None


def certificate_name_problems(cfg: Config) -> list[str]:
    """The cart's client certificate names another cart (CN "STORE/DEVICE", as make-certs.sh makes it): a broker
    with the shipped ACL (`use_identity_as_username`) then refuses every message of this one, status included."""
    from pathlib import Path

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not cfg.mqtt.cert_file:
        return []
    try:
        cert = x509.load_pem_x509_certificate(Path(cfg.mqtt.cert_file).read_bytes())
    except (OSError, ValueError):
        return []  # unreadable or not PEM: the TLS check above says so
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    want = f"{cfg.device.store}/{cfg.device.id}"
    if not names or "/" not in names[0] or names[0] == want:
        return []  # not a cart certificate of make-certs.sh's kind, or this cart's
    return [f"mqtt.cert_file: the certificate is cart {names[0]!r}'s, but this config is cart {want!r} "
            "(device.store/device.id): a broker with the shipped ACL refuses every message of this cart, its "
            "status too; set [device] store and id to match, or make this cart's certificate "
            f"(make-certs.sh device {cfg.device.store} {cfg.device.id})"]


SERVICE_USER = "shelfscout"  # systemd/shelfscout.service's User=
OWN_FOLDERS = (Path("/etc/shelfscout"), Path("/var/lib/shelfscout"), Path("/opt/shelfscout"))  # the installer's


def service_user_problems(cfg: Config, user: str = SERVICE_USER) -> list[str]:
    """Files the service reads that its user cannot, by their permissions (checked when root runs the check and
    the user exists: root itself can read them all, so a check as root said ok where the service then failed).
    The password is left out: systemd reads it as root and hands it over."""
    import grp
    import os
    import pwd
    import stat
    from pathlib import Path

    if os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return []
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def can(path: Path, bit: int) -> bool:  # bit: 4 read, 1 search/execute
        try:
            st = path.stat()
        except OSError:
            return True  # missing: reported by the checks above
        if st.st_uid == pw.pw_uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in gids:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    def why(path: Path) -> tuple[str, str] | None:
        """(what the user cannot do, the fix) for `path` as the config writes it: every folder on the way to it,
        and, for a link, on the way to what it points at, then the file itself."""
        hidden = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")
        for shown in (path, path.resolve()):
            if str(shown).startswith(hidden) or shown in (Path("/home"), Path("/root")):
                return (f"cannot see {shown} at all (the unit's ProtectHome=yes and PrivateTmp=yes hide home folders "
                        "and /tmp from it)", "put it under /etc/shelfscout")
            for parent in reversed(shown.parents):
                if parent != Path("/") and not can(parent, 1):
                    ours = any(parent == r or r in parent.parents for r in OWN_FOLDERS)
                    return (f"cannot enter {parent}",
                            f"sudo chgrp {user} {parent} && sudo chmod g+x {parent}" if ours else
                            f"copy it under /etc/shelfscout/tls (root:{user}, 0640) and name that in the config: "
                            f"{parent} is not shelfscout's, and other programs rely on its permissions")
        if not can(path.resolve(), 4):
            return "cannot read it", f"sudo chown root:{user} {path} && sudo chmod 0640 {path}"
        return None

    def owner(path: Path) -> str:
        st = path.stat()
        try:
            names = f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
        except KeyError:
            names = f"{st.st_uid}:{st.st_gid}"
        return f"{stat.filemode(st.st_mode)} {names}"

    files = [(k, getattr(cfg.mqtt, k.split(".")[1])) for k in ("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file")]
    if cfg.model.bundle:
        files.append(("model.bundle", cfg.model.bundle))
    keys = Path(cfg.ota.keys_dir)
    files += [("ota.keys_dir", str(k)) for k in sorted(keys.glob("*.pub"))] if keys.is_dir() else []
    out = []
    for key, name in files:
        path = Path(name).absolute() if name else None
        if path is None or not path.exists():
            continue
        problem = why(path)
        if problem is not None:
            out.append(f"{key}: the service runs as user {user!r}, which {problem[0]} ({path}, {owner(path)}): "
                       f"{problem[1]}")
    return out


def camera_check(cfg: Config, timeout_s: float) -> tuple[str | None, str | None]:
    """(what the camera gave, None) after reading one frame from `camera.source`, or (None, why not)."""
    import time

    from edge.sources import SourceError, open_source

    try:
        src = open_source(cfg.camera, timeout_s=timeout_s)
    except SourceError as e:
        return None, f"camera.source: {e}"
    t0 = time.monotonic()
    try:
        src.open()
        frame = src.read()
    except SourceError as e:
        return None, f"camera.source: {e}"
    finally:
        src.close()
    if frame is None:
        return None, f"camera.source: {src.name} gave no frame"
    h, w = frame.shape[:2]
    return f"camera {src.name}: a {w}x{h} frame in {time.monotonic() - t0:.1f} s", None


def broker_check(cfg: Config, timeout_s: float) -> tuple[str | None, str | None]:
    """(what the broker said, None) after one MQTT connection as the config says, or (None, why not). A client id of
    its own, so a running service is not disconnected; nothing is published or subscribed."""
    import os
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.broker import BrokerLogin, probe
    from edge.config import ConfigError

    m = cfg.mqtt
    try:
        login = BrokerLogin.from_config(m)
    except (ConfigError, ValueError) as e:
        return None, str(e)
    addr, tls = login.address, login.tls
    protocol = mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311  # "auto" falls back to 3.1.1 anyway
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"shelfscout-config-check-{os.getpid()}",
                         protocol=protocol)
    login.apply(client)
    answered = threading.Event()
    said: list[str] = []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        said.append(f"refused the connection: {reason}" if reason.is_failure else "")
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(addr.host, addr.port, keepalive=max(5, m.keepalive_s))
    except OSError:
        return None, f"mqtt.url: cannot connect to {addr}: {probe(addr, tls)}"
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return None, f"mqtt.url: {addr} did not answer the MQTT connection in {timeout_s:g} s: {probe(addr, tls)}"
    finally:
        client.disconnect()
        client.loop_stop()
    if said[0]:
        return None, f"mqtt: {addr} {said[0]} (check mqtt.username, the password and the certificates)"
    user = login.username
    return f"broker {addr}: connected{f' as {user}' if user else ''}{' over TLS' if tls else ''}", None


def check(args: argparse.Namespace) -> int:
    import sys

    from edge import config
    from edge.broker_url import redact_url

    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        for line in e.errors:
            print(f"shelfscout config: error: {line}", file=sys.stderr)
        return 2
    if args.live and args.syntax_only:
        print("shelfscout config: error: --live checks this machine; it does not go with --syntax-only",
              file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print("shelfscout config: error: --timeout must be a number of seconds above 0", file=sys.stderr)
        return 2
    problems = [] if args.syntax_only else machine_problems(cfg)
    for line in problems:
        print(f"shelfscout config: error: {line} (on this machine; --syntax-only checks the file alone)",
              file=sys.stderr)
    if args.live:
        for found, problem in (camera_check(cfg, args.timeout), broker_check(cfg, args.timeout)):
            if problem and problem in problems:
                continue  # said already (a TLS file the machine check could not read stops the broker check too)
            if problem:
                problems.append(problem)
                print(f"shelfscout config: error: {problem}", file=sys.stderr)
            else:
                print(f"shelfscout config: {found}", file=sys.stderr)
    if problems:
        return 2
    keys_warning = None if args.syntax_only else ota_key_warning(cfg)
    if keys_warning is not None:
        print(f"shelfscout config: warning: ota.keys_dir: {keys_warning}", file=sys.stderr)
    if cfg.model.dev_allow_unsigned:
        print("shelfscout config: warning: model.dev_allow_unsigned = true: this cart runs models WITHOUT a valid "
              "signature (DEVELOPMENT ONLY; its status says so)", file=sys.stderr)
    if args.json:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
    else:
        print(f"{args.file}: ok (device {cfg.device.store}/{cfg.device.id}, camera {redact_url(cfg.camera.source)}, "
              f"broker {redact_url(cfg.mqtt.url)}{'' if args.syntax_only else ', model and keys readable here'}"
              f"{', camera and broker answered' if args.live else ''})")
    return 0
