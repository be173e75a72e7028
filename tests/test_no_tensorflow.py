"""The device path stays light: importing every module under edge/ loads no TensorFlow or Keras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parent.parent / "edge"


def test_importing_all_of_edge_loads_no_tensorflow() -> None:
    modules = sorted(
        ".".join(p.relative_to(EDGE.parent).with_suffix("").parts)
        for p in EDGE.rglob("*.py")
        if p.name != "__main__.py"
    )
    modules = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in modules]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print(len(sys.modules), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=EDGE.parent)
    assert r.returncode == 0, f"edge imported TensorFlow: {r.stdout} {r.stderr[-2000:]}"
    assert len(modules) > 5
