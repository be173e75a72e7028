"""Smoke test of an extracted bundle in its own process: `python -m edge.ota.smoke DIR --keys KEYS_DIR`.

The child loads the model (the Detector checks its I/O against the manifest), runs the golden vectors, and refuses
NaN/inf or constant outputs. It prints one JSON line `{"ok", "code", "detail"}` and exits 0 (pass) or 1 (fail).
`run_smoke` starts it with a timeout, so a crash or a hang of the interpreter only costs the child.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import GOLDEN, Bundle, BundleError, load_public_keys, read_bundle
from edge.ota.errors import OtaError
from edge.ota.faults import SMOKE_CHILD_KILLED, killed_point

DetectorFactory = Callable[[Bundle], Any]


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    code: str  # "ok", or the OtaError code of the failure
    detail: str


def check_bundle(path: Path, keys_dirs: Sequence[Path], factory: DetectorFactory | None = None) -> SmokeResult:
    """Load, golden-test and sanity-check one bundle folder in this process."""
    try:
        bundle = read_bundle(path, load_public_keys(keys_dirs))
    except BundleError as e:
        return SmokeResult(False, "bad-bundle", str(e))
    try:
        if factory is None:
            from edge.detector import Detector

            det = Detector(bundle, threads=1)
        else:
            det = factory(bundle)
    except BundleError as e:  # ModelSignatureError is a BundleError
        return SmokeResult(False, "wrong-io", str(e))
    except (ValueError, RuntimeError) as e:
        return SmokeResult(False, "load-failed", str(e))
    return check_detector(det, bundle)


def check_detector(det: Any, bundle: Bundle) -> SmokeResult:
    """Golden vectors within tolerance; dequantized outputs finite and varying with the input."""
    g = det.check_golden()
    if not g.ok:
        return SmokeResult(False, "golden-mismatch", g.detail)
    with np.load(io.BytesIO(bundle.members[GOLDEN]), allow_pickle=False) as z:
        inputs = z["input_0"]
    runs: list[dict[str, np.ndarray]] = []
    for img in inputs:
        det.preprocess(np.ascontiguousarray(img))
        det.invoke()
        runs.append({k: np.array(v, copy=True) for k, v in det.outputs().items()})
    for name in runs[0]:
        stack = np.stack([r[name] for r in runs])
        if not np.isfinite(stack).all():
            return SmokeResult(False, "nan-output", f"output {name!r} holds NaN or inf on the golden inputs")
        if float(np.ptp(stack)) == 0.0:
            return SmokeResult(False, "constant-output",
                               f"output {name!r} is the constant {float(stack.flat[0]):g} on all golden inputs")
    if len(runs) >= 2 and all(all(np.array_equal(r[k], runs[0][k]) for k in r) for r in runs[1:]):
        return SmokeResult(False, "constant-output", f"outputs are identical for all {len(runs)} different "
                                                     "golden inputs: the model ignores its input")
    return SmokeResult(True, "ok", g.detail)


def run_smoke(path: Path, keys_dir: Path, timeout_s: float) -> SmokeResult:
    """Run `check_bundle` in a child interpreter; raises OtaError (`smoke-hang`, `smoke-crash`, or the child's
    code) unless the bundle passes."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "edge.ota.smoke", str(path), "--keys", str(keys_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise OtaError("smoke-hang", f"the model did not finish its golden vectors within {timeout_s:g} s "
                                     "(smoke test killed)") from None
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == -signal.SIGKILL:  # no model sends itself SIGKILL: the OOM killer or the service manager
        raise OtaError("smoke-killed", "the smoke test was killed from outside (SIGKILL: out of memory, or the "
                                       "service stopping), not by the model; tried again later")
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise OtaError("smoke-crash", f"the interpreter crashed ({sig}) while loading or running the model")
    try:
        result = SmokeResult(**json.loads(last))
    except (json.JSONDecodeError, TypeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OtaError("smoke-crash", f"smoke test exited with {proc.returncode}: {tail}") from None
    if not result.ok:
        raise OtaError(result.code, result.detail)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.ota.smoke", description=__doc__)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--keys", type=Path, action="append", default=[], help="trusted public keys folder")
    args = ap.parse_args(argv)
    killed_point(SMOKE_CHILD_KILLED)
    try:
        result = check_bundle(args.bundle, args.keys)
    except Exception as e:  # report anything unexpected as a failed smoke test, on one line
        result = SmokeResult(False, "load-failed", f"{type(e).__name__}: {e}")
    print(json.dumps(asdict(result)), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
