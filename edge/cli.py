"""The `shelfscout` command line: builds the argument parser from the subcommand modules and runs one."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge import __version__

# Each module registers its own subcommands with `register(subparsers)`.
COMMAND_MODULES = (
    "edge.commands.run",
    "edge.commands.demo",
    "edge.commands.detect",
    "edge.commands.alerts",
    "edge.commands.fleet",
    "edge.commands.bench",
    "edge.commands.config_cmd",
    "edge.commands.model_cmd",
    "edge.commands.markers",
    "convert.synth_cmd",
    "convert.commands",
    "convert.release_cmd",
)


class CliError(Exception):
    """An expected failure: printed as one line, exit code 2 unless given."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfscout",
        description="Find empty shelf spots from a cart camera and send restock alerts over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"shelfscout {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue  # not built yet
            raise
        mod.register(sub)
    for sp in sub.choices.values():
        # `-v` after the subcommand too (`shelfscout run -c x -v`), unless the command uses -v itself
        if not any("-v" in a.option_strings for a in sp._actions):
            sp.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                            help="more logging (-vv for debug)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the service logs what an operator reads in the journal (connections, model, alerts) at INFO by default
    base = getattr(args, "log_level", logging.WARNING)
    level = max(logging.DEBUG, base - 10 * (args.verbose + getattr(args, "sub_verbose", 0)))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command != "run":  # the service keeps stderr as it is (edge.runtime says why)
        from edge.runtime import hide_delegate_banner

        hide_delegate_banner()
    from edge.bundle import BundleError
    from edge.config import ConfigError
    from edge.instance_lock import InstanceLockError
    from edge.outbox import OutboxError
    from edge.sources import SourceError, quiet_video_logs
    from edge.yolo import LabelError

    quiet_video_logs()  # before any command opens a video

    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError, BundleError, SourceError, InstanceLockError, OutboxError, LabelError) as e:
        print(f"shelfscout {args.command}: error: {e}", file=sys.stderr)
        return e.code if isinstance(e, CliError) else 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): a quiet exit 1, as `detect` has its own
        from edge.commands.detect import stdout_gone

        return stdout_gone()


if __name__ == "__main__":
    # `python -m edge.cli`: run the imported module's main, so commands and this module share one CliError
    from edge.cli import main as _main

    sys.exit(_main())
