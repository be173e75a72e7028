"""`shelfscout run -c CONFIG`: the device service."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the device service",
                       description="Run the device service. With a finite source (a video file or an image folder, "
                                   "not looped) it exits 0 once the source has ended and the outbox has drained.")
    p.add_argument("-c", "--config", default=None, help="TOML config file (default /etc/shelfscout/config.toml)")
    p.add_argument("--no-preview", action="store_true", help="do not serve the live preview")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help="after a finite source, give up waiting for the broker after S seconds (exit 3, as "
                        "for a stop while draining); the queued alerts stay in the outbox for the next start")
    p.add_argument("--dev-allow-unsigned-models", action="store_true",
                   help="DEVELOPMENT ONLY: run models whose signature is missing or unknown")
    p.set_defaults(func=run, log_level=logging.INFO)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from edge import config
    from edge.app import Service

    cfg = config.load(args.config)
    if args.dev_allow_unsigned_models:
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, dev_allow_unsigned=True))
    service = Service(cfg, preview=False if args.no_preview else None, drain_timeout_s=args.drain_timeout)
    return service.run()
