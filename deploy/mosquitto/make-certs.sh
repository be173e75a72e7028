#!/usr/bin/env bash
# Make the shelfscout broker PKI with openssl: a CA, the broker's server certificate, and one client certificate
# per cart ("<store>/<device>"), per store backend ("backend-<store>") or for the release publisher.
#
#   make-certs.sh [-d DIR] ca                          DIR/ca.key, DIR/ca.crt (keep ca.key offline)
#   make-certs.sh [-d DIR] server HOST [HOST|IP ...]   DIR/server.key, DIR/server.crt for these names
#   make-certs.sh [-d DIR] device STORE DEVICE         DIR/devices/STORE/DEVICE.{key,crt}, CN "STORE/DEVICE"
#   make-certs.sh [-d DIR] backend STORE               DIR/backends/backend-STORE.{key,crt}; prints its ACL block
#   make-certs.sh [-d DIR] client NAME                 DIR/clients/NAME.{key,crt}, CN NAME (e.g. release-publisher)
# DIR defaults to ./pki. Keys are EC P-256. Existing keys and certificates are never overwritten.
set -euo pipefail

DIR=./pki
DAYS_CA=3650
DAYS_LEAF=825

die() { printf 'make-certs.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        -d) [ $# -ge 2 ] || die "-d needs a directory"; DIR="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
CMD="$1"; shift
command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
mkdir -p "$DIR"
umask 077

# One MQTT topic level: letters, digits, '-', '_' and '.'; never '/', '+', '#' or empty.
check_level() {
    [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "$1 '$2' must be letters, digits, '.', '_' or '-'"
}

newkey() {
    [ -e "$1" ] && return 0
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 0600 "$1"
}

# sign KEY CERT CN EXTFILE
sign() {
    local key="$1" crt="$2" cn="$3" ext="$4" csr
    if [ -e "$crt" ]; then printf 'keeping %s\n' "$crt"; rm -f "$ext"; return 0; fi
    if [ ! -e "$DIR/ca.key" ] || [ ! -e "$DIR/ca.crt" ]; then die "no CA in $DIR: run '$0 -d $DIR ca' first"; fi
    csr="$(mktemp)"
    # -subj separates RDNs with '/': a cart's CN "store/device" needs its slash escaped.
    openssl req -new -key "$key" -subj "/O=shelfscout/CN=${cn//\//\\/}" -out "$csr"
    openssl x509 -req -in "$csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial -days "$DAYS_LEAF" \
        -sha256 -extfile "$ext" -out "$crt" 2>/dev/null
    rm -f "$csr" "$ext"
    chmod 0644 "$crt"
    printf 'wrote %s (CN=%s)\n' "$crt" "$cn"
}

client_ext() {
    local ext; ext="$(mktemp)"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
        > "$ext"
    printf '%s' "$ext"
}

case "$CMD" in
    ca)
        [ -e "$DIR/ca.crt" ] && { printf 'keeping %s\n' "$DIR/ca.crt"; exit 0; }
        newkey "$DIR/ca.key"
        openssl req -x509 -new -key "$DIR/ca.key" -sha256 -days "$DAYS_CA" -subj "/O=shelfscout/CN=shelfscout CA" \
            -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$DIR/ca.crt" 2>/dev/null
        chmod 0644 "$DIR/ca.crt"
        printf 'wrote %s\n' "$DIR/ca.crt"
        ;;
    server)
        [ $# -ge 1 ] || die "usage: server HOST [HOST|IP ...]"
        san=""
        for n in "$@"; do
            if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san="$san,IP:$n"; else san="$san,DNS:$n"; fi
        done
        ext="$(mktemp)"
        printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
            "${san#,}" > "$ext"
        newkey "$DIR/server.key"
        sign "$DIR/server.key" "$DIR/server.crt" "$1" "$ext"
        ;;
    device)
        [ $# -eq 2 ] || die "usage: device STORE DEVICE"
        check_level store "$1"; check_level device "$2"
        # the release topics are shelfscout/fleet/model/release and shelfscout/STORE/model/release: a cart named
        # "fleet/..." or ".../model" could write them under `pattern write shelfscout/%u/#`
        [ "$1" != fleet ] || die "store 'fleet' is reserved (shelfscout/fleet/model/release is the fleet's release topic)"
        [ "$2" != model ] || die "device 'model' is reserved (shelfscout/STORE/model/release is the store's release topic)"
        mkdir -p "$DIR/devices/$1"
        newkey "$DIR/devices/$1/$2.key"
        sign "$DIR/devices/$1/$2.key" "$DIR/devices/$1/$2.crt" "$1/$2" "$(client_ext)"
        ;;
    backend)
        [ $# -eq 1 ] || die "usage: backend STORE"
        check_level store "$1"
        mkdir -p "$DIR/backends"
        newkey "$DIR/backends/backend-$1.key"
        sign "$DIR/backends/backend-$1.key" "$DIR/backends/backend-$1.crt" "backend-$1" "$(client_ext)"
        printf '\n# add to the ACL file:\nuser backend-%s\n' "$1"
        for k in status alerts snapshots/+ stats model/state cmd/+/reply; do
            printf 'topic read shelfscout/%s/+/%s\n' "$1" "$k"
        done
        printf 'topic write shelfscout/%s/+/cmd/+\n' "$1"
        ;;
    client)
        [ $# -eq 1 ] || die "usage: client NAME"
        check_level name "$1"
        mkdir -p "$DIR/clients"
        newkey "$DIR/clients/$1.key"
        sign "$DIR/clients/$1.key" "$DIR/clients/$1.crt" "$1" "$(client_ext)"
        ;;
    *) usage >&2; die "unknown command: $CMD" ;;
esac
