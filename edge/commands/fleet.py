"""`shelfscout fleet`: one line per cart from the broker's retained status and model state, problems first."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
from typing import Any

from edge.commands.subscriber import Subscription, add_broker_args

CONNECT_TIMEOUT_S = 10.0
STATS_WAIT_S = 35.0  # a whole stats period (mqtt.stats_interval_s, 30 s by default) and some
EXIT_PROBLEMS = 3  # a cart offline, degraded or without a status, an update failed, or no cart at all


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fleet", help="one line per cart: online, degraded or offline and why, its model and its last update",
        description="Reads the retained status and model/state of every cart under the prefix (a broker hands them "
                    "over at once), listens --wait seconds for more, and prints one line per cart, problems "
                    "first, then a summary. FOR is the age of the cart's status; for 'offline' with 'connection "
                    "lost' (its last will) it is the age of the connection it lost. Exit 0 when every cart is "
                    f"online and no update failed, {EXIT_PROBLEMS} otherwise (or when no cart is there), 1 when "
                    "the broker cannot be reached. A retired cart's retained messages stay until they are cleared: "
                    "mosquitto_pub -r -n -t PREFIX/STORE/DEVICE/status, and the same for .../model/state.")
    add_broker_args(p)
    p.add_argument("--store", help="only this store (default: all)")
    p.add_argument("--wait", type=float, default=2.0, metavar="S",
                   help="listen this long after subscribing (default: %(default)s)")
    p.add_argument("--stats", action="store_true",
                   help=f"listen {STATS_WAIT_S:g} s, a whole stats period, and add each cart's frames per second, "
                        "outbox depth and CPU temperature")
    p.add_argument("--json", action="store_true", help="print one JSON object: the carts and the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.cli import CliError
    from edge.fleet import Fleet, render
    from edge.topics import subscriber_filters

    if not args.wait > 0:
        raise CliError("--wait must be a number of seconds above 0")
    fleet = Fleet(args.prefix)
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        with lock:
            fleet.handle(topic, payload)

    kinds = ("status", "model/state") + (("stats",) if args.stats else ())
    try:
        filters = subscriber_filters(args.prefix, args.store, None, kinds)
    except ValueError as e:
        raise CliError(str(e)) from None
    sub = Subscription(args, "fleet", filters, on_message)
    sub.start()
    try:
        if not sub.subscribed.wait(CONNECT_TIMEOUT_S):
            sub.say(sub.never_connected(CONNECT_TIMEOUT_S))
            return 1
        time.sleep(STATS_WAIT_S if args.stats else args.wait)
    finally:
        sub.stop()
    with lock:
        rows, summary, healthy = fleet.rows(), fleet.summary(), fleet.healthy()
    if args.json:
        print(json.dumps({"carts": [dataclasses.asdict(c) for c in rows], "summary": summary, "healthy": healthy},
                         indent=2))
    else:
        if rows:
            print(render(rows, time.time(), stats=args.stats), end="")
        print(summary)
    return 0 if healthy else EXIT_PROBLEMS
