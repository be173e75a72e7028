"""`shelfscout config check FILE`: validate a config file, and what it names on this machine, and print the result."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    bundle = Path(cfg.model.bundle) if cfg.model.bundle else None
    if bundle is not None and cfg.ota.enabled and not bundle.exists() and ota_managed(cfg, bundle):
        bundle = DEFAULT_BUNDLE  # OTA-managed (ota.models_dir/current) and not installed yet: the built-in runs
    try:
        load_model(cfg, bundle)
    except (BundleError, ConfigError) as e:
        problems.append(f"model.bundle: {e}")
    return problems


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
            if problem:
                problems.append(problem)
                print(f"shelfscout config: error: {problem}", file=sys.stderr)
            else:
                print(f"shelfscout config: {found}", file=sys.stderr)
    if problems:
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
    else:
        print(f"{args.file}: ok (device {cfg.device.store}/{cfg.device.id}, camera {cfg.camera.source}, "
              f"broker {cfg.mqtt.url}{'' if args.syntax_only else ', model and keys readable here'}"
              f"{', camera and broker answered' if args.live else ''})")
    return 0
