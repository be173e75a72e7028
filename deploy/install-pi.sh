#!/usr/bin/env bash
# Install (or update) shelfscout on Raspberry Pi OS Bookworm (Python 3.11) or Trixie (Python 3.13).
# Idempotent: run it again after `git pull` to update; it never overwrites /etc/shelfscout/config.toml or secrets.
#
#   sudo deploy/install-pi.sh                   # the real thing
#   deploy/install-pi.sh --prefix /tmp/root     # everything below a test root: no users, apt or systemctl
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install-pi.sh [options]
  --prefix DIR       install below DIR instead of / (testing; implies --no-users, no apt, no systemctl)
  --source DIR       the shelfscout source tree to install (default: this script's repository)
  --python PY        the Python to build the venv from (default: /usr/bin/python3, else python3 on PATH)
  --no-users         do not create the `shelfscout` system user
  --no-apt           do not apt-get install the system packages (python3-venv, python3-picamera2)
  --no-pip           create the venv but do not pip install into it
  --pip-args "ARGS"  extra arguments for pip install (e.g. "--no-deps --no-index --no-build-isolation")
  --no-systemctl     install the unit but do not daemon-reload/enable/restart it
  -h, --help         this help
EOF
}

log() { printf '==> %s\n' "$*"; }
die() { printf 'install-pi.sh: %s\n' "$*" >&2; exit 1; }

PREFIX=/
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=""
DO_USERS=1
DO_APT=1
DO_PIP=1
DO_SYSTEMCTL=1
PIP_ARGS=""

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE="$2"; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
        --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; PIP_ARGS="$2"; shift 2 ;;
        --no-users) DO_USERS=0; shift ;;
        --no-apt) DO_APT=0; shift ;;
        --no-pip) DO_PIP=0; shift ;;
        --no-systemctl) DO_SYSTEMCTL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a shelfscout source tree (no pyproject.toml)"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
if [ "$PREFIX" != / ]; then
    # A test root: touch nothing outside it.
    DO_USERS=0
    DO_APT=0
    DO_SYSTEMCTL=0
    ROOT="$PREFIX"
else
    ROOT=""
    [ "$(id -u)" = 0 ] || die "run as root (sudo), or use --prefix DIR for a test install"
fi

ETC="$ROOT/etc/shelfscout"
STATE="$ROOT/var/lib/shelfscout"
OPT="$ROOT/opt/shelfscout"
VENV="$OPT/venv"
UNITDIR="$ROOT/etc/systemd/system"
SVC_USER=shelfscout

if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    case "${VERSION_CODENAME:-}" in
        bookworm|trixie) ;;
        *) log "note: tested on Raspberry Pi OS Bookworm and Trixie; this is ${PRETTY_NAME:-unknown}" ;;
    esac
fi

# ---- system packages ---------------------------------------------------------------------------------------------
if [ "$DO_APT" = 1 ]; then
    log "apt: python3-venv, and python3-picamera2 where the Raspberry Pi archive provides it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv ca-certificates
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then
        apt-get install -y -qq --no-install-recommends python3-picamera2
    else
        log "python3-picamera2 is not in this system's archives: only V4L2/RTSP/file sources will work"
    fi
fi

if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON="$(command -v python3)"; fi
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$PYTHON is older than Python 3.10"

# ---- the service user --------------------------------------------------------------------------------------------
if [ "$DO_USERS" = 1 ]; then
    if ! getent passwd "$SVC_USER" >/dev/null; then
        log "creating system user $SVC_USER"
        useradd --system --user-group --home-dir /var/lib/shelfscout --no-create-home \
            --shell /usr/sbin/nologin --comment "shelfscout service" "$SVC_USER"
    fi
    # The camera nodes (/dev/video*, /dev/media*, /dev/dma_heap/*) belong to the video group on Raspberry Pi OS.
    usermod -a -G video "$SVC_USER"
fi
HAVE_USER=0
if [ -z "$ROOT" ] && getent passwd "$SVC_USER" >/dev/null; then HAVE_USER=1; fi

# ---- directories and files ---------------------------------------------------------------------------------------
log "configuration in $ETC, state in $STATE"
install -d -m 0755 "$ETC" "$ETC/keys" "$UNITDIR" "$OPT"
install -d -m 0700 "$ETC/credentials"  # root only; systemd's LoadCredential= passes secrets to the service
install -d -m 0750 "$ETC/tls"
# The service user owns the state folder: a link it put there (models -> /etc, say) would have this root script
# make and chown the link's target. Links are refused, and chown -h never follows one.
for d in "$STATE" "$STATE/models"; do
    [ ! -L "$d" ] || die "$d is a symbolic link (to $(readlink "$d")); remove it: the state folder must be a folder"
done
install -d -m 0700 "$STATE" "$STATE/models"
if [ "$HAVE_USER" = 1 ]; then
    chown -h "$SVC_USER:$SVC_USER" "$STATE" "$STATE/models"
    chgrp -h "$SVC_USER" "$ETC/tls"
fi

if [ ! -e "$ETC/config.toml" ]; then
    install -m 0644 "$SOURCE/deploy/config.example.toml" "$ETC/config.toml"
    log "wrote $ETC/config.toml from the example: set device.id, device.store and mqtt.url"
else
    log "keeping the existing $ETC/config.toml"
fi
if [ ! -e "$ETC/credentials/mqtt-password" ]; then
    # LoadCredential= needs the file to exist; an empty one means "no password" (certificate log-in).
    install -m 0600 /dev/null "$ETC/credentials/mqtt-password"
fi
# The release signing public keys shipped with the source, each installed once: unless the operator has put their
# own in place under its name, and never again after the operator deleted it (to stop trusting it for model
# updates). keys/.shipped lists the ones installed before; a key new in the source (a rotation) is installed.
if [ -d "$SOURCE/models/keys" ]; then
    shipped="$ETC/keys/.shipped"
    if [ ! -e "$shipped" ] && compgen -G "$ETC/keys/*.pub" >/dev/null; then
        # An install from before keys/.shipped: a shipped key missing now may have been deleted on purpose, so
        # none is put back; each is recorded as shipped. Copy one from models/keys by hand to trust it.
        for key in "$SOURCE"/models/keys/*.pub; do
            [ -e "$key" ] || continue
            name="$(basename "$key")"
            [ -e "$ETC/keys/$name" ] || log "not installing $name: this install predates $shipped, so a key deleted on purpose cannot be told from a new one; copy it from $SOURCE/models/keys to trust it"
            echo "$name" >> "$shipped"
        done
    fi
    for key in "$SOURCE"/models/keys/*.pub; do
        [ -e "$key" ] || continue
        name="$(basename "$key")"
        if grep -qxF "$name" "$shipped" 2>/dev/null; then
            [ -e "$ETC/keys/$name" ] || log "not installing $name again: it was deleted from $ETC/keys"
            continue
        fi
        [ -e "$ETC/keys/$name" ] || install -m 0644 "$key" "$ETC/keys/"
        echo "$name" >> "$shipped"
    done
    [ ! -e "$shipped" ] || chmod 0644 "$shipped"
fi

# The default model, next to the venv: config.toml points at it (OTA updates then live in /var/lib/shelfscout/models).
if [ -e "$SOURCE/models/shelfgap-default.bundle" ]; then
    install -d -m 0755 "$OPT/models"
    install -m 0644 "$SOURCE/models/shelfgap-default.bundle" "$OPT/models/shelfgap-default.bundle"
fi

# ---- the venv ----------------------------------------------------------------------------------------------------
# --system-site-packages: picamera2 and libcamera's Python bindings come from apt (python3-picamera2).
# A venv is tied to one Python: after an OS upgrade (Bookworm 3.11 -> Trixie 3.13) it is rebuilt.
# The venv's python is a link to /usr/bin/python3, which an upgrade points at the new Python, so the version the
# venv was made for (pyvenv.cfg) counts too: its packages sit in lib/python<old>, invisible to the new one.
want="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
have="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
made="$(sed -n 's/^version\(_info\)\{0,1\} *= *\([0-9][0-9]*\.[0-9][0-9]*\).*/\2/p' "$VENV/pyvenv.cfg" 2>/dev/null | head -n 1 || true)"
if [ -n "$have" ] && [ -n "$made" ] && [ "$made" != "$have" ]; then
    have="$made"
fi
if [ "$have" != "$want" ]; then
    if [ -e "$VENV" ]; then
        log "rebuilding the venv $VENV (Python ${have:-broken} -> $want)"
        rm -rf "$VENV"
    fi
    log "creating the venv $VENV (Python $want)"
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
else
    log "keeping the venv $VENV (Python $have)"
fi

if [ "$DO_PIP" = 1 ]; then
    # The venv's own pip (not the system's python3-pip, which --system-site-packages would also expose).
    [ -x "$VENV/bin/pip" ] || "$VENV/bin/python" -m ensurepip --default-pip >/dev/null
    CONSTRAINTS="$OPT/constraints.txt"
    : > "$CONSTRAINTS"
    # apt's picamera2 (simplejpeg, libcamera bindings) is built against the system numpy: keep that numpy in the
    # venv too, or pip would shadow it with numpy 2 and picamera2 would fail to import on Bookworm.
    if SYS_NUMPY="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"; then
        echo "numpy==$SYS_NUMPY" >> "$CONSTRAINTS"
        log "pinning numpy==$SYS_NUMPY to match the system's picamera2"
    fi
    log "pip install shelfscout from $SOURCE (+ ai-edge-litert)"
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" $PIP_ARGS "$SOURCE"
    if ! "$VENV/bin/python" -c 'import ai_edge_litert' 2>/dev/null; then
        # shellcheck disable=SC2086
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" $PIP_ARGS \
            ai-edge-litert || log "ai-edge-litert is not available here: falling back to tflite-runtime/tf.lite"
    fi
fi

# ---- systemd -----------------------------------------------------------------------------------------------------
# The unit's Documentation= points here.
install -d -m 0755 "$OPT/docs"
install -m 0644 "$SOURCE/docs/INSTALL.md" "$OPT/docs/INSTALL.md"
for unit in "$SOURCE"/systemd/*.service; do
    [ -e "$unit" ] || continue
    install -m 0644 "$unit" "$UNITDIR/"
done

if [ "$DO_SYSTEMCTL" = 1 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable shelfscout.service
        # An update: restart a running service on the new code; a first install waits for the config.
        systemctl try-restart shelfscout.service
    else
        log "systemd is not running here: skipped systemctl"
    fi
fi

log "done. Next: edit $ETC/config.toml, check it with"
log "  sudo $VENV/bin/shelfscout config check $ETC/config.toml    (as root: it also checks what the service user may read)"
log "then: systemctl start shelfscout; journalctl -u shelfscout -f; preview: http://127.0.0.1:8080/"
