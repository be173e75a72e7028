"""Builds a TFLite interpreter from the best runtime installed and reports which one runs, with or without XNNPACK.

Order: `ai_edge_litert` (LiteRT, runs int8 graphs through XNNPACK), then `tflite_runtime` (2.14 runs int8 graphs
on its reference kernels, 10-40x slower), then `tensorflow.lite` (off-device machines only). The imports happen
inside `make_interpreter`, so importing this module never loads a runtime or TensorFlow.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on stderr from C++ (TFLite's minimal
logger) the first time an interpreter allocates its tensors, in the middle of `shelfscout demo`'s and `eval`'s own
lines. It ignores TF_CPP_MIN_LOG_LEVEL (tried 1-3, set before the import; the variable only reaches the separate
absl/TSL logger), and ai-edge-litert 2.3 neither exports the minimal logger's severity setter nor reads an
environment variable for it. So, for the interactive commands (`hide_delegate_banner`, called by the CLI for every
command but `run`), file descriptor 2 goes to a temporary file while the interpreter is built, and everything
written there except that one line is passed on to stderr afterwards: real errors stay, a little late. The service
leaves fd 2 alone: a crash inside the runtime while it was held would take its last words (faulthandler's stack
dump, the runtime's own abort message) with it, and the journal can take one INFO line. The runtime is reported
anyway (`RuntimeInfo`, logged below and by `shelfscout bench`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)

# (module to import, attribute path to the Interpreter class in it, module whose __version__ names it, short name).
# TensorFlow's `tf.lite` is an API alias, so the class is reached from the top-level package.
RUNTIMES: tuple[tuple[str, str, str, str], ...] = (
    ("ai_edge_litert.interpreter", "Interpreter", "ai_edge_litert", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "Interpreter", "tflite_runtime", "tflite-runtime"),
    ("tensorflow", "lite.Interpreter", "tensorflow", "tensorflow"),
)

_QUANT_DTYPES = (np.uint8, np.int8, np.int16)

XNNPACK_INFO = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_STDERR_LOCK = threading.Lock()  # one redirection of fd 2 at a time: a second would save and restore the first's file
_banner_hidden = False  # set by hide_delegate_banner()


def hide_delegate_banner() -> None:
    """From now on, interpreters are built without LiteRT's XNNPACK INFO line on stderr (interactive commands)."""
    global _banner_hidden
    _banner_hidden = True


class RuntimeNotFoundError(RuntimeError):
    """None of the supported TFLite runtimes can be imported."""


@dataclass(frozen=True)
class RuntimeInfo:
    """Which runtime runs the model: its name and version, whether XNNPACK took the graph, and the thread count."""

    name: str
    version: str
    xnnpack: bool
    threads: int
    delegated_partitions: int = 0  # how many graph partitions the XNNPACK delegate took
    quantized: bool = False  # the model computes in int8/uint8
    heavy_ops: int = 0  # convolution and fully-connected nodes in the model
    heavy_ops_delegated: int = 0  # of those, how many XNNPACK runs

    @property
    def delegation(self) -> str:
        """How much of the graph the delegate runs, e.g. "38/38 conv ops, 1 partition"."""
        n = self.delegated_partitions
        return f"{self.heavy_ops_delegated}/{self.heavy_ops} conv ops, {n} partition{'' if n == 1 else 's'}"

    def describe(self) -> str:
        if self.xnnpack:
            xnn = f"XNNPACK ({self.delegation})"
        else:
            xnn = "no XNNPACK"
        return f"{self.name} {self.version}, {xnn}, {self.threads} threads"


def _import_interpreter_class(names: tuple[str, ...] | None = None) -> tuple[type, str, str]:
    """The first importable runtime's Interpreter class, its short name and its version."""
    errors: list[str] = []
    for modname, attr, vermod, short in RUNTIMES:
        if names is not None and short not in names:
            continue
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:  # includes ModuleNotFoundError and a None entry in sys.modules
            errors.append(f"{short}: {e}")
            continue
        cls: Any = mod
        for part in attr.split("."):
            cls = getattr(cls, part, None)
        if not isinstance(cls, type):
            errors.append(f"{short}: {modname} has no {attr}")
            continue
        try:
            version = str(getattr(importlib.import_module(vermod), "__version__", "unknown"))
        except ImportError:
            version = "unknown"
        return cls, short, version
    raise RuntimeNotFoundError(
        "no TFLite runtime found; install ai-edge-litert (or tflite-runtime): " + "; ".join(errors)
    )


_HEAVY_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


@dataclass(frozen=True)
class _Delegation:
    partitions: int  # DELEGATE nodes after allocate_tensors(): graph partitions a delegate took
    heavy_ops: int  # convolution / fully-connected nodes in the model
    heavy_delegated: int  # of those, how many a delegate runs (their weights feed a DELEGATE node)


def _delegation(interpreter: Any) -> _Delegation:
    """How much of the graph the default (XNNPACK) delegate took, from the interpreter's node list.

    A delegated partition appears as a DELEGATE node whose inputs include the weights of the nodes it replaced,
    so a convolution counts as delegated when its weight tensor feeds a DELEGATE node.
    """
    get_ops = getattr(interpreter, "_get_ops_details", None)
    if get_ops is None:
        return _Delegation(0, 0, 0)
    try:
        ops = get_ops()
    except Exception:  # noqa: BLE001 - a private API; treat any failure as "no delegate seen"
        return _Delegation(0, 0, 0)
    delegated_inputs: set[int] = set()
    partitions = 0
    for op in ops:
        if op.get("op_name") == "DELEGATE":
            partitions += 1
            delegated_inputs.update(int(i) for i in op.get("inputs", ()) if int(i) >= 0)
    heavy = [op for op in ops if op.get("op_name") in _HEAVY_OPS and len(op.get("inputs", ())) > 1]
    done = sum(1 for op in heavy if int(op["inputs"][1]) in delegated_inputs)
    return _Delegation(partitions, len(heavy), done)


def _is_quantized(interpreter: Any) -> bool:
    """True when the model's computation is integer: a quantized input or any int8/uint8 tensor with a scale."""
    for d in interpreter.get_input_details():
        if d["dtype"] in _QUANT_DTYPES and d["quantization"][0] != 0.0:
            return True
    try:
        details = interpreter.get_tensor_details()
    except Exception:  # noqa: BLE001 - some runtimes refuse details of intermediate tensors
        return False
    return any(d["dtype"] in (np.int8, np.uint8) and d["quantization"][0] != 0.0 for d in details)


@contextlib.contextmanager
def _without_xnnpack_info() -> Iterator[None]:
    """Runs the block with file descriptor 2 in a temporary file, then writes what it got to stderr, bar LiteRT's
    XNNPACK INFO line. Other threads' stderr in that time is kept too, and comes after the block."""
    with _STDERR_LOCK:
        holder = _stderr_holder()
        if holder is None:  # no temporary file or no stderr: the line is left as it is
            yield
            return
        held, saved = holder
        with held:
            sys.stderr.flush()
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(ValueError, OSError):
                    sys.stderr.flush()  # Python's own buffered writes of the block belong in the file too
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                kept = b"".join(line for line in held.read().splitlines(keepends=True)
                                if line.rstrip(b"\r\n") != XNNPACK_INFO)
                if kept:
                    with os.fdopen(os.dup(2), "wb") as err:
                        err.write(kept)


def _stderr_holder() -> tuple[IO[bytes], int] | None:
    """A temporary file to hold stderr in and a copy of file descriptor 2 to restore, or None if either fails."""
    try:
        held = tempfile.TemporaryFile()
    except OSError:
        return None
    try:
        return held, os.dup(2)
    except OSError:
        held.close()
        return None


def make_interpreter(
    model_bytes: bytes,
    threads: int = 2,
    runtimes: tuple[str, ...] | None = None,
    use_xnnpack: bool = True,
) -> tuple[Any, RuntimeInfo]:
    """An interpreter with tensors allocated for `model_bytes`, from the first runtime that imports.

    `runtimes` restricts the choice (short names from `RUNTIMES`), for tests and benchmarks. `use_xnnpack=False`
    builds it without the default delegates (reference kernels, as tflite-runtime 2.14 runs int8), for benchmarks.
    Logs a warning when a quantized model runs without XNNPACK.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if not model_bytes:
        raise ValueError("model is empty")
    cls, name, version = _import_interpreter_class(runtimes)
    try:
        kwargs: dict[str, Any] = {"model_content": model_bytes, "num_threads": threads}
        if not use_xnnpack:
            resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
            if resolver is None:
                raise ValueError(f"{name} cannot turn its default delegates off")
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with _without_xnnpack_info() if _banner_hidden else contextlib.nullcontext():
            interpreter = cls(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{name} cannot load the model: {e}") from e
    d = _delegation(interpreter)
    quantized = _is_quantized(interpreter)
    # XNNPACK "took the graph" when it runs most of the convolutions (all partitions when there are none)
    took = d.partitions > 0 and (d.heavy_ops == 0 or 2 * d.heavy_delegated >= d.heavy_ops)
    info = RuntimeInfo(name, version, took, threads, d.partitions, quantized, d.heavy_ops, d.heavy_delegated)
    if quantized and not info.xnnpack:
        log.warning(
            "%s %s runs this int8 model without XNNPACK (%d/%d conv ops delegated; reference kernels are "
            "typically 10-40x slower)%s", name, version, d.heavy_delegated, d.heavy_ops,
            "" if name == "ai-edge-litert" else "; install ai-edge-litert for XNNPACK int8 kernels",
        )
    elif quantized and d.heavy_delegated < d.heavy_ops:
        log.warning("%s: XNNPACK runs %d of %d conv ops of this int8 model; the rest use reference kernels",
                    name, d.heavy_delegated, d.heavy_ops)
    else:
        log.info("model runs on %s", info.describe())
    return interpreter, info
