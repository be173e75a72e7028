#!/usr/bin/env bash
# The device side of shelfscout on emulated 64-bit ARM CPUs: does the shipped int8 model compute on a Pi's CPU what
# it computes here?
#
# Installs the package with pip into an arm64 Debian root (the wheels a Pi gets: ai-edge-litert, numpy, OpenCV,
# cryptography; and, in a second environment, the `tflite` extra's tflite-runtime), then, under qemu-user for each CPU model, checks the shipped bundle's golden vectors (what every
# cart checks before an update goes live) and compares its raw int8 outputs and decoded gaps on 32 generated shelves
# with this machine's (bench/arm_parity.py). CPU models: cortex-a53 (Pi Zero 2 W, Pi 3), cortex-a72 (Pi 4),
# cortex-a76 (Pi 5). Emulation runs the ARM kernels that the CPU's features select; it says nothing about speed.
#
# Usage, as root on Debian: bench/arm64_check.sh [ROOTFS]   (default /var/tmp/shelfscout-arm64, kept for the next
# run; the first builds it with debootstrap, about 15 minutes). CPUS="cortex-a72" picks the models.
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "arm64_check.sh: unknown option $1 (the one argument is the arm64 root folder; --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "arm64_check.sh: run it as root (it installs packages and mounts binfmt_misc)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/var/tmp/shelfscout-arm64}
cpus=${CPUS:-"cortex-a53 cortex-a72 cortex-a76"}

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
    || ! command -v update-binfmts >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

if [ ! -x "$root/opt/venv/bin/python" ]; then
  if [ ! -x "$root/usr/bin/python3" ]; then
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root"
  fi
  chroot "$root" python3 -m venv /opt/venv
fi
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# this machine's trust (a proxy's CA, where pip goes through one) for pip inside the root too
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
rm -rf "$root/opt/shelfscout"
mkdir -p "$root/opt/shelfscout"
# the work tree as it is (committed or not), without the virtualenv and build output
tar -C "$here" --exclude=./.venv --exclude=./build --exclude=./.git --exclude='*.egg-info' -cf - . \
  | tar -C "$root/opt/shelfscout" -xf -
# The root gets no /proc or /sys of this machine: the ARM kernels' CPU detection (cpuinfo, in XNNPACK) would read
# an x86 CPU there and crash or give up on XNNPACK. It gets what a Pi's kernel shows instead: 4 cores and, per CPU
# model, the /proc/cpuinfo lines that name it and its features (the instructions come from qemu's CPU model).
mkdir -p "$root/proc" "$root/sys/devices/system/cpu"
for f in possible present online; do echo 0-3 > "$root/sys/devices/system/cpu/$f"; done
cpuinfo() {  # FEATURES VARIANT PART REVISION
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\n' \
      "$i" "$1" "$2"
    printf 'CPU part\t: %s\nCPU revision\t: %s\n\n' "$3" "$4"
  done > "$root/proc/cpuinfo"
}
chroot "$root" /opt/venv/bin/pip install -q --disable-pip-version-check /opt/shelfscout
# the `tflite` extra's runtime, for boards without an ai-edge-litert wheel: tflite-runtime 2.14, no XNNPACK for int8
[ -x "$root/opt/venv-tflite/bin/python" ] || chroot "$root" python3 -m venv /opt/venv-tflite
chroot "$root" /opt/venv-tflite/bin/pip install -q --disable-pip-version-check "tflite-runtime>=2.14" "numpy<2" \
  "opencv-python-headless<=4.11.0.86" "paho-mqtt>=2,<3" "cryptography>=41"
chroot "$root" /opt/venv-tflite/bin/pip install -q --disable-pip-version-check --no-deps /opt/shelfscout

"$here/.venv/bin/python" "$here/bench/arm_parity.py" dump "$root/opt/reference.npz"
status=0
for cpu in $cpus; do
  case $cpu in
    cortex-a53) cpuinfo "fp asimd evtstrm crc32 cpuid" 0x0 0xd03 4 ;;
    cortex-a72) cpuinfo "fp asimd evtstrm crc32 cpuid" 0x0 0xd08 3 ;;
    cortex-a76) cpuinfo "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" 0x4 0xd0b 1 ;;
    *) echo "unknown CPU model $cpu (cortex-a53, cortex-a72 or cortex-a76)" >&2; exit 2 ;;
  esac
  for run in "venv --threads 1" "venv --threads 2" "venv --threads 2 --no-xnnpack" \
      "venv-tflite --threads 2 --runtime tflite-runtime"; do
    venv=${run%% *}
    args=${run#* }
    printf '%s, %s: ' "$cpu" "${args#--}"
    # shellcheck disable=SC2086  # $args is several arguments
    QEMU_CPU=$cpu chroot "$root" "/opt/$venv/bin/python" /opt/shelfscout/bench/arm_parity.py compare \
      /opt/reference.npz $args 2>/dev/null || status=1
  done
done

# The whole service on the last CPU model: a rendered cart pass from a file, to a Mosquitto on this machine, here and
# in the root; the same alerts at the same frames? (The boxes may differ in the third decimal: OpenCV's video
# decoding on ARM rounds pixels differently, up to 4 levels.)
if command -v mosquitto >/dev/null; then
  e2e="$root/opt/e2e"
  rm -rf "$e2e"
  mkdir -p "$e2e"
  "$here/.venv/bin/shelfscout" render-pass "$e2e/pass.mp4" --seconds 10 --seed 3 >/dev/null
  port=$("$here/.venv/bin/python" -c 'from edge.embedded_broker import free_port; print(free_port())')
  mosquitto -p "$port" >/dev/null 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null; umount "$root/proc" 2>/dev/null || true' EXIT
  config() {  # SIDE ROOT_PREFIX: where the service of SIDE finds the pass, the model and its state
    printf '[device]\nid = "cart"\nstore = "s1"\n[camera]\nsource = "%s/opt/e2e/pass.mp4"\nrealtime = false\n' "$2"
    printf '[model]\nbundle = "%s"\n[mqtt]\nurl = "mqtt://127.0.0.1:%s"\n' "$3/models/shelfgap-default.bundle" "$port"
    printf '[outbox]\npath = "%s/opt/e2e/%s/outbox.db"\n[ota]\nenabled = false\nkeys_dir = "%s/models/keys"\n' \
      "$2" "$1" "$3"
    printf '[preview]\nenabled = false\n'
  }
  config x86 "$root" "$here" > "$e2e/x86.toml"
  config arm "" /opt/shelfscout > "$e2e/arm.toml"
  alerts() { grep -o 'alert [a-z]* [^ ]* frame=[0-9]* bbox=.*' "$1" | sed 's/ [^ ]* frame=/ frame=/'; }
  "$here/.venv/bin/shelfscout" -v run -c "$e2e/x86.toml" 2> "$e2e/x86.log"
  QEMU_CPU=$cpu chroot "$root" /opt/venv/bin/shelfscout -v run -c /opt/e2e/arm.toml 2> "$e2e/arm.log"
  echo "the service on this machine, then on $cpu:"
  alerts "$e2e/x86.log"
  alerts "$e2e/arm.log"
  if [ "$(alerts "$e2e/x86.log" | cut -d' ' -f1-3)" != "$(alerts "$e2e/arm.log" | cut -d' ' -f1-3)" ] \
      || [ -z "$(alerts "$e2e/arm.log")" ]; then
    echo "the alerts differ"
    status=1
  fi
fi
exit $status
