"""systemd/shelfscout.service: `systemd-analyze verify` is clean, the exposure score is at most 2.0, and the
sandbox's MemoryDenyWriteExecute= does not break the inference stack (checked with the kernel's own W^X switch)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "shelfscout.service"
ANALYZE = shutil.which("systemd-analyze")
HOST_UNITS = Path("/usr/lib/systemd/system")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is missing (Debian package `systemd`)")


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """`Key=value` lines by key (a key may repeat, like DeviceAllow=), ignoring comments and section names."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def make_root(root: Path) -> Path:
    """A minimal file system root for `verify --root`: the host's stock units plus the installed unit and binary."""
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/shelfscout.service")
    exe = root / "opt/shelfscout/venv/bin/shelfscout"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")  # stands in for the venv's console script (see test_deploy_install.py)
    exe.chmod(0o755)
    (root / "bin").mkdir()  # the one system program the unit names (ExecReload=/bin/kill), which every Pi has
    shutil.copy2(shutil.which("kill", path="/bin:/usr/bin") or "/bin/kill", root / "bin/kill")
    return root


def test_unit_has_the_contract() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["ExecStart"] == ["/opt/shelfscout/venv/bin/shelfscout run -c /etc/shelfscout/config.toml"]
    assert s["Restart"] == ["on-failure"] and "StartLimitBurst" in s and "StartLimitIntervalSec" in s
    assert s["User"] == ["shelfscout"] and "DynamicUser" not in s and s["SupplementaryGroups"] == ["video"]
    assert s["StateDirectory"] == ["shelfscout"] and s["ConfigurationDirectory"] == ["shelfscout"]
    assert s["LoadCredential"] == ["mqtt-password:/etc/shelfscout/credentials/mqtt-password"]
    assert s["DevicePolicy"] == ["closed"]
    assert {"char-video4linux rw", "char-media rw", "char-dma_heap rw"} <= set(s["DeviceAllow"])
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"] and s["CapabilityBoundingSet"] == [""]
    assert "PrivateDevices" not in s  # it would hide the camera nodes; DevicePolicy=closed does the job


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    if not HOST_UNITS.is_dir():
        pytest.skip(f"{HOST_UNITS} is missing: systemd's stock units are needed for verify --root")
    root = make_root(tmp_path / "root")
    r = subprocess.run([ANALYZE, "verify", f"--root={root}", "--man=no", "shelfscout.service"],  # type: ignore[list-item]
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def exposure(unit: Path) -> float:
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],  # type: ignore[list-item]
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m, f"no exposure level in the output of systemd-analyze security:\n{r.stdout}\n{r.stderr}"
    return float(m.group(1))


@needs_analyze
def test_exposure_is_at_most_2() -> None:
    score = exposure(UNIT)
    print(f"systemd-analyze security --offline=yes {UNIT.name}: exposure {score}")
    assert score <= 2.0


@needs_analyze
def test_the_exposure_check_notices_a_weaker_unit(tmp_path: Path) -> None:
    # Guards the parser above: the same unit without its sandbox must score far worse.
    weak = tmp_path / "shelfscout.service"
    keep = ("Type", "ExecStart", "User", "Group", "Restart")
    lines = [ln for ln in UNIT.read_text().splitlines()
             if ln.startswith("[") or ln.split("=", 1)[0] in keep]
    weak.write_text("\n".join(lines) + "\n")
    assert exposure(weak) > 5.0


MDWE_PROBE = textwrap.dedent(r"""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("no PR_SET_MDWE in this kernel"); sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("W+X mapping was allowed: the probe is broken"); sys.exit(2)
    except OSError:
        pass
    # From here on, like under MemoryDenyWriteExecute=yes: exercise everything the service loads.
    import sqlite3, ssl, json
    import numpy as np, cv2
    import paho.mqtt.client
    from edge.runtime import make_interpreter
    from edge.hints import mounting_hints
    from edge.preview import annotate
    img = np.full((480, 640, 3), 128, np.uint8)
    if sys.argv[1].endswith(".bundle"):  # the real path: signed bundle -> Detector -> decoded gaps
        from edge.bundle import BUILTIN_KEYS, load_public_keys, read_bundle
        from edge.detector import Detector
        det = Detector(read_bundle(sys.argv[1], load_public_keys([BUILTIN_KEYS])), threads=2)
        gaps = det.detect(img)
        info, out = det.runtime, f"{len(gaps)} gaps"
    else:
        it, info = make_interpreter(open(sys.argv[1], "rb").read(), threads=2)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"]).shape
    mounting_hints(img, 5.0)
    ok, _ = cv2.imencode(".jpg", annotate(img, [], [], {}))
    db = sqlite3.connect(":memory:"); db.execute("create table t (x)"); db.close()
    print(f"ok runtime={info.name} xnnpack={info.xnnpack} out={out}")
""")


def _int8_model(tmp_path: Path) -> Path:
    """The default bundle (run through the Detector); before it exists, a tiny int8 model made with TensorFlow."""
    from edge.bundle import DEFAULT_BUNDLE

    out = tmp_path / "model.tflite"
    if DEFAULT_BUNDLE.exists():
        return DEFAULT_BUNDLE
    make = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        inp = tf.keras.Input((96, 96, 3))
        x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
        x = tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
        c = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, x))
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([np.random.rand(1, 96, 96, 3).astype(np.float32)] for _ in range(8))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = c.inference_output_type = tf.int8
        open({str(out)!r}, "wb").write(c.convert())
    """)
    r = subprocess.run([sys.executable, "-c", make], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"no default bundle yet and TensorFlow could not make a model: {r.stderr[-500:]}")
    return out


def test_inference_stack_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes kills a process that maps W+X memory (JITs do). systemd enforces it with seccomp,
    the kernel (6.3+) offers the same rule as prctl(PR_SET_MDWE): run the model, hints and preview under it."""
    model = _int8_model(tmp_path)
    r = subprocess.run([sys.executable, "-c", MDWE_PROBE, str(model)], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    if r.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok "), r.stdout
    print(r.stdout.strip())
