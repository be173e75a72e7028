"""The service's workload under the unit's syscall filter and W^X rule, rebuilt here without systemd running.

systemd implements `SystemCallFilter=@system-service` + `SystemCallFilter=~@privileged @resources` +
`SystemCallErrorNumber=EPERM` as a seccomp allow-list, and `RestrictAddressFamilies=` and `MemoryDenyWriteExecute=`
as seccomp rules too. This test expands the same syscall groups with `systemd-analyze syscall-filter`, loads that
allow-list and the address families with libseccomp (and the kernel's PR_SET_MDWE for W^X) into a child process, and runs what the service does: load and run the
signed default model through the Detector, the hints, the state folder's flock, the preview's HTTP server, the SQLite
outbox and sd_notify.
Device access (DevicePolicy=) and the namespaces cannot be rebuilt this way; they are covered by `verify` and the
exposure score in test_systemd_unit.py.
"""

from __future__ import annotations

import ctypes.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_systemd_unit import ANALYZE, UNIT, unit_settings

REPO = Path(__file__).resolve().parents[1]
LIBSECCOMP = ctypes.util.find_library("seccomp")

pytestmark = pytest.mark.skipif(ANALYZE is None or LIBSECCOMP is None,
                                reason="needs systemd-analyze and libseccomp (Debian package `systemd`)")


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The syscall names in a systemd filter group, sub-groups expanded."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    r = subprocess.run([str(ANALYZE), "syscall-filter", "--no-pager", group], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    names: set[str] = set()
    for line in r.stdout.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("@"):
            names |= expand(entry, seen)
        elif re.fullmatch(r"[a-z0-9_]+", entry):
            names.add(entry)
    return names


FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}


def unit_families() -> list[int]:
    """RestrictAddressFamilies= of the unit, as numbers."""
    (value,) = unit_settings(UNIT)["RestrictAddressFamilies"]
    return [FAMILIES[name] for name in value.split()]


def unit_allow_list() -> list[str]:
    """What the unit's SystemCallFilter= lines allow: the allow-list minus every `~` deny-list."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings(UNIT)["SystemCallFilter"]:
        deny = value.startswith("~")
        for item in value.lstrip("~").split():
            names = expand(item) if item.startswith("@") else {item}
            (denied if deny else allowed).update(names)
    return sorted(allowed - denied)


PROBE = textwrap.dedent(r"""
    import ctypes, json, os, sys
    allow_file, lib, bundle, workdir, sandbox = sys.argv[1:6]
    if sandbox == "1":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            print("no PR_SET_MDWE"); sys.exit(77)
        sc = ctypes.CDLL(lib, use_errno=True)
        sc.seccomp_init.restype = ctypes.c_void_p
        sc.seccomp_init.argtypes = [ctypes.c_uint32]
        sc.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        sc.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
        sc.seccomp_load.argtypes = [ctypes.c_void_p]
        ctx = sc.seccomp_init(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM): SystemCallErrorNumber=EPERM
        spec = json.load(open(allow_file))
        allowed = 0
        for name in spec["syscalls"]:
            nr = sc.seccomp_syscall_resolve_name(name.encode())
            if nr < 0 or name in ("socket", "socketpair"):
                continue  # not on this architecture / allowed per address family below
            if sc.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0:  # SCMP_ACT_ALLOW
                allowed += 1

        class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
            _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                        ("datum_b", ctypes.c_uint64)]

        sc.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                              ctypes.POINTER(Cmp)]
        for name in ("socket", "socketpair"):  # RestrictAddressFamilies=: the domain is argument 0
            nr = sc.seccomp_syscall_resolve_name(name.encode())
            for family in spec["families"]:
                cmp = Cmp(0, 4, family, 0)  # SCMP_CMP_EQ
                if sc.seccomp_rule_add_array(ctx, 0x7FFF0000, nr, 1, ctypes.byref(cmp)) != 0:
                    print("seccomp_rule_add_array failed"); sys.exit(3)
        if sc.seccomp_load(ctx) != 0:
            print("seccomp_load failed"); sys.exit(3)
        try:
            os.setuid(os.getuid())  # @privileged is gone: even a no-op setuid must now fail
            print("setuid was allowed: the filter is not active"); sys.exit(2)
        except PermissionError:
            pass
        import socket as _s
        try:
            _s.socket(_s.AF_PACKET, _s.SOCK_RAW)  # not in RestrictAddressFamilies=
            print("AF_PACKET was allowed: the family filter is not active"); sys.exit(2)
        except PermissionError:
            pass
        print(f"sandbox: {allowed} syscalls allowed", file=sys.stderr)

    import socket, sqlite3, ssl, threading, urllib.request
    from pathlib import Path
    import numpy as np
    from edge.bundle import BUILTIN_KEYS, load_public_keys, read_bundle
    from edge.detector import Detector
    from edge.hints import mounting_hints
    from edge.instance_lock import acquire
    from edge.outbox import OutMessage, Outbox
    from edge.preview import PreviewServer
    from edge.sdnotify import notify
    from tests.test_hints import draw_shelf

    det = Detector(read_bundle(bundle, load_public_keys([BUILTIN_KEYS])), threads=2)
    img = draw_shelf(np.random.default_rng(0))
    gaps = det.detect(img)
    hints = [h.code for h in mounting_hints(img, 3.0)]
    lock = acquire(workdir)  # the state folder's flock
    ob = Outbox(Path(workdir) / "outbox.db")
    ob.put([OutMessage("shelfscout/s/d/alerts", b"{}")])
    depth = ob.depth()
    ob.close()
    lock.release()
    p = PreviewServer("127.0.0.1:0").start()
    p.offer(img, gaps, [], {"fps": 1.0})
    with urllib.request.urlopen(p.url + "snapshot.jpg", timeout=10) as r:
        jpeg = len(r.read())
    p.stop()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(Path(workdir) / "notify.sock"))
    notified = notify("READY=1", {"NOTIFY_SOCKET": str(Path(workdir) / "notify.sock")}) and srv.recv(64)
    ssl.create_default_context()
    import logging
    from edge.pipeline import CorePlan
    said = []
    logging.getLogger("edge.pipeline").addHandler(type("H", (logging.Handler,), {"emit": lambda h, r: said.append(r.getMessage())})())
    logging.getLogger("edge.pipeline").setLevel(logging.INFO)
    cores = sorted(os.sched_getaffinity(0))
    plan = CorePlan.for_cores(cores, interpreter_threads=1)
    pinning = None
    if plan is not None:  # what the inference thread does on a 2-core board with one interpreter thread
        before = plan.apply()
        pinning = {"pinned": sorted(os.sched_getaffinity(0)) == sorted(plan.infer), "said": said[-1]}
        CorePlan.restore(before)
        pinning["restored"] = sorted(os.sched_getaffinity(0)) == cores
    print(json.dumps({"pinning": pinning,"runtime": det.runtime.name, "xnnpack": det.runtime.xnnpack,
                      "gaps": [[round(v, 1) for v in g.box] for g in gaps], "hints": hints, "outbox": depth,
                      "jpeg": jpeg > 1000, "notified": notified == b"READY=1",
                      "locked": (Path(workdir) / "shelfscout.lock").read_text().strip() == str(os.getpid())}))
""")


def _run(tmp_path: Path, sandbox: bool, allow: Path, bundle: Path) -> dict:
    work = tmp_path / ("sandboxed" if sandbox else "plain")
    work.mkdir()
    r = subprocess.run([sys.executable, "-c", PROBE, str(allow), str(LIBSECCOMP), str(bundle), str(work),
                        "1" if sandbox else "0"], capture_output=True, text=True, timeout=180, cwd=REPO)
    if r.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_service_workload_runs_under_the_units_syscall_filter(tmp_path: Path) -> None:
    from edge.bundle import DEFAULT_BUNDLE

    if not DEFAULT_BUNDLE.exists():
        pytest.skip("the default model bundle is not built yet")
    allow = unit_allow_list()
    assert "read" in allow and "setuid" not in allow and "sched_setaffinity" not in allow
    allow_file = tmp_path / "allow.json"
    allow_file.write_text(json.dumps({"syscalls": allow, "families": unit_families()}))
    plain = _run(tmp_path, False, allow_file, DEFAULT_BUNDLE)
    boxed = _run(tmp_path, True, allow_file, DEFAULT_BUNDLE)
    print(f"{len(allow)} syscalls allowed; sandboxed run: {boxed}")
    # Thread pinning is refused there (sched_setaffinity is in @resources): the log says so, and nothing stays pinned.
    plain_pin, boxed_pin = plain.pop("pinning"), boxed.pop("pinning")
    if plain_pin is not None:
        assert plain_pin["pinned"] and plain_pin["said"].startswith("inference thread pinned")
        assert not boxed_pin["pinned"] and boxed_pin["restored"]
        assert boxed_pin["said"].startswith("threads not pinned: the OS refused"), boxed_pin
    # Same results inside the sandbox, including the fast XNNPACK path (no silent fallback to slow kernels).
    assert boxed == plain
    assert boxed["xnnpack"] and boxed["outbox"] == 1 and boxed["jpeg"] and boxed["notified"] and boxed["locked"]


def test_syscall_groups_expand() -> None:
    names = expand("@system-service")
    assert {"openat", "mmap", "socket", "clone"} <= names
    assert "reboot" not in names and "kexec_load" not in names
    assert shutil.which("systemd-analyze") is not None
