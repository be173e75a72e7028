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
    c.set_defaults(func=check)


def machine_problems(cfg: Config) -> list[str]:
    """What `shelfscout run` would refuse at start-up on this machine, one line each, naming the key."""
    from edge.app import load_model
    from edge.bundle import BundleError
    from edge.config import ConfigError, read_password
    from edge.mqtt import BrokerAddress, tls_context

    problems: list[str] = []
    m = cfg.mqtt
    try:
        if BrokerAddress.parse(m.url).tls or m.ca_file or m.cert_file or m.key_file:
            tls_context(m.ca_file, m.cert_file, m.key_file)
        read_password(m)
    except (ConfigError, ValueError) as e:
        problems.append(str(e))
    try:
        load_model(cfg)
    except (BundleError, ConfigError) as e:
        problems.append(f"model.bundle: {e}")
    return problems


def check(args: argparse.Namespace) -> int:
    import sys

    from edge import config

    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        for line in e.errors:
            print(f"shelfscout config: error: {line}", file=sys.stderr)
        return 2
    problems = [] if args.syntax_only else machine_problems(cfg)
    for line in problems:
        print(f"shelfscout config: error: {line} (on this machine; --syntax-only checks the file alone)",
              file=sys.stderr)
    if problems:
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
    else:
        print(f"{args.file}: ok (device {cfg.device.store}/{cfg.device.id}, camera {cfg.camera.source}, "
              f"broker {cfg.mqtt.url}{'' if args.syntax_only else ', model and keys readable here'})")
    return 0
