#!/usr/bin/env bash
# Build the quadlet test's host image: Debian trixie (systemd 257, podman 5.4) with systemd as
# PID 1 and rootful podman inside, made to look like a RHEL-family OpenCHAMI host where the test
# needs it (the ca-trust layout and update-ca-trust, which the RPM's units use).
#
#   scripts/quadlet/build-host.sh        # prints nothing on success; the image is $QUADLET_HOST_IMAGE
#
# The debootstrap tree is cached as a tarball under .cache/quadlet/ (about 2 minutes, once);
# delete it to refresh. The image is rebuilt only when the tarball or this script changes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/quadlet/env.sh
source "$here/env.sh"

# One build at a time (scripts/test starts the host build early, in the background).
exec 9>"$QUADLET_CACHE/.lock-$(basename "$0")"
flock 9
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$QUADLET_CACHE/trixie-host.tar"
packages=systemd,systemd-sysv,dbus,podman,crun,runc,netavark,aardvark-dns,nftables,passt
packages+=,fuse-overlayfs,iproute2,procps,ca-certificates,curl,openssl,python3,jq,util-linux

if [[ ! -s "$tarball" ]]; then
    root="$(mktemp -d "$QUADLET_CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    echo "build-host: debootstrap trixie into $root (about 2 minutes, once)" >&2
    debootstrap --variant=minbase --include="$packages" trixie "$root" "$mirror" \
        >"$QUADLET_CACHE/debootstrap.log" 2>&1 || {
        tail -20 "$QUADLET_CACHE/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

stamp="$(cat "$tarball.sha256" 2>/dev/null || true)"
want="$(stat -c %Y "$tarball")-$(sha256sum "$here/build-host.sh" "$here/host-files/"* | sha256sum | cut -c1-16)"
if [[ "$stamp" == "$want" ]] && podman image exists "$QUADLET_HOST_IMAGE"; then
    exit 0
fi
echo "build-host: importing $tarball as $QUADLET_HOST_IMAGE" >&2
base="$QUADLET_HOST_IMAGE-base"
podman import --change 'CMD ["/sbin/init"]' "$tarball" "$base" >/dev/null
context="$(mktemp -d "$QUADLET_CACHE/host-context.XXXXXX")"
cp -a "$here/host-files" "$context/"
cat >"$context/Containerfile" <<CONTAINERFILE
FROM $base
COPY host-files/containers.conf /etc/containers/containers.conf
COPY host-files/update-ca-trust /usr/local/bin/update-ca-trust
COPY host-files/system.conf /etc/systemd/system.conf.d/cert-sidecar-test.conf
# The RHEL trust-store layout the RPM's units mount (tls-ca-bundle.pem) and fill (anchors/).
RUN mkdir -p /etc/pki/ca-trust/source/anchors /etc/pki/ca-trust/extracted/pem \\
    && cp /etc/ssl/certs/ca-certificates.crt /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem \\
    && chmod 0755 /usr/local/bin/update-ca-trust \\
    && systemctl mask systemd-modules-load.service systemd-networkd-wait-online.service \\
        getty@tty1.service console-getty.service >/dev/null 2>&1 || true
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
CONTAINERFILE
podman build --quiet --tag "$QUADLET_HOST_IMAGE" "$context" >/dev/null
rm -rf "$context"
echo "$want" >"$tarball.sha256"
