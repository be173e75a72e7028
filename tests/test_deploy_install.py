"""deploy/install-pi.sh: shellcheck-clean, and run twice into a temporary root it installs the same tree (idempotent),
with the right modes, the operator's config kept, a --system-site-packages venv holding shelfscout, and a unit that
`systemd-analyze verify` accepts in the installed tree."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_systemd_unit import ANALYZE, HOST_UNITS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install-pi.sh"
SHELLCHECK = shutil.which("shellcheck")
# Offline and fast: install the local source tree only (its dependencies are not fetched in the test).
PIP_ARGS = "--no-deps --no-index --no-build-isolation"


def base_python() -> str:
    """The system Python, as on a Pi, when it can make venvs (Debian's python3-venv); else the one running us."""
    system = "/usr/bin/python3"
    if Path(system).exists() and subprocess.run([system, "-c", "import ensurepip, venv"],
                                                 capture_output=True).returncode == 0:
        return system
    return sys.executable


def source_copy(dest: Path) -> Path:
    """What a `git clone` gives the installer, copied, so pip's in-tree build never writes into this checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md", "docs/INSTALL.md"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "models/shelfgap-default.bundle", dest / "models/shelfgap-default.bundle")
    for name in ("edge", "convert", "deploy", "systemd", "models/keys"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore, symlinks=True)  # edge/default_model
    return dest


def run_installer(prefix: Path, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(source / "deploy/install-pi.sh"), "--prefix", str(prefix), "--python",
                           base_python(), "--pip-args", PIP_ARGS, *extra], capture_output=True, text=True,
                          timeout=300)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path outside the venv's own site-packages: kind and permission bits."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if "site-packages" in rel_dir.parts or "__pycache__" in rel_dir.parts:
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
            out[str(rel_dir / name)] = (kind, stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict, dict, str]]:
    root = tmp_path_factory.mktemp("piroot")
    src = source_copy(tmp_path_factory.mktemp("src"))
    first = run_installer(root, src)
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(root)
    # The operator edits the config and sets a password between two runs: a re-run must keep both.
    (root / "etc/shelfscout/config.toml").write_text('[device]\nid = "cart-07"\nstore = "s042"\n')
    (root / "etc/shelfscout/credentials/mqtt-password").write_text("s3cret\n")
    second = run_installer(root, src)
    assert second.returncode == 0, second.stdout + second.stderr
    yield root, before, snapshot(root), second.stdout


def test_shellcheck_is_clean() -> None:
    if SHELLCHECK is None:
        pytest.skip("shellcheck is missing (Debian package `shellcheck`)")
    r = subprocess.run([SHELLCHECK, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert SCRIPT.read_text().count("set -euo pipefail") == 1


def test_second_run_changes_nothing(installed: tuple[Path, dict, dict, str]) -> None:
    root, before, after, second_log = installed
    assert before == after
    assert "keeping the existing" in second_log and "keeping the venv" in second_log


def test_layout_and_modes(installed: tuple[Path, dict, dict, str]) -> None:
    root, _, after, _ = installed
    expect = {
        "etc/shelfscout": ("d", 0o755),
        "etc/shelfscout/config.toml": ("f", 0o644),
        "etc/shelfscout/keys": ("d", 0o755),
        "etc/shelfscout/credentials": ("d", 0o700),
        "etc/shelfscout/credentials/mqtt-password": ("f", 0o600),
        "etc/shelfscout/tls": ("d", 0o750),
        "var/lib/shelfscout": ("d", 0o700),
        "var/lib/shelfscout/models": ("d", 0o700),
        "etc/systemd/system/shelfscout.service": ("f", 0o644),
        "opt/shelfscout/docs/INSTALL.md": ("f", 0o644),  # the unit's Documentation=
        "opt/shelfscout/models/shelfgap-default.bundle": ("f", 0o644),  # config.example.toml's model.bundle
    }
    for path, mode in expect.items():
        assert after.get(path) == mode, (path, after.get(path))
    assert (root / "etc/systemd/system/shelfscout.service").read_bytes() == (REPO / "systemd/shelfscout.service"
                                                                              ).read_bytes()
    # Shipped release keys, if any, land in keys/.
    for pub in (REPO / "models/keys").glob("*.pub"):
        assert (root / "etc/shelfscout/keys" / pub.name).read_bytes() == pub.read_bytes()


def test_operator_files_are_never_overwritten(installed: tuple[Path, dict, dict, str]) -> None:
    root, _, _, _ = installed
    assert (root / "etc/shelfscout/config.toml").read_text() == '[device]\nid = "cart-07"\nstore = "s042"\n'
    assert (root / "etc/shelfscout/credentials/mqtt-password").read_text() == "s3cret\n"


def test_the_example_config_is_valid() -> None:
    from edge.config import load

    cfg = load(REPO / "deploy/config.example.toml", env={})
    assert cfg.preview.bind.startswith("127.0.0.1:")  # the preview is not on the network unless asked for
    assert cfg.mqtt.url.startswith("mqtts://")
    assert cfg.model.bundle == "/opt/shelfscout/models/shelfgap-default.bundle"  # where the installer puts it


def test_venv_sees_system_packages_and_holds_shelfscout(installed: tuple[Path, dict, dict, str]) -> None:
    root, _, _, _ = installed
    venv = root / "opt/shelfscout/venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    script = venv / "bin/shelfscout"
    assert script.exists() and os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    r = subprocess.run([str(venv / "bin/python"), "-c", "import edge, edge.sdnotify; print(edge.__file__)"],
                       capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(venv)), "shelfscout must be installed into the venv, not found elsewhere"


def test_the_installed_package_carries_the_default_model_and_keys(installed: tuple[Path, dict, dict, str]) -> None:
    """A cart falls back to the built-in bundle when its configured one cannot run, and trusts the project's keys:
    both must be in the installed package itself (a plain `pip install`, not a link to the source tree)."""
    root, _, _, _ = installed
    (pkg,) = (root / "opt/shelfscout/venv/lib").glob("python3*/site-packages/edge")
    bundle = pkg / "default_model" / "shelfgap-default.bundle"
    assert not bundle.is_symlink() and bundle.read_bytes() == (REPO / "models/shelfgap-default.bundle").read_bytes()
    keys = sorted(p.name for p in (pkg / "default_model" / "keys").glob("*.pub"))
    assert keys and keys == sorted(p.name for p in (REPO / "models/keys").glob("*.pub"))
    code = "from edge.bundle import DEFAULT_BUNDLE, BUILTIN_KEYS; print(DEFAULT_BUNDLE); print(BUILTIN_KEYS)"
    r = subprocess.run([str(root / "opt/shelfscout/venv/bin/python"), "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=root)
    if r.returncode == 0:  # edge.bundle needs cryptography, which this offline install may not have
        assert r.stdout.split() == [str(bundle.resolve()), str((pkg / "default_model" / "keys").resolve())]


def test_installed_tree_passes_systemd_analyze_verify(installed: tuple[Path, dict, dict, str]) -> None:
    root, _, _, _ = installed
    if ANALYZE is None or not HOST_UNITS.is_dir():
        pytest.skip("systemd-analyze or systemd's stock units are missing (Debian package `systemd`)")
    # The Pi's own stock units (targets the service refers to), taken from this host.
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    # ... and the one system program the unit names (ExecReload=/bin/kill), which every Pi has (procps)
    kill = Path(shutil.which("kill", path="/bin:/usr/bin") or "/bin/kill")
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(kill, root / "bin/kill")
    r = subprocess.run([ANALYZE, "verify", f"--root={root}", "--man=no", "shelfscout.service"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_bad_options_fail_with_one_line(tmp_path: Path) -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--prefix", str(tmp_path), "--frobnicate"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "unknown option: --frobnicate" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--prefix", str(tmp_path), "--source", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not a shelfscout source tree" in r.stderr


def test_a_stale_venv_is_rebuilt(tmp_path: Path) -> None:
    """After an OS upgrade the venv's Python is gone: the installer notices and rebuilds it (without pip here)."""
    root, src = tmp_path / "root", source_copy(tmp_path / "src")
    py = root / "opt/shelfscout/venv/bin/python"
    py.parent.mkdir(parents=True)
    py.symlink_to("/usr/bin/python3.0-gone")  # what an upgraded OS leaves of the old venv
    (root / "opt/shelfscout/venv/stale-marker").write_text("x")
    second = run_installer(root, src, "--no-pip")
    assert second.returncode == 0, second.stderr
    assert "rebuilding the venv" in second.stdout
    assert not (root / "opt/shelfscout/venv/stale-marker").exists()
    r = subprocess.run([str(py), "-c", "print('ok')"], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "ok"


def test_a_venv_made_for_the_python_before_an_os_upgrade_is_rebuilt(tmp_path: Path) -> None:
    """The venv's `python` is a link to /usr/bin/python3, which the upgrade (Bookworm 3.11 -> Trixie 3.13) points
    at the new Python: it still runs, so the installer kept the venv, whose packages sit in lib/python3.11 where
    the new Python never looks (`No module named 'edge'`). The version in pyvenv.cfg tells."""
    root, src = tmp_path / "root", source_copy(tmp_path / "src")
    venv = root / "opt/shelfscout/venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").symlink_to(base_python())  # runs, as the upgraded OS's python3 does
    (venv / "pyvenv.cfg").write_text(f"home = {Path(base_python()).parent}\ninclude-system-site-packages = true\n"
                                     "version = 3.0.17\n")  # made for the Python before
    (venv / "lib/python3.0/site-packages").mkdir(parents=True)
    r = run_installer(root, src, "--no-pip")
    assert r.returncode == 0, r.stderr
    assert "rebuilding the venv" in r.stdout and "(Python 3.0 -> " in r.stdout
    assert not (venv / "lib/python3.0").exists()
    again = run_installer(root, src, "--no-pip")  # the rebuilt one is kept
    assert again.returncode == 0 and "keeping the venv" in again.stdout, again.stdout


def test_a_shipped_key_the_operator_deleted_stays_deleted_and_a_new_one_is_installed(tmp_path: Path) -> None:
    """Every `*.pub` in the keys folder is trusted for model updates, so deleting one is how an operator stops
    trusting it; the installer's next run (after `git pull`) put it back. It is installed once now, and a key new
    in the source (a rotation) still arrives."""
    root, src = tmp_path / "root", source_copy(tmp_path / "src")
    assert run_installer(root, src, "--no-pip").returncode == 0
    keys = root / "etc/shelfscout/keys"
    shipped = sorted(p.name for p in (src / "models/keys").glob("*.pub"))
    assert shipped and sorted(p.name for p in keys.glob("*.pub")) == shipped
    (keys / shipped[0]).unlink()  # the operator distrusts it
    (src / "models/keys/rotated-2027.pub").write_bytes((src / "models/keys" / shipped[0]).read_bytes())
    again = run_installer(root, src, "--no-pip")
    assert again.returncode == 0, again.stderr
    assert not (keys / shipped[0]).exists() and f"not installing {shipped[0]} again" in again.stdout
    assert (keys / "rotated-2027.pub").exists()


def test_a_link_planted_in_the_state_folder_is_refused_not_followed(tmp_path: Path) -> None:
    """The service user owns /var/lib/shelfscout: a link it made there (models -> /etc) had the next root run of
    the installer (after every `git pull`) make and chown the link's target, handing the service user a system
    folder. The installer refuses such a link and changes nothing through it."""
    root, src = tmp_path / "root", source_copy(tmp_path / "src")
    assert run_installer(root, src, "--no-pip").returncode == 0
    victim = root / "etc/important"
    victim.mkdir(mode=0o755)
    models = root / "var/lib/shelfscout/models"
    models.rmdir()
    models.symlink_to(victim)
    r = run_installer(root, src, "--no-pip")
    assert r.returncode != 0 and "is a symbolic link" in r.stderr and "must be a folder" in r.stderr
    assert victim.stat().st_mode & 0o777 == 0o755  # not made 0700 for the service


def test_an_install_from_before_the_shipped_list_does_not_get_a_deleted_key_back(tmp_path: Path) -> None:
    """An install made before keys/.shipped existed has no record: the first run after the upgrade put back a
    key the operator had deleted. It records the shipped keys instead, installs none that is missing, and says so."""
    root, src = tmp_path / "root", source_copy(tmp_path / "src")
    assert run_installer(root, src, "--no-pip").returncode == 0
    keys = root / "etc/shelfscout/keys"
    shipped = sorted(p.name for p in (src / "models/keys").glob("*.pub"))
    (keys / ".shipped").unlink()  # as an older installer left it
    (keys / shipped[0]).unlink()  # deleted by the operator back then
    r = run_installer(root, src, "--no-pip")
    assert r.returncode == 0, r.stderr
    assert not (keys / shipped[0]).exists() and "predates" in r.stdout
    assert sorted((keys / ".shipped").read_text().split()) == shipped
