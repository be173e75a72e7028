"""The runtime shim: which TFLite runtime it picks, the fallback order, and the XNNPACK report and warning."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edge.runtime import RuntimeNotFoundError, make_interpreter
from tests.test_detector_models import TF_WARNINGS, build_tiny_yolo_tflite

pytestmark = TF_WARNINGS


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real full-int8 model built with TensorFlow (once for this module)."""
    path = build_tiny_yolo_tflite(tmp_path_factory.mktemp("rt") / "tiny.tflite")
    return path.read_bytes()


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `import <module>` raise ImportError, as on a machine where it is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_picks_litert_here_and_reports_xnnpack(int8_model: bytes) -> None:
    import ai_edge_litert

    interpreter, info = make_interpreter(int8_model, threads=2)
    assert info.name == "ai-edge-litert"
    assert info.version == ai_edge_litert.__version__
    assert info.threads == 2
    assert info.quantized
    assert info.xnnpack and info.delegated_partitions >= 1  # LiteRT runs int8 through XNNPACK
    assert (info.heavy_ops, info.heavy_ops_delegated) == (3, 3)  # all three int8 convolutions
    # and the interpreter really runs
    d = interpreter.get_input_details()[0]
    interpreter.set_tensor(d["index"], np.zeros(d["shape"], np.uint8))
    interpreter.invoke()
    assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape == (1, 5, 256)


def test_int8_without_xnnpack_is_reported_and_warned(int8_model: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # The reference kernels are what tflite-runtime 2.14 uses for int8; here they are LiteRT's, with the
    # default delegates turned off, so the same warning path runs on a real interpreter.
    with caplog.at_level(logging.WARNING, logger="edge.runtime"):
        _, info = make_interpreter(int8_model, threads=1, use_xnnpack=False)
    assert not info.xnnpack and info.delegated_partitions == 0 and info.quantized
    assert (info.heavy_ops, info.heavy_ops_delegated) == (3, 0)
    assert any("without XNNPACK" in r.getMessage() for r in caplog.records)


def test_falls_back_to_tflite_runtime_before_tensorflow(int8_model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """tflite-runtime cannot be installed here (numpy<2), so a stand-in module named `tflite_runtime` carries the
    real LiteRT Interpreter class; what is tested is that the shim picks it when ai_edge_litert is missing."""
    from ai_edge_litert.interpreter import Interpreter

    pkg = types.ModuleType("tflite_runtime")
    pkg.__version__ = "2.14.0"  # type: ignore[attr-defined]
    sub = types.ModuleType("tflite_runtime.interpreter")
    sub.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", sub)
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter")
    _, info = make_interpreter(int8_model, threads=1)
    assert (info.name, info.version) == ("tflite-runtime", "2.14.0")


def test_falls_back_to_tensorflow_lite_for_real(int8_model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter")
    interpreter, info = make_interpreter(int8_model, threads=1)
    assert info.name == "tensorflow" and info.version == tf.__version__
    assert type(interpreter).__module__.startswith("tensorflow.lite")


def test_no_runtime_at_all_is_one_clear_error(int8_model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter",
           "tensorflow")
    with pytest.raises(RuntimeNotFoundError, match="install ai-edge-litert"):
        make_interpreter(int8_model)


def test_bad_input_is_a_value_error(int8_model: bytes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threads"):
        make_interpreter(int8_model, threads=0)
    with pytest.raises(ValueError, match="empty"):
        make_interpreter(b"")
    with pytest.raises(ValueError, match="cannot load the model"):
        make_interpreter(b"this is not a flatbuffer" * 10)


def test_importing_the_shim_loads_no_runtime() -> None:
    import subprocess

    code = ("import sys, edge.runtime, edge.detector, edge.decoders.ssd, edge.decoders.yolo, edge.commands.detect, "
            "edge.commands.bench, edge.commands.model_cmd; "
            "bad = [m for m in ('tensorflow', 'ai_edge_litert', 'tflite_runtime', 'keras') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stdout + r.stderr
