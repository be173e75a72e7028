"""Shared helpers for the OTA tests (no tests here): tiny real int8 models, signed bundles and releases, a loopback
HTTP server with misbehaving modes, and a config for a device.

The models are built with TensorFlow in a child process (`python tests/test_ota_support.py build DIR`), so the test
process never imports TensorFlow; they are cached in pytest's cache folder, keyed by this file's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAMES = ("ok", "const", "hang", "crash")


# ---- model building (child process, TensorFlow) --------------------------------------------------------------------
def _convert(conv: Any, rep: Any) -> bytes:
    import tensorflow as tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def build_models(out: Path) -> None:
    """ok: 2 convs, 32x32x3 uint8 → 8x8x1 int8. const: same I/O, output ignores the input. hang: same I/O, a WHILE
    loop that ends at once on bright inputs (so it calibrates) and never on dark ones (golden inputs)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def rep() -> Iterator[list[np.ndarray]]:
        for _ in range(8):
            yield [rng.uniform(0.0, 1.0, (1, 32, 32, 3)).astype(np.float32)]

    def rep_bright() -> Iterator[list[np.ndarray]]:
        for _ in range(4):
            yield [rng.uniform(0.6, 1.0, (1, 32, 32, 3)).astype(np.float32)]

    inp = tf.keras.Input((32, 32, 3))
    x = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.Conv2D(1, 3, strides=2, padding="same", activation="sigmoid")(x)
    (out / "ok.tflite").write_bytes(_convert(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, x)), rep))

    inp = tf.keras.Input((32, 32, 3))
    z = tf.keras.layers.Conv2D(1, 3, strides=4, padding="same", kernel_initializer="zeros",
                               bias_initializer=tf.keras.initializers.Constant(0.3), activation="sigmoid")(inp)
    (out / "const.tflite").write_bytes(_convert(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, z)),
                                                rep))

    @tf.function(input_signature=[tf.TensorSpec((1, 32, 32, 3), tf.float32)])
    def hang(x: Any) -> Any:
        i = tf.constant(0)
        _, y = tf.while_loop(lambda i, y: tf.reduce_mean(y) < 0.5, lambda i, y: (i + 1, y * 0.999 + 0.0001),
                             [i, x])
        return tf.nn.avg_pool2d(y, 4, 4, "VALID")[..., :1]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([hang.get_concrete_function()], hang)
    hang_bytes = _convert(conv, rep_bright)
    (out / "hang.tflite").write_bytes(hang_bytes)

    # crash: the hang model with its WHILE condition pointing back at the main graph. The flatbuffer is well formed
    # and loads; preparing it recurses without end and the interpreter dies of SIGSEGV (LiteRT 2.x).
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(hang_bytes))
    for sg in m.subgraphs:
        for op in sg.operators:
            if hasattr(op.builtinOptions, "condSubgraphIndex"):
                op.builtinOptions.condSubgraphIndex = 0
    (out / "crash.tflite").write_bytes(bytes(fu.convert_object_to_bytearray(m)))


def tiny_models(pytest_config: Any) -> dict[str, bytes]:
    """The three models, built once and cached by this file's hash."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    d = Path(pytest_config.cache.mkdir(f"shelfscout-ota-models-{key}"))
    if not all((d / f"{n}.tflite").exists() for n in MODEL_NAMES):
        proc = subprocess.run([sys.executable, __file__, "build", str(d)], capture_output=True, text=True,
                              timeout=600, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"building the tiny models failed:\n{proc.stderr[-3000:]}")
    return {n: (d / f"{n}.tflite").read_bytes() for n in MODEL_NAMES}


# ---- bundles and releases --------------------------------------------------------------------------------------------
def golden_inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind in ("hang", "crash"):
        return np.full((2, 32, 32, 3), 10, np.uint8)  # dark: the WHILE loop never ends
    return rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def run_raw(model: bytes, inputs: np.ndarray) -> tuple[np.ndarray, tuple[float, int], tuple[float, int]]:
    """Raw int8 outputs for uint8 inputs, plus the input and output quantization (scale, zero point)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for img in inputs:
        it.set_tensor(i["index"], img[None])
        it.invoke()
        outs.append(it.get_tensor(o["index"])[0].copy())
    return np.stack(outs), (float(i["quantization"][0]), int(i["quantization"][1])), \
        (float(o["quantization"][0]), int(o["quantization"][1]))


def golden_npz(model: bytes, kind: str) -> tuple[bytes, tuple[float, int]]:
    inputs = golden_inputs(kind)
    if kind in ("hang", "crash"):  # never run these here; the constructor alone is safe (no allocation)
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=model)
        d = it.get_input_details()[0]
        outs = np.zeros((len(inputs), 8, 8, 1), np.int8)
        qin = (float(d["quantization"][0]), int(d["quantization"][1]))
    else:
        outs, qin, _ = run_raw(model, inputs)
    buf = io.BytesIO()
    np.savez(buf, input_0=inputs, output_heatmap=outs)
    return buf.getvalue(), qin


@dataclass
class Device:
    """One simulated device and one release engineer: keys, folders, config, and bundle/release factories."""

    tmp: Path
    models: dict[str, bytes]
    cfg: Any = None
    key: Any = None
    key_path: Path = field(default_factory=Path)
    reports: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        from edge.bundle import generate_keypair, load_private_key
        from edge.config import Config, DeviceConfig, OtaConfig

        self.keys_dir = self.tmp / "keys"
        self.models_dir = self.tmp / "models"
        self.pub_dir = self.tmp / "pub"
        self.pub_dir.mkdir(parents=True, exist_ok=True)
        self.key_path = self.tmp / "signing.key"
        generate_keypair(self.key_path, self.keys_dir / "release.pub")
        self.key = load_private_key(self.key_path)
        self.cfg = Config(device=DeviceConfig(id="cart-07", store="s042"),
                          ota=OtaConfig(keys_dir=str(self.keys_dir), models_dir=str(self.models_dir),
                                        stall_timeout_s=1.0, probation_frames=5, poll_interval_s=0.2))
        self._golden: dict[str, tuple[bytes, tuple[float, int]]] = {}

    def with_ota(self, **changes: Any) -> Any:
        self.cfg = self.cfg.replace(ota=dataclasses.replace(self.cfg.ota, **changes))
        return self.cfg

    def manifest(self, version: int, kind: str = "ok", name: str = "tiny", **changes: Any) -> Any:
        from edge.bundle import InputSpec, Manifest, OutputSpec, TensorSpec

        if kind not in self._golden:
            self._golden[kind] = golden_npz(self.models[kind], kind)
        _, (scale, zp) = self._golden[kind]
        m = Manifest(name=name, version=version, task="shelf-gap", input=InputSpec(32, 32, 3, "RGB", "uint8", scale, zp),
                     output=OutputSpec("gap-heatmap", (TensorSpec("heatmap", (1, 8, 8, 1), "int8"),), stride=4),
                     latency_budget_ms=50.0)
        return dataclasses.replace(m, **changes)

    def bundle(self, version: int, kind: str = "ok", name: str = "tiny", signed: bool = True, key: Any = None,
               out: Path | None = None, **changes: Any) -> Path:
        from edge.bundle import write_bundle

        m = self.manifest(version, kind, name, **changes)
        golden = self._golden[kind][0]
        path = out or self.pub_dir / f"{name}-v{version}-{kind}.bundle"
        write_bundle(path, m, {"model.tflite": self.models[kind], "golden.npz": golden},
                     (key or self.key) if signed else None)
        return path

    def release(self, bundle: Path, url: str | None = None, expires_in: timedelta = timedelta(days=30),
                key: Any = None, now: datetime | None = None, **changes: Any) -> bytes:
        """A signed release message for a bundle file (url defaults to file://)."""
        from edge.bundle import Manifest
        from edge.ota.release import Release, format_rfc3339, sign_release

        with tarfile.open(bundle) as tar:  # not read_bundle: tests also announce deliberately broken tars
            f = tar.extractfile("manifest.json")
            assert f is not None
            m = Manifest.from_dict(json.loads(f.read()))
        data = bundle.read_bytes()
        now = now or datetime.now(timezone.utc)
        r = Release(name=m.name, version=m.version, url=url or bundle.resolve().as_uri(),
                    sha256=hashlib.sha256(data).hexdigest(), size=len(data), not_after=format_rfc3339(now + expires_in))
        r = dataclasses.replace(r, **changes)
        return json.dumps(sign_release(r, key or self.key)).encode()

    def updater(self, **kwargs: Any) -> Any:
        from edge.ota.updater import Updater

        return Updater(self.cfg, report=self.reports.append, swap=self.swaps.append, **kwargs)

    def fast_updater(self, **kwargs: Any) -> Any:
        """An updater that smoke-tests in this process (no child interpreter): for setting a device up quickly."""
        from edge.detector import Detector

        return self.updater(detector_factory=lambda b: Detector(b, threads=1), **kwargs)

    def install(self, version: int = 1) -> None:
        """Install and commit `version` (setup for tests about what comes next)."""
        up = self.fast_updater()
        if (self.models_dir / "current").is_symlink():
            up.active_bundle_path()
        out = up.apply_release(self.release(self.bundle(version)))
        assert out.state in ("probation", "active"), out
        while up.in_probation:
            up.observe_frame(1.0, True)
        self.reports.clear()
        self.swaps.clear()

    def current(self) -> str:
        """Where `current` points ("" when there is no link)."""
        link = self.models_dir / "current"
        return str(link.readlink()) if link.is_symlink() else ""

    def states(self) -> list[str]:
        return [r["ota"]["state"] for r in self.reports]


# ---- a loopback HTTP server with modes ---------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    server: BundleServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("?")[0]
        mode, data = self.server.routes.get(name, ("missing", b""))
        self.server.requests.append((name, self.headers.get("Range")))
        if mode == "missing":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if mode == "flaky" and rng is None:  # first request: claims all, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return
        if rng and mode in ("normal", "flaky", "truncated"):
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if mode == "endless":
            self.end_headers()
            try:
                while not self.server.closing.is_set():
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
            return
        if mode == "trickle":  # TUF's slow retrieval: a few bytes at a time, never silent for long
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, len(body), 16):
                    if self.server.closing.wait(0.1):
                        break
                    self.wfile.write(body[i:i + 16])
                    self.wfile.flush()
            except OSError:
                pass
            return
        if mode == "stalled":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.server.closing.wait(30)
            return
        if mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class BundleServer(http.server.ThreadingHTTPServer):
    """Serves bytes by name. Modes: normal (Range), flaky (first reply cut in half), truncated (short file, Range),
    no-length (close-delimited body), endless (zeros forever), stalled (a third, then silence), trickle (16 bytes
    every 0.1 s), missing."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def add(self, name: str, data: bytes, mode: str = "normal") -> str:
        self.routes[name] = (mode, data)
        return self.url(name)

    def __enter__(self) -> BundleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


def wait_for(pred: Any, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


# ---- the service in a child process, for kill and fault tests -----------------------------------------------------------
def child_apply(models_dir: str, keys_dir: str, release_path: str) -> int:
    """Start like the service does (start-up check), apply one release, then run the probation frames."""
    from edge.config import Config, DeviceConfig, OtaConfig
    from edge.ota.updater import Updater

    cfg = Config(device=DeviceConfig(id="cart-07", store="s042"),
                 ota=OtaConfig(keys_dir=keys_dir, models_dir=models_dir, probation_frames=5, stall_timeout_s=2.0))
    def report(r: dict[str, Any]) -> None:
        print(json.dumps({"phase": r["ota"]["state"]}), flush=True)

    up = Updater(cfg, report=report, swap=lambda p: None)
    up.active_bundle_path()
    print("ready", flush=True)
    t0 = time.monotonic()
    out = up.apply_release(Path(release_path).read_bytes())
    while up.in_probation:
        time.sleep(0.01)  # one frame
        up.observe_frame(2.0, True)
    print(json.dumps({"state": out.state, "code": out.code, "seconds": time.monotonic() - t0}), flush=True)
    return 0


def spawn_apply(dev: Device, release: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    import os

    e = dict(os.environ)
    e.update(env or {})
    e["PYTHONPATH"] = str(ROOT)
    with open(dev.tmp / "child-stderr.log", "ab") as err:  # kept for diagnosis
        return subprocess.Popen([sys.executable, __file__, "apply", str(dev.models_dir), str(dev.keys_dir),
                                 str(release)], stdout=subprocess.PIPE, stderr=err, text=True, env=e, cwd=ROOT,
                                start_new_session=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "build":
        build_models(Path(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "apply":
        sys.exit(child_apply(*sys.argv[2:]))
    else:
        print("usage: python tests/test_ota_support.py build OUT_DIR | apply MODELS KEYS RELEASE", file=sys.stderr)
        sys.exit(2)
