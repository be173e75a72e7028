"""CLI subcommands; each module exposes `register(subparsers)` and keeps heavy imports inside its handlers."""
