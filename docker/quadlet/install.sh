#!/usr/bin/env bash
# Install cert-sidecar into OpenCHAMI's Release RPM (podman quadlets under systemd), or undo it.
#
#   install.sh [--image IMAGE] [--dry-run]        install, or bring an install up to date
#   install.sh --uninstall [--dry-run] [--purge]  give the acme.sh path back as it was
#
# Run as root on the OpenCHAMI host, from a cert-sidecar checkout (the unit files beside this
# script are what it installs). What it does, in order (--dry-run prints each step and changes
# nothing):
#   1. checks, changing nothing when one fails: the RPM's quadlet units are there (in
#      /etc/containers/systemd or /usr/share/containers/systemd), openchami.env has a usable
#      SYSTEM_URL, haproxy.cfg has the shape the RPM ships, the image is in podman's storage;
#   2. writes cert-sidecar's units into /etc/containers/systemd (the container, a one-shot that
#      sets volume owners, two volumes) and drop-ins that change the RPM's units without editing
#      them: HAProxy starts after cert-sidecar and mounts its socket's volume; acme-register,
#      acme-deploy and the daily openchami-cert-renewal timer and service are skipped (a
#      condition: see acme-deploy.container.d/ for why not a mask);
#   3. adds one line to haproxy.cfg's global section, a second runtime socket, keeping a backup;
#   4. if HAProxy is running (a running install, certificates from acme.sh): starts cert-sidecar,
#      which keeps acme.sh's certificate while it is valid, then restarts HAProxy once so it
#      opens the new socket. That restart is the only interruption.
# Everything it changed is recorded under /var/lib/cert-sidecar-install, which --uninstall uses
# to put back exactly what was there. Running it again changes nothing that is already right.
#
# Exit status: 0 done (or nothing to do), 2 a check failed (nothing changed), 1 a step failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prog="cert-sidecar install"

# Where things are on an OpenCHAMI host. Overridable for tests of this script alone.
QUADLET_DIR="${QUADLET_DIR:-/etc/containers/systemd}"
VENDOR_QUADLET_DIR="${VENDOR_QUADLET_DIR:-/usr/share/containers/systemd}"
SYSTEMD_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"
CONFIG_DIR="${OPENCHAMI_CONFIG_DIR:-/etc/openchami/configs}"
RECORD_DIR="${CERT_SIDECAR_INSTALL_RECORD:-/var/lib/cert-sidecar-install}"

DEFAULT_IMAGE="localhost/cert-sidecar:openchami"
SOCKET_PATH="/var/lib/haproxy-run/admin.sock"
MARK="# added by cert-sidecar's install.sh"
SOCKET_LINE="  stats socket $SOCKET_PATH mode 660 level admin gid 65532  $MARK"
# The files this script writes: relative to QUADLET_DIR (from the same path beside this script),
# and relative to SYSTEMD_DIR (from systemd/ beside it).
QUADLET_FILES=(
    cert-sidecar.container
    cert-sidecar-prepare.container
    cert-sidecar-state.volume
    cert-sidecar-run.volume
    haproxy.container.d/50-cert-sidecar.conf
    acme-register.container.d/50-cert-sidecar.conf
    acme-deploy.container.d/50-cert-sidecar.conf
)
SYSTEMD_FILES=(
    openchami-cert-renewal.service.d/50-cert-sidecar.conf
    openchami-cert-renewal.timer.d/50-cert-sidecar.conf
)

image="" dry_run=false uninstall=false purge=false
wrote=()
usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) [[ $# -ge 2 ]] || { echo "$prog: --image needs a value" >&2; exit 2; }; image="$2"; shift ;;
        --image=*) image="${1#--image=}" ;;
        --dry-run) dry_run=true ;;
        --uninstall) uninstall=true ;;
        --purge) purge=true ;;
        -h | --help) usage; exit 0 ;;
        *) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

fail() { echo "$prog: $*" >&2; exit 2; }
say() { echo "$prog: $*"; }
# run CMD...: print it; run it unless --dry-run.
run() {
    if $dry_run; then echo "would run: $*"; else echo "run: $*"; "$@"; fi
}
# put SOURCE DEST MODE: write DEST from SOURCE (stdin when SOURCE is -) atomically, if different.
put() {
    local source="$1" dest="$2" mode="$3" tmp
    tmp="$(mktemp)"
    if [[ "$source" == - ]]; then cat >"$tmp"; else cat "$source" >"$tmp"; fi
    if [[ -f "$dest" ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        echo "unchanged: $dest"
        return 0
    fi
    if $dry_run; then
        echo "would write: $dest"
        wrote+=("$dest")
        rm -f "$tmp"
        return 0
    fi
    echo "write: $dest"
    wrote+=("$dest")
    mkdir -p "$(dirname "$dest")"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

[[ "$(id -u)" -eq 0 ]] || $dry_run || fail "run as root (sudo), or with --dry-run"

unit_active() { systemctl is-active --quiet "$1" 2>/dev/null; }
haproxy_cfg="$CONFIG_DIR/haproxy.cfg"
env_file="$CONFIG_DIR/openchami.env"

# The haproxy-certs volume's directory on the host, when the volume exists.
certs_volume_dir() {
    podman volume inspect --format '{{.Mountpoint}}' haproxy-certs 2>/dev/null || true
}

# remove_file PATH: remove it, and its drop-in directory when that is left empty.
remove_file() {
    local path="$1" dir
    [[ -e "$path" ]] || return 0
    run rm -f "$path"
    dir="$(dirname "$path")"
    if [[ "$dir" == *.d ]] && ! $dry_run && [[ -z "$(ls -A "$dir")" ]]; then
        run rmdir "$dir"
    fi
}

# ---- uninstall ---------------------------------------------------------------------------------
if $uninstall; then
    [[ -d "$RECORD_DIR" ]] || fail "nothing to undo: $RECORD_DIR does not exist (cert-sidecar was not installed by this script)"
    haproxy_was_active=false
    unit_active haproxy.service && haproxy_was_active=true
    run systemctl stop cert-sidecar.service cert-sidecar-prepare.service
    for file in "${QUADLET_FILES[@]}"; do
        remove_file "$QUADLET_DIR/$file"
    done
    for file in "${SYSTEMD_FILES[@]}"; do
        remove_file "$SYSTEMD_DIR/$file"
    done
    # haproxy.cfg: the backup when nothing else changed since; otherwise only our line goes.
    if [[ -f "$RECORD_DIR/haproxy.cfg.orig" ]] && grep -qF "$MARK" "$haproxy_cfg"; then
        if cmp -s <(grep -vF "$MARK" "$haproxy_cfg") "$RECORD_DIR/haproxy.cfg.orig"; then
            put "$RECORD_DIR/haproxy.cfg.orig" "$haproxy_cfg" "$(stat -c %a "$haproxy_cfg")"
        else
            say "haproxy.cfg changed since the install: removing only cert-sidecar's line"
            grep -vF "$MARK" "$haproxy_cfg" | put - "$haproxy_cfg" "$(stat -c %a "$haproxy_cfg")"
        fi
    fi
    # The install's backup, once haproxy.cfg is that again.
    if [[ -f "$haproxy_cfg.before-cert-sidecar" ]] && { $dry_run || cmp -s "$haproxy_cfg.before-cert-sidecar" "$haproxy_cfg"; }; then
        run rm -f "$haproxy_cfg.before-cert-sidecar"
    fi
    # haproxy-certs as acme.sh had it: the owners and modes recorded at install (the prepare
    # unit changed them); PEMs that were not there then are cert-sidecar's, and go (acme-deploy
    # writes its own below). A volume that did not exist then gets a new volume's root, 0755.
    dir="$(certs_volume_dir)"
    if [[ -n "$dir" ]]; then
        recorded="$(awk '{print $3}' "$RECORD_DIR/certs-owners" 2>/dev/null || true)"
        for pem in "$dir"/*.pem; do
            [[ -f "$pem" ]] || continue
            grep -qxF "$(basename "$pem")" <<<"$recorded" || run rm -f "$pem"
        done
        grep -qxF . <<<"$recorded" || { run chown 0:0 "$dir"; run chmod 0755 "$dir"; }
        while read -r mode owner name; do
            [[ -n "$name" && -e "$dir/$name" ]] || continue
            run chown "$owner" "$dir/$name"
            run chmod "$mode" "$dir/$name"
        done <"$RECORD_DIR/certs-owners"
    fi
    run systemctl daemon-reload
    if $haproxy_was_active; then
        # As the RPM's renewal unit does: acme.sh issues and deploys, HAProxy loads the result
        # (and drops the socket line and the run volume).
        run systemctl restart acme-register.service
        run systemctl restart acme-deploy.service
        run systemctl restart haproxy.service
    fi
    if $purge; then
        run podman volume rm --force cert-sidecar-state cert-sidecar-run
    else
        say "kept the volumes cert-sidecar-state and cert-sidecar-run (--purge removes them)"
    fi
    run rm -rf "$RECORD_DIR"
    $dry_run || say "uninstalled: acme.sh issues HAProxy's certificate again"
    exit 0
fi

# ---- checks (nothing is changed before all of them pass) ----------------------------------------
if [[ -z "$image" && -f "$QUADLET_DIR/cert-sidecar.container" ]]; then
    image="$(sed -n 's/^Image=//p' "$QUADLET_DIR/cert-sidecar.container" | head -1)"
fi
image="${image:-$DEFAULT_IMAGE}"
vendor_dir=""
for dir in "$QUADLET_DIR" "$VENDOR_QUADLET_DIR"; do
    if [[ -f "$dir/haproxy.container" && -f "$dir/step-ca.container" ]]; then
        vendor_dir="$dir"
        break
    fi
done
[[ -n "$vendor_dir" ]] || fail "OpenCHAMI's quadlet units (haproxy.container, step-ca.container) are in neither $QUADLET_DIR nor $VENDOR_QUADLET_DIR: install the openchami RPM first (rpm -q openchami)"
[[ -r "$env_file" ]] || fail "$env_file is missing: install the openchami RPM first"
# As systemd reads it (EnvironmentFile=): the last assignment, outer quotes and trailing blanks off.
system_url="$(sed -n 's/^SYSTEM_URL=//p' "$env_file" | tail -1 | sed -e 's/[[:space:]]*$//' \
    -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/" || true)"
[[ -n "$system_url" ]] || fail "$env_file has no SYSTEM_URL=<fqdn> line: set it with 'openchami-certificate-update update <fqdn>'"
[[ "$system_url" =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$ ]] \
    || fail "$env_file: SYSTEM_URL='$system_url' is not a fully qualified host name: set it with 'openchami-certificate-update update <fqdn>'"
[[ -r "$haproxy_cfg" ]] || fail "$haproxy_cfg is missing: install the openchami RPM first"
globals="$(grep -cE '^[[:space:]]*global([[:space:]]|$)' "$haproxy_cfg" || true)"
[[ "$globals" == 1 ]] || fail "$haproxy_cfg has $globals 'global' sections, not 1 (hand-edited?): add this line to its global section yourself, then run again: $SOCKET_LINE"
grep -qE "ssl[[:space:]].*crt[[:space:]]+/etc/haproxy/certs/?([[:space:]]|$)" "$haproxy_cfg" \
    || fail "$haproxy_cfg has no 'bind ... ssl crt /etc/haproxy/certs/' line (hand-edited?): HAProxy would not load cert-sidecar's certificates from there"
if grep -vF "$MARK" "$haproxy_cfg" | grep -qF "$SOCKET_PATH"; then
    fail "$haproxy_cfg already names $SOCKET_PATH on a line this script did not add: remove that line, then run again"
fi
podman image exists "$image" 2>/dev/null \
    || fail "image $image is not in podman's storage: build it (podman build --build-arg HAPROXY_GID=65532 -t $image .) or load it (podman load -i FILE), or name another with --image"

for file in "${QUADLET_FILES[@]}" "${SYSTEMD_FILES[@]}"; do
    [[ -f "$here/$file" || -f "$here/systemd/$file" ]] || fail "$here is not a whole cert-sidecar checkout: $file is missing"
done

say "OpenCHAMI units in $vendor_dir; SYSTEM_URL=$system_url; image $image"
$dry_run && say "dry run: nothing below is changed"

# ---- record what was there (once: a second run must not overwrite the first record) -------------
if [[ ! -d "$RECORD_DIR" ]]; then
    if $dry_run; then
        echo "would write: $RECORD_DIR/ (what this install changes, for --uninstall)"
    else
        mkdir -p "$RECORD_DIR"
        chmod 0700 "$RECORD_DIR"
        cp -p "$haproxy_cfg" "$RECORD_DIR/haproxy.cfg.orig"
        dir="$(certs_volume_dir)"
        : >"$RECORD_DIR/certs-owners"
        if [[ -n "$dir" ]]; then
            echo "$(stat -c '%a %u:%g' "$dir") ." >>"$RECORD_DIR/certs-owners"
            for pem in "$dir"/*.pem; do
                [[ -f "$pem" ]] && echo "$(stat -c '%a %u:%g' "$pem") $(basename "$pem")" >>"$RECORD_DIR/certs-owners"
            done
        fi
        echo "write: $RECORD_DIR/"
    fi
fi

# ---- units ---------------------------------------------------------------------------------------
for file in "${QUADLET_FILES[@]}"; do
    sed "s|@IMAGE@|$image|g" "$here/$file" | put - "$QUADLET_DIR/$file" 0644
done
for file in "${SYSTEMD_FILES[@]}"; do
    put "$here/systemd/$file" "$SYSTEMD_DIR/$file" 0644
done

# ---- haproxy.cfg ---------------------------------------------------------------------------------
if grep -qF "$MARK" "$haproxy_cfg"; then
    echo "unchanged: $haproxy_cfg"
else
    backup="$haproxy_cfg.before-cert-sidecar"
    [[ -e "$backup" ]] || run cp -p "$haproxy_cfg" "$backup"
    echo "  (in its global section: $SOCKET_LINE)"
    awk -v line="$SOCKET_LINE" '
        { print }
        !done && /^[[:space:]]*global([[:space:]]|$)/ { print line; done = 1 }
    ' "$haproxy_cfg" | put - "$haproxy_cfg" "$(stat -c %a "$haproxy_cfg")"
fi

run systemctl daemon-reload

# ---- a running install: cert-sidecar takes over, HAProxy restarts once --------------------------
if unit_active haproxy.service; then
    say "HAProxy is running: starting cert-sidecar, then restarting HAProxy once if its configuration changed"
    run systemctl start cert-sidecar.service
    # Only when its configuration changed now (the socket line, the run volume): a second run
    # of this script restarts nothing.
    if printf '%s\n' "${wrote[@]}" | grep -qE "(haproxy\.cfg|50-cert-sidecar\.conf)$"; then
        run systemctl restart haproxy.service
    fi
else
    say "HAProxy is not running: 'systemctl start haproxy.service' (or openchami.target) starts cert-sidecar first"
fi
$dry_run || say "installed: 'systemctl status cert-sidecar' shows the certificate, 'journalctl -u cert-sidecar' its log"
