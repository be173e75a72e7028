"""Builds signed gap-heatmap bundles: manifest from the converted model's real I/O, golden vectors, ed25519 signature.

Light module: no TensorFlow (it runs the int8 model through the device's own Detector for the golden vectors).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bundle import (
    GOLDEN,
    MODEL,
    Bundle,
    InputSpec,
    Manifest,
    OutputSpec,
    TensorSpec,
    Thresholds,
    generate_keypair,
    load_private_key,
    write_bundle,
)

TASK = "shelf-gap-detection"
LABELS = ("empty",)
# The project's signing key. The first, "shelfscout-default", signed the default bundles v1-v3; its private half was
# lost with a build machine (not leaked), so v4 on are signed with "shelfscout-default-2". Both public keys stay in
# models/keys: devices keep verifying the v3 bundle in their rollback slot, and learn the new key from the installer.
DEFAULT_KEY_NAME = "shelfscout-default-2"
# What `train`, `finetune` and `bundle` sign with by default: a key of the user's own, never the project's release
# key (on the build machine an experiment signed with that would install on every cart that trusts the project), and
# under a name of its own, so `model verify` never names a user's key after the project's.
USER_KEY_NAME = "my-models"
KEY_ENV = "SHELFSCOUT_SIGNING_KEY"
USER_KEY_DIR = Path.home() / ".config" / "shelfscout" / "keys"
HEATMAP_TENSORS = ("heatmap", "ltrb")


def _tflite_io(model_bytes: bytes) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], str]]]:
    """Input details and (name, shape, dtype) of each output in model order, names from the serving signature."""
    from edge.runtime import make_interpreter

    it, _ = make_interpreter(model_bytes, threads=1)
    inp = it.get_input_details()[0]
    details = it.get_output_details()
    names = [str(d["name"]) for d in details]
    sigs = it.get_signature_list()
    if len(sigs) == 1:
        runner_out = it.get_signature_runner(next(iter(sigs))).get_output_details()
        by_index = {d["index"]: n for n, d in runner_out.items()}
        if all(d["index"] in by_index for d in details):
            names = [by_index[d["index"]] for d in details]
    outs = [(n, tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name) for n, d in zip(names, details, strict=True)]
    return inp, outs


def build_version() -> int:
    """A default version for a model you build: its build time as YYYYMMDDHHMM (UTC; $SOURCE_DATE_EPOCH when set).
    A cart takes only a higher version than it has, so each build outranks the one before it and the project's
    own small numbers, and no two builds a minute apart share one."""
    return int(build_time()[:16].replace("-", "").replace("T", "").replace(":", ""))


def build_time() -> str:
    """The manifest's `created` time, UTC: $SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not env:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        t = datetime.fromtimestamp(int(env), timezone.utc)
    except (ValueError, OverflowError, OSError) as e:
        raise ValueError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970-01-01, got {env!r}") from e
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A compressed .npz (what np.load reads) whose bytes depend only on the arrays: `np.savez_compressed` stamps
    each member with the time of writing, so the same golden vectors made twice differed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


def heatmap_manifest(
    model_bytes: bytes,
    name: str,
    version: int,
    stride: int,
    thresholds: Thresholds,
    metrics: Mapping[str, Any] | None = None,
    latency_budget_ms: float | None = 250.0,
) -> Manifest:
    """The manifest of a gap-heatmap model, with the input and output specs read from the model itself."""
    inp, outs = _tflite_io(model_bytes)
    names = [o[0] for o in outs]
    if sorted(names) != sorted(HEATMAP_TENSORS):
        raise ValueError(f"a gap-heatmap model has outputs named {HEATMAP_TENSORS}; this one has {names}")
    shape = tuple(int(v) for v in inp["shape"])
    dtype = np.dtype(inp["dtype"]).name
    scale, zp = (float(inp["quantization"][0]), int(inp["quantization"][1])) if dtype != "float32" else (1.0, 0)
    return Manifest(
        name=name,
        version=int(version),
        task=TASK,
        input=InputSpec(width=shape[2], height=shape[1], channels=shape[3], color="RGB", dtype=dtype,
                        scale=scale, zero_point=zp),
        output=OutputSpec(
            decoding="gap-heatmap", tensors=tuple(TensorSpec(n, s, d) for n, s, d in outs), stride=int(stride)
        ),
        labels=LABELS,
        thresholds=thresholds,
        metrics=dict(metrics or {}),
        created=build_time(),
        latency_budget_ms=latency_budget_ms,
    )


def golden_npz(manifest: Manifest, model_bytes: bytes, images: Sequence[np.ndarray]) -> bytes:
    """golden.npz bytes: the images squashed to the model size and the raw outputs the device path gives for them."""
    from edge.detector import Detector

    w, h = manifest.input.width, manifest.input.height
    inputs = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images]).astype(np.uint8)
    det = Detector(Bundle(manifest, manifest.to_json_bytes(), {MODEL: model_bytes}, None, "<build>"), threads=1)
    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in manifest.output.tensors}
    for im in inputs:
        det.preprocess(im)
        det.invoke()
        for k, v in det.raw_outputs().items():
            outs[k].append(v)
    return npz_bytes({"input_0": inputs, **{f"output_{k}": np.stack(v) for k, v in outs.items()},
                      "kernels": np.array(det.kernels)})  # the device checks its own kernels' outputs exactly


def signing_key_path(explicit: Path | str | None = None, name: str = USER_KEY_NAME) -> Path:
    """The private key to sign with: the given path, else $SHELFSCOUT_SIGNING_KEY, else ~/.config/shelfscout/keys/
    NAME.key (the user's own key; `make model` asks for the project's, DEFAULT_KEY_NAME)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env)
    return USER_KEY_DIR / f"{name}.key"


def load_or_create_key(path: Path, public_out: Path | None = None) -> Ed25519PrivateKey:
    """Load an ed25519 private key, creating the pair (PEM, 0600) when it does not exist yet.

    `public_out`, when given, receives the matching public key (e.g. models/keys/shelfscout-default-2.pub).
    """
    if not path.exists():
        generate_keypair(path, path.with_suffix(".pub"))
    key = load_private_key(path)
    if public_out is not None:
        from cryptography.hazmat.primitives import serialization

        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_out.parent.mkdir(parents=True, exist_ok=True)
        if not public_out.exists() or public_out.read_bytes() != pub:
            public_out.write_bytes(pub)
    return key


def build_heatmap_bundle(
    out_path: Path | str,
    model_bytes: bytes,
    golden_images: Sequence[np.ndarray],
    name: str,
    version: int,
    stride: int,
    thresholds: Thresholds,
    private_key: Ed25519PrivateKey | None,
    metrics: Mapping[str, Any] | None = None,
    latency_budget_ms: float | None = 250.0,
) -> Manifest:
    """Write a signed gap-heatmap bundle and return its manifest as written."""
    manifest = heatmap_manifest(model_bytes, name, version, stride, thresholds, metrics, latency_budget_ms)
    golden = golden_npz(manifest, model_bytes, golden_images)
    return write_bundle(out_path, manifest, {MODEL: model_bytes, GOLDEN: golden}, private_key)
