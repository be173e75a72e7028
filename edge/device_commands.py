"""One command a backend sent the device over MQTT: check the request, run its handler, and give the reply."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge.payloads import command_reply_payload, encode
from edge.topics import COMMANDS

log = logging.getLogger(__name__)

# name, arguments -> the reply's `result`; raises ValueError for a request it refuses (the message is the reply's
# `error`); any other exception is an internal error, logged with its traceback.
CommandHandler = Callable[[str, dict[str, Any]], Mapping[str, Any]]


def run_command(name: str, payload: bytes, retained: bool, handler: CommandHandler | None) -> bytes | None:
    """The encoded `command_reply` to the command `name` with `payload`, or None when there is nobody to answer:
    an empty retained payload is a backend clearing a retained command from the broker, not a command."""
    if retained and not payload:
        log.info("a retained %s command was cleared", name)
        return None
    result: Mapping[str, Any] | None = None
    error, args = _request(name, payload, retained, handler)
    if error is None and handler is not None:
        try:
            out = handler(name, args)
            if not isinstance(out, Mapping):
                raise TypeError(f"command handler returned {type(out).__name__}, not a mapping")
            result = out
        except ValueError as e:
            error = str(e) or type(e).__name__
        except Exception as e:
            log.exception("command %s failed", name)
            error = f"internal error: {type(e).__name__}: {e}"
    if error is not None:
        log.warning("command %s: %s", name, error)
    return encode(command_reply_payload(name, time.time(), result=result, error=error))


def _request(name: str, payload: bytes, retained: bool,
             handler: CommandHandler | None) -> tuple[str | None, dict[str, Any]]:
    """(why the request is refused before its handler runs, or None; its arguments, parsed once)."""
    if retained:
        return "retained commands are ignored; publish commands without the retain flag", {}
    if name not in COMMANDS:
        return f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}", {}
    try:
        args = _args(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"payload is not valid UTF-8 JSON: {e}", {}
    if not isinstance(args, dict):
        return f"payload must be a JSON object, got {type(args).__name__}", {}
    if handler is None:
        return "this service does not take commands", {}
    return None, args


def _args(payload: bytes) -> Any:
    """The request's arguments: its JSON, or {} for an empty payload."""
    return json.loads(payload.decode("utf-8")) if payload.strip() else {}
