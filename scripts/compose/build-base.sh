#!/usr/bin/env bash
# Build the local stand-in base image (Debian bookworm, minbase) that replaces registry images
# in the compose test: no image registry is reachable here (see shared/TEST-PEERS.md).
#
# The debootstrap tree is cached as a tarball under .cache/compose/ so that reruns take seconds;
# delete the tarball to refresh it. Imports it as $BASE_TAG (default cert-sidecar-test/bookworm)
# unless that image already exists and is newer than the tarball.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"

suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$CACHE_DIR/$suite-minbase.tar"

if [[ ! -s "$tarball" ]]; then
    root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    echo "build-base: debootstrap $suite into $root (about 75 s, once)" >&2
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 || {
        tail -20 "$CACHE_DIR/debootstrap.log" >&2
        exit 1
    }
    # Keep the image small: package lists and caches are rebuilt by any later apt-get update.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

if podman image exists "$BASE_TAG"; then
    created="$(podman image inspect --format '{{.Created.Unix}}' "$BASE_TAG")"
    if (( created >= $(stat -c %Y "$tarball") )); then
        exit 0
    fi
fi
echo "build-base: importing $tarball as $BASE_TAG" >&2
podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_TAG" >/dev/null
