"""The model bundle format: a tar (or a folder) of a signed manifest, the .tflite model and golden vectors.

A bundle holds exactly these members:
- `manifest.json`: the `Manifest` below, as UTF-8 JSON; its `files` map gives the sha256 of every other member
  except `manifest.sig`;
- `manifest.sig`: a raw 64-byte ed25519 signature over the exact bytes of `manifest.json`;
- `model.tflite`: the int8 model;
- `golden.npz`: golden test vectors: `input_0` (N, H, W, C uint8) and, per output tensor named in the manifest,
  `output_<name>` holding the raw (quantized) outputs for those inputs.

`read_bundle` loads and checks one; `write_bundle` builds one. Both are light (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.atomic import write_atomic

SCHEMA = "shelfscout.bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.tflite"
GOLDEN = "golden.npz"
MAX_MEMBER_BYTES = 64 * 1024 * 1024
DECODINGS = ("gap-heatmap", "ssd", "yolo")
RESIZES = ("squash", "letterbox")
# The built-in default bundle and the project's public keys. `edge/default_model` is a link to the repository's
# `models/` in a source checkout; an installed package (a wheel) carries those files there as package data, so a cart
# installed with `pip install` has its fallback model and trusted keys too.
BUILTIN_MODELS = (Path(__file__).resolve().parent / "default_model").resolve()
DEFAULT_BUNDLE = BUILTIN_MODELS / "shelfgap-default.bundle"
BUILTIN_KEYS = BUILTIN_MODELS / "keys"


class BundleError(ValueError):
    """A bundle is malformed, tampered with, unsigned or signed by an unknown key."""


@dataclass(frozen=True)
class InputSpec:
    """What the model's input tensor wants: size, colour order, dtype and quantization."""

    width: int
    height: int
    channels: int = 3
    color: str = "RGB"
    dtype: str = "uint8"
    scale: float = 1.0
    zero_point: int = 0
    resize: str = "squash"  # how a frame becomes the input: squashed to it, or letterboxed (aspect kept, grey bands)


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor: the logical name the decoder uses, its shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class OutputSpec:
    """How to decode the outputs: `gap-heatmap` (ours), `ssd` or `yolo`, and the tensors in model order."""

    decoding: str
    tensors: tuple[TensorSpec, ...]
    stride: int | None = None  # gap-heatmap: input pixels per output cell


@dataclass(frozen=True)
class Thresholds:
    """Decoder thresholds that the bundle was measured with."""

    score: float = 0.4
    nms_iou: float = 0.5
    max_detections: int = 100


def _gap_classes(v: Any) -> tuple[int, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                   for i in v):
        raise BundleError(f"manifest gap_classes must be a non-empty list of class indices, got {v!r}")
    return tuple(v)


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to know about a model, signed."""

    name: str
    version: int
    task: str
    input: InputSpec
    output: OutputSpec
    labels: tuple[str, ...] = ("empty",)
    gap_classes: tuple[int, ...] | None = None  # which labels are empty spots (None: by name, see edge.decoders)
    thresholds: Thresholds = field(default_factory=Thresholds)
    files: Mapping[str, str] = field(default_factory=dict)  # member name -> sha256 hex
    metrics: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    latency_budget_ms: float | None = None  # probation: p95 invoke latency above this means rollback
    min_app_version: str | None = None
    schema: str = SCHEMA

    def to_json_bytes(self) -> bytes:
        d = _jsonable(asdict(self))
        if self.input.resize == "squash":  # the default, left out: manifests made before the field stay the same
            del d["input"]["resize"]
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Manifest:
        try:
            if d.get("schema") != SCHEMA:
                raise BundleError(f"manifest schema is {d.get('schema')!r}, expected {SCHEMA!r}")
            out = d["output"]
            if out["decoding"] not in DECODINGS:
                raise BundleError(f"unknown output decoding {out['decoding']!r}; expected one of {DECODINGS}")
            tensors = tuple(
                TensorSpec(str(t["name"]), tuple(int(s) for s in t["shape"]), str(t["dtype"])) for t in out["tensors"]
            )
            unknown = sorted(set(d["input"]) - {f.name for f in fields(InputSpec)})
            if unknown:  # a field a newer shelfscout added: what it means for the frames is unknown here
                raise BundleError(f"manifest input has {', '.join(unknown)}, which this shelfscout does not know: the "
                                  "bundle needs a newer shelfscout")
            if d["input"].get("resize", "squash") not in RESIZES:
                raise BundleError(f"unknown input resize {d['input']['resize']!r}; expected one of {RESIZES}")
            version = d["version"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise BundleError(f"manifest version must be a non-negative integer, got {version!r}")
            return Manifest(
                schema=d["schema"],
                name=str(d["name"]),
                version=version,
                task=str(d["task"]),
                input=InputSpec(**d["input"]),
                output=OutputSpec(decoding=out["decoding"], tensors=tensors, stride=out.get("stride")),
                labels=tuple(d.get("labels", ("empty",))),
                gap_classes=_gap_classes(d.get("gap_classes")),
                thresholds=Thresholds(**d.get("thresholds", {})),
                files=dict(d.get("files", {})),
                metrics=dict(d.get("metrics", {})),
                created=str(d.get("created", "")),
                latency_budget_ms=d.get("latency_budget_ms"),
                min_app_version=d.get("min_app_version"),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle: its manifest, the raw manifest bytes, and member contents."""

    manifest: Manifest
    manifest_bytes: bytes
    members: Mapping[str, bytes]
    signed_by: str | None  # the key file name that verified it, None when loaded unsigned in dev mode
    source: str

    @property
    def model_bytes(self) -> bytes:
        return self.members[MODEL]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_public_keys(dirs: Iterable[Path | str], bad: list[str] | None = None) -> dict[str, Ed25519PublicKey]:
    """Every `*.pub` (PEM) file in the given folders, by file name. Missing folders are skipped. A file that is not
    an ed25519 public key is a BundleError, or, with a `bad` list, skipped and said there (one line each).

    No key is ever dropped: a file whose name an earlier folder already used for a different key (an operator's
    own `shelfscout-default-2.pub`, say) is kept under its full path, so each key still verifies what it signed and
    the name in `signed_by` says which file that was. The same key under the same name counts once."""
    keys: dict[str, Ed25519PublicKey] = {}
    raw: dict[str, bytes] = {}
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            continue
        for f in sorted(p.glob("*.pub")):
            try:
                try:
                    key = serialization.load_pem_public_key(f.read_bytes())
                except ValueError as e:
                    raise BundleError(f"key file {f} is not a PEM public key: {e}") from e
                if not isinstance(key, Ed25519PublicKey):
                    raise BundleError(f"key file {f} is not an ed25519 public key")
            except BundleError as e:
                if bad is None:
                    raise
                bad.append(str(e))
                continue
            der = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            name = f.name if raw.get(f.name, der) == der else str(f)
            keys[name], raw[name] = key, der
    return keys


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    data = Path(path).read_bytes()
    if b"PUBLIC KEY-----" in data:
        raise BundleError(f"{path} is a public key; signing needs the private .key file from `shelfscout keygen`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:  # not PEM, not a key, or protected by a password
        raise BundleError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an ed25519 private key")
    return key


def generate_keypair(private_path: Path | str, public_path: Path | str) -> None:
    """Write a new ed25519 key pair as PEM files (the private one with mode 0600)."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path, public_path = Path(private_path), Path(public_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    public_path.write_bytes(pub)


def _read_members(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        out = {}
        for f in sorted(path.iterdir()):
            if f.is_symlink() or not f.is_file():
                raise BundleError(f"bundle folder {path} holds {f.name!r}, which is not a regular file")
            if f.stat().st_size > MAX_MEMBER_BYTES:
                raise BundleError(f"bundle member {f.name!r} is larger than {MAX_MEMBER_BYTES} bytes")
            out[f.name] = f.read_bytes()
        return out
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for m in tar.getmembers():
                if not m.isfile():
                    raise BundleError(f"bundle member {m.name!r} is not a regular file")
                name = m.name
                if "/" in name or name in ("", ".", ".."):
                    raise BundleError(f"bundle member {name!r} has a path; members must be plain names")
                if m.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"bundle member {name!r} is larger than {MAX_MEMBER_BYTES} bytes")
                fobj = tar.extractfile(m)
                if fobj is None:
                    raise BundleError(f"bundle member {name!r} cannot be read")
                data = fobj.read()
                if len(data) != m.size:
                    raise BundleError(f"bundle member {name!r} is truncated")
                out[name] = data
            return out
    except tarfile.TarError as e:
        raise BundleError(f"bundle {path} is not a readable tar: {e}") from e
    except (OSError, EOFError) as e:
        raise BundleError(f"bundle {path} could not be read: {e}") from e


def read_bundle(
    path: Path | str,
    keys: Mapping[str, Ed25519PublicKey] | None,
    allow_unsigned: bool = False,
) -> Bundle:
    """Load a bundle (tar file or folder) and check its signature and every hash.

    `keys` are the trusted public keys. With no keys, or no valid signature, it raises `BundleError`,
    unless `allow_unsigned` (the loud development flag) is set, in which case only the hashes are checked.
    """
    path = Path(path)
    members = _read_members(path)
    if MANIFEST not in members:
        raise BundleError(f"bundle {path} has no {MANIFEST}")
    manifest_bytes = members[MANIFEST]
    try:
        raw = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {path}: {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"bundle {path}: {MANIFEST} is not a JSON object")
    manifest = Manifest.from_dict(raw)

    signed_by: str | None = None
    sig = members.get(SIGNATURE)
    if sig is None:
        if not allow_unsigned:
            raise BundleError(f"bundle {path} is unsigned (no {SIGNATURE}); sign it with `shelfscout bundle`/"
                              "`shelfscout release --resign`, or run it with --dev-allow-unsigned-models")
    elif not keys:
        if not allow_unsigned:
            raise BundleError(f"bundle {path}: no trusted keys are configured, so its signature cannot be checked")
    else:
        for key_name, key in keys.items():
            try:
                key.verify(sig, manifest_bytes)
                signed_by = key_name
                break
            except InvalidSignature:
                continue
        if signed_by is None and not allow_unsigned:
            raise BundleError(f"bundle {path}: signature does not verify with any trusted key ({', '.join(keys)})")

    expected = dict(manifest.files)
    if MODEL not in expected:
        raise BundleError(f"bundle {path}: manifest lists no {MODEL}")
    extra = set(members) - set(expected) - {MANIFEST, SIGNATURE}
    if extra:
        raise BundleError(f"bundle {path} holds files the manifest does not list: {sorted(extra)}")
    for name, digest in expected.items():
        if name not in members:
            raise BundleError(f"bundle {path}: {name} is listed in the manifest but missing")
        actual = sha256_hex(members[name])
        if actual != digest:
            raise BundleError(f"bundle {path}: sha256 of {name} is {actual[:12]}…, manifest says {digest[:12]}…")
    return Bundle(manifest, manifest_bytes, members, signed_by, str(path))


def write_bundle(
    path: Path | str,
    manifest: Manifest,
    files: Mapping[str, bytes],
    private_key: Ed25519PrivateKey | None,
) -> Manifest:
    """Write a bundle tar: fills in the manifest's file hashes, signs it (unless `private_key` is None).

    The tar is written to a temporary name, fsynced and renamed, so a crash never leaves half a bundle.
    Returns the manifest as written.
    """
    if MODEL not in files:
        raise BundleError(f"a bundle needs {MODEL}")
    for name in files:
        if name in (MANIFEST, SIGNATURE) or "/" in name:
            raise BundleError(f"bad bundle member name {name!r}")
    hashes = {name: sha256_hex(data) for name, data in sorted(files.items())}
    final = Manifest(**{**manifest.__dict__, "files": hashes})
    mbytes = final.to_json_bytes()
    contents: dict[str, bytes] = {MANIFEST: mbytes, **files}
    if private_key is not None:
        contents[SIGNATURE] = private_key.sign(mbytes)
    write_tar(path, contents)
    return final


def write_tar(path: Path | str, contents: Mapping[str, bytes]) -> None:
    """Write plain members into an uncompressed tar, atomically (`edge.atomic.write_atomic`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    write_atomic(Path(path), buf.getvalue())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
