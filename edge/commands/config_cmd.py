"""`shelfscout config check FILE`: validate a config file and print the effective settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="check a config file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate FILE; print one line per error naming the key")
    c.add_argument("file", help="the TOML config file")
    c.add_argument("--json", action="store_true", help="print the effective config as JSON")
    c.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    import sys

    from edge import config

    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        for line in e.errors:
            print(f"shelfscout config: error: {line}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
    else:
        print(f"{args.file}: ok (device {cfg.device.store}/{cfg.device.id}, camera {cfg.camera.source}, "
              f"broker {cfg.mqtt.url})")
    return 0
